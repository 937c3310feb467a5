"""What NITP buys per FLOP: the compute multiplier of NITP over NTP from a ladder of model sizes.

From the validation CE of NTP and NITP runs of several sizes (each validation step is one
(compute, loss) point), this module fits one scaling law with shared constants and an
objective-specific compute multiplier (Hoffmann et al. 2022; the two-method form of
Volkova et al. 2026; bootstrap intervals as Besiroglu et al. 2024 advise)::

    L(C) = E + A (k_obj C)^(-alpha),      k_NTP = 1,  k_NITP = k

on each objective's compute-efficient frontier, and says whether k clears the price NITP pays
per token: NITP pays for itself at a size when k > 1 + overhead, with overhead = NITP's extra
FLOPs per token / the backbone's (``nitp_train.flops``: 14.3 % for tiny-dense at T = 64, ~2 % at the
paper's sizes). docs/multiplier.md describes the method; in short:

====================  =========================================================================
compute C             NTP-equivalent training FLOPs: tokens x ``training_flops_per_token`` of the
                      run's model (backbone + LM head, no NITP extra), so k is NITP's gain in NTP
                      compute and its own extra FLOPs are charged once, in the verdict
frontier              per objective, the Pareto points of all its (C, L) points after warm-up:
                      no other point reached a lower-or-equal loss with less-or-equal compute
                      (seeds averaged per size and step first)
fit                   ``scipy.optimize.least_squares`` on log L, several starts, analytic Jacobian
interval              ``scipy.stats.bootstrap`` (percentile), resampling seeds within each
                      (objective, size) (n - 1 of n), or runs within each objective when a size has one
ratio per size        NTP compute reaching NITP's final CE (NTP's curve of that size, log C
                      interpolated) / NITP's compute; the reverse curve when NTP never gets there
trend                 ``scipy.stats.linregress`` of log ratio on log parameters
verdict               "yes" (interval above 1 + overhead), "no" (below), "undetermined at this n"
====================  =========================================================================

Example
-------
>>> result = fit_multiplier(read_ladder(["runs/ntp-s0", "runs/nitp-s0", ...]))   # doctest: +SKIP
>>> result.k.value, result.verdict                                                # doctest: +SKIP
(1.12, 'pays for itself at d128-L4 (overhead 13.7%): undetermined at this n ...')
>>> multiplier_report(run_dirs, "out/ladder")                                     # doctest: +SKIP
PosixPath('out/ladder/multiplier.md')
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from nitp.errors import UserError

from .formats import Table

BASELINE, METHOD = "ntp", "nitp"
OBJECTIVE_NAMES = {BASELINE: "NTP", METHOD: "NITP"}
# the validation set of a run is fixed by these fields: CE of runs that differ in one is not comparable
DATA_KEYS = ("corpus", "text_field", "tokenizer", "vocab_size", "seq_len")
YES, NO, UNDETERMINED = "yes", "no", "undetermined at this n"
K_BOUNDS = (1e-3, 1e3)
ALPHA_BOUNDS = (1e-4, 5.0)
CURVE_POINTS = 80
ESTIMATES = ("k", "alpha", "E", "A")
METHODS = ("percentile", "basic")  # not BCa: its jackknife leaves out one of 2 seeds of a cell
SEEDS_UNIT = "seeds within each (objective, size), n - 1 of n drawn"
_PARAMS: dict[str, int] = {}  # model config (JSON) -> nitp_train.flops.parameter_count


# ----------------------------------------------------------------------------- data
@dataclass(frozen=True)
class Point:
    """One validation of a run: step, tokens seen, compute (FLOPs) and validation CE (nats)."""

    step: int
    tokens: int
    compute: float  # FLOPs spent: tokens x (backbone + NITP extra for NITP runs) per token
    backbone_compute: float  # NTP-equivalent FLOPs: tokens x the backbone's FLOPs per token
    loss: float


@dataclass
class LadderRun:
    """One run of the ladder: what it is (objective, seed, size), its costs and its validation points.

    ``backbone_flops_per_token`` is ``nitp_train.flops.training_flops_per_token`` of its model;
    ``nitp_flops_per_token`` is what NITP adds at this size (``nitp_flops_per_token(d)``), known
    for NTP runs too; ``flops_per_token`` is what the run spent (the trainer's count).
    """

    run: str
    objective: str
    seed: int
    size: str
    params: int
    backbone_flops_per_token: float
    nitp_flops_per_token: float
    points: list[Point]
    warmup_steps: int = 0
    path: str = ""

    @property
    def flops_per_token(self) -> float:
        return self.backbone_flops_per_token + (self.objective == METHOD) * self.nitp_flops_per_token

    @property
    def overhead(self) -> float:
        """NITP's extra FLOPs per token over the backbone's, at this size."""
        return self.nitp_flops_per_token / self.backbone_flops_per_token

    @property
    def final(self) -> Point:
        return self.points[-1]

    @classmethod
    def from_dict(cls, d: dict) -> LadderRun:
        fields_ = {f.name for f in dataclasses.fields(cls)} - {"points"}
        return cls(**{k: d[k] for k in fields_ & d.keys()}, points=[Point(**p) for p in d["points"]])


@dataclass(frozen=True)
class Estimate:
    """A fitted value and its bootstrap interval (NaN when there is none)."""

    value: float
    low: float = math.nan
    high: float = math.nan

    def text(self, fmt: str = ".3g") -> str:
        if not (math.isfinite(self.low) and math.isfinite(self.high)):
            return f"{self.value:{fmt}} [no interval]"
        return f"{self.value:{fmt}} [{self.low:{fmt}}, {self.high:{fmt}}]"


@dataclass(frozen=True)
class LawFit:
    """``L(C) = E + A (k C)^(-alpha)`` with k applied to the method's points only."""

    E: float
    A: float
    alpha: float
    k: float
    cost: float = math.nan  # least-squares cost (half the sum of squared log-loss residuals)

    def loss(self, compute: np.ndarray, k: float = 1.0) -> np.ndarray:
        """Predicted loss at ``compute`` for an objective with multiplier ``k``."""
        return law(np.asarray(compute, dtype=float), self.E, self.A, self.alpha, k)


@dataclass(frozen=True)
class SizeRatio:
    """The non-parametric multiplier at one size.

    ``ratio`` = NTP compute reaching NITP's final CE / NITP's compute (``via`` "NTP curve"), or
    NTP's compute / NITP compute reaching NTP's final CE (``via`` "NITP curve") when NTP never got
    down to NITP's final CE. ``bound`` "lower" / "upper": neither curve crosses, ``ratio`` is then
    only a bound. ``net_ratio`` = ratio / (1 + overhead): above 1, NITP paid for itself here.
    """

    size: str
    params: int
    overhead: float
    ntp_final_loss: float
    nitp_final_loss: float
    ratio: float
    net_ratio: float
    via: str
    bound: str = ""


@dataclass(frozen=True)
class Trend:
    """``log ratio = intercept + slope log params`` over the sizes with an exact ratio."""

    slope: float
    low: float
    high: float
    pvalue: float
    n: int
    confidence: float

    def text(self) -> str:
        if self.low > 0:
            direction = "the ratio grows with size"
        elif self.high < 0:
            direction = "the ratio shrinks with size"
        else:
            direction = "no trend with size resolved"
        return (
            f"Trend: slope of log ratio on log params {self.slope:+.3f} "
            f"[{self.confidence:.0%} CI {self.low:+.3f}, {self.high:+.3f}], p = {self.pvalue:.2g}, "
            f"n = {self.n} sizes: {direction}."
        )


@dataclass(frozen=True)
class SizeVerdict:
    size: str
    params: int
    overhead: float
    verdict: str


@dataclass
class MultiplierResult:
    """Everything the report shows, JSON-able (``to_dict`` / ``from_dict``)."""

    runs: list[LadderRun]
    k: Estimate
    alpha: Estimate
    E: Estimate
    A: Estimate
    confidence: float
    n_resamples: int
    interval_method: str
    resample_unit: str
    frontier: dict[str, dict[str, list]]  # objective -> compute, loss, size of its frontier points
    curves: dict[str, dict[str, list]]  # objective -> compute, fit, low, high (the bootstrap band)
    ratios: list[SizeRatio]
    trend: Trend | None
    verdicts: list[SizeVerdict]
    verdict: str
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        """Plain JSON types; a missing value (no interval, no trend) is None, never NaN."""
        d = dataclasses.asdict(self)
        d["runs"] = [{**dataclasses.asdict(r), "flops_per_token": r.flops_per_token} for r in self.runs]
        return json.loads(json.dumps(d), parse_constant=lambda _: None)  # NaN -> None

    @classmethod
    def from_dict(cls, d: dict) -> MultiplierResult:
        estimates = {n: Estimate(*(math.nan if v is None else v for v in d[n].values())) for n in ESTIMATES}
        return cls(
            **{
                **d,
                **estimates,
                "runs": [LadderRun.from_dict(r) for r in d["runs"]],
                "ratios": [SizeRatio(**r) for r in d["ratios"]],
                "trend": Trend(**d["trend"]) if d.get("trend") else None,
                "verdicts": [SizeVerdict(**v) for v in d["verdicts"]],
                "notes": list(d.get("notes") or []),
            }
        )


# ----------------------------------------------------------------------------- reading run directories
def read_ladder(run_dirs: Iterable[str | os.PathLike], skip_warmup: bool = True) -> list[LadderRun]:
    """The ladder's runs from ``nitp-train`` run directories, checked to share one validation set.

    Compute of each validation point = tokens x FLOPs per token from ``nitp_train.flops`` on the
    model config of the run's newest complete checkpoint (``config.json``), as the trainer counts
    them (``nitp_train.trainer._flops_per_token``). ``skip_warmup`` records the run's warm-up
    steps, whose points the frontier leaves out.
    """
    paths = [Path(p).expanduser() for p in run_dirs]
    if not paths:
        raise UserError("no run directories given (give the NTP and NITP runs of the ladder)")
    seen: dict[Path, Path] = {}
    for p in paths:
        if seen.setdefault(p.resolve(), p) is not p:
            raise UserError(f"{p}: given twice (as {seen[p.resolve()]}); give each run directory once")
    runs, data = zip(*(read_run(p, skip_warmup) for p in paths))
    for path, d in zip(paths, data):
        k = next((k for k in data[0] if data[0][k] != d[k]), None)
        if k is not None:
            raise UserError(
                f"{path}: validated on other data than {paths[0]} (data.{k} {d[k]!r} vs {data[0][k]!r}); "
                "give runs validated on one corpus, tokenizer and sequence length"
            )
    # d{hidden}-L{layers}, plus the parameter count where two architectures share it
    archs = Counter(size for size, _ in {(r.size, r.params) for r in runs})
    for r in runs:
        if archs[r.size] > 1:
            r.size = f"{r.size}-{r.params / 1e6:.3g}M"
    by_key: dict[tuple, LadderRun] = {}
    for r in runs:
        first = by_key.setdefault((r.objective, r.size, r.seed), r)
        if first is not r:
            raise UserError(
                f"{r.path or r.run}: same objective, size and seed as {first.path or first.run} "
                f"({OBJECTIVE_NAMES[r.objective]}, {r.size}, seed {r.seed}); give one run per objective, size and seed"
            )
    return list(runs)


def read_run(run_dir: Path, skip_warmup: bool = True) -> tuple[LadderRun, dict]:
    """One run directory: ``(LadderRun, the data fields that fix what its CE measures)``."""
    import yaml

    from nitp.io import read_jsonl
    from nitp.runs import list_checkpoints, read_run_config
    from nitp_train.flops import nitp_flops_per_token, parameter_count, training_flops_per_token

    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: no such directory; give nitp-train run directories")
    if not (run_dir / "config.yaml").is_file():
        raise UserError(f"{run_dir}: not a run directory (no config.yaml); give nitp-train run directories")
    if not (run_dir / "metrics.jsonl").is_file():
        raise UserError(f"{run_dir}: no metrics.jsonl (not trained yet); train it or leave it out")
    try:
        cfg = read_run_config(run_dir)
    except yaml.YAMLError as e:
        raise UserError(f"{run_dir}/config.yaml: not valid YAML ({type(e).__name__})") from None
    if not isinstance(cfg, dict):
        raise UserError(f"{run_dir}/config.yaml: not a nitp-train config (a mapping is expected)")
    objective = cfg.get("objective")
    if objective not in OBJECTIVE_NAMES:
        raise UserError(
            f"{run_dir}: objective {objective!r} in config.yaml; the multiplier compares ntp and nitp runs"
        )
    if float((cfg.get("cos_reg") or {}).get("weight") or 0.0) > 0:
        raise UserError(
            f"{run_dir}: an NTP + cosine-regulariser run (cos_reg.weight > 0), a third method; "
            "give plain NTP and NITP runs"
        )
    ckpts = list_checkpoints(run_dir)
    if not ckpts:
        raise UserError(
            f"{run_dir}: no complete checkpoint, so its model config (and FLOPs) is unknown; "
            "train it to its first checkpoint or leave it out"
        )
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(ckpts[-1])
    except Exception as e:  # noqa: BLE001 - any unreadable config is the user's file
        raise UserError(
            f"{ckpts[-1]}/config.json: not a readable Hugging Face config ({type(e).__name__})"
        ) from None
    data = cfg.get("data") or {}
    try:
        backbone = float(training_flops_per_token(config, int(data.get("seq_len") or 0)))
    except UserError as e:
        raise UserError(f"{run_dir}: {e}") from None
    extra = float(nitp_flops_per_token(int(config.hidden_size)))
    key = config.to_json_string()
    if key not in _PARAMS:  # counted once per distinct config (a ladder repeats sizes)
        _PARAMS[key] = parameter_count(config)
    rows = read_jsonl(run_dir / "metrics.jsonl")
    run = LadderRun(
        run=run_dir.name,
        objective=objective,
        seed=int(cfg.get("seed") or 0),
        size=f"d{config.hidden_size}-L{config.num_hidden_layers}",
        params=_PARAMS[key],
        backbone_flops_per_token=backbone,
        nitp_flops_per_token=extra,
        points=[],
        warmup_steps=int((cfg.get("train") or {}).get("warmup_steps") or 0) if skip_warmup else 0,
        path=str(run_dir),
    )
    # one point per validated step (the last line of a step wins: a resumed run rewrites it)
    by_step, fpt = {}, run.flops_per_token
    for r in rows:
        loss, tokens, step = r.get("val_loss"), r.get("tokens"), r.get("step")
        numbers = isinstance(loss, (int, float)) and isinstance(tokens, int) and isinstance(step, int)
        if numbers and math.isfinite(loss) and tokens > 0:
            by_step[int(step)] = Point(int(step), tokens, tokens * fpt, tokens * backbone, float(loss))
    run.points = [by_step[s] for s in sorted(by_step)]
    if not run.points:
        raise UserError(
            f"{run_dir}: no val_loss in metrics.jsonl (log.eval_every is 0, or no validation yet); "
            "train with log.eval_every > 0"
        )
    # the trainer logs flops_per_token on GPU: it must be the count used here
    for r in rows:
        value = r.get("flops_per_token")
        if isinstance(value, (int, float)) and not math.isclose(value, run.flops_per_token, rel_tol=1e-6):
            raise UserError(
                f"{run_dir}: metrics.jsonl logs flops_per_token {float(value):.6g} but nitp_train.flops gives "
                f"{run.flops_per_token:.6g} for its checkpoint's config; was the run trained by another version?"
            )
    return run, {k: data.get(k) for k in DATA_KEYS}


# ----------------------------------------------------------------------------- the law and its fit
def law(compute: np.ndarray, E: float, A: float, alpha: float, k: float = 1.0) -> np.ndarray:
    """``E + A (k C)^(-alpha)``, evaluated in logs (C spans many decades)."""
    return E + np.exp(np.log(A) - alpha * (np.log(k) + np.log(compute)))


def _predict_log(theta: np.ndarray, x: np.ndarray, g: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """``(E, A' (k^g C / C0)^(-alpha), their sum)`` at centred log compute ``x``."""
    log_e, log_a, alpha, log_k = theta
    u = np.exp(log_a - alpha * (x + g * log_k))
    e = math.exp(log_e)
    return e, u, e + u


def _residuals(theta, x, g, log_loss):
    return log_loss - np.log(_predict_log(theta, x, g)[2])


def _jacobian(theta, x, g, log_loss):
    _, _, alpha, log_k = theta
    e, u, m = _predict_log(theta, x, g)
    return -np.column_stack([np.full_like(x, e) / m, u / m, -u * (x + g * log_k) / m, -alpha * g * u / m])


def fit_law(
    compute: np.ndarray, loss: np.ndarray, is_method: np.ndarray, start: LawFit | None = None
) -> LawFit:
    """Least squares on log loss of ``L = E + A (k^g C)^(-alpha)`` (g = 1 on the method's points).

    ``scipy.optimize.least_squares`` (trust-region reflective, bounds E <= min loss, alpha in
    (0, 5], k in [1e-3, 1e3]) from several starts (alpha 0.05 / 0.2 / 0.5, E half or 90 % of the
    smallest loss), or from ``start`` alone (the bootstrap's warm start); the lowest cost wins.
    Compute is centred on its geometric mean inside the fit, so A and alpha are not confounded.
    """
    from scipy.optimize import least_squares

    compute, loss = np.asarray(compute, dtype=float), np.asarray(loss, dtype=float)
    g = np.asarray(is_method, dtype=float)
    if len(loss) < 4 or not g.any() or g.all():
        raise UserError(
            "the fit needs frontier points of both objectives, at least 4 in all; "
            "validate more often (log.eval_every) or give more runs"
        )
    log_c = np.log(compute)
    x0 = float(log_c.mean())
    x, log_loss = log_c - x0, np.log(loss)
    top = math.log(float(loss.min()))
    lower = [top - 12.0, -40.0, ALPHA_BOUNDS[0], math.log(K_BOUNDS[0])]
    upper = [top, 40.0, ALPHA_BOUNDS[1], math.log(K_BOUNDS[1])]
    if start is not None:
        starts = [[math.log(start.E), math.log(start.A) - start.alpha * x0, start.alpha, math.log(start.k)]]
    else:
        es = [f * float(loss.min()) for f in (0.5, 0.9)]
        starts = [
            [math.log(e), math.log(max(loss.mean() - e, 1e-9)), a, 0.0] for a in (0.05, 0.2, 0.5) for e in es
        ]
    inside = np.add(lower, 1e-9), np.subtract(upper, 1e-9)
    opts = dict(jac=_jacobian, bounds=(lower, upper), args=(x, g, log_loss), x_scale="jac")
    best = min((least_squares(_residuals, np.clip(t, *inside), **opts) for t in starts), key=lambda r: r.cost)
    log_e, log_a, alpha, log_k = best.x
    return LawFit(
        math.exp(log_e), math.exp(log_a + alpha * x0), float(alpha), math.exp(log_k), float(best.cost)
    )


# ----------------------------------------------------------------------------- frontier
def pareto_frontier(compute: np.ndarray, loss: np.ndarray) -> np.ndarray:
    """Mask of the Pareto points: no other point has less-or-equal compute and a lower-or-equal loss.

    Sorted by compute, a point is kept when its loss is below every loss at smaller compute: the
    monotone lower envelope of loss vs compute ("for each compute, the best loss any size reached",
    at the compute values where a run was validated).
    """
    compute, loss = np.asarray(compute, dtype=float), np.asarray(loss, dtype=float)
    order = np.lexsort((loss, compute))
    sorted_loss = loss[order]
    before = np.concatenate([[np.inf], np.minimum.accumulate(sorted_loss)[:-1]])
    mask = np.zeros(len(loss), dtype=bool)
    mask[order] = sorted_loss < before
    return mask


def mean_curve(runs: Sequence[LadderRun], skip_warmup: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """``(backbone compute, mean loss)`` per validated step over ``runs`` (repeats count twice).

    The runs are seeds of one objective and size: same steps, same compute per step.
    """
    pts = [
        (p.step, p.backbone_compute, p.loss)
        for r in runs
        for p in r.points
        if not (skip_warmup and p.step <= r.warmup_steps)
    ]
    steps, comp, loss = np.asarray(pts, dtype=float).reshape(-1, 3).T
    _, inverse, count = np.unique(steps, return_inverse=True, return_counts=True)
    return np.bincount(inverse, weights=comp) / count, np.bincount(inverse, weights=loss) / count


def frontier(runs: Sequence[LadderRun]) -> dict[str, dict[str, list]]:
    """Each objective's frontier points: seeds averaged per size and step (warm-up left out), then
    the Pareto points over all sizes. ``{objective: {"compute", "loss", "size"}}``."""
    out = {}
    for obj in OBJECTIVE_NAMES:
        curves = {
            s: mean_curve(g, skip_warmup=True)
            for s, g in _by_size(r for r in runs if r.objective == obj).items()
        }
        comp = np.concatenate([[], *(c for c, _ in curves.values())])
        loss = np.concatenate([[], *(l_ for _, l_ in curves.values())])
        size = np.array([s for s, (c, _) in curves.items() for _ in c], dtype=object)
        keep = np.flatnonzero(pareto_frontier(comp, loss))
        keep = keep[np.argsort(comp[keep])]
        out[obj] = {"compute": comp[keep].tolist(), "loss": loss[keep].tolist(), "size": size[keep].tolist()}
    return out


def _by_size(runs: Iterable[LadderRun]) -> dict[str, list[LadderRun]]:
    out: dict[str, list[LadderRun]] = {}
    for r in runs:
        out.setdefault(r.size, []).append(r)
    return out


def _sizes(runs: Iterable[LadderRun]) -> list[tuple[str, list[LadderRun]]]:
    """``(size, its runs)`` from the smallest size up."""
    return sorted(_by_size(runs).items(), key=lambda kv: kv[1][0].params)


def fit_frontier(runs: Sequence[LadderRun], start: LawFit | None = None) -> tuple[LawFit, dict]:
    """The shared-law fit on the frontier of ``runs``: ``(LawFit, frontier)``."""
    front = frontier(runs)
    comp = np.concatenate([front[o]["compute"] for o in OBJECTIVE_NAMES])
    loss = np.concatenate([front[o]["loss"] for o in OBJECTIVE_NAMES])
    g = np.concatenate([np.full(len(front[o]["loss"]), o == METHOD) for o in OBJECTIVE_NAMES])
    return fit_law(comp, loss, g, start), front


# ----------------------------------------------------------------------------- bootstrap
def _strata(runs: Sequence[LadderRun]) -> tuple[list[np.ndarray], str]:
    """Index arrays of the resampling strata and their description.

    Seeds within each (objective, size) when every one has two or more runs (the ladder's sizes
    stay in every resample); otherwise runs within each objective.
    """
    cells: dict[tuple, list[int]] = {}
    for i, r in enumerate(runs):
        cells.setdefault((r.objective, r.size), []).append(i)
    if all(len(v) >= 2 for v in cells.values()):
        return [np.asarray(v) for v in cells.values()], SEEDS_UNIT
    by_obj = [np.asarray([i for i, r in enumerate(runs) if r.objective == o]) for o in OBJECTIVE_NAMES]
    return by_obj, "runs within each objective"


def bootstrap_fits(
    runs: Sequence[LadderRun], point: LawFit, n_resamples: int, confidence: float, method: str, seed: int
) -> tuple[Any | None, str, list[str]]:
    """``scipy.stats.bootstrap`` of (k, alpha, E, A) over runs; ``(result or None, unit, notes)``.

    Seeds within a cell are drawn n - 1 of n (the first n - 1 draws of scipy's resample, which are
    themselves a resample with replacement): the bootstrap variance of a cell's seed mean is then
    s^2 / n, where drawing n gives (n - 1) / n of it, half with 2 seeds (an interval too narrow).
    """
    from scipy import stats

    strata, unit = _strata(runs)
    if any(len(s) < 2 for s in strata):
        return None, unit, ["one run of an objective only: no bootstrap interval (train more seeds or sizes)"]
    drop = 1 if unit == SEEDS_UNIT else 0

    def statistic(*samples):
        chosen = [runs[int(i)] for s in samples for i in s[: len(s) - drop]]
        try:
            f, _ = fit_frontier(chosen, start=point)
        except UserError:  # a resample without enough frontier points of an objective
            return np.full(4, np.nan)
        return np.array([f.k, f.alpha, f.E, f.A])

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # degenerate resamples; reported as NaN below
        res = stats.bootstrap(
            tuple(strata),
            statistic,
            n_resamples=n_resamples,
            confidence_level=confidence,
            method=method,
            vectorized=False,
            paired=False,
            rng=np.random.default_rng(seed),
        )
    failed = int(np.isnan(res.bootstrap_distribution[0]).sum())
    note = f"{failed} of {n_resamples} bootstrap resamples could not be fitted; the interval is not given"
    return res, unit, [note] if failed else []


def _bands(result, fit: LawFit, runs: Sequence[LadderRun], confidence: float) -> dict:
    """Fitted curve and its pointwise bootstrap band per objective, over the compute of its points."""
    curves = {}
    for obj in OBJECTIVE_NAMES:
        comp = [p.backbone_compute for r in runs if r.objective == obj for p in r.points]
        grid = np.geomspace(min(comp), max(comp), CURVE_POINTS)
        k = fit.k if obj == METHOD else 1.0
        curve = {"compute": grid.tolist(), "fit": fit.loss(grid, k).tolist(), "low": [], "high": []}
        if result is not None:
            ks, alphas, es, as_ = result.bootstrap_distribution
            ok = np.isfinite(ks)
            if ok.any():
                kk = ks[ok, None] if obj == METHOD else 1.0
                pred = law(grid, es[ok, None], as_[ok, None], alphas[ok, None], kk)
                tail = 100 * (1 - confidence) / 2
                curve["low"] = np.percentile(pred, tail, axis=0).tolist()
                curve["high"] = np.percentile(pred, 100 - tail, axis=0).tolist()
        curves[obj] = curve
    return curves


# ----------------------------------------------------------------------------- ratios, trend, verdict
def crossing_compute(compute: np.ndarray, loss: np.ndarray, target: float) -> tuple[float, str]:
    """Compute at which a loss-vs-compute curve first reaches ``target`` (log C interpolated).

    The curve is reduced to its monotone lower envelope first (noise never makes it cross twice).
    Returns ``(compute, "")``, or ``(last compute, "lower")`` when it never gets down to ``target``
    (it would need more), or ``(first compute, "upper")`` when its first point is already below.
    """
    keep = np.flatnonzero(pareto_frontier(compute, loss))
    keep = keep[np.argsort(compute[keep])]
    c, l_ = compute[keep], loss[keep]
    if target < l_[-1]:
        return float(c[-1]), "lower"
    if target > l_[0]:
        return float(c[0]), "upper"
    # loss decreases along the envelope: interpolate log C as a function of -loss
    return float(np.exp(np.interp(-target, -l_, np.log(c)))), ""


def size_ratios(runs: Sequence[LadderRun]) -> list[SizeRatio]:
    """The non-parametric multiplier at each size that has both objectives (seeds averaged per step)."""
    out = []
    for size, group in _sizes(runs):
        ntp = [r for r in group if r.objective == BASELINE]
        nitp = [r for r in group if r.objective == METHOD]
        if not (ntp and nitp):
            continue
        c_ntp, l_ntp = mean_curve(ntp)
        c_nitp, l_nitp = mean_curve(nitp)
        crossing, bound = crossing_compute(c_ntp, l_ntp, l_nitp[-1])
        ratio, via = crossing / c_nitp[-1], "NTP curve"
        if bound == "lower":  # NTP never got down to NITP's final CE: ask NITP's curve instead
            reverse, rbound = crossing_compute(c_nitp, l_nitp, l_ntp[-1])
            ratio, via = c_ntp[-1] / reverse, "NITP curve"
            bound = {"": "", "upper": "lower", "lower": "upper"}[rbound]
        o, l0, l1 = group[0].overhead, float(l_ntp[-1]), float(l_nitp[-1])
        out.append(
            SizeRatio(size, group[0].params, o, l0, l1, float(ratio), float(ratio / (1 + o)), via, bound)
        )
    return out


def ratio_trend(ratios: Sequence[SizeRatio], confidence: float = 0.95) -> Trend | None:
    """``scipy.stats.linregress`` of log ratio on log params (exact ratios only; None below 3 sizes)."""
    from scipy import stats

    exact = [r for r in ratios if not r.bound]
    if len(exact) < 3:
        return None
    fit = stats.linregress(np.log([r.params for r in exact]), np.log([r.ratio for r in exact]))
    slope, half = float(fit.slope), float(stats.t.ppf(0.5 + confidence / 2, len(exact) - 2) * fit.stderr)
    return Trend(slope, slope - half, slope + half, float(fit.pvalue), len(exact), confidence)


def pays_for_itself(low: float, high: float, overhead: float) -> str:
    """ "yes" when the interval of k lies above 1 + overhead, "no" when below, else undetermined."""
    threshold = 1.0 + overhead
    if math.isfinite(low) and math.isfinite(high) and (low > threshold or high < threshold):
        return YES if low > threshold else NO
    return UNDETERMINED


def _headline(k: Estimate, verdicts: list[SizeVerdict], confidence: float) -> str:
    top = max(verdicts, key=lambda v: v.params)
    threshold = 1 + top.overhead
    finite = math.isfinite(k.low) and math.isfinite(k.high)
    interval = f"[{k.low:.3g}, {k.high:.3g}] ({confidence:.0%})" if finite else "(no interval)"
    where = {YES: "lies above", NO: "lies below", UNDETERMINED: "contains"}[top.verdict]
    if top.verdict == UNDETERMINED and not finite:
        where = "cannot be compared with"
    return (
        f"pays for itself at {top.size} (overhead {top.overhead:.1%}): {top.verdict}; "
        f"k_NITP = {k.value:.3g} {interval} {where} 1 + overhead = {threshold:.3f}"
    )


# ----------------------------------------------------------------------------- the whole analysis
def fit_multiplier(
    runs: Sequence[LadderRun],
    n_resamples: int = 2000,
    confidence: float = 0.95,
    method: str = "percentile",
    seed: int = 0,
) -> MultiplierResult:
    """Fit, bootstrap, per-size ratios, trend and verdicts of a ladder (see the module docstring).

    Parameters
    ----------
    runs : the ladder (``read_ladder`` or built by hand), NTP and NITP runs of one or more sizes
    n_resamples : bootstrap resamples (each refits the law)
    confidence : level of every interval
    method : ``scipy.stats.bootstrap`` method, "percentile" or "basic" (not BCa: its jackknife
        would leave a cell of 2 seeds with one, then none)
    seed : the bootstrap's random generator seed (the result is reproducible)
    """
    runs = list(runs)
    for obj in OBJECTIVE_NAMES:
        if not any(r.objective == obj for r in runs):
            raise UserError(
                f"no {OBJECTIVE_NAMES[obj]} run in the ladder; the multiplier needs NTP and NITP runs"
            )
    if method not in METHODS:
        raise UserError(f"bootstrap method {method!r}: use {' or '.join(METHODS)}")
    for obj, points in frontier(runs).items():
        if not points["loss"]:
            raise UserError(
                f"the {OBJECTIVE_NAMES[obj]} runs have no validation point after warm-up; "
                "validate more often (log.eval_every) or train longer"
            )
    fit, front = fit_frontier(runs)
    if n_resamples > 0:
        boot, unit, notes = bootstrap_fits(runs, fit, n_resamples, confidence, method, seed)
    else:
        boot, unit, notes = None, "none", ["no bootstrap asked for (0 resamples): no interval"]
    values = (fit.k, fit.alpha, fit.E, fit.A)
    if boot is not None and not notes:
        ci = boot.confidence_interval
        k, alpha, E, A = (Estimate(v, float(lo), float(hi)) for v, lo, hi in zip(values, ci.low, ci.high))
    else:
        k, alpha, E, A = (Estimate(v) for v in values)
    for obj in OBJECTIVE_NAMES:
        sizes = sorted(set(front[obj]["size"]))
        if len(sizes) < 2:
            notes.append(
                f"the {OBJECTIVE_NAMES[obj]} frontier holds one size only ({', '.join(sizes)}): "
                "E, A and alpha then describe one training curve, not a size ladder"
            )
    n_points = sum(len(front[o]["loss"]) for o in OBJECTIVE_NAMES)
    if n_points < 8:
        notes.append(f"{n_points} frontier points for 4 parameters: the fit is barely determined")
    cells = Counter((r.objective, r.size) for r in runs)
    if min(cells.values()) == 2:
        notes.append(
            "2 seeds in some (objective, size): the interval is somewhat optimistic "
            "(simulated coverage of a nominal 95% interval ~85%, docs/multiplier.md); 3 seeds fix that"
        )
    for name, value, (lo, hi) in (("k", fit.k, K_BOUNDS), ("alpha", fit.alpha, ALPHA_BOUNDS)):
        if math.isclose(value, lo, rel_tol=1e-3) or math.isclose(value, hi, rel_tol=1e-3):
            notes.append(
                f"the fitted {name} sits at its bound {value:.3g}: the frontier does not determine it"
            )
    if any(r.warmup_steps for r in runs):
        notes.append("validation points within each run's warm-up are left out of the frontier")
    ratios = size_ratios(runs)
    verdicts = [
        SizeVerdict(s, g[0].params, g[0].overhead, pays_for_itself(k.low, k.high, g[0].overhead))
        for s, g in _sizes(runs)
    ]
    return MultiplierResult(
        runs=runs,
        k=k,
        alpha=alpha,
        E=E,
        A=A,
        confidence=confidence,
        n_resamples=n_resamples if boot is not None else 0,
        interval_method=method if boot is not None else "none",
        resample_unit=unit,
        frontier=front,
        curves=_bands(boot if boot is not None and not notes else None, fit, runs, confidence),
        ratios=ratios,
        trend=ratio_trend(ratios, confidence),
        verdicts=verdicts,
        verdict=_headline(k, verdicts, confidence),
        notes=notes,
    )


# ----------------------------------------------------------------------------- figure
def draw_multiplier(result: MultiplierResult):
    """Loss vs NTP-equivalent FLOPs (log x): every point (hollow), the frontier (filled), the fit
    of each objective and its bootstrap band. Returns a matplotlib ``Figure``."""
    import matplotlib
    from matplotlib.figure import Figure

    from .figures import OBJECTIVE_COLOURS, STYLE

    with matplotlib.rc_context(STYLE):
        fig = Figure(figsize=(5.2, 3.6), layout="constrained")
        ax = fig.add_subplot()
        for obj, name in OBJECTIVE_NAMES.items():
            colour = OBJECTIVE_COLOURS[obj]
            pts = [(p.backbone_compute, p.loss) for r in result.runs if r.objective == obj for p in r.points]
            hollow = dict(facecolors="none", edgecolors=colour, linewidths=0.6, alpha=0.6)
            ax.scatter(*zip(*pts), s=10, **hollow, label=f"{name} validations")
            front = result.frontier[obj]
            ax.scatter(front["compute"], front["loss"], s=14, color=colour, label=f"{name} frontier")
            curve = result.curves[obj]
            label = "NTP fit" if obj == BASELINE else f"NITP fit, k = {result.k.text()}"
            ax.plot(curve["compute"], curve["fit"], color=colour, linewidth=1.3, label=label)
            if curve["low"]:
                ax.fill_between(
                    curve["compute"], curve["low"], curve["high"], color=colour, alpha=0.18, linewidth=0
                )
        ax.set_xscale("log")
        ax.set_xlabel("training FLOPs, NTP-equivalent (tokens × backbone FLOPs/token)")
        ax.set_ylabel("validation CE (nats/token)")
        band = (
            f"bands: {result.confidence:.0%} bootstrap"
            if result.curves[METHOD]["low"]
            else "no bootstrap band"
        )
        ax.set_title(
            rf"Fit $L = E + A\,(kC)^{{-\alpha}}$: $\alpha$ = {result.alpha.value:.3g}, "
            f"E = {result.E.value:.3g}; {band}"
        )
        h, lab = ax.get_legend_handles_labels()
        order = [0, 3, 1, 4, 2, 5]  # columns: validations, frontier, fit; rows: NTP, NITP
        fig.legend(
            [h[i] for i in order], [lab[i] for i in order], loc="outside lower center", ncol=3, fontsize=7
        )
    return fig


def plot_multiplier(result: MultiplierResult, stem: Path) -> list[Path]:
    """``stem.png`` and ``stem.pdf`` of :func:`draw_multiplier`, written atomically."""
    from .figures import save_figure

    return save_figure(draw_multiplier(result), Path(stem))


# ----------------------------------------------------------------------------- tables
def ladder_table(result: MultiplierResult):
    """One row per run: size, params, objective, seed, tokens, tokens/param, FLOPs spent, final CE."""
    t = Table(
        "multiplier_ladder",
        "Ladder: final validation CE per objective and seed",
        ["size", "params", "objective", "seed", "tokens", "tokens/param", "FLOPs", "final CE"],
        higher_is_better=[None] * 8,
        decimals=[0, 0, 0, 0, 0, ".3g", ".3g", 4],
        label_header="run",
    )
    for r in sorted(result.runs, key=lambda r: (r.params, r.objective, r.seed)):
        f, name = r.final, OBJECTIVE_NAMES[r.objective]
        t.add(r.run, [r.size, r.params, name, str(r.seed), f.tokens, f.tokens / r.params, f.compute, f.loss])
    t.notes.append(
        "FLOPs = tokens × training FLOPs per token of nitp_train.flops (NITP's extra included for NITP runs)."
    )
    return t


def fit_table(result: MultiplierResult):
    c = f"{result.confidence:.0%}"
    t = Table(
        "multiplier_fit",
        f"Fit L(C) = E + A (k C)^(-alpha), k_NTP = 1 ({c} bootstrap intervals)",
        ["value", "low", "high"],
        higher_is_better=[None] * 3,
        decimals=".4g",
        label_header="parameter",
    )
    for name, est in (("k_NITP", result.k), ("alpha", result.alpha), ("E", result.E), ("A", result.A)):
        t.add(name, [est.value, est.low, est.high])
    n = {o: len(result.frontier[o]["loss"]) for o in OBJECTIVE_NAMES}
    boot = f"{result.interval_method} bootstrap, {result.n_resamples} resamples of {result.resample_unit}."
    t.notes.append(
        f"C = NTP-equivalent training FLOPs; frontier points: {n[BASELINE]} NTP, {n[METHOD]} NITP; "
        f"{boot if result.n_resamples else 'no bootstrap.'}"
    )
    return t


def ratio_table(result: MultiplierResult):
    t = Table(
        "multiplier_ratios",
        "Per size: NTP compute reaching NITP's CE / NITP's compute",
        ["params", "NTP final CE", "NITP final CE", "ratio", "via", "1 + overhead", "ratio / (1 + overhead)"],
        higher_is_better=[None] * 7,
        decimals=[0, 4, 4, 3, 0, 3, 3],
        label_header="size",
    )
    for r in result.ratios:
        mark = {"lower": "> ", "upper": "< "}.get(r.bound, "")
        ratio = f"{mark}{r.ratio:.3f}" if mark else r.ratio
        net = f"{mark}{r.net_ratio:.3f}" if mark else r.net_ratio
        t.add(r.size, [r.params, r.ntp_final_loss, r.nitp_final_loss, ratio, r.via, 1 + r.overhead, net])
    t.notes.append(
        "Seeds averaged per step; log compute interpolated on the curve's monotone envelope. "
        "'>' / '<': the curves never cross, a bound only."
    )
    t.notes.append(
        result.trend.text() if result.trend else "trend with size: needs 3 or more sizes with an exact ratio."
    )
    return t


def verdict_table(result: MultiplierResult):
    t = Table(
        "multiplier_verdict",
        "Does NITP pay for its extra FLOPs? (k's interval vs 1 + overhead)",
        ["params", "overhead", "1 + overhead", "k_NITP", "pays for itself"],
        higher_is_better=[None] * 5,
        decimals=[0, 4, 3, 0, 0],
        label_header="size",
    )
    for v in result.verdicts:
        t.add(v.size, [v.params, v.overhead, 1 + v.overhead, result.k.text(), v.verdict])
    return t


def render_markdown(result: MultiplierResult) -> str:
    """The report: headline verdict, then the ladder, fit, per-size and verdict tables, then notes."""
    per_obj = {o: sorted({r.seed for r in result.runs if r.objective == o}) for o in OBJECTIVE_NAMES}
    sizes = sorted({(r.params, r.size) for r in result.runs})
    text = f"""# Compute multiplier of NITP over NTP

**{result.verdict[0].upper()}{result.verdict[1:]}.**

Ladder: {_count(len(sizes), "size")} ({", ".join(s for _, s in sizes)}), \
{_count(len(per_obj[BASELINE]), "NTP seed")}, {_count(len(per_obj[METHOD]), "NITP seed")}, \
{_count(len(result.runs), "run")}. k > 1 means NITP reaches a loss with 1/k of NTP's compute; it pays \
for its extra FLOPs where k exceeds 1 + overhead. See docs/multiplier.md for the method.

![loss vs compute](multiplier.png)
"""
    for table in (ladder_table(result), fit_table(result), ratio_table(result), verdict_table(result)):
        text += f"\n{table.to_markdown()}\n"
    notes = "".join(f"\n- {n}" for n in result.notes)
    return text + (f"\n**Notes**\n{notes}\n" if notes else "")


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


# ----------------------------------------------------------------------------- the command
def multiplier_report(
    run_dirs: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    *,
    n_resamples: int = 2000,
    confidence: float = 0.95,
    method: str = "percentile",
    seed: int = 0,
    log: Callable[[str], None] | None = None,
) -> Path:
    """Write ``OUT/multiplier.{md,json,png,pdf}`` and ``OUT/multiplier_ladder.csv`` for a ladder.

    Inputs are read and checked before anything is written; each file is written atomically and
    ``multiplier.md`` last. Returns the path of ``multiplier.md``.
    """
    from nitp.io import atomic_write_json, atomic_write_text
    from nitp.records import check_output

    from .figures import save_figure

    if not 0 < confidence < 1:
        raise UserError(f"--confidence {confidence}: give a level between 0 and 1 (e.g. 0.95)")
    if n_resamples < 0:
        raise UserError(f"--resamples {n_resamples}: give 0 (no interval) or more (e.g. 2000)")
    if method not in METHODS:
        raise UserError(f"--method {method}: use {' or '.join(METHODS)}")
    check_output(out, "--out", folder=True)
    result = fit_multiplier(
        read_ladder(run_dirs), n_resamples=n_resamples, confidence=confidence, method=method, seed=seed
    )
    # everything rendered before the first write: a failure leaves the folder as it was
    markdown, table, fig = render_markdown(result), ladder_table(result).to_csv(), draw_multiplier(result)
    out = Path(out).expanduser()
    save_figure(fig, out / "multiplier")
    atomic_write_json(out / "multiplier.json", result.to_dict())
    atomic_write_text(out / "multiplier_ladder.csv", table)
    for note in result.notes if log else []:
        log(note)
    return atomic_write_text(out / "multiplier.md", markdown)
