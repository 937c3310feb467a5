"""The regime report (docs/regime.md): does NTP's rank collapse, and what NITP does to it and why.

``regime_report(run_dirs, out)`` reads training runs (``config.yaml``, ``metrics.jsonl``, the last
checkpoint's ``model.safetensors``) and writes ``OUT/report.md``, ``OUT/regime.json`` and
``OUT/figures/*.png``:

* **the regime reached**: parameters, tokens per parameter, steps, warm-up, per run;
* **the premise**: the held-out effective rank's peak after warm-up (step, value), its final value
  and drop, the mean cosine at both, per run. "Collapse" = final rank below 90% of the peak while
  the mean cosine rose from the peak on (the paper's Figure 1 shape);
* **curves** per group (NTP, NITP at each lambda): mean over seeds with a min-max band, of
  erank, mean_cos, validation CE and L_NITP, and the gradient probe (ratio and cosine per block);
* **matched step and matched CE** (:mod:`reports.matched`): each NITP group minus NTP, paired by
  seed, mean with a t interval over seeds (n stated), and the share of the matched-step difference
  that disappears at equal validation CE ("less trained").

Example
-------
>>> regime_report(sorted(Path("runs/regime").glob("n*-s*")), "runs/regime/regime")   # doctest: +SKIP
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from nitp.errors import UserError
from nitp.io import atomic_write_json, atomic_write_text

from .matched import Curves, mean_ci, paired_over_seeds, read_curves, read_rows

COLLAPSE_DROP = 0.10  # final rank at least 10% below the post-warm-up peak
PROBE_BLOCKS = 4


@dataclass
class Run:
    """One training run as the regime report reads it."""

    path: Path
    objective: str
    lam: float | None
    seed: int
    params: int
    steps: int
    warmup: int
    tokens: int
    hidden: int
    layers: int
    geom_batch: str | None = None  # id of the held-out batch its geometry was measured on
    rows: dict = field(repr=False, default_factory=dict)  # step -> merged metrics row
    curves: Curves | None = field(repr=False, default=None)

    @property
    def group(self) -> str:
        return "NTP" if self.objective == "ntp" else f"NITP λ={self.lam:g}"

    def series(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        pts = [(s, r[key]) for s, r in sorted(self.rows.items()) if isinstance(r.get(key), (int, float))]
        return tuple(np.asarray(pts, dtype=float).reshape(-1, 2).T)


def load_run(path: str | Path) -> Run:
    """A :class:`Run` from a run directory (its latest checkpoint counts the parameters)."""
    import yaml
    from safetensors import safe_open

    from nitp.runs import resolve_checkpoint

    path = Path(path)
    cfg = yaml.safe_load((path / "config.yaml").read_text())
    ckpt = resolve_checkpoint(path)
    with safe_open(ckpt / "model.safetensors", "pt") as f:
        params = sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())
    rows = read_rows(path)
    last = rows[max(rows)] if rows else {}
    model = json.loads((ckpt / "config.json").read_text())
    return Run(
        path=path,
        objective=cfg["objective"],
        lam=cfg["nitp"]["lambda"] if cfg["objective"] == "nitp" else None,
        seed=int(cfg["seed"]),
        params=int(params),
        steps=int(cfg["train"]["steps"]),
        warmup=int(cfg["train"]["warmup_steps"]),
        tokens=int(last.get("tokens", 0)),
        hidden=int(model["hidden_size"]),
        layers=int(model["num_hidden_layers"]),
        geom_batch=next(
            (r["geom_batch"] for _, r in sorted(rows.items(), reverse=True) if "geom_batch" in r), None
        ),
        rows=rows,
        curves=read_curves(path),
    )


# ----------------------------------------------------------------------------- the premise
def premise(run: Run) -> dict:
    """Peak of the held-out erank after warm-up, final value, drop, mean cosine at both."""
    s, r = run.series("erank")
    _, c = run.series("mean_cos")
    after = s >= run.warmup
    if not after.any():
        return {}
    i = int(np.flatnonzero(after)[np.argmax(r[after])])
    peak, final = float(r[i]), float(r[-1])
    drop = 1.0 - final / peak if peak > 0 else 0.0
    cos_peak, cos_final = float(c[i]), float(c[-1])
    return {
        "peak_step": int(s[i]),
        "peak_rank": peak,
        "final_rank": final,
        "drop": drop,
        "cos_at_peak": cos_peak,
        "final_cos": cos_final,
        "cos_min_after_warmup": float(c[after].min()),
        "collapse": bool(drop >= COLLAPSE_DROP and cos_final > cos_peak),
        "final_ce": float(run.curves.final_ce) if run.curves and run.curves.ce else math.nan,
    }


def _markdown_table(header: str, lines: list[str]) -> str:
    """``header``: the cells of the first row joined by " | "."""
    return f"| {header} |\n|{'---|' * (header.count(' | ') + 1)}\n" + "\n".join(lines) + "\n"


def premise_table(runs: list[Run]) -> str:
    lines = []
    for run in runs:
        p = premise(run)
        if not p:
            continue
        lines.append(
            f"| {run.path.name} | {run.hidden} x {run.layers} | {run.params:,} | {run.tokens / run.params:.1f} "
            f"| {run.steps:,} ({run.warmup}) | {p['peak_step']:,}, {p['peak_rank']:.2f} | {p['final_rank']:.2f} "
            f"| {100 * p['drop']:.1f}% | {p['cos_at_peak']:.3f} -> {p['final_cos']:.3f} | {p['final_ce']:.4f} "
            f"| {'yes' if p['collapse'] else 'no'} |"
        )
    return _markdown_table(
        "run | d x L | params | tokens/param | steps (warm-up) | rank peak: step, value | final rank | drop "
        "| mean cos at peak -> final | val CE | collapse",
        lines,
    )


# ----------------------------------------------------------------------------- matched comparisons
def _groups(runs: list[Run]) -> dict[str, list[Run]]:
    out: dict[str, list[Run]] = {}
    for run in sorted(runs, key=lambda r: (r.objective != "ntp", -(r.lam or 0), r.seed)):
        out.setdefault(run.group, []).append(run)
    return out


def matched_rows(runs: list[Run], keys=("erank", "mean_cos"), after: int | None = None) -> list[dict]:
    """Each NITP group minus NTP, paired by seed, at matched step and matched CE."""
    groups = _groups(runs)
    base = {r.seed: r for r in groups.get("NTP", [])}
    out = []
    for name, members in groups.items():
        if name == "NTP":
            continue
        # pairs measured on the same held-out tokens only (when both runs logged the batch's id)
        same = [r for r in members if r.seed in base and _same_batch(r, base[r.seed])]
        pairs = [(base[r.seed].curves, r.curves) for r in same]
        warm = after if after is not None else max(r.warmup for r in members)
        out += [{"group": name, **row} for key in keys if (row := paired_over_seeds(pairs, key, after=warm))]
        ce = np.array([r.curves.final_ce - base[r.seed].curves.final_ce for r in members if r.seed in base])
        if ce.size:
            out.append(
                {"group": name, "key": "val_loss (final)", "n": int(ce.size), **mean_ci(ce, "delta_step")}
            )
    return out


def _same_batch(a: Run, b: Run) -> bool:
    return a.geom_batch is None or b.geom_batch is None or a.geom_batch == b.geom_batch


def _fmt(v, ci) -> str:
    if v is None:
        return "–"
    return f"{v:+.3f}" + (f" [{ci[0]:+.3f}, {ci[1]:+.3f}]" if ci else " (no interval: n < 2 or no spread)")


def _explained(d_step: float | None, d_ce: float | None) -> str:
    """1 - Δ_CE / Δ_step as a percentage, when both have one sign (else the signs are named)."""
    if d_step is None or d_ce is None or d_step == 0:
        return "–"
    if d_ce != 0 and (d_ce > 0) != (d_step > 0):
        return "sign flips"
    return f"{100 * (1 - d_ce / d_step):.0f}%"


def probe_table(runs: list[Run]) -> str:
    """The gradient probe of each NITP run at its first probe after warm-up, mid-run and the end."""
    lines = []
    for run in runs:
        s, ratio = run.series("probe_ratio")
        if not s.size:
            continue
        after = s[s >= run.warmup]
        picks = sorted({int(after[0]), int(after[len(after) // 2]), int(after[-1])}) if after.size else []
        for step in picks:
            r = run.rows[step]
            lines.append(
                f"| {run.path.name} | {step:,} | {r['probe_ratio']:.3f} | {r['probe_cos']:+.3f} "
                f"| {r.get('probe_ratio_block1', math.nan):.3f} | {r.get('probe_cos_block1', math.nan):+.3f} "
                f"| {r.get('nitp_grad_share', math.nan):.3f} |"
            )
    header = (
        "run | step | ‖∇λ·NITP‖ / ‖∇CE‖ | cos(∇CE, ∇λ·NITP) | block 1 ratio | block 1 cos | NITP share at h"
    )
    return _markdown_table(header, lines) if lines else ""


def markdown_sections(run_dirs: list[str | Path]) -> list[tuple[str, str]]:
    """``(heading, markdown)`` of the matched-CE table and the probe table, for ``nitp-report compare``
    (runs without validation or geometry curves give nothing)."""
    runs = []
    for path in run_dirs:
        try:
            runs.append(load_run(path))
        except (OSError, KeyError, ValueError, TypeError, UserError):  # not a (finished) training run
            continue
    if not any(r.objective == "ntp" for r in runs) or not any(r.objective == "nitp" for r in runs):
        return []
    out = []
    rows = matched_rows(runs)
    if rows:
        note = (
            "NITP − NTP, paired by seed, mean with a 95% t interval over seeds (n = seed pairs): at the last "
            "step both measured, and at matched validation CE (the final CE of the run that ends higher; the "
            "other run is read where it first reached it). The last column is the share of the matched-step "
            "difference that is 'less trained'.\n\n"
        )
        out.append(("Geometry at matched step and matched validation CE", note + matched_table(rows)))
    probe = probe_table([r for r in runs if r.objective == "nitp"])
    if probe:
        note = (
            "Gradients of CE and of λ·NITP on the fixed held-out batch (log.probe_every; "
            "nitp_train/probe.py): norm ratio and cosine over the backbone and in block 1.\n\n"
        )
        out.append(("Gradient probe", note + probe))
    return out


def sign_summary(runs: list[Run], key: str = "erank", sign: int = 1) -> str:
    """How many NITP runs end above (sign=1) / below (-1) the NTP run of their seed on ``key``,
    with an exact two-sided sign test (``scipy.stats.binomtest``) and its caveat."""
    from scipy.stats import binomtest

    base = {r.seed: r for r in runs if r.objective == "ntp"}
    deltas = []
    for r in runs:
        if r.objective == "nitp" and r.seed in base:
            a, b = base[r.seed].series(key)[1], r.series(key)[1]
            if a.size and b.size:
                deltas.append(float(b[-1] - a[-1]))
    if not deltas:
        return ""
    wins = sum(1 for x in deltas if sign * x > 0)
    p = binomtest(wins, len(deltas), 0.5).pvalue
    word = "higher" if sign > 0 else "lower"
    return (
        f"{wins} of {len(deltas)} NITP runs end with a {word} final {key} than the NTP run of their seed "
        f"(exact sign test over runs, two-sided p = {p:.3g}); the runs share {len(base)} NTP baselines, so "
        f"the unit of replication for a claim about the objectives is the seed (n = {len(base)})."
    )


def matched_table(rows: list[dict]) -> str:
    lines = []
    for r in rows:
        at_ce = _fmt(r.get("delta_ce"), r.get("delta_ce_ci")) if "delta_ce" in r else "–"
        share = _explained(r.get("delta_step"), r.get("delta_ce"))
        lines.append(
            f"| {r['group']} | {r['key']} | {r['n']} | {_fmt(r['delta_step'], r.get('delta_step_ci'))} | {at_ce} | {share} |"
        )
    header = "NITP group − NTP | metric | n seeds | Δ at matched step | Δ at matched validation CE | share explained by CE"
    return _markdown_table(header, lines)


# ----------------------------------------------------------------------------- figures
def _band(ax, runs: list[Run], key: str, label: str, color) -> None:
    series = [r.series(key) for r in runs]
    series = [(s, v) for s, v in series if s.size]
    if not series:
        return
    grid = np.unique(np.concatenate([s for s, _ in series]))
    vals = np.array([np.interp(grid, s, v, left=np.nan, right=np.nan) for s, v in series])
    ax.plot(grid, np.nanmean(vals, axis=0), color=color, label=f"{label} (n={len(series)})", lw=1.3)
    if len(series) > 1:
        ax.fill_between(grid, np.nanmin(vals, axis=0), np.nanmax(vals, axis=0), color=color, alpha=0.2, lw=0)


def curves_figure(runs: list[Run], out: Path, keys: list[tuple[str, str]], name: str, title: str) -> Path:
    from matplotlib import colormaps
    from matplotlib.figure import Figure  # no pyplot state (reports/figures.py)

    groups = _groups(runs)
    cols = 3 if len(keys) > 4 else 2
    rows = math.ceil(len(keys) / cols)
    fig = Figure(figsize=(4.6 * cols, 3.3 * rows))
    axes = fig.subplots(rows, cols, squeeze=False)
    colors = colormaps["tab10"].colors
    warm = max(r.warmup for r in runs)
    for ax, (key, label) in zip(axes.flat, keys):
        for (gname, members), color in zip(groups.items(), colors):
            _band(ax, members, key, gname, color)
        ax.axvline(warm, color="grey", lw=0.6, ls=":")
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(keys) :]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8, frameon=False)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.06, 1, 0.95))
    path = out / "figures" / f"{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130)
    return path


GEOMETRY_PANELS = [
    ("erank", "effective rank, held-out batch (covariance)"),
    ("mean_cos", "mean cosine across sequences, held-out batch"),
    ("val_loss", "validation CE (nats/token)"),
    ("loss_nitp", "L_NITP (training, 1 − cos)"),
    ("proj_erank", "effective rank of the projector output P(h)"),
]


def probe_panels(runs: list[Run]) -> list[tuple[str, str]]:
    blocks = range(1, min(max(r.layers for r in runs), PROBE_BLOCKS) + 1)
    return [
        ("nitp_grad_share", "NITP share of the gradient at h"),
        *((f"probe_ratio_block{k}", f"‖∇ λ·NITP‖ / ‖∇ CE‖, block {k}") for k in blocks),
        *((f"probe_cos_block{k}", f"cos(∇ CE, ∇ λ·NITP), block {k}") for k in blocks),
    ]


# ----------------------------------------------------------------------------- the report
def regime_report(run_dirs: list[str | Path], out: str | Path) -> Path:
    """Write OUT/report.md, OUT/regime.json and the figures; returns the report's path."""
    out = Path(out)
    runs = [load_run(p) for p in run_dirs]
    if not runs:
        raise UserError("regime report: no run directories given; pass the runs of a regime study")
    band = "(mean, band = min-max over seeds)"
    geom = curves_figure(runs, out, GEOMETRY_PANELS, "geometry", f"Held-out geometry and losses {band}")
    nitp_runs = [r for r in runs if r.objective == "nitp"]
    title = f"Gradient probe on the held-out batch {band}"
    probe = curves_figure(nitp_runs or runs, out, probe_panels(runs), "probe", title)
    matched = matched_rows(runs)
    fields = ("seed", "params", "tokens", "steps", "warmup")
    record = [
        {"run": r.path.name, "group": r.group, **{k: getattr(r, k) for k in fields}, **premise(r)}
        for r in runs
    ]
    atomic_write_json(out / "regime.json", {"runs": record, "matched": matched})
    text = f"""# Regime report

## The premise: does the held-out effective rank peak and fall after warm-up?

{premise_table(runs)}
## NITP − NTP at matched step and at matched validation CE

The last column: 1 − Δ(matched CE) / Δ(matched step), the share of the difference at equal steps \
that is 'less trained'.

Paired by seed; mean with a 95% t interval over seeds (n = seed pairs). Matched CE = the final \
validation CE of the run that ends higher; the other run is read where it first reached it.

{matched_table(matched)}

{sign_summary(runs, "erank", 1)}

{sign_summary(runs, "val_loss", -1)}

![geometry]({geom.relative_to(out).as_posix()})

![probe]({probe.relative_to(out).as_posix()})

## Gradient probe at three steps

{probe_table(nitp_runs)}"""
    return atomic_write_text(out / "report.md", text)
