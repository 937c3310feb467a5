"""The paper's figures from metrics and records: PNG (200 dpi) and PDF, one colour per objective.

==========================  ================================================  ==========
function                    what                                              paper
==========================  ================================================  ==========
plot_training_geometry      erank and mean cosine of last hidden states vs    Fig. 1a/b
                            step: smoothed line + shaded rolling spread
plot_bench_curve            average benchmark score vs step over checkpoints, Fig. 1c/d
                            final Δ (NITP − NTP) annotated
plot_nitp_loss              NITP loss vs step, phases I/II/III detected       Fig. 5
                            (:mod:`reports.phases`) and marked
plot_layer_profiles         per-layer erank, anisotropy, next-token           --
                            predictability; NITP target layer marked
plot_forest                 Δ per benchmark / MTEB group with its 95%         --
                            interval, zero line; filled = significant
plot_seed_geometry          erank and mean cosine vs step over seeds: mean,   Fig. 1a/b
                            min-max band across seeds
==========================  ================================================  ==========

Every ``plot_*`` function writes ``<stem>.png`` and ``<stem>.pdf`` atomically and returns their
paths, or raises :class:`NothingToPlot` with a one-line reason (the report lists it); its
``draw_*`` twin returns the matplotlib ``Figure`` instead (for notebooks, and for the tests that
check no two texts overlap). Colours: NTP blue,
NITP red, NTP + cosine regulariser green, other models purple; several runs of one objective
differ by line style. matplotlib is used through ``Figure`` objects (no pyplot state, no
display needed).

Example
-------
>>> plot_nitp_loss(model, Path("out/figures/nitp_loss"))      # doctest: +SKIP
(NitpPhases(initial_min=PhasePoint(step=40, ...), ...), [PosixPath('out/figures/nitp_loss.png'), ...])
"""

from __future__ import annotations

import inspect
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nitp.io import atomic_write_bytes

from .formats import _is_num
from .grouping import SettingsGroup, config_value
from .inputs import Model
from .phases import NitpPhases, run_phases

OBJECTIVE_COLOURS = {"ntp": "#3B6FB6", "nitp": "#D1495B", "cos_reg": "#3A9E6F", "other": "#7D6BA8"}
LINESTYLES = ("-", "--", "-.", ":")
STYLE = {
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.labelsize": 9,
    "legend.fontsize": 8,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.25,
    "legend.frameon": False,
    "pdf.fonttype": 42,
    "ps.fonttype": 42,
    "savefig.dpi": 200,
}
PANEL_WIDTH = 3.3  # inches: two panels fit a paper's text width
PANEL_HEIGHT = 2.6


class NothingToPlot(Exception):
    """The inputs hold no data for this figure (the message says what is missing)."""


# ----------------------------------------------------------------------------- helpers
def line_styles(models: list[Model]) -> dict[str, dict[str, Any]]:
    """Colour by objective, line style by rank among the models of that objective."""
    seen: dict[str, int] = {}
    out = {}
    for m in models:
        n = seen.get(m.role, 0)
        seen[m.role] = n + 1
        out[m.key] = {"color": OBJECTIVE_COLOURS[m.role], "linestyle": LINESTYLES[n % len(LINESTYLES)]}
    return out


def _new_figure(panels: int, height: float = PANEL_HEIGHT):
    """Two panels fill a paper's text width (6.6 in); more panels share 7 in."""
    from matplotlib.figure import Figure

    return Figure(figsize=(min(PANEL_WIDTH * panels, 7.0), height), layout="constrained")


def save_figure(fig, stem: Path) -> list[Path]:
    """``stem.png`` and ``stem.pdf``, each written atomically (never half a file)."""
    paths = []
    for fmt in ("png", "pdf"):
        buf = io.BytesIO()
        fig.savefig(buf, format=fmt)
        paths.append(atomic_write_bytes(stem.with_suffix(f".{fmt}"), buf.getvalue()))
    return paths


def _series(model: Model, key: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) of ``key`` in the run's metrics, by step; finite numbers only."""
    rows = sorted(
        (m["step"], float(m[key]))
        for m in model.metrics
        if isinstance(m.get(key), (int, float)) and np.isfinite(m[key])
    )
    table = np.asarray(rows, dtype=float).reshape(-1, 2)
    return table[:, 0], table[:, 1]


def rolling(values: np.ndarray, window: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Centred rolling mean and standard deviation (window ~ 1/15 of the points, at least 3)."""
    import pandas as pd

    window = window or max(3, len(values) // 15)
    r = pd.Series(values).rolling(window, center=True, min_periods=1)
    return r.mean().to_numpy(), r.std(ddof=0).fillna(0.0).to_numpy()


def _legend_below(fig, axes) -> None:
    """One legend for all panels, under them, with as many columns as the width holds."""
    entries: dict[str, Any] = {}  # label -> its first handle
    for ax in np.atleast_1d(axes):
        for h, lab in zip(*ax.get_legend_handles_labels()):
            entries.setdefault(lab, h)
    if entries:
        chars_per_row = fig.get_figwidth() * 13  # legend font (8 pt) is about 0.075 in per character
        ncol = max(1, min(len(entries), int(chars_per_row // (max(map(len, entries)) + 6))))
        fig.legend(list(entries.values()), list(entries), loc="outside lower center", ncol=ncol)


def _rc():
    import matplotlib

    return matplotlib.rc_context(STYLE)


def _band_panels(panels, lines: dict[str, list], alpha: float):
    """Two panels over training steps, one per ``(key, title, y label)`` of ``panels``:
    ``lines[key]`` = ``(label, style, steps, line, band low, band high)`` per line."""
    with _rc():
        fig = _new_figure(2, PANEL_HEIGHT + 0.5)
        axes = fig.subplots(1, 2)
        for ax, (key, title, ylabel) in zip(axes, panels):
            for label, style, steps, line, low, high in lines.get(key, []):
                ax.plot(steps, line, label=label, lw=1.6, **style)
                ax.fill_between(steps, low, high, color=style["color"], alpha=alpha, lw=0)
            ax.set(title=title, xlabel="training step", ylabel=ylabel)
        _legend_below(fig, axes)
        return fig


def _plots(draw):
    """The ``plot_*`` twin of ``draw_*``: the same arguments, then ``stem``; writes ``stem.png`` and
    ``stem.pdf`` and returns their paths."""

    signature = inspect.signature(draw)
    stem = inspect.Parameter("stem", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation="Path")
    signature = signature.replace(
        parameters=[*signature.parameters.values(), stem], return_annotation="list[Path]"
    )

    def plot(*args, **kwargs) -> list[Path]:
        bound = signature.bind(*args, **kwargs)
        stem = bound.arguments.pop("stem")
        with _rc():
            return save_figure(draw(*bound.args, **bound.kwargs), stem)

    plot.__name__ = plot.__qualname__ = draw.__name__.replace("draw_", "plot_", 1)
    plot.__doc__, plot.__signature__ = draw.__doc__, signature
    return plot


# ----------------------------------------------------------------------------- Figure 1a/b
def draw_training_geometry(models: list[Model]):
    """Effective rank and mean cosine of last hidden states vs training step, per run (smoothed,
    band = rolling standard deviation); a matplotlib ``Figure``."""
    panels = [
        ("erank", "(a) Effective rank of last hidden states", "effective rank (covariance)"),
        ("mean_cos", "(b) Mean cosine of last hidden states", "mean pairwise cosine"),
    ]
    data = {m.key: {k: _series(m, k) for k, *_ in panels} for m in models}
    shown = [m for m in models if any(len(data[m.key][k][0]) for k, *_ in panels)]
    if not shown:
        raise NothingToPlot("no run logged erank / mean_cos in metrics.jsonl (train with log.geom_every)")
    styles, lines = line_styles(shown), {}
    for key, *_ in panels:
        for m in shown:
            steps, values = data[m.key][key]
            if len(steps):
                mean, spread = rolling(values)
                # an effective rank below 0 does not exist
                low, high = VALID_RANGE.get(key, (-np.inf, np.inf))
                band = np.clip(mean - spread, low, high), np.clip(mean + spread, low, high)
                lines.setdefault(key, []).append((m.label, styles[m.key], steps, mean, *band))
    return _band_panels(panels, lines, 0.18)


plot_training_geometry = _plots(draw_training_geometry)


# ----------------------------------------------------------------------------- Figure 1c/d
def draw_bench_curve(models: list[Model], group: SettingsGroup, pairs: list[tuple[Model, Model]]):
    """Average benchmark score (record's ``average``, %) vs step, final Δ annotated."""
    curves = {}
    for m in models:
        pts = [
            (r["model"]["step"], 100.0 * r["scores"]["average"])
            for r in group.by_step(m)
            if isinstance(r["model"].get("step"), int) and r["scores"].get("average") is not None
        ]
        if pts:
            curves[m.key] = (m, np.asarray(pts, dtype=float))
    if not any(len(p) >= 2 for _, p in curves.values()):
        raise NothingToPlot(
            f"bench ({group.description}): no run has two scored checkpoints "
            "(score them all with nitp-eval bench --all-checkpoints RUN)"
        )
    styles = line_styles([m for m, _ in curves.values()])
    with _rc():
        fig = _new_figure(2, PANEL_HEIGHT + 0.7)
        ax = fig.subplots()
        for m, pts in curves.values():
            ax.plot(pts[:, 0], pts[:, 1], marker="o", ms=3.5, lw=1.6, label=m.label, **styles[m.key])
        deltas = []  # (last step both scored, base's score, new's score, pair name)
        for pair in pairs:
            if all(m.key in curves for m in pair):
                a, b = (dict(map(tuple, curves[m.key][1])) for m in pair)
                if common := sorted(set(a) & set(b)):
                    step = common[-1]
                    deltas.append((step, a[step], b[step], getattr(pair, "name", "NITP − NTP")))
        arrow = {"arrowstyle": "<->", "color": "0.3", "lw": 1}
        text = {"xytext": (6, 0), "textcoords": "offset points", "va": "center", "ha": "left", "fontsize": 8}
        for step, lo, hi, _ in deltas:
            ax.annotate("", xy=(step, hi), xytext=(step, lo), arrowprops=arrow)
            ax.annotate(f"{hi - lo:+.2f}", xy=(step, (lo + hi) / 2), color="0.2", **text)
        if deltas:
            left, right = ax.get_xlim()
            ax.set_xlim(left, right + 0.08 * (right - left))  # room for the Δ label
        title = f"Average benchmark score ({_wrap(group.description)})"
        if len(deltas) == 1:
            step, lo, hi, name = deltas[0]
            title += f"\nfinal Δ ({_wrap(name, 40)}) = {hi - lo:+.2f} points at step {int(step)}"
        ax.set(title=title, xlabel="training step", ylabel="average score (%)")
        _legend_below(fig, ax)
        return fig


plot_bench_curve = _plots(draw_bench_curve)


def _wrap(text: str, width: int = 60) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def _fill(text: str, width: int = 60) -> str:
    """``text`` broken into lines of at most ``width`` characters (nothing left out)."""
    import textwrap

    return "\n".join(textwrap.wrap(text, width, break_long_words=True)) or text


def min_span(ax, values, rel: float = 0.1) -> None:
    """Keep the y axis at least ``rel`` x |largest value| tall, centred on the data, so a flat
    statistic (curvature 2.00-2.06) is not magnified into a steep-looking curve of noise."""
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], dtype=float)
    if not len(v):
        return
    lo, hi = float(v.min()), float(v.max())
    span = rel * max(abs(lo), abs(hi))
    if span > 0 and hi - lo < span:
        mid = (lo + hi) / 2
        ax.set_ylim(mid - 0.6 * span, mid + 0.6 * span)


# Valid ranges of the logged statistics: bands (± rolling sd) are clipped to them.
VALID_RANGE = {"erank": (0.0, np.inf), "mean_cos": (-1.0, 1.0)}


# ----------------------------------------------------------------------------- Figure 5
def plot_nitp_loss(model: Model, stem: Path) -> tuple[NitpPhases, list[Path]]:
    """The unweighted NITP loss vs step with phases I/II/III detected and marked."""
    with _rc():
        fig, phases = draw_nitp_loss(model)
        return phases, save_figure(fig, stem)


def draw_nitp_loss(model: Model):
    """``(figure, phases)`` of :func:`plot_nitp_loss`."""
    steps, values = _series(model, "loss_nitp")
    if not len(steps):
        raise NothingToPlot(
            f"{model.label}: no loss_nitp in metrics.jsonl (not a NITP run), NITP-loss figure skipped"
        )
    phases = run_phases(model.metrics, model.config)  # from the first NITP step
    positive = steps > 0
    log_x = positive.sum() >= 2 and steps[positive].max() / steps[positive].min() >= 20
    keep = positive if log_x else np.ones_like(positive)
    colour = OBJECTIVE_COLOURS["nitp"]
    with _rc():
        fig = _new_figure(2, PANEL_HEIGHT + 0.9)
        ax = fig.subplots()
        ax.plot(steps[keep], values[keep], color=colour, alpha=0.3, lw=0.8, label="NITP loss (logged)")
        ax.plot(phases.steps[keep], phases.smoothed[keep], color=colour, lw=1.8, label="smoothed")
        if log_x:
            ax.set_xscale("log")
        _mark_phases(ax, phases, steps[keep])
        title = f"NITP loss $1-\\cos(P(h_t), z_{{t+1}})$\n{_wrap(model.label)}"
        ax.set(title=title, xlabel="training step", ylabel="NITP loss")
        if not phases.initial_min:
            note = "no phases detected (flat, monotone or noisy curve)"
            ax.text(0.5, 0.97, note, transform=ax.transAxes, ha="center", va="top", fontsize=8, color="0.3")
        _legend_below(fig, ax)
        return fig, phases


def _mark_phases(ax, phases: NitpPhases, steps: np.ndarray) -> None:
    """Shade the phases, name them at the top, mark their boundaries (legend says where)."""
    points = [
        (phases.initial_min, "v", "I ends: minimum"),
        (phases.hump_peak, "^", "II ends: hump peak"),
        (phases.converged, "o", "III settles"),
    ]
    bounds = [steps.min()] + [p.step for p, *_ in points[:2] if p is not None] + [steps.max()]
    names = ["I", "II", "III"][: len(bounds) - 1]
    trans = ax.get_xaxis_transform()
    log = ax.get_xscale() == "log"
    for i, (name, a, b) in enumerate(zip(names, bounds, bounds[1:])):
        if i % 2 == 0:
            ax.axvspan(a, b, color="0.5", alpha=0.08, lw=0)
        mid = np.sqrt(a * b) if log and a > 0 else (a + b) / 2
        ax.text(mid, 0.98, name, transform=trans, ha="center", va="top", size=10, weight="bold", color="0.35")
    for point, marker, text in points:
        if point is not None:
            label = f"{text} {point.value:.3f} @ step {point.step:g}"
            ax.plot([point.step], [point.value], marker=marker, ms=7, color="black", ls="none", label=label)


# ----------------------------------------------------------------------------- per layer
# (title, [(statistic, y label), ...] in order of preference; analysis.layers' names first)
LAYER_PANELS = [
    ("(a) Effective rank", [("effective_rank_covariance", "effective rank (covariance)")]),
    (
        "(b) Anisotropy",
        [
            ("anisotropy_across_sequences", "mean cosine across sequences"),
            ("anisotropy", "mean cosine (all pairs)"),
        ],
    ),
    (
        "(c) Predictability",
        [
            ("ridge_r2", r"ridge $R^2$: $h_{\mathrm{last}}[t] \to h_k[t{+}1]$"),
            ("ridge_cos", r"ridge cosine: $h_{\mathrm{last}}[t] \to h_k[t{+}1]$"),
        ],
    ),
]


def draw_layer_profiles(models: list[Model], group: SettingsGroup):
    """Per-layer curves from geom records, with each NITP run's target layer marked."""
    data = {}
    for m in models:
        rec = group.latest(m)
        layers = (rec or {}).get("scores", {}).get("layers") or []
        rows = [
            (x["layer"], {k: v for k, v in x.items() if _is_num(v)})
            for x in layers
            if isinstance(x.get("layer"), int) and x["layer"] >= 0
        ]
        if rows:
            data[m.key] = (m, rows, rec["scores"].get("paper_depth_rule_layer"))
    if not data:
        raise NothingToPlot(
            f"geom ({group.description}): no per-layer statistics in the records (run nitp-geom layers)"
        )
    keys = {k for _, rows, _ in data.values() for _, flat in rows for k in flat}
    panels = [
        (title, *next((k, y) for k, y in options if k in keys))
        for title, options in LAYER_PANELS
        if keys & {k for k, _ in options}
    ]
    if not panels:
        raise NothingToPlot(
            f"geom ({group.description}): per-layer records hold none of effective rank, anisotropy, predictability"
        )
    styles = line_styles([m for m, _, _ in data.values()])
    nitp_runs = [m for m, _, _ in data.values() if m.role == "nitp"]
    targets = sorted({t for m in nitp_runs if isinstance(t := config_value(m, "nitp.target_layer"), int)})
    recommended = sorted({r for *_, r in data.values() if isinstance(r, int)})
    nitp_colour = OBJECTIVE_COLOURS["nitp"]
    with _rc():
        fig = _new_figure(len(panels), PANEL_HEIGHT + 0.5)
        axes = np.atleast_1d(fig.subplots(1, len(panels)))
        for ax, (title, key, ylabel) in zip(axes, panels):
            for m, rows, _ in data.values():
                xs = [k for k, flat in rows if key in flat]
                ys = [flat[key] for k, flat in rows if key in flat]
                ax.plot(xs, ys, marker="o", ms=3, lw=1.5, label=m.label, **styles[m.key])
            for t in targets:
                ax.axvline(t, color=nitp_colour, ls="--", lw=1, alpha=0.8, label=f"NITP target layer ({t})")
            for r in recommended:
                ax.axvline(r, color="0.4", ls=":", lw=1.2, label=f"paper depth rule, round(0.21 L) = {r}")
            ax.set(title=title, xlabel="layer (0 = embeddings)", ylabel=ylabel)
            min_span(ax, [flat[key] for _, rows, _ in data.values() for _, flat in rows if key in flat])
            layers = sorted({k for _, rows, _ in data.values() for k, _ in rows})
            if len(layers) <= 16:
                ax.set_xticks(layers)  # every layer of a small model
            else:
                ax.xaxis.get_major_locator().set_params(integer=True)
        _legend_below(fig, axes)
        return fig


plot_layer_profiles = _plots(draw_layer_profiles)


# ----------------------------------------------------------------------------- forest plot
@dataclass(frozen=True)
class ForestRow:
    """One Δ with its interval, in the table's units (``significant``: drawn filled)."""

    label: str
    delta: float
    low: float
    high: float
    significant: bool


def forest_rows(table) -> list[ForestRow]:
    """The tested cells of a :class:`~reports.formats.Table` that have an interval."""
    out = []
    for row, j, t in table.tested():
        r = t.result
        if r is None or r.ci_low is None or r.ci_high is None:
            continue
        label = table.columns[j] if row.kind == "delta" else row.label
        if row.kind == "delta" and sum(1 for x in table.rows if x.kind == "delta" and x.tests) > 1:
            label = f"{label} ({row.label})"
        out.append(
            ForestRow(label, t.scale * r.delta, t.scale * r.ci_low, t.scale * r.ci_high, t.significant)
        )
    return out


def draw_forest(rows: list[ForestRow], title: str, xlabel: str):
    """Deltas with their 95% intervals, one line per benchmark / task group, and a zero line;
    filled markers where the interval excludes 0 (and p passes)."""
    if not rows:
        raise NothingToPlot(f"{title}: no Δ with an interval (records without per-item results?)")
    with _rc():
        fig = _new_figure(2, 0.9 + 0.28 * len(rows))
        ax = fig.subplots()
        ys = np.arange(len(rows))[::-1]
        for y, r in zip(ys, rows):
            colour = OBJECTIVE_COLOURS["nitp"] if r.significant else "0.35"
            ax.plot([r.low, r.high], [y, y], color=colour, lw=1.6)
            face = colour if r.significant else "white"
            ax.plot([r.delta], [y], marker="o", ms=5, color=colour, markerfacecolor=face)
        ax.axvline(0.0, color="0.2", lw=0.9, ls="--")
        ax.set_yticks(ys, [_fill(r.label, 40) for r in rows])
        ax.set(title=_fill(title, 60), xlabel=xlabel)  # wrapped, never cut: the title names the settings
        ax.grid(axis="y", visible=False)
        return fig


plot_forest = _plots(draw_forest)


# ----------------------------------------------------------------------------- seed bands
def draw_seed_geometry(sets):
    """Effective rank and mean cosine vs step per seed set: mean over seeds, shaded min-max across them.

    ``sets``: :class:`reports.seeds.SeedSet` list; steps every seed logged are used.
    """
    panels = [
        ("erank", "(a) Effective rank over seeds", "effective rank (covariance)"),
        ("mean_cos", "(b) Mean cosine over seeds", "mean pairwise cosine"),
    ]
    lines: dict[str, list] = {}
    for key, *_ in panels:
        for s in sets:
            series = [dict(zip(*_series(m, key))) for m in s.models]
            steps = sorted(set.intersection(*(set(x) for x in series))) if series else []
            if steps:
                values = np.array([[x[st] for st in steps] for x in series])
                style = {"color": OBJECTIVE_COLOURS.get(s.role, OBJECTIVE_COLOURS["other"])}
                band = values.min(axis=0), values.max(axis=0)
                lines.setdefault(key, []).append(
                    (s.label, style, np.asarray(steps), values.mean(axis=0), *band)
                )
    if not lines:
        raise NothingToPlot("no seed set logged erank / mean_cos at common steps (train with log.geom_every)")
    return _band_panels(panels, lines, 0.2)


plot_seed_geometry = _plots(draw_seed_geometry)


# ----------------------------------------------------------------------------- where they differ
def _depth_lines(
    depth, sets
) -> list[tuple[Model, str, list[int], list[float], list[float] | None, list[float] | None]]:
    """(style model, label, x, y, band low, band high) per line of a ``reports.depth.DepthSet``:
    one line per model, or one per seed set (mean over seeds, min-max band) when its runs are all there."""
    profiles = depth.by_model
    lines, used = [], set()
    for s in sets:
        members = [profiles[m.key] for m in s.models if m.key in profiles]
        if len(members) < 2:
            continue
        used.update(p.model.key for p in members)
        xs = sorted(set.intersection(*(set(map(p.position, p.points)) for p in members)))
        values = [[next(v for k, v in p.points.items() if p.position(k) == x) for p in members] for x in xs]
        mean, low, high = ([f(v) for v in values] for f in (lambda v: float(np.mean(v)), min, max))
        lines.append((members[0].model, s.label, xs, mean, low, high))
    for p in profiles.values():
        if p.model.key not in used:
            ordered = sorted(p.points, key=p.position)
            xs, ys = [p.position(k) for k in ordered], [p.points[k] for k in ordered]
            lines.append((p.model, p.model.label, xs, ys, None, None))
    return lines


def depth_caption(mteb_sets, geom_sets, sets) -> str:
    """The caption of :func:`plot_depth_profiles`, naming only what is drawn."""
    shown = [*mteb_sets[:1], *geom_sets]
    roles = {p.model.role for d in shown for p in d.by_model.values()}
    who = "both objectives" if {"ntp", "nitp"} <= roles else "each model"
    what = ["MTEB overall score per layer (nitp-eval mteb --layers)"] if mteb_sets else []
    what += [d.what for d in geom_sets]
    bands = any(lo is not None for d in shown for *_, lo, _hi in _depth_lines(d, sets))
    tail = (
        "; line = mean over seeds, band = min-max across seeds."
        if bands
        else "; one run per line (no seed bands)."
    )
    return f"By depth, {who}: {'; '.join(what)}. Dotted: the last hidden state (the only layer the paper scores){tail}"


def draw_depth_profiles(mteb_sets, geom_sets, sets):
    """Where NTP and NITP differ, by depth: MTEB overall score per layer (``nitp-eval mteb
    --layers``) and the per-layer geometry statistics the geom records hold; seed bands
    (min-max across seeds, line = mean) when a study has several seeds. One panel per
    statistic, x = layer, last marked."""
    panels = [(f"MTEB overall ({d.description})", "main score (%)", d, 100.0) for d in mteb_sets[:1]]
    panels += [(d.what, d.what, d, 1.0) for d in geom_sets]
    if not panels:
        raise NothingToPlot(
            "no per-layer MTEB records (nitp-eval mteb --layers) or per-layer geometry to draw"
        )
    models = {p.model.key: p.model for d in [*mteb_sets[:1], *geom_sets] for p in d.by_model.values()}
    styles = line_styles([models[k] for k in sorted(models)])
    cols = min(2, len(panels))
    rows = -(-len(panels) // cols)
    with _rc():
        fig = _new_figure(cols, PANEL_HEIGHT * rows + 0.6)
        axes = fig.subplots(rows, cols, squeeze=False).ravel()
        for ax, (title, ylabel, depth, scale) in zip(axes, panels):
            last = max(p.position(-1) for p in depth.by_model.values())
            lines = _depth_lines(depth, sets)
            for model, label, xs, ys, lo, hi in lines:
                ax.plot(
                    xs, [scale * y for y in ys], marker="o", ms=3, lw=1.5, label=label, **styles[model.key]
                )
                if lo is not None:
                    low, high = [scale * y for y in lo], [scale * y for y in hi]
                    ax.fill_between(xs, low, high, color=styles[model.key]["color"], alpha=0.2, lw=0)
            min_span(ax, [scale * y for *_, ys, lo, hi in lines for y in ys + (lo or []) + (hi or [])])
            ax.axvline(last, color="0.4", ls=":", lw=1.2, label="last hidden state (after the final norm)")
            ax.set(title=_wrap(title, 40), xlabel="layer (0 = embeddings)", ylabel=_wrap(ylabel, 32))
            ticks = sorted({x for _, _, xs, *_ in lines for x in xs})
            if len(ticks) <= 12:
                ax.set_xticks(ticks, ["last" if t == last else str(t) for t in ticks])
        for ax in axes[len(panels) :]:
            ax.set_visible(False)
        _legend_below(fig, axes[: len(panels)])
        return fig


def draw_similarity_maps(maps):
    """Heatmaps of CKA (layer i x layer j) from geom records' ``similarity`` sections: one per map,
    colour scale 0..1."""
    if not maps:
        raise NothingToPlot("no geom record holds a similarity (CKA) section")
    with _rc():
        fig = _new_figure(len(maps), PANEL_HEIGHT + 0.6)
        axes = np.atleast_1d(fig.subplots(1, len(maps)))
        image = None
        for ax, m in zip(axes, maps):
            matrix = np.asarray(m.matrix, dtype=float)
            image = ax.imshow(matrix, origin="lower", vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto")
            for layers, set_ticks in ((m.cols, ax.set_xticks), (m.rows, ax.set_yticks)):
                if len(layers) <= 16:
                    set_ticks(range(len(layers)), ["last" if k == -1 else str(k) for k in layers])
            title = _wrap(f"{m.model.label} vs {m.reference}", 40)
            ax.set(title=title, xlabel=f"layer j ({m.reference})", ylabel="layer i")
            ax.grid(False)
        fig.colorbar(image, ax=list(axes), label=maps[0].what.replace("_", " "), shrink=0.8)
        return fig


plot_depth_profiles = _plots(draw_depth_profiles)
plot_similarity_maps = _plots(draw_similarity_maps)
