"""The config schema as one table: every key's type and range, checked before anything is written.

``SCHEMA`` maps a dotted key (``train.lr``) to a :class:`Key`; :func:`check_schema` walks a
merged config and raises one ``UserError`` line naming the first bad key, its value and the fix.
Cross-key rules (seq_len vs the model's positions, the target layer vs the depth, steps vs
tokens, the batch plan) live in ``nitp_train.config`` because they need the resolved preset.

Example
-------
>>> check_value("train.lr", "fast")
Traceback (most recent call last):
...
nitp.errors.UserError: train.lr='fast': must be a number > 0; fix it in the config or with --set train.lr=...
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from nitp.errors import UserError

from .loss import COS_REG_KINDS, LOSS_KINDS, PROJECTORS

BIG = 10**12  # counts beyond this are typos (1e12 steps, sequences, ...)


@dataclass(frozen=True)
class Key:
    """One config key: ``kind`` is int | float | bool | str | name | choice | floats."""

    kind: str
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False  # lo itself is not allowed
    choices: tuple = ()
    null: bool = False
    words: tuple = ()  # extra string values an int key accepts (nitp.target_layer: middle, deep)


def _int(lo=0, hi=BIG, null=False, words=()):
    return Key("int", lo, hi, null=null, words=words)


def _num(lo=0.0, hi=None, lo_open=False, null=False):
    return Key("float", lo, hi, lo_open=lo_open, null=null)


SCHEMA: dict[str, Key] = {
    "run_name": Key("name", null=True),
    "seed": _int(0, 2**32 - 1),
    "objective": Key("choice", choices=("ntp", "nitp")),
    "model.preset": Key("str"),
    "nitp.target_layer": _int(0, 10_000, null=True, words=("middle", "deep")),
    "nitp.lambda": _num(0.0, 1e6, null=True),
    "nitp.shift": Key("choice", choices=(1, 0)),
    "nitp.loss": Key("choice", choices=tuple(LOSS_KINDS)),
    "nitp.stop_grad": Key("bool"),
    "nitp.projector": Key("choice", choices=tuple(PROJECTORS)),
    "nitp.start_step": _int(0, BIG),
    "cos_reg.weight": _num(0.0, 1e6),
    "cos_reg.kind": Key("choice", choices=tuple(COS_REG_KINDS)),
    "data.corpus": Key("str"),
    "data.text_field": Key("str"),
    "data.tokenizer": Key("str", null=True),
    "data.vocab_size": _int(260, 2**32, null=True),  # 256 bytes + 4 special tokens at least
    "data.seq_len": _int(2, 1 << 22),
    "data.val_fraction": _num(0.0, 0.5, lo_open=True),
    "data.seed": _int(0, 2**32 - 1),
    "data.prepared_dir": Key("str", null=True),
    "data.workers": _int(0, 1024, null=True),
    "data.batch_docs": _int(1, 1 << 20),
    "train.steps": _int(1, BIG, null=True),
    "train.tokens": _num(1.0, 1e16, null=True),
    "train.global_batch": _int(1, 1 << 24, null=True),
    "train.batch_size": _int(1, 1 << 20),
    "train.grad_accum": _int(1, 1 << 20, null=True),
    "train.lr": _num(0.0, None, lo_open=True, null=True),
    "train.warmup_steps": _int(0, BIG),
    "train.warmup_start_ratio": _num(0.0, 1.0),
    "train.decay_ratio": _num(0.0, 1.0),
    "train.decay_type": Key("choice", choices=("linear", "cosine", "1-sqrt")),
    "train.min_lr_ratio": _num(0.0, 1.0),
    "train.weight_decay": _num(0.0, 1e3),
    "train.betas": Key("floats", 0.0, 1.0),
    "train.eps": _num(0.0, 1.0, lo_open=True),
    "train.grad_clip": _num(0.0, None, lo_open=True),
    "train.device": Key("choice", choices=("auto", "cpu", "cuda")),
    "train.dtype": Key("choice", choices=("auto", "bf16", "fp32")),
    "train.compile": Key("bool"),
    "train.parallel": Key("choice", choices=("ddp", "fsdp")),
    "train.threads": _int(1, 4096, null=True),
    "train.loss_chunk": _int(0, 1 << 24),
    "train.activation_checkpointing": Key("bool"),
    "log.every": _int(1, BIG),
    "log.geom_every": _int(0, BIG),
    "log.eval_every": _int(0, BIG),
    "log.eval_batches": _int(1, BIG),
    "checkpoint.every": _int(1, BIG),
    "checkpoint.keep_last": _int(0, 1_000_000),
}


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _problem(spec: Key, value: Any) -> str | None:
    """What is wrong with ``value`` for ``spec`` (None when it is fine)."""
    if value is None:
        return None if spec.null else "must be given (it may not be empty or null)"
    if spec.kind == "bool":
        return None if isinstance(value, bool) else "must be true or false"
    if spec.kind == "choice":
        ok = any(value == c and type(value) is type(c) for c in spec.choices)
        names = list(map(str, spec.choices))
        return (
            None if ok else "use " + (" or ".join(names) if len(names) == 2 else f"one of {', '.join(names)}")
        )
    if spec.kind in ("str", "name"):
        if not isinstance(value, str) or not value.strip():
            return "must be a non-empty text"
        if "\x00" in value or len(value) > 4096:
            return "must be at most 4096 characters without NUL bytes"
        if spec.kind == "name" and ("/" in value or value in (".", "..") or len(value) > 200):
            return "must be a folder name (no '/', at most 200 characters)"
        return None
    if spec.kind == "floats":
        if not (isinstance(value, list) and len(value) == 2):
            return "must be a list of two numbers, e.g. [0.9, 0.95]"
        bad = [v for v in value if _number_problem(spec, v, "float")]
        return f"both must be numbers from {spec.lo} to below {spec.hi}" if bad or 1.0 in value else None
    if spec.kind == "int" and value in spec.words:
        return None
    return _number_problem(spec, value, spec.kind)


def _number_problem(spec: Key, value: Any, kind: str) -> str | None:
    words = f" or one of {', '.join(spec.words)}" if spec.words else ""
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            return f"must be an integer from {spec.lo} to {spec.hi:,}{words}"
    elif isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        low = f"> {spec.lo:g}" if spec.lo_open else f">= {spec.lo:g}"
        return f"must be a number {low}" + (f" and <= {spec.hi:g}" if spec.hi is not None else "")
    low_bad = value <= spec.lo if spec.lo_open else value < spec.lo
    if low_bad or (spec.hi is not None and value > spec.hi):
        low = f"> {spec.lo:g}" if spec.lo_open else f">= {spec.lo:g}"
        high = f" and <= {spec.hi:g}" if spec.hi is not None else ""
        return f"must be {low}{high}"
    return None


def check_value(key: str, value: Any) -> None:
    """Raise ``UserError('<key>=<value>: <problem>; <fix>')`` when ``value`` does not fit ``key``."""
    problem = _problem(SCHEMA[key], value)
    if problem:
        raise UserError(f"{key}={_show(value)}: {problem}; fix it in the config or with --set {key}=...")


def check_schema(cfg: dict) -> None:
    """Check every key of ``SCHEMA`` present in the merged ``cfg`` (model fields: :func:`check_model`)."""
    for key in SCHEMA:
        section, _, leaf = key.rpartition(".")
        node = cfg.get(section, {}) if section else cfg
        if isinstance(node, dict) and leaf in node:
            check_value(key, node[leaf])
    check_model(cfg.get("model") or {})


def check_model(model: dict) -> None:
    """Model fields overriding a preset must keep the preset's type (an int stays an int >= 0)."""
    from .models import PRESETS

    preset = model.get("preset")
    base = PRESETS.get(preset, {}) if isinstance(preset, str) else {}
    for key, value in model.items():
        if key == "preset" or key not in base or base[key] is None:
            continue
        want = base[key]
        if isinstance(want, bool):
            ok, need = isinstance(value, bool), "true or false"
        elif isinstance(want, int):
            ok = isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= BIG
            need = "an integer >= 0"
        elif isinstance(want, float):
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            need = "a finite number"
        elif isinstance(want, list):
            ok, need = isinstance(value, list), "a list"
        else:
            ok, need = isinstance(value, str) and bool(value.strip()), "a non-empty text"
        if not ok:
            raise UserError(
                f"model.{key}={_show(value)}: must be {need}; fix it in the config or with --set model.{key}=..."
            )
