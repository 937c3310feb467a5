"""Training configs: defaults <- YAML file <- ``--set key=value`` overrides, then validated.

The resolved config (every field explicit, preset expanded) is what a run directory stores
in ``config.yaml``; see docs/contracts.md for the schema and configs/ for examples.
"""

from __future__ import annotations

import copy
import difflib
import re
from pathlib import Path
from typing import Any

import yaml

from nitp.errors import UserError
from nitp.layers import check_layer

from .loss import LOSS_KINDS, PROJECTORS
from .models import PRESETS, make_config, resolve_preset

DEFAULTS: dict[str, Any] = {
    "run_name": None,
    "seed": 0,
    "objective": "nitp",  # ntp | nitp
    "model": {"preset": "tiny-dense"},  # + any preset / transformers config field
    "nitp": {
        "target_layer": None,  # null -> the preset's (paper: ~20% of depth)
        "lambda": None,  # null -> the preset's (paper: 1.0, 0.8 at 3B/9B)
        "shift": 1,  # 1 = next token (NITP); 0 = same position
        "loss": "cosine",  # cosine | mse | smooth_l1 | kl
        "stop_grad": True,
        "projector": "swiglu",  # swiglu | linear | none
        "start_step": 0,
    },
    "cos_reg": {"weight": 0.0},  # Gao et al. 2019 baseline: mean cosine of last hidden states
    "data": {
        "corpus": "builtin",  # builtin | file or folder (.txt/.jsonl/.parquet) | HF dataset name
        "text_field": "text",
        "tokenizer": None,  # null -> byte-level BPE trained on the corpus
        "vocab_size": None,  # null -> model.vocab_size
        "seq_len": 256,
        "val_fraction": 0.05,
        "seed": 0,
        "prepared_dir": None,  # null -> RUN/data
    },
    "train": {
        "steps": 300,
        "batch_size": 16,  # sequences per micro-batch per rank
        "grad_accum": 1,
        "lr": None,  # null -> the preset's
        "min_lr_ratio": 0.1,
        "warmup_steps": 30,  # paper: 2000
        "decay_ratio": 0.2,  # paper: last 20% of steps
        "decay_type": "cosine",  # linear | cosine | 1-sqrt
        "weight_decay": 0.1,
        "betas": [0.9, 0.95],
        "eps": 1.0e-8,
        "grad_clip": 1.0,
        "device": "auto",  # auto | cpu | cuda
        "dtype": "auto",  # auto (bf16 autocast on GPU, fp32 on CPU) | bf16 | fp32
        "compile": False,
        "parallel": "ddp",  # ddp | fsdp (under torchrun)
        "threads": None,  # torch CPU threads; null -> torch's default
    },
    "log": {"every": 10, "geom_every": 50, "eval_every": 100, "eval_batches": 8},
    "checkpoint": {"every": 100, "keep_last": 3},
}

# Settings that may change when a run is resumed (they do not change the trajectory).
RESUMABLE_CHANGES = ("log", "checkpoint", "train.steps", "train.threads", "run_name")


def _merge(base: dict, update: dict, where: str = "") -> dict:
    out = copy.deepcopy(base)
    for key, value in (update or {}).items():
        path = f"{where}{key}"
        if key not in base and where != "model.":
            near = difflib.get_close_matches(key, list(base), n=1)
            raise UserError(
                f"unknown config key {path!r}" + (f" (did you mean {where}{near[0]}?)" if near else "")
            )
        if isinstance(base.get(key), dict) and key != "model":
            if not isinstance(value, dict):
                raise UserError(f"config key {path!r} must be a mapping")
            out[key] = _merge(base[key], value, f"{path}.")
        elif key == "model":
            out[key] = {**base[key], **{k: _coerce_number(v) for k, v in (value or {}).items()}}
        else:
            out[key] = _coerce_number(value)
    return out


def _coerce_number(value: Any) -> Any:
    """YAML 1.1 reads ``3e-4`` as a string; every config number written that way is meant as one."""
    if isinstance(value, str) and re.fullmatch(r"[-+]?\d+(\.\d*)?[eE][-+]?\d+", value.strip()):
        return float(value)
    return value


def parse_override(item: str) -> dict:
    """``a.b=c`` -> ``{"a": {"b": c}}`` with c parsed as YAML (numbers, booleans, null, lists)."""
    if "=" not in item:
        raise UserError(f"--set {item!r}: expected key=value (e.g. nitp.lambda=0.5)")
    key, raw = item.split("=", 1)
    value = yaml.safe_load(raw) if raw.strip() else None
    tree: dict = {}
    node = tree
    parts = key.strip().split(".")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
    node[parts[-1]] = value
    return tree


def configs_dir() -> Path:
    """The shipped YAML presets: ``configs/`` of a source tree, or ``nitp.configs`` of a wheel."""
    tree = Path(__file__).resolve().parent.parent / "configs"
    if (tree / "tiny-nitp.yaml").is_file():
        return tree
    from importlib.resources import files

    return Path(str(files("nitp.configs")))


def config_path(path: str | Path) -> Path:
    """``path`` when it exists, else the shipped config of that name (``configs/tiny-nitp.yaml``,
    ``tiny-nitp.yaml`` and ``tiny-nitp`` all work from any folder, installed or not)."""
    p = Path(path)
    if p.is_file():
        return p
    name = p.as_posix().removeprefix("configs/")
    for candidate in (configs_dir() / name, configs_dir() / f"{name}.yaml"):
        if candidate.is_file():
            return candidate
    return p


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> dict:
    """Defaults, then the YAML at ``path`` (see :func:`config_path`), then ``overrides``
    (``key=value``), resolved."""
    cfg = copy.deepcopy(DEFAULTS)
    if path is not None:
        for data in _read_chain(config_path(path)):
            cfg = _merge(cfg, data)
    for item in overrides:
        cfg = _merge(cfg, parse_override(item))
    return resolve(cfg)


def _read_chain(path: Path, seen: tuple = ()) -> list[dict]:
    """The YAML at ``path`` preceded by its ``base:`` file(s), relative to ``path``."""
    if not path.is_file():
        raise UserError(f"config {path}: no such file")
    if path.resolve() in seen:
        raise UserError(f"config {path}: 'base:' chain loops back to itself")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise UserError(f"config {path}: invalid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise UserError(f"config {path}: expected a mapping at the top level")
    base = data.pop("base", None)
    chain = _read_chain(path.parent / base, seen + (path.resolve(),)) if base else []
    return chain + [data]


def resolve(cfg: dict) -> dict:
    """Expand the preset, fill preset-dependent nulls, and validate; returns a new dict."""
    cfg = copy.deepcopy(cfg)
    model = dict(cfg["model"])
    if model.get("init_from"):  # continued pre-training of an existing model (init_from.py)
        from .init_from import model_spec

        preset, spec = "init_from", model_spec(model, cfg, DEFAULTS)
    else:
        preset = model.pop("preset", None) or "tiny-dense"
        spec = resolve_preset(preset, model)
        make_config(spec)  # validates every model field (unknown keys name the nearest)
    nitp, train, data = cfg["nitp"], cfg["train"], cfg["data"]
    if nitp["target_layer"] is None:
        nitp["target_layer"] = spec.get("target_layer", 1)
    if nitp["lambda"] is None:
        nitp["lambda"] = spec.get("lambda", 1.0)
    if train["lr"] is None:
        train["lr"] = spec.get("lr", 1e-3)
    if data["vocab_size"] is None:
        data["vocab_size"] = spec["vocab_size"]
    cfg["model"] = {"preset": preset, **spec}
    if cfg["run_name"] is None:
        cfg["run_name"] = f"{preset}-{cfg['objective']}"
    _validate(cfg)
    return cfg


def _validate(cfg: dict) -> None:
    nitp, train, data, model = cfg["nitp"], cfg["train"], cfg["data"], cfg["model"]
    if cfg["objective"] not in ("ntp", "nitp"):
        raise UserError(f"objective={cfg['objective']!r}: use ntp or nitp")
    n_layers = model["num_hidden_layers"]
    if isinstance(nitp["target_layer"], bool):
        raise UserError(
            f"nitp.target_layer={nitp['target_layer']}: give an integer layer number (0 = embeddings)"
        )
    nitp["target_layer"] = check_layer(
        nitp["target_layer"], n_layers, allow_last=False, name="nitp.target_layer"
    )
    if not isinstance(nitp["lambda"], (int, float)) or nitp["lambda"] < 0:
        raise UserError(f"nitp.lambda={nitp['lambda']}: must be a number >= 0")
    if nitp["shift"] not in (0, 1):
        raise UserError(f"nitp.shift={nitp['shift']}: use 1 (next token) or 0 (same position)")
    if nitp["loss"] not in LOSS_KINDS:
        raise UserError(f"nitp.loss={nitp['loss']!r}: use one of {', '.join(LOSS_KINDS)}")
    if nitp["projector"] not in PROJECTORS:
        raise UserError(f"nitp.projector={nitp['projector']!r}: use one of {', '.join(PROJECTORS)}")
    if nitp["start_step"] < 0 or cfg["cos_reg"]["weight"] < 0:
        raise UserError("nitp.start_step and cos_reg.weight must be >= 0")
    if data["seq_len"] > model["max_position_embeddings"]:
        raise UserError(
            f"data.seq_len={data['seq_len']} exceeds the model's max_position_embeddings={model['max_position_embeddings']}: lower data.seq_len or set model.max_position_embeddings"
        )
    if data["seq_len"] < 2:
        raise UserError("data.seq_len must be >= 2")
    for key in ("steps", "batch_size", "grad_accum"):
        if not isinstance(train[key], int) or train[key] < 1:
            raise UserError(f"train.{key}={train[key]}: must be an integer >= 1")
    if train["lr"] <= 0:
        raise UserError(f"train.lr={train['lr']}: must be > 0")
    if train["parallel"] not in ("ddp", "fsdp"):
        raise UserError(f"train.parallel={train['parallel']!r}: use ddp or fsdp")
    if train["dtype"] not in ("auto", "bf16", "fp32"):
        raise UserError(f"train.dtype={train['dtype']!r}: use auto, bf16 or fp32")


def config_diff(a: dict, b: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two resolved configs."""
    keys = set(a) | set(b)
    diffs = []
    for k in sorted(keys):
        path = f"{prefix}{k}"
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            diffs += config_diff(va, vb, f"{path}.")
        elif va != vb:
            diffs.append(path)
    return diffs


def preset_names() -> list[str]:
    return list(PRESETS)
