"""The figure of a layer sweep (``nitp-eval mteb --layers ... --figure PATH``): MTEB score by depth.

One panel per model; one line per task group (the paper's Classification, STS, Retrieval/dup,
or a task type) and a thick one for the overall mean; x = layer (0 = embeddings, k = block k,
the last hidden state after the final norm at L + 1, labelled "last" and marked by a dotted
line); y = main score in %. Written as ``PATH.png`` (200 dpi) and ``PATH.pdf``, atomically.

Example
-------
>>> plot_layer_sweep(records, Path("figures/mteb-layers"))      # doctest: +SKIP
[PosixPath('figures/mteb-layers.png'), PosixPath('figures/mteb-layers.pdf')]
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Sequence

from nitp.errors import UserError
from nitp.io import atomic_write_bytes

from .table import model_labels, sweep_groups


def depth_position(layer: int, num_layers: int) -> int:
    """x position of a layer: k for 0..L, L + 1 for -1 (the last hidden state, after the final norm)."""
    return num_layers + 1 if layer == -1 else layer


def sweep_series(group: Sequence[dict]) -> dict[str, tuple[list[int], list[float]]]:
    """``{group or "overall": (x positions, scores in %)}`` of one model's per-layer records."""
    num_layers = _num_layers(group)
    series: dict[str, tuple[list[int], list[float]]] = {}
    for r in group:
        x = depth_position(r["settings"]["layer"], num_layers)
        values = {**r["scores"].get("groups", {}), "overall": r["scores"].get("overall")}
        for name, value in values.items():
            if value is not None:
                xs, ys = series.setdefault(name, ([], []))
                xs.append(x)
                ys.append(100 * value)
    return series


def _num_layers(group: Sequence[dict]) -> int:
    known = group[0]["model"].get("num_layers")
    return int(known) if known is not None else max([0] + [r["settings"]["layer"] for r in group])


def draw_layer_sweep(records: Sequence[dict]):
    """The matplotlib ``Figure`` of :func:`plot_layer_sweep`."""
    from matplotlib.figure import Figure

    groups = [g for g in sweep_groups(records) if any(r["scores"].get("overall") is not None for r in g)]
    if not groups:
        raise UserError("--figure: no layer has a score to plot (see the errors above)")
    fig = Figure(figsize=(4.2 * len(groups), 3.0), layout="constrained")
    axes = fig.subplots(1, len(groups), squeeze=False)[0]
    for ax, group in zip(axes, groups):
        num_layers = _num_layers(group)
        for name, (xs, ys) in sweep_series(group).items():
            width, colour = (2.2, "k") if name == "overall" else (1.2, None)  # the overall mean stands out
            ax.plot(xs, ys, marker="o", ms=3, lw=width, color=colour, label=name)
        last = depth_position(-1, num_layers)
        ax.axvline(last, color="0.4", ls=":", lw=1.2, label="last hidden state (the paper's)")
        ticks = sorted({depth_position(r["settings"]["layer"], num_layers) for r in group})
        if len(ticks) > 16:
            ticks = [t for t in ticks if t % max(1, len(ticks) // 8) == 0 or t == last]
        ax.set_xticks(ticks, ["last" if t == last else str(t) for t in ticks])
        ax.set(
            title=f"{model_labels(group[:1])[0]} ({group[0]['settings']['pooling']} pooling)",
            xlabel="layer (0 = embeddings, k = block k)",
            ylabel="MTEB main score (%)",
        )
        ax.grid(alpha=0.25)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=min(len(labels), 4), frameon=False)
    return fig


def plot_layer_sweep(records: Sequence[dict], path: str | Path) -> list[Path]:
    """Write the score-by-depth figure of a layer sweep to ``PATH.png`` and ``PATH.pdf``.

    Parameters
    ----------
    records : per-layer mteb records (``settings.layer``), of one or more models
    path : the figure's path, with or without a .png / .pdf suffix

    Returns
    -------
    [png path, pdf path]
    """
    fig = draw_layer_sweep(records)
    stem = Path(path)  # without a .png / .pdf suffix: both files are written
    stem = stem.with_suffix("") if stem.suffix.lower() in (".png", ".pdf") else stem
    written = []
    for fmt in ("png", "pdf"):
        buf = io.BytesIO()
        fig.savefig(buf, format=fmt, dpi=200)
        written.append(atomic_write_bytes(stem.with_name(f"{stem.name}.{fmt}"), buf.getvalue()))
    return written
