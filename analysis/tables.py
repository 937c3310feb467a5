"""Rows of ``nitp-geom`` output from geom records, and their rendering as table, CSV or JSON.

A *row* is a flat dict; ``render`` prints a list of rows as a rich table (stdout), CSV or JSON.
Several checkpoints are shown side by side: one column per checkpoint (``rank``, ``anisotropy``)
or one column group per checkpoint (``layers``). Which metrics each table shows, in which order and
under which header, is the ``geom_*`` views of :mod:`nitp.metrics_registry`.
"""

from __future__ import annotations

import csv
import io
import json
import math
from typing import Any

from nitp import metrics_registry as registry

COUNTS = {"n_tokens": "tokens"}  # columns that are counts, not metrics (nitp.metrics_registry)
# the trajectory's columns of the run's NITP target layer: header suffix -> record field
TARGET_COLUMNS = {
    "erank_cov": "effective_rank_covariance",
    "ridge_R2": "ridge_r2",
    "CKA_prev": "cka_vs_reference",
}


def rank_metrics() -> tuple[str, ...]:
    """``nitp-geom rank``: the registry's ``geom_rank`` view, then the token count."""
    return registry.names(view="geom_rank") + ("n_tokens",)


def anisotropy_metrics() -> tuple[str, ...]:
    """``nitp-geom anisotropy``: the registry's ``geom_anisotropy`` view, then the token count."""
    return registry.names(view="geom_anisotropy") + ("n_tokens",)


def short_name(key: str) -> str:
    """The column header of record field ``key``: the registry's ``short`` (other keys as they are)."""
    m = registry.find(key)
    return m.short if m is not None else COUNTS.get(key, key)


def label_of(record: dict) -> str:
    """A short, readable name of the record's checkpoint: run@step or folder name."""
    m = record["model"]
    if m.get("run") and m.get("step") is not None:
        return f"{m['name']}@{m['step']}"
    return m.get("name") or m["path"]


def unique_labels(records: list[dict]) -> list[str]:
    """Each record's :func:`label_of`, with its weights' hash where two records share one."""
    labels = [label_of(r) for r in records]
    return [
        f"{lab}#{r['model']['hash'][:6]}" if labels.count(lab) > 1 else lab for lab, r in zip(labels, records)
    ]


def _layer_rows(record: dict) -> dict[int, dict]:
    return {row["layer"]: row for row in record["scores"]["layers"]}


def metric_rows(records: list[dict], metrics: tuple[str, ...], layers: list[int]) -> list[dict]:
    """``rank`` / ``anisotropy``: one row per (layer, metric), one column per checkpoint."""

    def value(rec: dict, k: int, metric: str):
        summary = rec["scores"]["summary"]  # the last hidden state's summary holds more (sampled pairs)
        return (summary if k == -1 and metric in summary else _layer_rows(rec).get(k, {})).get(metric)

    labels = unique_labels(records)
    return [
        {"layer": k, "metric": metric, **{lab: value(rec, k, metric) for lab, rec in zip(labels, records)}}
        for k in layers
        for metric in metrics
    ]


def layer_rows(records: list[dict], metrics: tuple[str, ...] | None = None) -> list[dict]:
    """``layers``: one row per layer; one checkpoint gives every metric, several a column group each."""
    if len(records) == 1:
        rows = records[0]["scores"]["layers"]
        metrics = metrics or tuple(m for m in registry.names(view="geom_layers") if any(m in r for r in rows))
        return [
            {"layer": r["layer"], "name": r.get("name", ""), **{short_name(m): r.get(m) for m in metrics}}
            for r in rows
        ]
    metrics = metrics or registry.names(view="geom_side_by_side")
    labels = unique_labels(records)
    all_layers = sorted({k for rec in records for k in _layer_rows(rec)}, key=lambda k: (k == -1, k))
    by_layer = [(lab, _layer_rows(rec)) for lab, rec in zip(labels, records)]
    return [
        {"layer": k}
        | {f"{short_name(m)}[{lab}]": rows.get(k, {}).get(m) for lab, rows in by_layer for m in metrics}
        for k in all_layers
    ]


def layer_rows_long(records: list[dict]) -> list[dict]:
    """CSV form of ``layers``: one row per (checkpoint, layer) with every metric."""
    return [
        {"checkpoint": lab, "step": rec["model"].get("step")}
        | {k: v for k, v in r.items() if not isinstance(v, (dict, list))}
        for lab, rec in zip(unique_labels(records), records)
        for r in rec["scores"]["layers"]
    ]


def trajectory_rows(records: list[dict], target_layer: int | None) -> list[dict]:
    """One row per checkpoint of a run: last-hidden-state geometry, stability, target layer."""
    rows = []
    for rec in records:
        s, by_layer = rec["scores"]["summary"], _layer_rows(rec)
        row = {"step": rec["model"].get("step"), "tokens_seen": rec["model"].get("tokens_seen")}
        row.update({m.short: s.get(m.name) for m in registry.metrics(view="geom_trajectory")})
        row["CKA_prev"] = by_layer.get(-1, {}).get("cka_vs_reference")
        if target_layer is not None:
            t = by_layer.get(target_layer, {})
            row.update({f"L{target_layer}_{col}": t.get(key) for col, key in TARGET_COLUMNS.items()})
        rows.append(row)
    return rows


def flops_rows(report: dict) -> list[dict]:
    """``flops``: per component, the paper's closed form and the exact count side by side, then NITP."""
    b, paper = report["breakdown"], report["paper_closed_form"]
    exact = {
        "attention_linear": b["attention_linear"],
        "attention_scores": b["attention_scores"],
        "ffn": b["ffn_dense"] + b["ffn_experts"],
        "router": b["router"],
        "lm_head": b["lm_head"],
        "total (NTP)": b["total"],
        "NITP extra (72 d^2 + 18 d)": report["nitp_extra_flops_per_token"],
        "NITP overhead (extra / total)": report["nitp_overhead"],
    }
    paper_of = {
        **paper,
        "total (NTP)": paper["total"],
        "NITP extra (72 d^2 + 18 d)": paper["nitp_extra"],
        "NITP overhead (extra / total)": paper["nitp_overhead"],
    }
    return [
        {"component": k, "paper_closed_form": paper_of[k], "exact": v, "exact_minus_paper": v - paper_of[k]}
        for k, v in exact.items()
    ]


# ----------------------------------------------------------------------------- rendering
def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if v != 0 and (abs(v) >= 1e6 or abs(v) < 1e-3):
            return f"{v:.3e}"
        return f"{v:.4f}" if abs(v) < 10 else f"{v:.2f}"
    return str(v)


def to_csv(rows: list[dict]) -> str:
    """CSV of ``rows``: one column per key (first-seen order); missing and None cells empty."""
    buf = io.StringIO()
    cols = list(dict.fromkeys(k for r in rows for k in r))
    writer = csv.DictWriter(buf, fieldnames=cols, restval="", lineterminator="\n")  # csv writes None as ""
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def render(rows: list[dict], fmt: str, title: str | None = None, records: list[dict] | None = None) -> str:
    """The text to print: ``table`` (rich), ``csv`` or ``json`` (the records when given)."""
    if fmt == "csv":
        return to_csv(rows)
    if fmt == "json":
        if records is not None:  # the records without their unsaved ``_path``
            rows = [{k: v for k, v in r.items() if not k.startswith("_")} for r in records]
        return json.dumps(rows, indent=2, default=str)
    from nitp.console import text_table

    cols = list(dict.fromkeys(k for r in rows for k in r))
    left = ("metric", "name", "component", "checkpoint", "preset", "note")
    return text_table(cols, [[_fmt(r.get(c)) for c in cols] for r in rows], title=title, left=left) + "\n"
