"""The statistics behind every Δ cell: two models' records paired item by item, task by task.

=====================  ========================================  ===================================
function               pairs                                     statistics (:mod:`reports.stats`)
=====================  ========================================  ===================================
bench_task             one benchmark, by (subtask, doc_id)       ``paired_difference``: McNemar exact
                                                                 (0/1 items) or paired permutation;
                                                                 paired bootstrap 95% interval
bench_average          the suite average: every item weighted    ``paired_difference`` (continuous)
                       ``1 / (T n_t)``
mteb_groups            MTEB group / overall: per-task deltas     ``group_mean_interval`` (bootstrap
                                                                 over tasks), ``sign_test``
validation_ce          validation batches, by batch index        ``paired_difference`` (continuous)
holm_family            the tests of one table                    ``with_holm``
=====================  ========================================  ===================================

The suite average of a bench record is the mean of its T task values, each the mean of its
``n_t`` items. Giving item i of task t the score ``s_i = N x_i / (T n_t)`` (N items in all)
makes ``mean(s)`` that average, so one paired test over the weighted items tests the average;
its bootstrap resamples items without keeping each task's count fixed (slightly wider than a
stratified bootstrap).

Each function returns a :class:`Tested`: the stats result, or ``None`` with the reason (a record
written before bench kept per-item results, different items, ...). Deltas are ``b - a`` in
record units (fractions); ``scale`` turns them into table units (points).

Example
-------
>>> t = bench_task(record_ntp, record_nitp, "analogies")                 # doctest: +SKIP
>>> t.result.delta, t.result.ci_low, t.result.ci_high, t.result.p_value  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import stats

# Fewer tasks than this in an MTEB group: no interval over tasks (a bootstrap over 2-4 values
# has a handful of distinct means and covers far below 95%).
MIN_TASKS = 5
NO_ITEMS = "no per-item results (record written before nitp-eval bench kept them; rerun nitp-eval bench)"


@dataclass(frozen=True)
class Tested:
    """A Δ cell's statistics: ``result`` (a stats Comparison, SeedComparison or GroupMean) or the
    ``reason`` there is none; ``scale`` converts record units to table units; ``note`` says what
    was paired when it was not everything (e.g. "paired on 148 of 150 items")."""

    result: Any | None
    reason: str | None = None
    scale: float = 100.0
    higher_is_better: bool = True
    note: str | None = None

    @property
    def significant(self) -> bool:
        """The interval excludes 0 and the test (Holm-adjusted when set) is below 1 - confidence."""
        return is_significant(self.result)


def is_significant(result: Any | None) -> bool:
    """Interval excludes 0 and ``p_holm`` (else ``p_value``; none for a GroupMean) < 1 - confidence.

    Example
    -------
    >>> is_significant(stats.GroupMean(5, 0.01, 0.002, 0.02, 0.95, "BCa"))
    True
    """
    if result is None or not result.significant:
        return False
    p = getattr(result, "p_holm", None)
    p = getattr(result, "p_value", None) if p is None else p
    return p is None or p < 1 - result.confidence


def untested(reason: str, scale: float = 100.0, higher_is_better: bool = True) -> Tested:
    return Tested(None, reason, scale, higher_is_better)


# ----------------------------------------------------------------------------- bench
def item_scores(score: dict) -> dict[tuple[str, int], float] | str:
    """``{(subtask, doc_id): value}`` of one task entry of a bench record, or why there are none.

    Example
    -------
    >>> item_scores({"metric": "acc", "items": {"t": {"doc_id": [0, 1], "acc": [1, 0]}}})
    {('t', 0): 1.0, ('t', 1): 0.0}
    """
    items = score.get("items")
    if not isinstance(items, dict) or not items:
        return score.get("items_unavailable") or NO_ITEMS
    metric = score.get("metric")
    out: dict[tuple[str, int], float] = {}
    for leaf, col in items.items():
        if not isinstance(col, dict) or metric not in col or len(col.get("doc_id", [])) != len(col[metric]):
            return f"per-item results of {leaf} do not hold {metric} for every doc_id"
        out.update({(leaf, int(d)): float(v) for d, v in zip(col["doc_id"], col[metric])})
    return out


def _paired_items(a: dict, b: dict, task: str) -> tuple[np.ndarray, np.ndarray, str | None] | str:
    """The two tasks' items on their common (subtask, doc_id), in a's order, or why not."""
    if a.get("metric") != b.get("metric"):
        return f"the records use different metrics ({a.get('metric')} vs {b.get('metric')})"
    ia, ib = item_scores(a), item_scores(b)
    for got in (ia, ib):
        if isinstance(got, str):
            return got
    common = [k for k in ia if k in ib]
    if len(common) < 2:
        return f"the records share {len(common)} items (different --limit or data?)"
    note = None
    if len(common) < max(len(ia), len(ib)):
        note = f"{task}: paired on the {len(common)} items both records scored ({len(ia)} and {len(ib)})"
    x = np.array([ia[k] for k in common])
    y = np.array([ib[k] for k in common])
    return x, y, note


def bench_task(record_a: dict, record_b: dict, task: str) -> Tested:
    """``b - a`` on one benchmark, paired by (subtask, doc_id): :func:`stats.paired_difference`.

    Parameters
    ----------
    record_a, record_b : bench records (``scores.tasks[task].items``)
    task : the record's task name (``"analogies"``)

    Returns
    -------
    Tested (``scale = 100``: points)
    """
    a = record_a["scores"].get("tasks", {}).get(task)
    b = record_b["scores"].get("tasks", {}).get(task)
    if not a or not b:
        return untested("scored in one record only")
    paired = _paired_items(a, b, task)
    if isinstance(paired, str):
        return untested(paired)
    x, y, note = paired
    return Tested(stats.paired_difference(x, y), note=note)


def bench_average(record_a: dict, record_b: dict) -> Tested:
    """``b - a`` on the suite average (mean of task values), every item weighted ``1/(T n_t)``.

    ``s_i = N x_i / (T n_t)`` for item i of task t (N paired items, T tasks, n_t items of t):
    ``mean(s_b - s_a)`` is the mean over tasks of the per-task deltas, tested with
    :func:`stats.paired_difference` (``kind="continuous"``: paired permutation test, paired
    bootstrap interval).
    """
    ta, tb = record_a["scores"].get("tasks", {}), record_b["scores"].get("tasks", {})
    if set(ta) != set(tb):
        only = sorted(set(ta) ^ set(tb))
        return untested(f"the averages are over different tasks ({', '.join(only)} in one record only)")
    xs, ys, notes = [], [], []
    for task in ta:
        paired = _paired_items(ta[task], tb[task], task)
        if isinstance(paired, str):
            return untested(f"{task}: {paired}")
        xs.append(paired[0])
        ys.append(paired[1])
        notes += [paired[2]] if paired[2] else []
    n_total = sum(len(x) for x in xs)
    weights = [np.full(len(x), n_total / (len(xs) * len(x))) for x in xs]
    x, y, w = np.concatenate(xs), np.concatenate(ys), np.concatenate(weights)
    result = stats.paired_difference(w * x, w * y, kind="continuous")
    return Tested(result, note="; ".join(notes) or None)


# ----------------------------------------------------------------------------- MTEB
def mteb_task_deltas(record_a: dict, record_b: dict) -> dict[str, tuple[str, float]]:
    """``{task: (group, b - a)}`` of the main scores both MTEB records hold."""
    ta, tb = record_a["scores"].get("tasks", {}), record_b["scores"].get("tasks", {})
    out = {}
    for task, sb in tb.items():
        sa = ta.get(task)
        if sa and sa.get("main_score") is not None and sb.get("main_score") is not None:
            group = str(sb.get("group") or sb.get("type") or "other")
            out[task] = (group, float(sb["main_score"]) - float(sa["main_score"]))
    return out


def mteb_groups(record_a: dict, record_b: dict, groups: list[str]) -> tuple[dict[str, Tested], Any]:
    """Per group and ``"Overall"``: the mean of per-task deltas with a bootstrap interval over
    tasks (:func:`stats.group_mean_interval`); and the sign test over all tasks (or None)."""
    deltas = mteb_task_deltas(record_a, record_b)
    out: dict[str, Tested] = {}
    for g in [*groups, "Overall"]:
        values = [d for grp, d in deltas.values() if g in ("Overall", grp)]
        if not values:
            out[g] = untested("no task in both records")
        elif len(values) < MIN_TASKS:
            out[g] = untested(f"fewer than {MIN_TASKS} tasks: no interval over tasks")
        else:
            out[g] = Tested(stats.group_mean_interval(values))
    sign = stats.sign_test([d for _, d in deltas.values()]) if deltas else None
    return out, sign


# ----------------------------------------------------------------------------- validation CE
VAL_BATCHES_KEY = "val_loss_batches"
NO_VAL_BATCHES = (
    "metrics.jsonl holds only the mean val_loss of each validation; an interval needs the "
    f"per-batch losses ({VAL_BATCHES_KEY})"
)


def validation_ce(line_a: dict, line_b: dict) -> Tested:
    """``b - a`` of validation CE paired by validation batch (same batches in both runs).

    Needs ``val_loss_batches`` (one mean CE per validation batch) in both validation lines;
    a paired permutation test and paired bootstrap interval over batches. Lower is better.
    """
    a, b = line_a.get(VAL_BATCHES_KEY), line_b.get(VAL_BATCHES_KEY)
    if not isinstance(a, list) or not isinstance(b, list):
        return untested(NO_VAL_BATCHES, scale=1.0, higher_is_better=False)
    if len(a) != len(b) or len(a) < 2:
        return untested(
            f"validation CE: {len(a)} and {len(b)} batches do not pair (same log.eval_batches?)",
            scale=1.0,
            higher_is_better=False,
        )
    return Tested(stats.paired_difference(a, b, kind="continuous"), scale=1.0, higher_is_better=False)


# ----------------------------------------------------------------------------- families
def holm_family(tests: list[Tested]) -> list[Tested]:
    """Holm-adjust the p-values of one table's tests (GroupMeans and untested cells pass through)."""
    idx = [
        i
        for i, t in enumerate(tests)
        if t.result is not None and getattr(t.result, "p_value", None) is not None
    ]
    if len(idx) < 2:
        return list(tests)
    adjusted = stats.with_holm([tests[i].result for i in idx])
    out = list(tests)
    for i, result in zip(idx, adjusted):
        out[i] = dataclasses.replace(tests[i], result=result)
    return out
