"""The table `nitp-eval mteb` prints (rich): main scores in percent, grouped like the paper."""

from __future__ import annotations

from typing import Sequence

from nitp.console import text_table

from .results import group_order


def model_labels(records: Sequence[dict]) -> list[str]:
    """Short column labels: run/model name (+ step), with the hash when names collide."""
    steps = [r["model"].get("step") for r in records]
    labels = [r["model"]["name"] + ("" if step is None else f"@{step}") for r, step in zip(records, steps)]
    if len(set(labels)) < len(labels):
        labels = [f"{lab}#{r['model']['hash'][:8]}" for lab, r in zip(labels, records)]
    return labels


def format_table(
    records: Sequence[dict], labels: Sequence[str] | None = None, compare: bool | None = None
) -> str:
    """A rich table of main scores in percent, grouped like the paper.

    One column per record (``labels``, default :func:`model_labels`); with two or more (or
    ``compare``), a delta column (last minus first) per task and group, and "wins k of n"
    (tasks where the last model beats the first).
    """
    if not records:
        return "(no results)"
    labels = list(labels) if labels is not None else model_labels(records)
    info: dict[str, dict] = {}  # each task's entry in the first record that scored it
    for r in records:
        for name, s in r["scores"]["tasks"].items():
            info.setdefault(name, s)
    names = list(info)
    compare = len(records) > 1 if compare is None else compare

    def row(label: str, values: list) -> list:
        cells = [f"{v * 100:.2f}" if v is not None else "-" for v in values]
        if compare:
            a, b = values[0], values[-1]
            cells.append(f"{(b - a) * 100:+.2f}" if a is not None and b is not None else "-")
        return [label, *cells]

    rows, sections = [], []
    groups = sorted({info[n]["group"] for n in names}, key=group_order)
    for g in groups:
        members = [n for n in names if info[n]["group"] == g]
        sections.append(len(rows))
        rows += [
            row(n, [r["scores"]["tasks"].get(n, {}).get("main_score") for r in records]) for n in members
        ]
        rows.append(row(f"[{g} ({len(members)})]", [r["scores"]["groups"].get(g) for r in records]))
    sections.append(len(rows))
    rows.append(row(f"Overall ({len(names)})", [r["scores"].get("overall") for r in records]))
    columns = ["task", *labels] + (["delta"] if compare else [])
    text = text_table(columns, rows, left=["task"], section_before=sections[1:])
    if compare:
        first, last = records[0]["scores"]["tasks"], records[-1]["scores"]["tasks"]
        both = [n for n in names if n in first and n in last]
        wins = sum(last[n]["main_score"] > first[n]["main_score"] for n in both)
        text += f"\n{labels[-1]} wins {wins} of {len(both)} tasks against {labels[0]}"
    return text


def layer_label(layer: int) -> str:
    """Column label of a layer: ``L0`` (embeddings), ``L3`` (block 3), ``last`` (-1)."""
    return "last" if layer == -1 else f"L{layer}"


def sweep_groups(records: Sequence[dict]) -> list[list[dict]]:
    """Records of a layer sweep grouped by model (first-seen order), each group by depth."""
    from .settings import depth_order

    by_model: dict[str, list[dict]] = {}
    for r in records:
        by_model.setdefault(r["model"]["key"] + str(r["model"].get("path")), []).append(r)
    return [sorted(g, key=lambda r: depth_order(r["settings"]["layer"])) for g in by_model.values()]


def format_layer_table(records: Sequence[dict]) -> str:
    """Tasks x layers (main scores in %) per model of a layer sweep, and its best layer.

    One table per model: rows as in :func:`format_table` (tasks, group averages, overall),
    one column per layer in depth order (L0 = embeddings, Lk = block k, last = after the final
    norm), then a line naming the layer with the best overall score.
    """
    if not records:
        return "(no results)"
    texts = []
    for group in sweep_groups(records):
        table = format_table(group, [layer_label(r["settings"]["layer"]) for r in group], compare=False)
        scored = [r for r in group if r["scores"].get("overall") is not None]
        best = max(scored, key=lambda r: r["scores"]["overall"], default=None)
        head = (
            f"{model_labels(group[:1])[0]}: MTEB score by layer ({group[0]['settings']['pooling']} pooling)"
        )
        tail = (
            f"best layer: {layer_label(best['settings']['layer'])} (overall {best['scores']['overall'] * 100:.2f})"
            if best
            else "no layer scored"
        )
        texts.append(f"{head}\n{table}\n{tail}")
    return "\n\n".join(texts)
