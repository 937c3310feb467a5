"""Read what `nitp-report` compares: run directories and result records, grouped into models.

A *model* here is one training run (all its checkpoints) or one plain model folder. Its
label comes from the run config -- objective, size (preset) and step -- e.g.
``"NITP tiny-dense @500"``, and can be renamed with ``labels={"tiny-nitp": "NITP-k1"}``.

Inputs (``docs/contracts.md``):

- a run directory (``RUN/config.yaml``): its config, ``metrics.jsonl`` and every record under
  ``RUN/results/**.json``;
- a result record file (``*.json``, read with ``nitp.records.read_record``); when the record's
  ``model.run`` directory exists, that run's config and metrics are attached to it;
- any other directory: every record file below it (e.g. ``./results/``).

Example
-------
>>> study = load_inputs(["runs/tiny-ntp", "runs/tiny-nitp"])       # doctest: +SKIP
>>> [m.label for m in study.models]                                  # doctest: +SKIP
['NTP tiny-dense @300', 'NITP tiny-dense @300']
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nitp.errors import UserError
from nitp.io import read_jsonl
from nitp.records import read_record
from nitp.runs import is_model_dir, read_run_config, run_dir_of

OBJECTIVE_NAMES = {"ntp": "NTP", "nitp": "NITP", "cos_reg": "NTP+cos-reg"}


@dataclass
class Model:
    """One run (or plain model folder) and everything the inputs hold about it."""

    key: str  # identity: "run:<path>" or "model:<name>-<hash8>"
    name: str  # run name (or model folder name)
    run_dir: Path | None = None
    config: dict[str, Any] | None = None  # resolved config.yaml of the run
    metrics: list[dict] = field(default_factory=list)  # metrics.jsonl lines
    records: list[dict] = field(default_factory=list)  # each with "_path" (where it was read)
    objective: str | None = None  # "ntp" | "nitp" | None (plain model)
    preset: str | None = None
    label: str = ""

    @property
    def role(self) -> str:
        """Colour class: "ntp", "nitp", "cos_reg" (NTP + the generic regulariser) or "other"."""
        if self.objective == "ntp" and cos_reg_weight(self) > 0:
            return "cos_reg"
        return self.objective if self.objective in ("ntp", "nitp") else "other"

    @property
    def step(self) -> int | None:
        """The newest step anything in the inputs knows of (records or metrics)."""
        steps = [r["model"].get("step") for r in self.records] + [m.get("step") for m in self.metrics]
        return max([s for s in steps if isinstance(s, int)], default=None)

    @property
    def tokens(self) -> int | None:
        """The most tokens anything in the inputs knows the model saw (metrics or records)."""
        seen = [m.get("tokens") for m in self.metrics] + [r["model"].get("tokens_seen") for r in self.records]
        return max([t for t in seen if isinstance(t, int)], default=None)

    def records_of(self, kind: str) -> list[dict]:
        return [r for r in self.records if r.get("kind") == kind]


@dataclass
class Study:
    """Every model of a comparison, in input order, the inputs as given and the speed records."""

    models: list[Model]
    sources: list[str] = field(default_factory=list)
    speed: list[dict] = field(default_factory=list)  # kind "speed": benchmark measurements, no model


def cos_reg_weight(model: Model) -> float:
    cfg = model.config or {}
    try:
        return float((cfg.get("cos_reg") or {}).get("weight") or 0.0)
    except (TypeError, ValueError):
        return 0.0


# ----------------------------------------------------------------------------- loading
def load_inputs(inputs: list[str | os.PathLike], labels: dict[str, str] | None = None) -> Study:
    """Models from run directories, record files and folders of records (see module doc).

    Raises ``UserError`` for an empty list, a missing path, an unreadable record or a
    ``labels`` key that names no model.
    """
    if not inputs:
        raise UserError(
            "no inputs: give run directories or result records (nitp-report compare RUN_OR_RECORD... --out DIR)"
        )
    models: dict[str, Model] = {}
    seen_records: set[Path] = set()
    study = Study(models=[])
    for raw in inputs:
        path = Path(raw).expanduser()
        study.sources.append(str(raw))
        if not path.exists():
            raise UserError(
                f"{raw}: no such file or directory (give a run directory or a result record .json)"
            )
        owner, found = None, [path]
        if path.is_dir() and (path / "config.yaml").is_file():
            owner = _run_model(path, models)
            found = sorted((path / "results").rglob("*.json")) if (path / "results").is_dir() else []
        elif is_model_dir(path) if path.is_dir() else path.suffix.lower() == ".gguf":
            raise UserError(_checkpoint_hint(raw, path))
        elif path.is_dir():
            found = [p for p in sorted(path.rglob("*.json")) if _may_be_record(p, path)]
            if not found:
                raise UserError(
                    f"{raw}: neither a run directory (no config.yaml) nor a folder of result records (no *.json)"
                )
        elif path.suffix != ".json":
            raise UserError(f"{raw}: not a run directory or a result record (.json)")
        for rec_path in found:
            _add_record(rec_path, models, seen_records, study.speed, owner=owner)
    study.models = list(models.values())
    assign_labels(study.models, labels or {})
    return study


def _checkpoint_hint(raw, path: Path) -> str:
    """The one line for a model checkpoint given where a run or a record is expected."""
    run = run_dir_of(path) if path.is_dir() else None
    instead = f"give its run directory ({run}) or " if run else ""
    return (
        f"{raw}: a model checkpoint, not a run directory or a result record; {instead}score it first "
        f"(nitp-eval bench {raw}, nitp-eval mteb {raw}) and compare the records those write"
    )


def _may_be_record(path: Path, root: Path) -> bool:
    """A JSON file below a scanned folder that may be a record: not hidden, not a model folder's
    own files (config.json, tokenizer.json beside the weights), not a run's tracker state."""
    hidden = any(part.startswith(".") for part in path.relative_to(root).parts)
    return not hidden and not is_model_dir(path.parent) and path.name != "trackers.json"


NOT_A_RECORD_HINT = (
    "; give a run directory or a record that nitp-eval / nitp-geom wrote (a checkpoint is scored first: "
    "nitp-eval bench CKPT)"
)


def _run_model(run_dir: Path, models: dict[str, Model]) -> Model:
    key = f"run:{run_dir.resolve()}"
    if key in models:
        return models[key]
    try:
        config = read_run_config(run_dir)
    except Exception as e:  # yaml errors carry multi-line messages: keep one line
        raise UserError(
            f"{run_dir / 'config.yaml'}: unreadable run config ({e.__class__.__name__}); re-run nitp-train or fix the file"
        ) from None
    metrics_path = run_dir / "metrics.jsonl"
    metrics = read_jsonl(metrics_path) if metrics_path.is_file() else []
    models[key] = Model(
        key=key,
        name=str(config.get("run_name") or run_dir.name),
        run_dir=run_dir,
        config=config,
        metrics=[m for m in metrics if isinstance(m, dict) and isinstance(m.get("step"), int)],
        objective=config.get("objective"),
        preset=(config.get("model") or {}).get("preset"),
    )
    return models[key]


def _add_record(
    path: Path, models: dict[str, Model], seen: set[Path], speed: list[dict], owner: Model | None = None
) -> None:
    resolved = path.resolve()
    if resolved in seen:
        return
    seen.add(resolved)
    try:
        record = read_record(path)
    except UserError as e:
        if "not a nitp result record" not in str(e):
            raise
        raise UserError(f"{e}{NOT_A_RECORD_HINT}") from None
    for part in ("model", "settings", "scores"):
        if not isinstance(record.get(part), dict):
            raise UserError(
                f"{path}: result record without a {part!r} object; re-run the command that wrote it"
            )
    from .paired import check_record

    check_record(record, path)
    record["_path"] = str(path)
    if record.get("kind") == "speed":  # a side-by-side benchmark of a preset, not a model's score
        speed.append(record)
        return
    info, model = record["model"], owner  # records under RUN/results/ are RUN's (also copied or moved)
    run = info.get("run")
    if model is None and run and (Path(run) / "config.yaml").is_file():
        model = _run_model(Path(run), models)
    elif model is None:
        key = f"run:{run}" if run else f"model:{info.get('name')}-{str(info.get('hash') or '')[:8]}"
        name = str(info.get("name") or Path(str(info.get("path"))).name)
        model = models.setdefault(key, Model(key=key, name=name))
    model.records.append(record)
    # A plain model (or a run whose config is gone) learns objective and size from its records.
    model.objective = model.objective or info.get("objective")
    model.preset = model.preset or info.get("preset")


# ----------------------------------------------------------------------------- labels
def default_label(model: Model) -> str:
    """``"<OBJECTIVE> <preset> @<step>"``; a plain model keeps its folder name."""
    step = "" if model.step is None else f" @{model.step}"
    if model.role == "other":
        return f"{model.name}{step}"
    return OBJECTIVE_NAMES[model.role] + (f" {model.preset}" if model.preset else "") + step


def assign_labels(models: list[Model], renames: dict[str, str]) -> None:
    """Default labels, made unique with the run name (then its path), then the user's renames.

    A rename key may be the run name, the default label or the run directory path.
    """
    defaults = [default_label(m) for m in models]
    for model, label in zip(models, defaults):
        model.label = label if defaults.count(label) == 1 else f"{label} ({model.name})"
    labels = [m.label for m in models]
    for model in models:  # same run name in two places: the path tells them apart
        if labels.count(model.label) > 1:
            model.label = f"{model.label[:-1]}, {model.run_dir or model.key})"
    unused = dict(renames)
    for model, label in zip(models, defaults):
        names = {model.name, label, model.label} | _run_names(model)
        for old in list(unused):
            if old in names:
                model.label = unused.pop(old)
    if unused:
        known = ", ".join(sorted({m.name for m in models} | {m.label for m in models}))
        raise UserError(f"--label {next(iter(unused))}=...: no model of that name (known: {known})")
    labels = [m.label for m in models]
    if clash := next((x for x in labels if labels.count(x) > 1), None):
        raise UserError(f"two models would share the label {clash!r}; give each its own --label")


def _run_names(model: Model) -> set[str]:
    run = model.run_dir
    return set() if run is None else {str(run), str(run.resolve()), run.name}


def find_model(models: list[Model], name: str, option: str = "--baseline") -> Model:
    """The model named ``name``: its label, run name, default label or run directory."""
    for model in models:
        names = {model.label, model.name, default_label(model), model.key} | _run_names(model)
        if name in names or name.rstrip("/") in names:
            return model
    known = ", ".join(dict.fromkeys(m.label for m in models))
    raise UserError(f"{option} {name}: no model of that name (known: {known})")


def parse_labels(pairs: list[str] | None) -> dict[str, str]:
    """``["tiny-nitp=NITP k=1", ...]`` -> ``{"tiny-nitp": "NITP k=1"}`` (split at the first '=')."""
    out: dict[str, str] = {}
    for pair in pairs or []:
        old, sep, new = pair.partition("=")
        if not sep or not old.strip() or not new.strip():
            raise UserError(f"--label {pair!r}: expected NAME=NEW_LABEL (NAME = run name or default label)")
        out[old.strip()] = new.strip()
    return out
