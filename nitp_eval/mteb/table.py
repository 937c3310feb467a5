"""The table `nitp-eval mteb` prints (rich): main scores in percent, grouped like the paper."""

from __future__ import annotations

from typing import Sequence

from nitp.console import text_table

from .results import GROUP_ORDER


def model_labels(records: Sequence[dict]) -> list[str]:
    """Short column labels: run/model name (+ step), with the hash when names collide."""
    labels = []
    for r in records:
        m = r["model"]
        labels.append(m["name"] + (f"@{m['step']}" if m.get("step") is not None else ""))
    if len(set(labels)) < len(labels):
        labels = [f"{lab}#{r['model']['hash'][:8]}" for lab, r in zip(labels, records)]
    return labels


def format_table(records: Sequence[dict]) -> str:
    """A rich table of main scores in percent, grouped like the paper.

    One column per record; with two or more, a delta column (last minus first) per task and
    group, and "wins k of n" (tasks where the last model beats the first).
    """
    if not records:
        return "(no results)"
    labels = model_labels(records)
    names: list[str] = []
    info: dict[str, dict] = {}
    for r in records:
        for name, s in r["scores"]["tasks"].items():
            if name not in info:
                names.append(name)
                info[name] = s
    compare = len(records) > 1

    def row(label: str, values: list) -> list:
        cells = [f"{v * 100:.2f}" if v is not None else "-" for v in values]
        if compare:
            a, b = values[0], values[-1]
            cells.append(f"{(b - a) * 100:+.2f}" if a is not None and b is not None else "-")
        return [label, *cells]

    rows, sections = [], []
    groups = sorted(
        {info[n]["group"] for n in names}, key=lambda g: (GROUP_ORDER.index(g) if g in GROUP_ORDER else 99, g)
    )
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
        both = [
            n for n in names if n in records[0]["scores"]["tasks"] and n in records[-1]["scores"]["tasks"]
        ]
        wins = sum(
            records[-1]["scores"]["tasks"][n]["main_score"] > records[0]["scores"]["tasks"][n]["main_score"]
            for n in both
        )
        text += f"\n{labels[-1]} wins {wins} of {len(both)} tasks against {labels[0]}"
    return text
