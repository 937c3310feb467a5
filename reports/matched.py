"""Geometry at matched validation CE, beside matched step: how much of a difference is "less trained".

Two runs compared at the same step differ in geometry for two reasons: the objective, and how far
each has come in language modelling. Reading both runs' curves at the step where each reaches
the same validation CE removes the second. With c(t) the run's validation CE (linear between
evaluations, made non-increasing by a running minimum so a level is reached once) and m(t) a
geometry curve (``erank``, ``mean_cos``; linear between measurements), the value at CE level L is

.. math:: m_L = m(t_L), \\qquad t_L = \\min \\{t : c(t) \\le L\\}

Levels are those both runs reach after warm-up; the default level is the final CE of the run that
ends higher (the other run's curve is read where it had that CE).

Example
-------
>>> a = Curves(steps_ce=[100, 200], ce=[5.0, 4.0], metrics={"erank": ([100, 200], [10.0, 20.0])})
>>> round(at_level(a, "erank", 4.5), 2)
15.0
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from nitp.io import read_jsonl

GEOMETRY_KEYS = ("erank", "mean_cos", "proj_erank")


@dataclass
class Curves:
    """One run's validation CE curve and metric curves (``metrics[name] = (steps, values)``)."""

    steps_ce: list
    ce: list
    metrics: dict = field(default_factory=dict)
    name: str = ""

    @property
    def final_ce(self) -> float:
        return float(self.ce[-1])


def read_rows(run_dir: str | Path) -> dict[int, dict]:
    """``RUN/metrics.jsonl`` as step -> its lines merged (a rerun's lines win)."""
    rows: dict[int, dict] = {}
    for row in read_jsonl(Path(run_dir) / "metrics.jsonl"):
        rows.setdefault(int(row["step"]), {}).update(row)
    return rows


def read_curves(run_dir: str | Path, keys: tuple[str, ...] = GEOMETRY_KEYS) -> Curves:
    """The ``val_loss`` curve and the ``keys`` curves of ``RUN/metrics.jsonl`` (a rerun's lines win)."""
    rows = read_rows(run_dir)
    steps = sorted(rows)
    ce = [(s, rows[s]["val_loss"]) for s in steps if "val_loss" in rows[s]]
    metrics = {}
    for key in keys:
        points = [(s, rows[s][key]) for s in steps if isinstance(rows[s].get(key), (int, float))]
        if points:
            metrics[key] = ([p[0] for p in points], [float(p[1]) for p in points])
    return Curves([p[0] for p in ce], [float(p[1]) for p in ce], metrics, Path(run_dir).name)


def step_at_ce(curves: Curves, level: float, after: int = 0) -> float | None:
    """First (interpolated) step at which the running-minimum CE reaches ``level``, counting only
    evaluations at or after step ``after``; None when it never does."""
    s = np.asarray(curves.steps_ce, dtype=float)
    c = np.asarray(curves.ce, dtype=float)
    keep = s >= after
    s, c = s[keep], np.minimum.accumulate(c[keep])
    if s.size == 0 or c[-1] > level:
        return None
    i = int(np.argmax(c <= level))
    if i == 0:
        return float(s[0])
    # linear between evaluation i-1 (above the level) and i (at or below it)
    frac = (c[i - 1] - level) / (c[i - 1] - c[i])
    return float(s[i - 1] + frac * (s[i] - s[i - 1]))


def value_at_step(curves: Curves, key: str, step: float) -> float:
    """``key``'s curve, linear between measurements (clamped at its ends)."""
    steps, values = curves.metrics[key]
    return float(np.interp(step, steps, values))


def at_level(curves: Curves, key: str, level: float, after: int = 0) -> float | None:
    """``key`` where the run's validation CE first reaches ``level`` (None if it never does)."""
    step = step_at_ce(curves, level, after)
    return None if step is None or key not in curves.metrics else value_at_step(curves, key, step)


def matched(a: Curves, b: Curves, key: str, after: int = 0) -> dict | None:
    """``key`` of ``a`` and ``b`` at matched (final) step and at matched CE.

    Matched CE is the final CE of the run that ends higher; the other run is read where it first
    had that CE. ``explained`` = 1 - delta_CE / delta_step: the share of the matched-step
    difference that is "less trained" (None when the step difference is 0).
    """
    if key not in a.metrics or key not in b.metrics:
        return None
    level = max(a.final_ce, b.final_ce)
    va, vb = at_level(a, key, level, after), at_level(b, key, level, after)
    if va is None or vb is None:
        return None
    step = min(a.metrics[key][0][-1], b.metrics[key][0][-1])  # the last step both measured
    sa, sb = value_at_step(a, key, step), value_at_step(b, key, step)
    d_step, d_ce = sb - sa, vb - va
    return {
        "key": key,
        "step": step,
        "level": level,
        "a_at_step": sa,
        "b_at_step": sb,
        "delta_step": d_step,
        "a_at_ce": va,
        "b_at_ce": vb,
        "delta_ce": d_ce,
        "explained": (1.0 - d_ce / d_step) if d_step else None,
        "a_ce_step": step_at_ce(a, level, after),
        "b_ce_step": step_at_ce(b, level, after),
    }


def paired_over_seeds(pairs: list[tuple[Curves, Curves]], key: str, after: int = 0) -> dict | None:
    """Mean B - A over seed pairs at matched step and at matched CE, each with a t interval
    (``scipy.stats``; n = seed pairs; no interval for n < 2)."""
    rows = [r for r in (matched(a, b, key, after) for a, b in pairs) if r is not None]
    if not rows:
        return None
    out = {"key": key, "n": len(rows)}
    for what in ("delta_step", "delta_ce"):
        out.update(mean_ci(np.array([r[what] for r in rows], dtype=float), what))
    return out


def mean_ci(x: np.ndarray, name: str) -> dict:
    """``{name: mean, name_ci: its 95% t interval}`` (the interval None for n < 2 or no spread)."""
    from scipy import stats

    ci = None
    if x.size >= 2 and np.ptp(x) > 0:
        ci = tuple(float(v) for v in stats.t.interval(0.95, x.size - 1, loc=x.mean(), scale=stats.sem(x)))
    return {name: float(x.mean()), f"{name}_ci": ci}
