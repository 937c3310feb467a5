"""Which MTEB tasks `nitp-eval mteb` runs, and where their data come from.

Suites
------
``paper``    the paper's 25 English tasks (PAPER_NOTES.md), with the exact scope that mteb's own
             ``MTEB(eng, v1)`` benchmark gives them: test split only, AmazonCounterfactual subset
             ``en``, the multilingual Amazon/MTOP/Massive tasks subset ``en``, STS17 ``en-en``.
             Groups as in the paper: Classification (10), STS (9), Retrieval/dup (6).
``offline``  custom mteb tasks over real labelled data that installed packages ship
             (``nitp_eval.data.offline_mteb``); needs no download at all.

Air-gapped data (``--data-dir DIR``)
------------------------------------
A task's data is a Hugging Face dataset repository (``task.metadata.dataset["path"]`` at
``["revision"]``). A local mirror keeps each repository in the hub layout under its repo id::

    DIR/mteb/stsbenchmark-sts/README.md, data/test-00000-of-00001.parquet, ...

(what ``snapshot_download(repo, repo_type="dataset", local_dir=DIR/repo)`` writes); mteb loads
it with the same ``datasets.load_dataset`` call it uses for the hub.

Example
-------
>>> mteb_dataset_repos(["STS17", "Banking77Classification"])        # doctest: +SKIP
[{'task': 'STS17', 'repo': 'mteb/sts17-crosslingual-sts', 'revision': 'faeb76...',
  'subsets': ['en-en'], 'splits': ['test']}, ...]
"""

from __future__ import annotations

import copy
import difflib
import functools
import os
from pathlib import Path
from typing import Any, Iterable

from nitp.errors import UserError

from .settings import SUITES

# The paper's 25 tasks and their groups (PAPER_NOTES.md, "Frozen-representation test on MTEB").
PAPER_GROUPS: dict[str, list[str]] = {
    "Classification": [
        "AmazonCounterfactualClassification",
        "AmazonReviewsClassification",
        "Banking77Classification",
        "EmotionClassification",
        "MTOPDomainClassification",
        "MTOPIntentClassification",
        "MassiveIntentClassification",
        "MassiveScenarioClassification",
        "ToxicConversationsClassification",
        "TweetSentimentExtractionClassification",
    ],
    "STS": ["BIOSSES", "SICK-R", "STS12", "STS13", "STS14", "STS15", "STS16", "STS17", "STSBenchmark"],
    "Retrieval/dup": [
        "AskUbuntuDupQuestions",
        "SciDocsRR",
        "SprintDuplicateQuestions",
        "StackOverflowDupQuestions",
        "TwitterSemEval2015",
        "TwitterURLCorpus",
    ],
}
PAPER_TASKS: list[str] = [name for names in PAPER_GROUPS.values() for name in names]
PAPER_BENCHMARK = "MTEB(eng, v1)"  # mteb's benchmark that fixes the paper tasks' English scope

# Task types -> the paper's group names (for tasks outside the paper suite).
TYPE_GROUPS = {
    "Classification": "Classification",
    "STS": "STS",
    "PairClassification": "Retrieval/dup",
    "Reranking": "Retrieval/dup",
    "Retrieval": "Retrieval/dup",
}


def export_hint(task_name: str, data_dir: str | os.PathLike = "DIR") -> str:
    """The command that fetches a task's data into a mirror (run where the hub is reachable)."""
    return f"export it with `nitp-eval mirror export --tasks {task_name} --out {data_dir}` on a machine with hub access"


def group_of(task_name: str, task_type: str) -> str:
    """The paper's group of a task (Classification, STS, Retrieval/dup), else its mteb type."""
    for group, names in PAPER_GROUPS.items():
        if task_name in names:
            return group
    return TYPE_GROUPS.get(task_type, task_type)


# ----------------------------------------------------------------------------- task selection
def suite_task_names(suite: str) -> list[str]:
    """Task names of a suite (``paper`` or ``offline``)."""
    if suite == "paper":
        return list(PAPER_TASKS)
    if suite == "offline":
        from ..data.offline_mteb import OFFLINE_TASKS

        return list(OFFLINE_TASKS)
    raise UserError(f"unknown suite {suite!r} (choose one of: {', '.join(SUITES)})")


def resolve_tasks(suite: str | None = None, tasks: Iterable[str] | None = None) -> list[Any]:
    """Fresh mteb task objects (overriding one's dataset path never leaks into another run) for a
    suite or a list of names (names win); paper tasks in ``MTEB(eng, v1)``'s English scope.
    Raises ``UserError`` for an unknown name, with mteb's closest match."""
    names = list(tasks) if tasks else suite_task_names(suite or "offline")
    if not names:
        raise UserError("no MTEB tasks given (use --suite paper|offline or --tasks NAME ...)")
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise UserError(f"task listed twice: {', '.join(dupes)}")
    return [_task(name) for name in names]


def _task(name: str) -> Any:
    from ..data.offline_mteb import OFFLINE_TASKS

    if name in OFFLINE_TASKS:
        return OFFLINE_TASKS[name]()
    if name in PAPER_TASKS:
        return copy.deepcopy(_paper_benchmark_tasks(PAPER_BENCHMARK)[name])
    import mteb

    try:
        return mteb.get_task(name)
    except KeyError:
        known = (
            list(OFFLINE_TASKS)
            + PAPER_TASKS
            + [t.metadata.name for t in mteb.get_tasks(exclude_superseded=False)]
        )
        close = difflib.get_close_matches(name, known, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise UserError(
            f"unknown MTEB task {name!r}{hint}; names are mteb's (mteb.get_tasks()) or the offline suite's"
        ) from None


@functools.cache
def _paper_benchmark_tasks(benchmark: str) -> dict[str, Any]:
    import mteb

    tasks = {
        t.metadata.name: t for t in mteb.get_benchmark(benchmark).tasks if t.metadata.name in PAPER_TASKS
    }
    missing = set(PAPER_TASKS) - set(tasks)
    if missing:  # a future mteb dropping a task must not silently shrink the suite
        raise UserError(f"this mteb lacks paper tasks in {benchmark}: {sorted(missing)}")
    return tasks


def is_local_task(task: Any) -> bool:
    """True for tasks whose data ship with installed packages (the offline suite)."""
    from ..data.offline_mteb import OFFLINE_TASKS

    return task.metadata.name in OFFLINE_TASKS


# ----------------------------------------------------------------------------- hub repositories
def mteb_dataset_repos(task_names: Iterable[str]) -> list[dict]:
    """The Hugging Face dataset repositories that MTEB tasks load, one dict per task.

    Returns ``[{"task", "repo", "revision", "subsets", "splits"}]`` (paper tasks in the paper's
    scope; offline-suite tasks skipped: their data ship with installed packages); the mirror keeps
    ``snapshot_download(repo, repo_type="dataset", revision=...)`` in ``DATA_DIR/<repo>``.
    """
    return [
        {
            "task": task.metadata.name,
            "repo": task.metadata.dataset["path"],
            "revision": task.metadata.dataset.get("revision"),
            "subsets": list(task.hf_subsets or []),
            "splits": list(task.eval_splits),
        }
        for task in resolve_tasks(tasks=list(task_names))
        if not is_local_task(task)
    ]


def data_root(data_dir: str | os.PathLike) -> Path:
    """The ``--data-dir`` folder; ``UserError`` when there is none."""
    root = Path(data_dir).expanduser()
    if not root.is_dir():
        raise UserError(
            f"--data-dir {data_dir}: no such directory (write one with `nitp-eval mirror export --tasks ... --out {data_dir}`)"
        )
    return root


def apply_data_dir(tasks: list[Any], data_dir: str | os.PathLike) -> tuple[list[Any], list[str]]:
    """Point each task's dataset at its local folder under ``data_dir``.

    Returns ``(ready, problems)``: the tasks whose folder exists (their ``metadata.dataset
    ["path"]`` now names it; the revision is kept, so results stay comparable with hub runs),
    and one line per task without data, naming the task, the folder and the export command.
    Offline-suite tasks need no folder and are always ready.
    """
    root = data_root(data_dir)
    ready, problems = [], []
    for task in tasks:
        if is_local_task(task):
            ready.append(task)
            continue
        repo = task.metadata.dataset["path"]
        folder = root / repo  # the mirror's DATA_DIR/<owner>/<name>
        if not folder.is_dir() or not any(folder.iterdir()):
            problems.append(
                f"{task.metadata.name}: no data in {folder} (the mirror of {repo}); {export_hint(task.metadata.name, data_dir)}"
            )
            continue
        dataset = {**task.metadata.dataset, "path": str(folder)}
        # instance-level metadata: the class (and mteb's registry) keep the hub path
        task.metadata = task.metadata.model_copy(update={"dataset": dataset})
        ready.append(task)
    return ready, problems
