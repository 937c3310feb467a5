"""MTEB results as nitp records: per-task main scores, the paper's group averages, record files.

``scores.tasks[name] = {main_score, metric, type, group}`` (fractions 0..1, rounded to 6 decimals as
mteb's cache stores them), ``scores.groups`` (macro averages over the tasks present, in the paper's
order) and ``scores.overall`` (the mean over all tasks: the paper's "Overall (25)").
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Iterable, Sequence

from nitp.errors import UserError
from nitp.records import default_record_path, read_record

from .tasks import PAPER_GROUPS, group_of

GROUP_ORDER = list(PAPER_GROUPS)  # Classification, STS, Retrieval/dup


def task_score(task: Any, result: Any) -> dict | None:
    """One task's entry of ``scores.tasks`` from its mteb ``TaskResult`` (None if nothing in scope).

    ``main_score`` is the mean of mteb's main score over the task's evaluated splits and subsets
    (the paper's scope), rounded to 6 decimals like mteb's cache: a fresh and a cached run agree.
    """
    meta = task.metadata
    values = [
        entry["main_score"]
        for split in task.eval_splits
        for entry in result.scores.get(split, [])
        if entry.get("hf_subset", "default") in (task.hf_subsets or ["default"])
    ]
    if not values:
        return None
    return {
        "main_score": round(float(sum(values) / len(values)), 6),
        "metric": meta.main_score,
        "type": meta.type,
        "group": group_of(meta.name, meta.type),
    }


def summarise(tasks: Iterable[Any], task_results: Iterable[Any]) -> dict:
    """mteb TaskResults -> the record's ``scores`` (see the module docstring)."""
    by_name = {r.task_name: r for r in task_results}
    scores = {
        t.metadata.name: task_score(t, by_name[t.metadata.name]) for t in tasks if t.metadata.name in by_name
    }
    scores = {name: entry for name, entry in scores.items() if entry is not None}
    return {"tasks": scores, **aggregate(scores)}


def aggregate(task_scores: dict[str, dict]) -> dict:
    """Group macro averages and the overall mean over tasks."""
    groups: dict[str, list[float]] = {}
    for s in task_scores.values():
        groups.setdefault(s["group"], []).append(s["main_score"])
    ordered = sorted(groups, key=group_order)
    all_scores = [s["main_score"] for s in task_scores.values()]
    return {
        "groups": {g: sum(groups[g]) / len(groups[g]) for g in ordered},
        "overall": sum(all_scores) / len(all_scores) if all_scores else None,
    }


def group_order(group: str) -> tuple[int, str]:
    """Sort key of group names: the paper's groups in its order, then the others by name."""
    return (GROUP_ORDER.index(group) if group in GROUP_ORDER else len(GROUP_ORDER), group)


def record_tag(suite: str | None, task_names: Sequence[str], pooling: str, layer: int) -> str:
    """File-name tag of a record: suite (or a hash of the task list), pooling, layer."""
    which = suite if suite else "tasks-" + hashlib.sha1(",".join(sorted(task_names)).encode()).hexdigest()[:8]
    return f"{which}-{pooling}-{'last' if layer == -1 else f'layer{layer}'}"


def is_recorded(path: Path, info: dict, settings: dict, inputs: str) -> bool:
    """A record at ``path`` already holds every task of these settings for this model (same
    weights, config and tokenizer: ``model_identity`` key) at this folder, made from these very
    ``inputs`` (the digest of every task's cache key: data contents, dtype, device kind, batch
    sizes, versions)."""
    if not path.is_file():
        return False
    try:
        rec = read_record(path)
    except UserError:
        return False
    s = rec.get("settings", {})
    return (
        rec.get("kind") == "mteb"
        and rec.get("inputs") == inputs
        and rec.get("model", {}).get("key") == info["key"]
        and rec.get("model", {}).get("path") == info["path"]
        and s.get("pooling") == settings["pooling"]
        and s.get("layer") == settings["layer"]
        and s.get("max_length") == settings["max_length"]
        and set(s.get("tasks", [])) == set(settings["tasks"])
        and set(settings["tasks"]) <= set(rec.get("scores", {}).get("tasks", {}))
    )


def missing_tasks(record: dict) -> list[str]:
    """Tasks asked for in a record's settings that it has no score for."""
    return [t for t in record["settings"]["tasks"] if t not in record["scores"]["tasks"]]


def record_path(info: dict, out: str | Path | None, several: bool, tag: str) -> Path:
    if out is None:
        return default_record_path(info, "mteb", tag)
    out = Path(out)
    if out.suffix == ".json":
        if several:
            raise UserError(f"--out {out}: one file for several checkpoints; give a directory instead")
        return out
    return out / f"{info['name']}-{info['hash'][:8]}-{tag}.json"


def replaces_record(path: Path, record: dict) -> bool:
    """Whether ``record`` may be written at ``path``: it scores at least one task, and no task that a
    readable record of the same weights there already scores (a failed run never overwrites a good
    record; a torn or foreign file is replaced). Same model = same ``model_identity`` key."""
    if not record["scores"]["tasks"]:
        return False
    try:
        old = read_record(path)
    except UserError:
        return True
    if old.get("kind") != "mteb" or old.get("model", {}).get("key") != record["model"]["key"]:
        return True
    return set(old.get("scores", {}).get("tasks", {})) <= set(record["scores"]["tasks"])
