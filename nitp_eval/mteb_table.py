"""The plain-text table of `nitp-eval mteb`: main scores in percent, grouped like the paper."""

from __future__ import annotations

from typing import Sequence

from .mteb_results import GROUP_ORDER


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
    """A plain-text table of main scores in percent, grouped like the paper.

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
    width = max([len(n) for n in names] + [len("Overall (00)"), 14])
    cols = [max(len(lab), 7) for lab in labels]
    header = (
        f"{'task':<{width}}  "
        + "  ".join(f"{lab:>{c}}" for lab, c in zip(labels, cols))
        + ("    delta" if compare else "")
    )
    lines = [header, "-" * len(header)]

    def row(label: str, values: list) -> str:
        cells = "  ".join(
            f"{(v * 100):>{c}.2f}" if v is not None else f"{'-':>{c}}" for v, c in zip(values, cols)
        )
        delta = ""
        if compare:
            a, b = values[0], values[-1]
            delta = f"  {((b - a) * 100):>+7.2f}" if a is not None and b is not None else f"  {'-':>7}"
        return f"{label:<{width}}  {cells}{delta}"

    groups = sorted(
        {info[n]["group"] for n in names}, key=lambda g: (GROUP_ORDER.index(g) if g in GROUP_ORDER else 99, g)
    )
    for g in groups:
        members = [n for n in names if info[n]["group"] == g]
        for n in members:
            lines.append(row(n, [r["scores"]["tasks"].get(n, {}).get("main_score") for r in records]))
        lines.append(row(f"[{g} ({len(members)})]", [r["scores"]["groups"].get(g) for r in records]))
        lines.append("")
    lines.append(row(f"Overall ({len(names)})", [r["scores"].get("overall") for r in records]))
    if compare:
        both = [
            n for n in names if n in records[0]["scores"]["tasks"] and n in records[-1]["scores"]["tasks"]
        ]
        wins = sum(
            records[-1]["scores"]["tasks"][n]["main_score"] > records[0]["scores"]["tasks"][n]["main_score"]
            for n in both
        )
        lines.append(f"{labels[-1]} wins {wins} of {len(both)} tasks against {labels[0]}")
    return "\n".join(lines)
