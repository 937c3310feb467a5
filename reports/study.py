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

The file is typed (``reports.study_schema``, pydantic): a bad value is one line before anything
trains. A rerun reuses a cell's run only when the run's ``config.yaml`` equals the cell's resolved
config (:func:`changed_keys`); otherwise it is refused, or retrained with ``--retrain-changed``.
``OUT`` is one study's folder: another study's, a run directory or a file is refused.

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
import filecmp
import itertools
import json
import os
import re
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

from nitp import shell
from nitp.errors import UserError, on_interrupt
from nitp.io import atomic_write_json, atomic_write_text, discard_folder, json_default, read_jsonl
from nitp.runs import checkpoint_step, list_checkpoints, read_run_config, resolve_checkpoint, run_lock

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
    compute_matched: bool = False  # NTP cells get NITP's training FLOPs (more steps)


@dataclass(frozen=True)
class Cell:
    """One run of the study: its name, axis values, ``--set`` overrides and overlay file."""

    name: str
    settings: dict
    overrides: tuple
    overlay: Path | None


# ----------------------------------------------------------------------------- reading a study
def study_path(path: str | os.PathLike) -> Path:
    """``path`` when it exists, else the shipped study of that name (``quickstart``)."""
    from nitp_train.config import configs_dir

    p, studies = Path(path), configs_dir() / "studies"
    if found := _first_file(p, studies / p.name, studies / f"{p.name}.yaml"):
        return found
    shipped = sorted(f.stem for f in studies.glob("*.yaml"))
    raise UserError(f"study {path}: no such file; give a study YAML or a shipped one ({', '.join(shipped)})")


def _first_file(*candidates: Path) -> Path | None:
    return next((c for c in candidates if c.is_file()), None)


def load_study(path: str | os.PathLike) -> StudySpec:
    """Read and check a study file: every key (typed: ``reports.study_schema``), every axis value
    and every cell's config.

    Raises a one-line ``UserError`` naming the key and the fix (with "did you mean" for typos).
    """
    from .study_schema import validate_study

    p = study_path(path)
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise UserError(f"study {p}: invalid YAML ({str(e).splitlines()[0]}); fix the file") from None
    if not isinstance(data, dict):
        raise UserError(f"study {p}: expected a mapping at the top level (name:, axes:, eval:)")
    where = f"study {p}"
    v = validate_study(data, where)
    if v["name"] is None:
        v["name"] = validate_study({"name": p.stem}, f"{where}: the file's stem (give name:)")["name"]
    typed = {"set": tuple(v["set"]), "include": tuple(v["include"]), "eval": EvalPlan(**v["eval"])}
    spec = StudySpec(**{**v, **typed}, path=p.resolve())
    check_study(spec)
    return spec


def check_study(spec: StudySpec) -> None:
    """Check the evaluation plan's types and resolve every cell's config once (unknown keys and
    bad values surface here, not mid-study; also for a spec changed with ``dataclasses.replace``)."""
    from .study_schema import validate_eval

    where = f"study {spec.path}"
    validate_eval(dataclasses.asdict(spec.eval), where)
    if spec.eval.mteb and spec.eval.mteb.get("tasks"):  # names mteb does not know: before training
        from nitp_eval.mteb.tasks import resolve_tasks

        try:
            resolve_tasks(None, spec.eval.mteb["tasks"])
        except UserError as e:
            raise UserError(f"{where}: eval.mteb.tasks: {e}") from None
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


def _positive(value: Any, where: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UserError(f"{where}={value!r}: must be a whole number of at least 1")


# ----------------------------------------------------------------------------- cells
def cells(spec: StudySpec) -> list[Cell]:
    """The cartesian product of the axes (then each ``include`` entry), as named cells.

    Distinct values always give distinct names (:func:`_cell_names`); ``UserError`` when two
    cells are the very same (an ``include`` entry repeating a cell of the axes).
    """
    combos = [dict(zip(spec.axes, values)) for values in itertools.product(*spec.axes.values())]
    for entry in spec.include:
        rest = {k: v for k, v in spec.axes.items() if k not in entry}
        combos += [{**dict(zip(rest, vs)), **entry} for vs in itertools.product(*rest.values())]
    keys = list(dict.fromkeys([*spec.axes, *(k for e in spec.include for k in e)]))
    combos = [{k: c[k] for k in keys if k in c} for c in combos]  # the axes' order, in names too
    names = _cell_names(spec, keys, combos)
    seen: dict[str, dict] = {}
    for name, combo in zip(names, combos):
        same = seen.setdefault(_identity(combo), combo)
        if same is not combo:
            raise UserError(
                f"study {spec.path}: two cells are named {name!r} ({same} and {combo}): the same "
                "settings twice; remove the include entry that repeats a cell"
            )
    return [_cell(spec, name, combo) for name, combo in zip(names, combos)]


def _cell_names(spec: StudySpec, keys: list[str], combos: list[dict]) -> list[str]:
    """Each cell's folder name: the varying axes' :func:`_name_part` joined by ``-``; names that
    still coincide for distinct values (``1`` and ``"1"``, two overlays ``a/x.yaml`` and
    ``b/x.yaml``) get 6 hex digits of the cell's settings; at most 200 bytes (NAME_MAX)."""
    varying = [k for k in keys if len({_identity(c.get(k)) for c in combos}) > 1]
    parts = [[_name_part(k, combo[k]) for k in varying if k in combo] for combo in combos]
    names = ["-".join(p for p in cell_parts if p) or spec.name for cell_parts in parts]
    counts: dict[str, set] = {}
    for name, combo in zip(names, combos):
        counts.setdefault(name, set()).add(_identity(combo))
    names = [n if len(counts[n]) == 1 else f"{n}-{_digest(_identity(c))}" for n, c in zip(names, combos)]
    return [
        n if len(n.encode()) <= 200 else f"{n.encode()[:180].decode('utf-8', 'ignore')}-{_digest(n)}"
        for n in names
    ]


def _identity(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


def _digest(text: str, n: int = 6) -> str:
    import hashlib

    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()[:n]


def _cell(spec: StudySpec, name: str, combo: dict) -> Cell:
    overrides = tuple(_override(k, v) for k, v in combo.items() if k != OVERLAY)
    return Cell(name, dict(combo), overrides, _overlay_path(combo.get(OVERLAY), spec))


def _name_part(key: str, value: Any) -> str:
    """``s1``, ``nitp``, ``shift-0``, ``lambda-0.5``; a value with characters a folder name should
    not hold (unicode, '/', spaces) keeps its safe part plus 6 hex digits of the value."""
    if key == OVERLAY:
        return "" if value in NO_OVERLAY else _safe_part(re.sub(r"\.ya?ml$", "", Path(str(value)).name))
    text = _text(value)
    if key == "seed":
        return _safe_part(f"s{text}")
    if key == "objective":
        return _safe_part(text)
    return f"{_safe_part(key.rsplit('.', 1)[-1])}-{_safe_part(text)}"


def _safe_part(text: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")
    if safe == text and safe not in (".", ".."):
        return safe
    return f"{safe}-{_digest(text)}" if safe.strip(".") else _digest(text)


def _text(value: Any) -> str:
    return json.dumps(value) if isinstance(value, bool) or value is None else str(value)


def _override(key: str, value: Any) -> str:
    """``nitp.lambda=0.5``: JSON is YAML, so ``parse_override`` reads the value back exactly."""
    return f"{key}={json.dumps(value)}"


def _overlay_path(value: Any, spec: StudySpec) -> Path | None:
    from nitp_train.config import configs_dir

    if value in NO_OVERLAY:
        return None
    text = str(value)
    ablations = configs_dir() / "ablations"
    candidates = (spec.path.parent / text, Path(text), ablations / text, ablations / f"{text}.yaml")
    if found := _first_file(*candidates):
        return found
    known = sorted(f.stem for f in ablations.glob("*.yaml"))
    near = difflib.get_close_matches(text, known, n=1)
    hint = f"did you mean {near[0]}?" if near else f"shipped: {', '.join(known)}"
    raise UserError(f"study {spec.path}: overlay {text!r}: no such file ({hint}); or use none")


def _base_config(spec: StudySpec) -> Path | None:
    from nitp_train.config import RECIPES, config_path, configs_dir

    if spec.config is not None:
        local = spec.path.parent / str(spec.config)
        return _first_file(local, local.with_suffix(".yaml")) or config_path(spec.config)
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
    cfg = _load(spec, [*overlay, *cell.overrides, f"run_name={cell.name}"])
    if data_dir is not None and cfg["data"]["prepared_dir"] is None:
        cfg["data"]["prepared_dir"] = str(data_dir)
    if spec.compute_matched and cfg["objective"] == "ntp":
        _match_compute(cfg, cell)
    return cfg


def _match_compute(cfg: dict, cell: Cell) -> None:
    """``compute_matched: true``: the NTP cell trains for NITP's FLOPs at its size, i.e.
    ``ceil(steps x (1 + nitp_extra / ntp_flops_per_token))`` steps (or that many more tokens),
    beside the paper's equal-token comparison."""
    import math

    from nitp_train.flops import model_compute

    c = model_compute(cfg["model"], cfg["data"]["seq_len"])
    factor = 1.0 + c["nitp_extra_flops_per_token"] / c["ntp_flops_per_token"]
    train = cfg["train"]
    if train["steps"] is not None:
        train["steps"] = math.ceil(train["steps"] * factor)
    elif train["tokens"] is not None:
        train["tokens"] = float(math.ceil(train["tokens"] * factor))
    else:
        raise UserError(
            f"cell {cell.name}: compute_matched needs train.steps or train.tokens; set one in the study's set:"
        )


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
    """What an evaluation covered: the plan and the checkpoints by name and weights hash (a new
    checkpoint, or a retrained one under the same name, re-evaluates)."""
    from nitp.runs import weights_hash

    checkpoints = [[c.name, weights_hash(c)] for c in _eval_checkpoints(spec, run_dir)]
    return {"plan": dataclasses.asdict(spec.eval), "checkpoints": checkpoints}


def _eval_checkpoints(spec: StudySpec, run_dir: Path) -> list[Path]:
    return list_checkpoints(run_dir) if spec.eval.checkpoints == "all" else [resolve_checkpoint(run_dir)]


def _is_evaluated(spec: StudySpec, out: Path, cell: str) -> bool:
    marker = _marker(out, cell)
    try:  # a damaged marker (ValueError) or a checkpoint gone (UserError): evaluate again
        return marker.is_file() and json.loads(marker.read_text()) == json.loads(
            json.dumps(_eval_key(spec, out / cell), default=json_default)
        )
    except (ValueError, UserError):
        return False


def cell_status(spec: StudySpec, out: Path, cell: Cell, cfg: dict) -> dict:
    """``pending`` | ``training`` (some checkpoints) | ``trained`` | ``evaluated``, read from disk;
    ``changed`` when the cell's run was trained with another config (:func:`changed_keys`)."""
    run_dir, steps = out / cell.name, final_step(cfg)
    step = last_step(run_dir)
    status = "pending" if step == 0 else "training" if step < steps else "trained"
    if changed_keys(cfg, run_dir):
        status = "changed"
    elif status == "trained" and _is_evaluated(spec, out, cell.name):
        status = "evaluated"
    return {"status": status, "step": step, "steps": steps}


def changed_keys(cfg: dict, run_dir: Path) -> list[tuple[str, Any, Any]]:
    """``(key, the run's value, the study's value)`` for every key where a cell's resolved config
    differs from its run's ``config.yaml`` (empty when the run does not exist yet).

    Bookkeeping keys (``nitp_train.config.RESUMABLE_CHANGES``: logging, checkpoints, in-training
    evaluation, threads, names) and what the batch plan derives (``grad_accum``; ``global_batch`` and
    ``steps`` when the study leaves them to the plan) never count; ``train.steps`` does: a cell
    trained for other steps had another schedule. ``data.prepared_dir`` neither (the data
    settings decide the tokens), nor ``nitp.*`` between two NTP configs.
    """
    from nitp_train.config import RESUMABLE_CHANGES, config_diff

    if not (run_dir / "config.yaml").is_file():
        return []
    try:
        saved = read_run_config(run_dir)
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise UserError(
            f"{run_dir / 'config.yaml'}: cannot be read ({type(e).__name__}); "
            f"delete the cell's folder {run_dir} to train it again"
        ) from None
    ignored = [k for k in RESUMABLE_CHANGES if k != "train.steps"] + ["train.grad_accum", "data.prepared_dir"]
    ignored += [f"train.{k}" for k in ("global_batch", "steps") if cfg["train"][k] is None]
    if cfg["objective"] == "ntp" == (saved or {}).get("objective"):
        ignored.append("nitp")  # an NTP run builds no projector and no target hook: inert settings
    return [
        (key, _dotted_get(saved, key), _dotted_get(cfg, key))
        for key in config_diff(saved if isinstance(saved, dict) else {}, cfg)
        if not any(key == k or key.startswith(k + ".") for k in ignored)
    ]


def _dotted_get(tree: Any, key: str) -> Any:
    for part in key.split("."):
        tree = tree.get(part) if isinstance(tree, dict) else None
    return tree


def write_manifest(spec: StudySpec, out: Path, cfgs: dict, report: Path | None = None) -> Path:
    """``OUT/study.json``: the study, every cell (settings, overrides, run dir, status), the report."""
    rows = [
        {
            "name": cell.name,
            "run_dir": str(out / cell.name),
            "settings": cell.settings,
            "overrides": list(cell.overrides),
            "overlay": str(cell.overlay) if cell.overlay else None,
            "preset": cfgs[cell.name]["model"]["preset"],
            **cell_status(spec, out, cell, cfgs[cell.name]),
        }
        for cell in cells(spec)
    ]
    if report is None and (old := out / MANIFEST).is_file():
        with contextlib.suppress(ValueError):
            report = json.loads(old.read_text()).get("report")
    base = _base_config(spec)
    manifest = {
        "study": spec.name,
        "file": str(spec.path),
        "base_config": str(base) if base else None,
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
        state = cell_status(spec, out, cell, cfgs[cell.name])
        settings = ", ".join(f"{k}={_text(v)}" for k, v in cell.settings.items()) or "base config"
        progress = f"{state['status']} {state['step']}/{state['steps']}"
        resolved, batch_plan = apply_plan(cfgs[cell.name], _world_size())
        plan = plan_summary(resolved, batch_plan)
        lines.append(f"{cell.name:<{width}}  [{progress}]  {settings} | {plan} | {_compute_text(resolved)}")
    lines.append(f"evaluation: {describe_eval(spec.eval)}")
    return lines


def _compute_text(cfg: dict) -> str:
    """``328,768 params, 2.36 MFLOPs/token (NITP +12.5%), 29.9 tokens/param, 2.32e13 FLOPs``."""
    from nitp_train.flops import model_compute

    c = model_compute(cfg["model"], cfg["data"]["seq_len"])
    nitp = cfg["objective"] == "nitp"
    per_token = c["ntp_flops_per_token"] + (c["nitp_extra_flops_per_token"] if nitp else 0.0)
    tokens = cfg["train"]["steps"] * cfg["train"]["global_batch"] * cfg["data"]["seq_len"]
    share = c["nitp_extra_flops_per_token"] / c["ntp_flops_per_token"]
    extra = f" (NITP +{100 * share:.1f}%)" if nitp else ""
    return (
        f"{c['parameters']:,} params, {per_token / 1e6:.3g} MFLOPs/token{extra}, "
        f"{tokens / c['parameters']:.3g} tokens/param, {per_token * tokens:.3g} FLOPs"
    )


def describe_eval(plan: EvalPlan) -> str:
    """``bench offline (limit 150); mteb offline; geom builtin 20,000 tokens; last checkpoint; report``."""
    parts = [
        f"bench {b.get('suite') or b.get('tasks')}" + (f" (limit {b['limit']})" if b.get("limit") else "")
        for b in plan.bench
    ]
    if plan.mteb is not None:
        parts.append(f"mteb {plan.mteb.get('suite') or plan.mteb.get('tasks') or 'offline'}")
    if plan.geom is not None:
        tokens = plan.geom.get("tokens")
        amount = f"{tokens:,}" if isinstance(tokens, int) else "the default number of"
        parts.append(f"geom {plan.geom.get('corpus', 'builtin')} {amount} tokens")
    parts.append("every checkpoint" if plan.checkpoints == "all" else "last checkpoint")
    return "; ".join(parts + (["report"] if plan.report else []))


# ----------------------------------------------------------------------------- running
def run_study(
    spec: StudySpec,
    out: str | os.PathLike,
    cell: str | None = None,
    dry_run: bool = False,
    log: Callable[[str], None] = print,
    retrain_changed: bool = False,
) -> Path | None:
    """Train every cell (or only ``cell``), evaluate them, and write the report.

    Resumable: finished cells are skipped, a half-trained cell resumes from its last checkpoint
    (bit for bit, ``nitp_train.trainer.train(resume=True)``), evaluators reuse their records; a
    changed cell and ``OUT``: see the module doc. Under torchrun every rank trains; only rank 0
    evaluates and reports. ``dry_run`` only logs :func:`plan_lines`. Returns
    ``OUT/report/report.md`` (or ``OUT`` without a report; None when dry).
    """

    out = Path(out)
    check_out(spec, out)
    if dry_run:
        for line in plan_lines(spec, out):
            log(line)
        return None
    on_interrupt("finished cells and the last checkpoint of each are kept; rerun the same command to resume")
    cfgs = cell_configs(spec, out)
    chosen = [pick_cell(spec, cell)] if cell else cells(spec)
    _check_changed(spec, out, chosen, cfgs, retrain_changed, log)
    if _is_main():
        new = not out.exists()
        try:
            write_manifest(spec, out, cfgs)
        except OSError:  # a full disk before anything was written: no empty OUT left behind
            if new and out.is_dir() and not any(out.iterdir()):
                out.rmdir()
            raise
    _train_cells(spec, out, chosen, cfgs, log)
    if not _is_main():
        return None
    for c in chosen:
        evaluate_cell(spec, out, c, cfgs[c.name], log)
        write_manifest(spec, out, cfgs)
    if cell is not None or not spec.eval.report:
        return out
    from reports.compare import compare

    log(f"report of {len(chosen)} cells -> {out / 'report'}")
    report = compare([str(out / c.name) for c in chosen], out / "report", log=lambda m: log(f"  note: {m}"))
    write_manifest(spec, out, cfgs, report)
    return report or out


def check_out(spec: StudySpec, out: Path) -> None:
    """``OUT`` must be a folder (or absent) in a writable place, not a run directory, and not the
    folder of another study (its ``study.json`` names the study); one ``UserError`` line else."""
    from nitp.records import check_output

    check_output(out, "--out", folder=True)
    if (out / "config.yaml").is_file() or (out / "checkpoints").is_dir():
        raise UserError(f"--out {out}: is a run directory, not a study folder; choose another --out")
    manifest = out / MANIFEST
    if not manifest.is_file():
        return
    try:
        old = json.loads(manifest.read_text(encoding="utf-8"))
        name, file = old["study"], old.get("file")
    except (OSError, ValueError, KeyError, TypeError):
        raise UserError(
            f"--out {out}: its {MANIFEST} is damaged; choose another --out, or delete {manifest} "
            "if the folder holds this study"
        ) from None
    if name != spec.name:
        raise UserError(
            f"--out {out}: holds study {name!r} ({file}), not {spec.name!r}; choose another --out "
            f"(e.g. runs/{spec.name})"
        )
    other = Path(file) if file and Path(file) != spec.path else None
    with contextlib.suppress(OSError):  # a moved (gone) or unreadable file is the same study
        if other and other.is_file() and not filecmp.cmp(other, spec.path, shallow=False):
            raise UserError(  # another file of the same name: it would replace the study's manifest
                f"--out {out}: holds study {name!r} of {file}, and {spec.path} is another file; choose "
                f"another --out, or delete {manifest} if this file replaces that one"
            )


def _check_changed(spec: StudySpec, out: Path, chosen: list[Cell], cfgs: dict, retrain: bool, log) -> None:
    """Cells whose run has another config: refused (first one named), or with ``retrain`` their
    run folders deleted (complete-or-absent, under the run lock) so they train again."""
    changed = {c.name: diff for c in chosen if (diff := changed_keys(cfgs[c.name], out / c.name))}
    if not changed:
        return
    name, diff = next(iter(changed.items()))
    shown = ", ".join(f"{k}: {_text(a)} -> {_text(b)}" for k, a, b in diff[:4])
    more = f" and {len(diff) - 4} more" if len(diff) > 4 else ""
    if not retrain:
        others = f" (and {len(changed) - 1} more cells)" if len(changed) > 1 else ""
        raise UserError(
            f"cell {name}{others}: {out / name} was trained with another config ({shown}{more}); "
            "rerun with --retrain-changed to train it again, or choose another --out"
        )
    if _world_size() > 1:
        raise UserError(
            f"cell {name}: --retrain-changed deletes runs: run it once without torchrun "
            f"(nitp-study ... --retrain-changed --dry-run lists them), or delete {out / name}"
        )

    for name, diff in changed.items():
        log(f"{name}: config changed ({', '.join(k for k, _, _ in diff)}); training it again")
        with run_lock(out / name, "nitp-study --retrain-changed"):
            discard_folder(out / name)
        _marker(out, name).unlink(missing_ok=True)


def _train_cells(spec: StudySpec, out: Path, chosen: list[Cell], cfgs: dict, log) -> None:
    done = [c for c in chosen if last_step(out / c.name) >= final_step(cfgs[c.name])]
    for c in done:
        log(f"{c.name}: already trained ({out / c.name})")
    todo = [c for c in chosen if c not in done]
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
    """``side_by_side`` trainings at once, each in a worker process of its own (log:
    ``OUT/logs/CELL.log``); the next cell starts when one finishes.

    Workers live in this process's process group and die with it: the kernel kills them when
    this process dies (``PR_SET_PDEATHSIG``, even after a SIGKILL), and a SIGTERM / SIGINT here
    stops them at once (:func:`_stop_workers`). Their runs stay complete-or-absent (the trainer's
    checkpoints are atomic) and resume on the next start. A failed cell does not stop the others;
    the first failure is raised once all have ended.
    """
    import multiprocessing

    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    n = min(spec.side_by_side, len(todo))
    log(f"training {len(todo)} cells, {n} side by side (logs: {logs})")
    ctx = multiprocessing.get_context("spawn")
    pending, running, failed = list(todo), {}, {}
    try:
        with _progress_bars(out, {c.name: final_step(cfgs[c.name]) for c in todo}) as update_bars:
            while pending or running:
                while pending and len(running) < n:
                    c = pending.pop(0)
                    args = (os.getpid(), cfgs[c.name], out / c.name, logs / f"{c.name}.log")
                    proc = running[c.name] = ctx.Process(
                        target=_train_worker, args=args, name=f"nitp-study {c.name}"
                    )
                    proc.start()
                for name in [name for name, proc in running.items() if proc.exitcode is not None]:
                    proc = running.pop(name)
                    proc.join()
                    if proc.exitcode == 0:
                        log(f"{name}: trained ({out / name})")
                    else:
                        failed[name] = _failure(proc.exitcode, logs / f"{name}.log")
                        log(f"{name}: failed ({failed[name]})")
                update_bars()
                time.sleep(0.25)
    except BaseException:  # SIGTERM / SIGINT (nitp.errors.Interrupted), or anything else: no orphans
        _stop_workers(list(running.values()))
        raise
    write_manifest(spec, out, cfgs)
    if failed:
        name, why = next(iter(failed.items()))
        raise UserError(f"training {name} failed ({why}); see {logs / f'{name}.log'}")


def _train_worker(parent: int, cfg: dict, run_dir: Path, logfile: Path) -> None:
    """One training with its output in ``logfile`` (the body of a side-by-side worker).

    Exit codes: 0 trained, 2 bad input (the ``error:`` line is the log's last), 1 a crash (its
    traceback in the log), killed by a signal when the study stopped it.
    """
    import traceback

    _die_with_parent(parent)
    # Ctrl-C reaches the whole process group: the study stops its workers itself (SIGTERM, which
    # ends a worker at once), so a worker prints no KeyboardInterrupt traceback of its own
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    code = 0
    with open(logfile, "a") as f, contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
        try:
            from nitp_train.trainer import train

            train(cfg, run_dir, resume=True, log=lambda m: print(m, flush=True))
        except UserError as e:
            print(f"error: {e}", flush=True)
            code = 2
        except Exception:  # noqa: BLE001 - the traceback goes to the cell's log, not the terminal
            traceback.print_exc()
            code = 1
    sys.exit(code)


def _die_with_parent(parent: int) -> None:
    """Ask the kernel to SIGKILL this process when its parent dies (Linux ``prctl(PR_SET_PDEATHSIG)``
    through ctypes; elsewhere nothing), and exit at once when the parent is already gone."""
    if sys.platform.startswith("linux"):
        import ctypes

        with contextlib.suppress(OSError, AttributeError):  # prctl option 1: PR_SET_PDEATHSIG
            ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL), 0, 0, 0)
    if os.getppid() != parent:  # the parent died before the call above: nothing would kill us
        os._exit(1)


def _stop_workers(procs: list, grace_s: float = 10.0) -> None:
    """SIGTERM every worker (a training dies at once: its checkpoints are atomic), SIGKILL what is
    still alive after ``grace_s``, and reap them all."""
    for proc in procs:
        with contextlib.suppress(OSError, ValueError):
            proc.terminate()
    deadline = time.monotonic() + grace_s
    for proc in procs:
        proc.join(max(0.0, deadline - time.monotonic()))
        if proc.exitcode is None:
            with contextlib.suppress(OSError, ValueError):
                proc.kill()
            proc.join(5.0)


def _failure(exitcode: int, logfile: Path) -> str:
    """Why a worker failed, in a few words: its ``error:`` line, else its exit code."""
    if exitcode < 0:
        return f"killed by {signal.Signals(-exitcode).name}"
    lines = logfile.read_text(errors="replace").splitlines() if logfile.is_file() else []
    errors = [ln.removeprefix("error: ") for ln in lines if ln.startswith("error: ")]
    return errors[-1] if errors else f"exit code {exitcode}, a crash"


@contextlib.contextmanager
def _progress_bars(out: Path, steps: dict[str, int]):
    """One progress bar per side-by-side training on a terminal (read from metrics.jsonl); yields
    the function that updates them."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn("  {task.fields[name]}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, TextColumn("{task.description}"), disable=not sys.stderr.isatty()) as bar:
        tasks = {name: bar.add_task("", total=total, name=name) for name, total in steps.items()}

        def update() -> None:
            for name, task in tasks.items():
                path = out / name / "metrics.jsonl"
                rows = read_jsonl(path) if path.is_file() else []
                if last := next((r for r in reversed(rows) if "loss_ntp" in r), None):
                    bar.update(task, completed=last["step"], description=f"loss_ntp {last['loss_ntp']:.3f}")

        yield update


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
        from nitp_eval.bench import BenchSettings, run_bench

        chosen = {k: b.get(k) for k in ("suite", "tasks", "limit", "data_dir")}
        run_bench(ckpts, BenchSettings(**chosen, device=device))
    if plan.mteb is not None:
        from nitp_eval.mteb.run import run_mteb
        from nitp_eval.mteb.settings import MtebSettings

        m = plan.mteb
        kw = {"pooling": m.get("pooling", "mean"), "layer": m.get("layer", -1), "device": device}
        suite = m.get("suite") or ("offline" if not m.get("tasks") else None)
        run_mteb(ckpts, MtebSettings(suite=suite, tasks=m.get("tasks"), **kw), log=log)
    if plan.geom is not None:
        from analysis.measure import geom_record
        from analysis.settings import GeomSettings

        g = plan.geom
        kw = {"corpus": g.get("corpus", "builtin"), "layers": g.get("layers"), "device": device}
        kw |= {"n_tokens": g["tokens"]} if g.get("tokens") else {}
        for ck in ckpts:
            geom_record(ck, GeomSettings(**kw), progress=False)
    atomic_write_json(_marker(out, cell.name), _eval_key(spec, run_dir))


# ----------------------------------------------------------------------------- cluster scripts
def cell_command(spec: StudySpec, out: str | os.PathLike, cell: str | None = None) -> str:
    """``nitp-study STUDY.yaml --out OUT [--cell NAME]``, with absolute paths, every word quoted.

    Raises a one-line ``UserError`` when a path or name holds a control character (a newline
    would end the line and run the rest as a command).
    """
    study, out_q = shell.quote(spec.path, "study file"), shell.quote(Path(out).resolve(), "--out")
    return f"nitp-study {study} --out {out_q}" + (f" --cell {shell.quote(cell, '--cell')}" if cell else "")


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
    needed = ("SLURM_ARRAY_TASK_ID", "SLURM_JOB_NODELIST", "SLURM_NNODES")
    need = "\n".join(f': "${{{v}:?run this script with sbatch ({v} is not set)}}"' for v in needed)
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
{need}
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
