"""Studies: a grid of ordinary training runs, one evaluation plan and the report, resumable cell by cell.

A study file (YAML; the shipped ones are in ``configs/studies/``, docs/studies.md)::

    name: ablations                 # default: the file's stem
    config: small-nitp              # base config (a path or a shipped name); default: the preset's recipe
    preset: small-dense             # model preset
    set: [train.steps=2000]         # overrides of every cell (``--set`` syntax)
    axes:                           # the cells are the cartesian product, names follow this order
      overlay: [none, shift-0]      # ablation overlays (configs/ablations/); none = the base itself
      objective: [nitp]
      seed: [0, 1]
      nitp.lambda: [0.5, 1.0]       # any config key
    include:                        # extra cells: each crossed with the axes it does not name
      - {overlay: none, objective: ntp}
    side_by_side: 1                 # cells trained at once, one process each (CPU studies)
    eval:
      checkpoints: last             # last | all
      bench: {suite: offline, limit: 150}      # or a list of them; omitted = no benchmarks
      mteb: {suite: offline}                   # omitted = no MTEB
      geom: {corpus: builtin, tokens: 20000}   # omitted = no geometry
      report: true                             # OUT/report/ (reports.compare)

Layout of ``OUT``: ``study.json`` (the manifest: cells, their settings and status), one run
directory per cell (``OUT/nitp-s0/``), ``data/`` (the tokens every cell shares), ``.study/``
(a marker per evaluated cell), ``logs/`` (side-by-side trainings) and ``report/``.

A cell's name joins the values of the axes that vary (one-valued axes and ``overlay: none`` are
left out): ``seed`` -> ``s1``, ``objective`` and ``overlay`` -> the value, any other key ->
``<last part>-<value>``, e.g. ``shift-0-nitp-s0`` or ``lambda-0.5-nitp-s1``.

Example
-------
>>> spec = load_study("quickstart")                              # doctest: +SKIP
>>> [c.name for c in cells(spec)]                                # doctest: +SKIP
['ntp', 'nitp']
>>> run_study(spec, "runs/quickstart")                           # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import itertools
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

from nitp import shell
from nitp.errors import UserError
from nitp.io import atomic_write_json, atomic_write_text, json_default
from nitp.runs import checkpoint_step, list_checkpoints, resolve_checkpoint

TOP_KEYS = ("name", "description", "config", "preset", "set", "axes", "include", "side_by_side", "eval")
EVAL_KEYS = ("checkpoints", "bench", "mteb", "geom", "report")
BENCH_KEYS = ("suite", "tasks", "limit", "data_dir")
MTEB_KEYS = ("suite", "tasks", "pooling", "layer")
GEOM_KEYS = ("corpus", "tokens", "layers")
OVERLAY = "overlay"  # the axis whose values are overlay files, not config values
NO_OVERLAY = (None, "none")
MANIFEST = "study.json"


@dataclass(frozen=True)
class EvalPlan:
    """What every trained cell is scored with (empty lists / None: that evaluator is skipped)."""

    checkpoints: str = "last"
    bench: list = field(default_factory=list)
    mteb: dict | None = None
    geom: dict | None = None
    report: bool = True


@dataclass(frozen=True)
class StudySpec:
    """A parsed study file (:func:`load_study`); ``axes`` keeps the file's order."""

    name: str
    path: Path
    config: str | None = None
    preset: str | None = None
    set: tuple = ()
    axes: dict = field(default_factory=dict)
    include: tuple = ()
    side_by_side: int = 1
    eval: EvalPlan = EvalPlan()
    description: str = ""


@dataclass(frozen=True)
class Cell:
    """One run of the study: its name, axis values, ``--set`` overrides and overlay file."""

    name: str
    settings: dict
    overrides: tuple
    overlay: Path | None
    preset: str | None


# ----------------------------------------------------------------------------- reading a study
def study_path(path: str | os.PathLike) -> Path:
    """``path`` when it exists, else the shipped study of that name (``quickstart``)."""
    from nitp_train.config import configs_dir

    p = Path(path)
    if p.is_file():
        return p
    for candidate in (configs_dir() / "studies" / p.name, configs_dir() / "studies" / f"{p.name}.yaml"):
        if candidate.is_file():
            return candidate
    shipped = sorted(f.stem for f in (configs_dir() / "studies").glob("*.yaml"))
    raise UserError(f"study {path}: no such file; give a study YAML or a shipped one ({', '.join(shipped)})")


def load_study(path: str | os.PathLike) -> StudySpec:
    """Read and check a study file: every key, every axis value and every cell's config.

    Raises a one-line ``UserError`` naming the key and the fix (with "did you mean" for typos).
    """
    p = study_path(path)
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise UserError(f"study {p}: invalid YAML ({str(e).splitlines()[0]}); fix the file") from None
    if not isinstance(data, dict):
        raise UserError(f"study {p}: expected a mapping at the top level (name:, axes:, eval:)")
    where = f"study {p}"
    _check_keys(data, TOP_KEYS, where)
    spec = StudySpec(
        name=_safe_name(str(data.get("name") or p.stem), f"{where}: name"),
        path=p.resolve(),
        config=data.get("config"),
        preset=data.get("preset"),
        set=tuple(_string_list(data.get("set"), f"{where}: set")),
        axes=_axes(data.get("axes"), where),
        include=tuple(_include(data.get("include"), where)),
        side_by_side=_positive(data.get("side_by_side", 1), f"{where}: side_by_side"),
        eval=_eval_plan(data.get("eval"), where),
        description=str(data.get("description") or ""),
    )
    check_study(spec)
    return spec


def check_study(spec: StudySpec) -> None:
    """Resolve every cell's config once (unknown keys and bad values surface here, not mid-study)."""
    where = f"study {spec.path}"
    for key, values in spec.axes.items():
        for value in values if key != OVERLAY else ():
            try:
                _load(spec, [_override(key, value)])
            except UserError as e:
                raise UserError(f"{where}: axis {key!r} value {value!r}: {e}") from None
    for cell in cells(spec):
        try:
            cell_config(spec, cell)
        except UserError as e:
            raise UserError(f"{where}: cell {cell.name}: {e}") from None


def _check_keys(data: dict, allowed: tuple, where: str) -> None:
    for key in data:
        if key not in allowed:
            near = difflib.get_close_matches(str(key), allowed, n=1)
            hint = f"did you mean {near[0]}?" if near else f"use one of {', '.join(allowed)}"
            raise UserError(f"{where}: unknown key {key!r} ({hint})")


def _string_list(value: Any, where: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) and "=" in v for v in value):
        raise UserError(f"{where}: expected a list of key=value strings, e.g. [train.steps=500]")
    return value


def _positive(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UserError(f"{where}={value!r}: must be a whole number of at least 1")
    return value


def _axes(value: Any, where: str) -> dict[str, list]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise UserError(f"{where}: axes must be a mapping of key: [values], e.g. axes: {{seed: [0, 1]}}")
    axes = {}
    for key, values in value.items():
        if not isinstance(values, list):
            raise UserError(f"{where}: axis {key!r} must be a list of values, e.g. {key}: [{values!r}]")
        if not values:
            raise UserError(f"{where}: axis {key!r} is empty; give it at least one value or remove it")
        repeated = [v for i, v in enumerate(values) if _text(v) in map(_text, values[:i])]
        if repeated:
            raise UserError(f"{where}: axis {key!r} repeats {repeated[0]!r}; make its values distinct")
        axes[str(key)] = values
    return axes


def _include(value: Any, where: str) -> list[dict]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, dict) and v for v in value):
        raise UserError(f"{where}: include must be a list of mappings, e.g. include: [{{objective: ntp}}]")
    return [{str(k): v for k, v in entry.items()} for entry in value]


def _eval_plan(value: Any, where: str) -> EvalPlan:
    value = value or {}
    if not isinstance(value, dict):
        raise UserError(f"{where}: eval must be a mapping (checkpoints:, bench:, mteb:, geom:, report:)")
    _check_keys(value, EVAL_KEYS, f"{where}: eval")
    checkpoints = value.get("checkpoints", "last")
    if checkpoints not in ("last", "all"):
        raise UserError(f"{where}: eval.checkpoints={checkpoints!r}: use last or all")
    bench = value.get("bench") or []
    bench = [bench] if isinstance(bench, dict) else bench
    if not isinstance(bench, list):
        raise UserError(f"{where}: eval.bench must be a mapping or a list of them, e.g. {{suite: offline}}")
    for entry in bench:
        _section(entry, BENCH_KEYS, f"{where}: eval.bench")
        _check_bench(entry, f"{where}: eval.bench")
    mteb = _section(value.get("mteb"), MTEB_KEYS, f"{where}: eval.mteb")
    geom = _section(value.get("geom"), GEOM_KEYS, f"{where}: eval.geom")
    if geom is not None and geom.get("tokens") is not None:
        _positive(geom["tokens"], f"{where}: eval.geom.tokens")
    return EvalPlan(checkpoints, bench, mteb, geom, bool(value.get("report", True)))


def _section(value: Any, keys: tuple, where: str) -> dict | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise UserError(f"{where} must be a mapping with keys {', '.join(keys)}")
    _check_keys(value, keys, where)
    return value


def _check_bench(entry: dict, where: str) -> None:
    from nitp_eval.bench.plan import select_benchmarks

    try:
        select_benchmarks(entry.get("tasks"), entry.get("suite"))
    except UserError as e:
        raise UserError(f"{where}: {e}") from None
    if entry.get("limit") is not None:
        _positive(entry["limit"], f"{where}.limit")


def _safe_name(name: str, where: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
        raise UserError(f"{where}={name!r}: use letters, digits, '.', '_' and '-' only")
    return name


# ----------------------------------------------------------------------------- cells
def cells(spec: StudySpec) -> list[Cell]:
    """The cartesian product of the axes (then each ``include`` entry), as named cells.

    Raises ``UserError`` when two cells get the same name (a repeated axis value).
    """
    combos = [dict(zip(spec.axes, values)) for values in itertools.product(*spec.axes.values())]
    for entry in spec.include:
        rest = {k: v for k, v in spec.axes.items() if k not in entry}
        combos += [{**dict(zip(rest, vs)), **entry} for vs in itertools.product(*rest.values())]
    keys = list(dict.fromkeys([*spec.axes, *(k for e in spec.include for k in e)]))
    combos = [{k: c[k] for k in keys if k in c} for c in combos]  # the axes' order, in names too
    varying = [k for k in keys if len({_text(c.get(k)) for c in combos}) > 1]
    out, seen = [], {}
    for combo in combos:
        name = "-".join(p for p in (_name_part(k, combo.get(k)) for k in varying if k in combo) if p)
        name = name or spec.name
        if name in seen:
            raise UserError(
                f"study {spec.path}: two cells are named {name!r} ({seen[name]} and {combo}); "
                "make the values of each axis distinct"
            )
        seen[name] = combo
        out.append(_cell(spec, name, combo))
    return out


def _cell(spec: StudySpec, name: str, combo: dict) -> Cell:
    overlay = _overlay_path(combo.get(OVERLAY), spec)
    overrides = tuple(_override(k, v) for k, v in combo.items() if k != OVERLAY)
    return Cell(name, dict(combo), overrides, overlay, spec.preset)


def _name_part(key: str, value: Any) -> str:
    if key == OVERLAY:
        return "" if value in NO_OVERLAY else re.sub(r"\.ya?ml$", "", Path(str(value)).name)
    text = _text(value)
    if key == "seed":
        text = f"s{text}"
    elif key != "objective":
        text = f"{key.rsplit('.', 1)[-1]}-{text}"
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")


def _text(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    return str(value)


def _override(key: str, value: Any) -> str:
    """``nitp.lambda=0.5``: JSON is YAML, so ``parse_override`` reads the value back exactly."""
    return f"{key}={json.dumps(value)}"


def _overlay_path(value: Any, spec: StudySpec) -> Path | None:
    from nitp_train.config import configs_dir

    if value in NO_OVERLAY:
        return None
    text = str(value)
    ablations = configs_dir() / "ablations"
    for candidate in (spec.path.parent / text, Path(text), ablations / text, ablations / f"{text}.yaml"):
        if candidate.is_file():
            return candidate
    known = sorted(f.stem for f in ablations.glob("*.yaml"))
    near = difflib.get_close_matches(text, known, n=1)
    hint = f"did you mean {near[0]}?" if near else f"shipped: {', '.join(known)}"
    raise UserError(f"study {spec.path}: overlay {text!r}: no such file ({hint}); or use none")


def _base_config(spec: StudySpec) -> Path | None:
    from nitp_train.config import RECIPES, config_path, configs_dir

    if spec.config is not None:
        local = spec.path.parent / str(spec.config)
        for candidate in (local, local.with_suffix(".yaml")):
            if candidate.is_file():
                return candidate
        return config_path(spec.config)
    if spec.preset in RECIPES:
        return configs_dir() / RECIPES[spec.preset]
    return None


def _load(spec: StudySpec, overrides: list[str]) -> dict:
    from nitp_train.config import load_config

    return load_config(_base_config(spec), [*spec.set, *overrides], preset=spec.preset)


def cell_config(spec: StudySpec, cell: Cell, data_dir: Path | None = None) -> dict:
    """The resolved training config of a cell: base <- study ``set`` <- overlay <- axis values.

    ``data_dir`` becomes ``data.prepared_dir`` unless the study sets one (cells share tokens).
    """
    from nitp_train.config import overlay_keys

    overlay = [_override(k, v) for k, v in overlay_keys(cell.overlay).items()] if cell.overlay else []
    extra = [f"run_name={cell.name}"]
    cfg = _load(spec, [*overlay, *cell.overrides, *extra])
    if data_dir is not None and cfg["data"]["prepared_dir"] is None:
        cfg["data"]["prepared_dir"] = str(data_dir)
    return cfg


def cell_configs(spec: StudySpec, out: str | os.PathLike) -> dict[str, dict]:
    """Every cell's config; cells with the same data settings share ``OUT/data`` (else ``OUT/data-<fp>``)."""
    from nitp_train.data import data_fingerprint

    out = Path(out)
    plain = {c.name: (c, cell_config(spec, c)) for c in cells(spec)}
    prints = {name: data_fingerprint(cfg["data"]) for name, (_, cfg) in plain.items()}
    one = len(set(prints.values())) == 1
    return {
        name: cell_config(spec, c, out / ("data" if one else f"data-{prints[name][:8]}"))
        for name, (c, _) in plain.items()
    }


def pick_cell(spec: StudySpec, name: str) -> Cell:
    """The cell called ``name``; ``UserError`` with the nearest name otherwise."""
    found = {c.name: c for c in cells(spec)}
    if name not in found:
        near = difflib.get_close_matches(name, list(found), n=1)
        hint = f"did you mean {near[0]}?" if near else f"cells: {', '.join(found)}"
        raise UserError(f"--cell {name}: no such cell in study {spec.name} ({hint})")
    return found[name]


# ----------------------------------------------------------------------------- status
def _world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def _is_main() -> bool:
    """Rank 0 under torchrun (RANK is what ``nitp_train.parallel.setup`` reads), or a plain process."""
    return int(os.environ.get("RANK", "0")) == 0


def final_step(cfg: dict) -> int:
    from nitp_train.config import apply_plan

    return apply_plan(cfg, _world_size())[1]["steps"]


def last_step(run_dir: Path) -> int:
    done = list_checkpoints(run_dir)
    return checkpoint_step(done[-1]) if done else 0


def _marker(out: Path, cell: str) -> Path:
    return out / ".study" / f"{cell}.json"


def _eval_key(spec: StudySpec, run_dir: Path) -> dict:
    """What an evaluation covered: the plan and the checkpoints (a new checkpoint re-evaluates)."""
    return {
        "plan": dataclasses.asdict(spec.eval),
        "checkpoints": [c.name for c in _eval_checkpoints(spec, run_dir)],
    }


def _eval_checkpoints(spec: StudySpec, run_dir: Path) -> list[Path]:
    if spec.eval.checkpoints == "all":
        return list_checkpoints(run_dir)
    return [resolve_checkpoint(run_dir)]


def _is_evaluated(spec: StudySpec, out: Path, cell: str) -> bool:
    marker = _marker(out, cell)
    if not marker.is_file():
        return False
    try:
        return json.loads(marker.read_text()) == json.loads(
            json.dumps(_eval_key(spec, out / cell), default=json_default)
        )
    except (ValueError, UserError):
        return False


def cell_status(spec: StudySpec, out: Path, cell: Cell, cfg: dict) -> dict:
    """``pending`` | ``training`` (some checkpoints) | ``trained`` | ``evaluated``, read from disk."""
    run_dir, steps = out / cell.name, final_step(cfg)
    step = last_step(run_dir)
    status = "pending" if step == 0 else "training" if step < steps else "trained"
    if status == "trained" and _is_evaluated(spec, out, cell.name):
        status = "evaluated"
    return {"status": status, "step": step, "steps": steps}


def write_manifest(spec: StudySpec, out: Path, cfgs: dict, report: Path | None = None) -> Path:
    """``OUT/study.json``: the study, every cell (settings, overrides, run dir, status), the report."""
    rows = []
    for cell in cells(spec):
        rows.append(
            {
                "name": cell.name,
                "run_dir": str(out / cell.name),
                "settings": cell.settings,
                "overrides": list(cell.overrides),
                "overlay": str(cell.overlay) if cell.overlay else None,
                "preset": cfgs[cell.name]["model"]["preset"],
                **cell_status(spec, out, cell, cfgs[cell.name]),
            }
        )
    old = out / MANIFEST
    if report is None and old.is_file():
        with contextlib.suppress(ValueError):
            report = json.loads(old.read_text()).get("report")
    manifest = {
        "study": spec.name,
        "file": str(spec.path),
        "base_config": str(_base_config(spec)) if _base_config(spec) else None,
        "preset": spec.preset,
        "set": list(spec.set),
        "eval": dataclasses.asdict(spec.eval),
        "cells": rows,
        "report": str(report) if report else None,
    }
    return atomic_write_json(out / MANIFEST, manifest)


# ----------------------------------------------------------------------------- describing
def plan_lines(spec: StudySpec, out: str | os.PathLike) -> list[str]:
    """One line per cell (name, status, settings, batch and step plan), then the evaluation plan."""
    from nitp_train.config import apply_plan, plan_summary

    out = Path(out)
    cfgs = cell_configs(spec, out)
    all_cells = cells(spec)
    width = max(len(c.name) for c in all_cells)
    lines = [f"study {spec.name}: {len(all_cells)} cells -> {out}"]
    for cell in all_cells:
        cfg = cfgs[cell.name]
        state = cell_status(spec, out, cell, cfg)
        settings = ", ".join(f"{k}={_text(v)}" for k, v in cell.settings.items()) or "base config"
        progress = f"{state['status']} {state['step']}/{state['steps']}"
        plan = plan_summary(*apply_plan(cfg, _world_size()))
        lines.append(f"{cell.name:<{width}}  [{progress}]  {settings} | {plan}")
    lines.append(f"evaluation: {describe_eval(spec.eval)}")
    return lines


def describe_eval(plan: EvalPlan) -> str:
    """``bench offline (limit 150); mteb offline; geom builtin 20,000 tokens; last checkpoint; report``."""
    parts = [
        f"bench {b.get('suite') or b.get('tasks')}" + (f" (limit {b['limit']})" if b.get("limit") else "")
        for b in plan.bench
    ]
    if plan.mteb is not None:
        parts.append(f"mteb {plan.mteb.get('suite') or plan.mteb.get('tasks') or 'offline'}")
    if plan.geom is not None:
        parts.append(
            f"geom {plan.geom.get('corpus', 'builtin')} {plan.geom.get('tokens', 'default'):,} tokens"
        )
    parts.append("every checkpoint" if plan.checkpoints == "all" else "last checkpoint")
    if plan.report:
        parts.append("report")
    return "; ".join(parts)


# ----------------------------------------------------------------------------- running
def run_study(
    spec: StudySpec,
    out: str | os.PathLike,
    cell: str | None = None,
    dry_run: bool = False,
    log: Callable[[str], None] = print,
) -> Path | None:
    """Train every cell (or only ``cell``), evaluate them, and write the report.

    Resumable: finished cells are skipped, a half-trained cell resumes from its last checkpoint
    (bit for bit, ``nitp_train.trainer.train(resume=True)``), evaluators reuse their records.
    Under torchrun every rank trains; only rank 0 evaluates and reports. ``dry_run`` only logs
    :func:`plan_lines`. Returns ``OUT/report/report.md`` (or ``OUT`` without a report; None when
    dry).
    """
    out = Path(out)
    if dry_run:
        for line in plan_lines(spec, out):
            log(line)
        return None
    cfgs = cell_configs(spec, out)
    chosen = [pick_cell(spec, cell)] if cell else cells(spec)
    if _is_main():
        write_manifest(spec, out, cfgs)
    _train_cells(spec, out, chosen, cfgs, log)
    if not _is_main():
        return None
    for c in chosen:
        evaluate_cell(spec, out, c, cfgs[c.name], log)
        write_manifest(spec, out, cfgs)
    report = None
    if cell is None and spec.eval.report:
        from reports.compare import compare

        log(f"report of {len(chosen)} cells -> {out / 'report'}")
        report = compare(
            [str(out / c.name) for c in chosen], out / "report", log=lambda m: log(f"  note: {m}")
        )
        write_manifest(spec, out, cfgs, report)
    return report or out


def _train_cells(spec: StudySpec, out: Path, chosen: list[Cell], cfgs: dict, log) -> None:
    todo = []
    for c in chosen:
        run_dir = out / c.name
        if last_step(run_dir) >= final_step(cfgs[c.name]):
            log(f"{c.name}: already trained ({run_dir})")
        else:
            todo.append(c)
    if todo and _world_size() == 1:  # tokenize once, before trainings start side by side
        from nitp_train.data import prepare

        for data_dir in dict.fromkeys(cfgs[c.name]["data"]["prepared_dir"] for c in todo):
            cfg = next(cfgs[c.name] for c in todo if cfgs[c.name]["data"]["prepared_dir"] == data_dir)
            log(f"corpus {cfg['data']['corpus']} -> {data_dir}")
            prepare(cfg["data"], data_dir, log=log)
    if spec.side_by_side > 1 and len(todo) > 1 and _world_size() == 1:
        _train_side_by_side(spec, out, todo, cfgs, log)
        return
    from nitp_train.trainer import train

    for c in todo:
        log(f"{c.name}: training ({', '.join(c.overrides) or 'base config'})")
        train(cfgs[c.name], out / c.name, resume=True, log=log)
        if _is_main():
            write_manifest(spec, out, cfgs)


def _train_side_by_side(spec: StudySpec, out: Path, todo: list[Cell], cfgs: dict, log) -> None:
    """``side_by_side`` trainings at once, each in a process of its own (log: ``OUT/logs/CELL.log``)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    (out / "logs").mkdir(parents=True, exist_ok=True)
    n = min(spec.side_by_side, len(todo))
    log(f"training {len(todo)} cells, {n} side by side (logs: {out / 'logs'})")
    with ProcessPoolExecutor(n, mp_context=multiprocessing.get_context("spawn")) as pool:
        jobs = {
            c.name: pool.submit(_train_logged, cfgs[c.name], out / c.name, out / "logs" / f"{c.name}.log")
            for c in todo
        }
        _show_progress(out, {c.name: final_step(cfgs[c.name]) for c in todo}, jobs)
        for name, job in jobs.items():
            try:
                job.result()
            except UserError as e:
                raise UserError(f"training {name} failed ({e}); see {out / 'logs' / f'{name}.log'}") from None
            log(f"{name}: trained ({out / name})")
    write_manifest(spec, out, cfgs)


def _train_logged(cfg: dict, run_dir: Path, logfile: Path) -> None:
    """One training with its output in ``logfile`` (the body of a side-by-side process)."""
    from nitp_train.trainer import train

    with open(logfile, "a") as f, contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
        train(cfg, run_dir, resume=True, log=lambda m: print(m, flush=True))


def _show_progress(out: Path, steps: dict[str, int], jobs: dict) -> None:
    """One progress bar per side-by-side training on a terminal (read from metrics.jsonl)."""
    import sys
    import time

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from nitp.io import read_jsonl

    columns = (TextColumn("  {task.fields[name]}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, TextColumn("{task.description}"), disable=not sys.stderr.isatty()) as bar:
        tasks = {name: bar.add_task("", total=total, name=name) for name, total in steps.items()}
        while not all(job.done() for job in jobs.values()):
            for name, task in tasks.items():
                path = out / name / "metrics.jsonl"
                last = (
                    next((r for r in reversed(read_jsonl(path)) if "loss_ntp" in r), None)
                    if path.is_file()
                    else None
                )
                if last:
                    bar.update(task, completed=last["step"], description=f"loss_ntp {last['loss_ntp']:.3f}")
            time.sleep(1.0)


def evaluate_cell(spec: StudySpec, out: Path, cell: Cell, cfg: dict, log=print) -> None:
    """Score a trained cell with the study's plan (bench, MTEB, geometry); skipped when its marker
    says this plan already covered these checkpoints (the evaluators' record caches do the rest)."""
    plan, run_dir = spec.eval, out / cell.name
    if not (plan.bench or plan.mteb is not None or plan.geom is not None):
        return
    if _is_evaluated(spec, out, cell.name):
        log(f"{cell.name}: already evaluated")
        return
    device = None if cfg["train"]["device"] == "auto" else cfg["train"]["device"]
    ckpts = [str(c) for c in _eval_checkpoints(spec, run_dir)]
    log(f"{cell.name}: evaluating {len(ckpts)} checkpoint(s): {describe_eval(plan)}")
    for b in plan.bench:
        from nitp_eval.bench import run_bench

        run_bench(
            ckpts,
            suite=b.get("suite"),
            tasks=b.get("tasks"),
            limit=b.get("limit"),
            data_dir=b.get("data_dir"),
            device=device,
        )
    if plan.mteb is not None:
        from nitp_eval.mteb.run import run_mteb

        m = plan.mteb
        run_mteb(
            ckpts,
            suite=m.get("suite") or ("offline" if not m.get("tasks") else None),
            tasks=m.get("tasks"),
            pooling=m.get("pooling", "mean"),
            layer=m.get("layer", -1),
            device=device,
            log=log,
        )
    if plan.geom is not None:
        from analysis.measure import geom_record

        g = plan.geom
        for ck in ckpts:
            kw = {"n_tokens": g["tokens"]} if g.get("tokens") else {}
            geom_record(
                ck,
                corpus=g.get("corpus", "builtin"),
                layers=g.get("layers"),
                device=device,
                progress=False,
                **kw,
            )
    atomic_write_json(_marker(out, cell.name), _eval_key(spec, run_dir))


# ----------------------------------------------------------------------------- cluster scripts
def cell_command(spec: StudySpec, out: str | os.PathLike, cell: str | None = None) -> str:
    """``nitp-study STUDY.yaml --out OUT [--cell NAME]``, with absolute paths, every word quoted.

    Raises a one-line ``UserError`` when a path or name holds a control character (a newline
    would end the line and run the rest as a command).
    """
    words = [
        "nitp-study",
        shell.quote(spec.path, "study file"),
        "--out",
        shell.quote(Path(out).resolve(), "--out"),
    ]
    return " ".join(words + (["--cell", shell.quote(cell, "--cell")] if cell else []))


def emit_commands(spec: StudySpec, out: str | os.PathLike) -> Path:
    """``OUT/commands.txt``: one command per cell, then the one that evaluates what is left and reports."""
    lines = [cell_command(spec, out, c.name) for c in cells(spec)] + [cell_command(spec, out)]
    return atomic_write_text(Path(out) / "commands.txt", "\n".join(lines) + "\n")


def emit_slurm(spec: StudySpec, out: str | os.PathLike, nodes: int = 1, gpus_per_node: int = 8) -> Path:
    """``OUT/study.sbatch``: a SLURM array, one task per cell, each ``torchrun ... --cell NAME``.

    The rendezvous comes from SLURM's own variables (first host of ``SLURM_JOB_NODELIST``,
    ``SLURM_NNODES``); run outside sbatch, the script stops at once with the missing variable.
    Every value, in comments and ``#SBATCH`` lines too, goes through :mod:`nitp.shell` before
    anything is written.
    """
    _positive(nodes, "--nodes")
    _positive(gpus_per_node, "--gpus-per-node")
    out = Path(out).resolve()
    names = [c.name for c in cells(spec)]
    q = shell.quote
    study, out_q, cells_q = q(spec.path, "study file"), q(out, "--out"), shell.join(names, "cell name")
    # sbatch expands %A, %a, %j... in --output: a literal % in the folder is written %%
    log_path = shell.sbatch_quote(f"{str(out).replace('%', '%%')}/logs/slurm-%A_%a.out", "--out")
    job = shell.sbatch_quote(f"nitp-{spec.name}", "study name")
    last = len(names) - 1
    need = "run this script with sbatch ({} is not set)"
    text = f"""#!/bin/bash
# Study {q(spec.name, "study name")}: {len(names)} cells, one SLURM array task each (written by nitp-study --emit slurm).
#   sbatch {q(out / "study.sbatch", "--out")}
# When every task has finished, evaluate what is left and write the report:
#   {cell_command(spec, out)}
#SBATCH --job-name={job}
#SBATCH --array=0-{last}
#SBATCH --nodes={q(nodes)}
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node={q(gpus_per_node)}
#SBATCH --output={log_path}
set -eu  # no pipefail: head closing the pipe must not fail the hostnames pipeline
: "${{SLURM_ARRAY_TASK_ID:?{need.format("SLURM_ARRAY_TASK_ID")}}}"
: "${{SLURM_JOB_NODELIST:?{need.format("SLURM_JOB_NODELIST")}}}"
: "${{SLURM_NNODES:?{need.format("SLURM_NNODES")}}}"
CELLS=({cells_q})
CELL="${{CELLS[$SLURM_ARRAY_TASK_ID]:?SLURM_ARRAY_TASK_ID is outside 0..{last}}}"
MASTER_ADDR="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)"
: "${{MASTER_ADDR:?scontrol gave no host name for SLURM_JOB_NODELIST=$SLURM_JOB_NODELIST}}"
MASTER_PORT="${{MASTER_PORT:-$((29500 + SLURM_ARRAY_TASK_ID % 1000))}}"
export MASTER_ADDR MASTER_PORT
srun --ntasks-per-node=1 torchrun --nnodes "$SLURM_NNODES" --nproc_per_node "${{GPUS_PER_NODE:-{q(gpus_per_node)}}}" \\
  --rdzv_id "${{SLURM_ARRAY_JOB_ID:-0}}_$SLURM_ARRAY_TASK_ID" --rdzv_backend c10d --rdzv_endpoint "$MASTER_ADDR:$MASTER_PORT" \\
  -m reports.study_cli {study} --out {out_q} --cell "$CELL"
"""
    (out / "logs").mkdir(parents=True, exist_ok=True)  # SLURM opens --output before the script runs
    return atomic_write_text(out / "study.sbatch", text)
