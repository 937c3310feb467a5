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

import contextlib
import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nitp.errors import UserError

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
    units: str | None = None  # unit of replication when not the result's own (e.g. "batches")
    flag: str | None = None  # what the numbers cannot say (both at chance, identical answers)

    @property
    def unit(self) -> str:
        """items / batches / tasks / seeds: what n counts."""
        return self.units or getattr(self.result, "units", "items")

    @property
    def significant(self) -> bool:
        """The interval excludes 0 and the test (Holm-adjusted when set) is below 1 - confidence."""
        return self.result is not None and self.result.significant and passes_test(self.result)


def passes_test(result: Any) -> bool:
    """``p_holm`` (else ``p_value``) is below 1 - confidence, or there is no test (a GroupMean)."""
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


# Metrics that score each item right (1) or wrong (0); lm-eval averages them into the task value.
BINARY_METRICS = {"acc", "acc_norm", "exact_match"}
TOLERANCE = 1e-6  # lm-eval's mean of the same floats, re-read from JSON
NO_ITEMS_REASON = "the record scored no items of this task"


def check_record(record: dict, path) -> None:
    """Refuse, in one ``UserError`` line, a record whose numbers contradict themselves.

    bench: every value and the average are numbers (or null); a task's per-item scores are numbers,
    0 or 1 for accuracy metrics, and their mean is the task's value (pooled over items, or the
    mean of the subtasks' means, as lm-eval aggregates groups); with items for every task the
    average is the mean of the task values. A task that scored zero items is shown "—" and the
    average beside it too (a mean that counts an unscored task is stale). mteb: the overall score
    is the mean of the tasks' main scores.
    """
    scores = record["scores"]
    if record.get("kind") == "bench":
        for task, score in (scores.get("tasks") or {}).items():
            if not isinstance(score, dict):
                raise UserError(f"{path}: task {task} is not an object; re-run nitp-eval bench")
            _number(score.get("value"), path, f"task {task}: value")
            _check_items(score, path, task)
        _number(scores.get("average"), path, "average")
        _check_average(scores, path)
    elif record.get("kind") == "mteb":
        _check_mteb(scores, path)


def _number(value, path, what: str) -> None:
    ok = value is None or (isinstance(value, (int, float)) and not isinstance(value, bool))
    if not ok or (value is not None and not np.isfinite(value)):
        raise UserError(
            f"{path}: {what} is {value!r}, not a number; re-run the command that wrote the record"
        )


def _check_items(score: dict, path, task: str) -> None:
    items, metric = score.get("items"), score.get("metric")
    if not isinstance(items, dict):
        return
    columns = [col.get(metric) for col in items.values() if isinstance(col, dict)]
    leaves = [np.asarray(c, dtype=object) for c in columns if isinstance(c, list)]
    values = np.concatenate(leaves) if leaves else np.zeros(0)
    if len(values) == 0:
        score.pop("items")
        score.update(value=None, items_unavailable=NO_ITEMS_REASON)
        return
    for v in values:
        _number(v, path, f"task {task}: an item's {metric}")
    if metric in BINARY_METRICS and not np.all((values == 0) | (values == 1)):
        bad = next(v for v in values if v not in (0, 1))
        raise UserError(
            f"{path}: task {task}: {metric} items must be 0 or 1 (an answer is right or wrong), found {bad!r}; "
            "the record is damaged or edited, re-run nitp-eval bench"
        )
    value, leaves = score.get("value"), [np.asarray(c, dtype=float) for c in leaves if len(c)]
    pooled = float(np.mean(values.astype(float)))
    by_leaf = float(np.mean([np.mean(x) for x in leaves]))  # lm-eval's mean of a group's subtasks
    if value is not None and min(abs(value - pooled), abs(value - by_leaf)) > TOLERANCE:
        raise UserError(
            f"{path}: task {task}: value {value:.6g} disagrees with the mean of its {len(values)} items "
            f"({pooled:.6g}); the record is damaged or edited, re-run nitp-eval bench"
        )


def _check_average(scores: dict, path) -> None:
    tasks = scores.get("tasks") or {}
    if unscored := [t for t, s in tasks.items() if s.get("items_unavailable") == NO_ITEMS_REASON]:
        scores["average"] = None
        scores["average_note"] = f"average not shown: it counts {', '.join(unscored)}, scored on no items"
        return
    values = [s.get("value") for s in tasks.values()]
    if all("items" in s for s in tasks.values()) and not any(v is None for v in values):
        _check_mean(path, "average", scores.get("average"), values, "task values", "bench")


def _check_mean(path, what: str, value: float | None, parts: list, of: str, command: str) -> None:
    if value is not None and parts and abs(value - float(np.mean(parts))) > TOLERANCE:
        raise UserError(
            f"{path}: {what} {value:.6g} is not the mean of its {len(parts)} {of} ({float(np.mean(parts)):.6g}); "
            f"the record is damaged or edited, re-run nitp-eval {command}"
        )


def _check_mteb(scores: dict, path) -> None:
    tasks = scores.get("tasks") or {}
    for task, info in tasks.items():
        _number((info or {}).get("main_score"), path, f"task {task}: main_score")
    for group, value in (scores.get("groups") or {}).items():
        _number(value, path, f"group {group}")
    overall = scores.get("overall")
    _number(overall, path, "overall")
    mains = [m for info in tasks.values() if (m := (info or {}).get("main_score")) is not None]
    _check_mean(path, "overall", overall, mains, "tasks' main scores", "mteb")


def _paired_items(a: dict, b: dict, task: str) -> tuple[np.ndarray, np.ndarray, str | None] | str:
    """The two tasks' items on their common (subtask, doc_id), in a's order, or why not."""
    if a.get("metric") != b.get("metric"):
        return f"the records use different metrics ({a.get('metric')} vs {b.get('metric')})"
    ia, ib = item_scores(a), item_scores(b)
    if why := next((got for got in (ia, ib) if isinstance(got, str)), None):
        return why
    common = [k for k in ia if k in ib]
    if len(common) < 2:
        return f"the records share {len(common)} items (different --limit or data?)"
    note = None
    if len(common) < max(len(ia), len(ib)):
        note = f"{task}: paired on the {len(common)} items both records scored ({len(ia)} and {len(ib)})"
    return np.array([ia[k] for k in common]), np.array([ib[k] for k in common]), note


def bench_task(record_a: dict, record_b: dict, task: str) -> Tested:
    """``b - a`` on one benchmark, paired by (subtask, doc_id): :func:`stats.paired_difference`.

    Parameters
    ----------
    record_a, record_b : bench records (``scores.tasks[task].items``)
    task : the record's task name (``"analogies"``); the result's ``scale = 100`` (points)
    """
    a, b = (record["scores"].get("tasks", {}).get(task) for record in (record_a, record_b))
    if not a or not b:
        return untested("scored in one record only")
    paired = _paired_items(a, b, task)
    if isinstance(paired, str):
        return untested(paired)
    x, y, note = paired
    result = stats.paired_difference(x, y)
    flags = [f for f in (identical_flag(result), chance_flag(task, x, y, a.get("metric"))) if f]
    return Tested(result, note=note, flag="; ".join(flags) or None)


# Guessing's accuracy per benchmark (1 / choices) where every item has the same number of choices;
# 0 for generated answers (exact match, last word, code). Others (mixed choice counts) are not judged.
FOUR_CHOICES = ("mmlu", "ceval", "xiezhi", "arc_challenge", "analogies", "lt_openbookqa", "lt_mmlu")
BB_BINARY = ("causal_judgment", "navigate", "sports_understanding", "snarks", "anachronisms", "implicatures")
CHANCE = {
    **dict.fromkeys(("lambada", "bbh", "gsm8k", "lcbench", "next_word"), 0.0),  # generated answers
    **dict.fromkeys(FOUR_CHOICES, 0.25),
    **dict.fromkeys(("balanced_copa", "sentiment", "lt_piqa", "lt_boolq"), 0.5),
    **dict.fromkeys((f"bb_{t}" for t in BB_BINARY), 0.5),
    **dict.fromkeys(("commonsense_qa", "lt_csqa"), 0.20),
    "mmlu_pro": 0.10,
    "lt_siqa": 1 / 3,
}
FLOOR = 0.05  # a generation task whose 95% upper bound of accuracy is below 5 % is at the floor


def at_chance(task: str, scores: np.ndarray, metric: str | None = None) -> bool:
    """One model's 0/1 answers are not distinguishable from guessing (two-sided binomial test
    against 1 / choices, p >= 0.05), or, for generated answers, its accuracy's Clopper-Pearson
    95% upper bound is below 5 %. Unknown tasks and non-0/1 scores are never judged."""
    chance = CHANCE.get(task)
    if chance is None or metric not in BINARY_METRICS or not np.all((scores == 0) | (scores == 1)):
        return False
    k, n = int(scores.sum()), len(scores)
    if chance == 0:
        from statsmodels.stats.proportion import proportion_confint

        return bool(proportion_confint(k, n, alpha=0.05, method="beta")[1] < FLOOR)
    from scipy.stats import binomtest

    return bool(binomtest(k, n, chance).pvalue >= 0.05)


def chance_flag(task: str, x: np.ndarray, y: np.ndarray, metric: str | None) -> str | None:
    """ "both at chance" when neither model beats guessing on this task (:func:`at_chance`)."""
    if at_chance(task, x, metric) and at_chance(task, y, metric):
        chance = CHANCE[task]
        return "both at the floor" if chance == 0 else f"both at chance ({100 * chance:.0f} %)"
    return None


def identical_flag(result) -> str | None:
    """Zero-width intervals: every item has the same difference (identical answers when it is 0)."""
    if getattr(result, "interval", None) != "exact":
        return None
    if result.delta == 0:
        return f"identical answers on all {result.n:,} items"
    return f"every item differs by the same {result.delta:+.3g}"


def bench_average(record_a: dict, record_b: dict) -> Tested:
    """``b - a`` on the suite average (mean of task values): item i of task t scored
    ``s_i = N x_i / (T n_t)`` (module doc), tested with :func:`stats.paired_difference`
    (``kind="continuous"``: paired permutation test, paired bootstrap interval)."""
    ta, tb = record_a["scores"].get("tasks", {}), record_b["scores"].get("tasks", {})
    if set(ta) != set(tb):
        only = sorted(set(ta) ^ set(tb))
        return untested(f"the averages are over different tasks ({', '.join(only)} in one record only)")
    pairs = {task: _paired_items(ta[task], tb[task], task) for task in ta}
    if why := next((f"{task}: {p}" for task, p in pairs.items() if isinstance(p, str)), None):
        return untested(why)
    xs, ys, notes = zip(*pairs.values())
    n_total = sum(len(x) for x in xs)
    weights = [np.full(len(x), n_total / (len(xs) * len(x))) for x in xs]
    x, y, w = np.concatenate(xs), np.concatenate(ys), np.concatenate(weights)
    result = stats.paired_difference(w * x, w * y, kind="continuous")
    return Tested(result, note="; ".join(n for n in notes if n) or None)


# ----------------------------------------------------------------------------- MTEB
def mteb_groups(record_a: dict, record_b: dict, groups: list[str]) -> tuple[dict[str, Tested], Any]:
    """Per group and ``"Overall"``: the mean of per-task deltas with a bootstrap interval over
    tasks (:func:`stats.group_mean_interval`); and the sign test over all tasks (or None)."""
    ta, tb = record_a["scores"].get("tasks", {}), record_b["scores"].get("tasks", {})
    deltas = {}  # task -> (group, b - a) of the main scores both records hold
    for task, sb in tb.items():
        sa = ta.get(task)
        if sa and sa.get("main_score") is not None and sb.get("main_score") is not None:
            group = str(sb.get("group") or sb.get("type") or "other")
            deltas[task] = (group, float(sb["main_score"]) - float(sa["main_score"]))
    out: dict[str, Tested] = {}
    for g in [*groups, "Overall"]:
        values = [d for grp, d in deltas.values() if g in ("Overall", grp)]
        if not values:
            out[g] = untested("no task in both records")
        elif len(values) < MIN_TASKS:
            out[g] = untested(f"fewer than {MIN_TASKS} tasks: no interval over tasks")
        else:
            out[g] = Tested(stats.group_mean_interval(values))
    return out, (stats.sign_test([d for _, d in deltas.values()]) if deltas else None)


# ----------------------------------------------------------------------------- validation CE
VAL_BATCHES_KEY = "val_loss_batches"
NO_VAL_BATCHES = (
    "metrics.jsonl holds only the mean val_loss of each validation; an interval needs the "
    f"per-batch losses ({VAL_BATCHES_KEY})"
)


# What must agree before two runs' validation batches pair: batch i must hold the same tokens.
VAL_SETUP = ("data", "data.seq_len", "log.eval_batches", "train.batch_size")


def validation_setup(config: dict, skip_data: bool = False) -> dict[str, Any]:
    """The settings that fix a run's validation batches: the data (the prepared folder's
    fingerprint, else the fingerprint of the data settings; ``skip_data``: not computed),
    ``seq_len``, ``eval_batches``, ``batch_size``."""
    setup = {k: (config.get(k.split(".")[0]) or {}).get(k.split(".")[1]) for k in VAL_SETUP[1:]}
    return {"data": None if skip_data else _data_fingerprint(config.get("data") or {}), **setup}


def _data_keys(config: dict) -> dict:
    """The data settings, less how windows are cut (seq_len is compared on its own)."""
    return {k: v for k, v in (config.get("data") or {}).items() if k != "seq_len"}


def _data_fingerprint(data: dict) -> str:
    meta = Path(str(data.get("prepared_dir") or "")) / "meta.json"
    if data.get("prepared_dir") and meta.is_file():
        with contextlib.suppress(ValueError, KeyError, TypeError):  # damaged: fingerprint the settings
            return str(json.loads(meta.read_text())["fingerprint"])
    from nitp_train.data import data_fingerprint

    return data_fingerprint(data)


def validation_mismatch(config_a: dict | None, config_b: dict | None) -> str | None:
    """Why two runs' validation batches do not pair (None when they do)."""
    if not config_a or not config_b:
        return "not paired: a model without a run config, so its validation batches are unknown"
    same_data = _data_keys(config_a) == _data_keys(config_b)  # equal settings: no fingerprint needed
    a, b = validation_setup(config_a, same_data), validation_setup(config_b, same_data)
    differ = [k for k in VAL_SETUP if a[k] != b[k]]
    if not differ:
        return None
    shown = "; ".join(
        "different data (corpus, tokenizer or split)" if k == "data" else f"{k} {a[k]} vs {b[k]}"
        for k in differ
    )
    return f"not paired: the runs validate on different batches ({shown}); compare them at matched settings"


def validation_ce(
    line_a: dict, line_b: dict, config_a: dict | None = None, config_b: dict | None = None
) -> Tested:
    """``b - a`` of validation CE paired by validation batch (same batches in both runs).

    Needs ``val_loss_batches`` (one mean CE per validation batch) in both validation lines and
    runs whose batches hold the same tokens (:func:`validation_mismatch`: same data, seq_len,
    eval_batches, batch_size); a paired permutation test and paired bootstrap interval over
    batches. Lower is better. The unit is the batch: it says whether these two checkpoints
    differ on this validation set, not whether the objectives do (that needs seeds).
    """
    na = dict(scale=1.0, higher_is_better=False)
    a, b = line_a.get(VAL_BATCHES_KEY), line_b.get(VAL_BATCHES_KEY)
    if mismatch := (validation_mismatch(config_a, config_b) if (config_a or config_b) else None):
        return untested(mismatch, **na)
    if not isinstance(a, list) or not isinstance(b, list):
        return untested(NO_VAL_BATCHES, **na)
    if len(a) != len(b) or len(a) < 2:
        return untested(
            f"validation CE: {len(a)} and {len(b)} batches do not pair (same log.eval_batches?)", **na
        )
    result = stats.paired_difference(a, b, kind="continuous")
    return Tested(result, units="batches", flag=permutation_floor(result), **na)


def permutation_floor(result) -> str | None:
    """A note when p sits at the smallest value an exact paired permutation over n pairs can give."""
    exact = getattr(result, "test", None) == "paired-permutation" and result.n <= 16
    floor = 2.0 / 2**result.n if exact else 0.0
    at_floor = exact and result.p_value <= floor * 1.0001
    return f"p = {floor:.3g} is the smallest p {result.n} pairs can give" if at_floor else None


# ----------------------------------------------------------------------------- families
def holm_family(tests: list[Tested]) -> list[Tested]:
    """Holm-adjust the p-values of one table's tests (GroupMeans and untested cells pass through)."""
    idx = [i for i, t in enumerate(tests) if getattr(t.result, "p_value", None) is not None]
    if len(idx) < 2:
        return list(tests)
    adjusted = stats.with_holm([tests[i].result for i in idx])
    out = list(tests)
    for i, result in zip(idx, adjusted):
        out[i] = dataclasses.replace(tests[i], result=result)
    return out
