"""Training configs: defaults <- YAML file <- ``--set key=value`` overrides, then validated.

The resolved config (every field explicit, preset expanded) is what a run directory stores
in ``config.yaml``; see docs/contracts.md for the schema and configs/ for examples.
"""

from __future__ import annotations

import contextlib
import copy
import math
import re
from pathlib import Path
from typing import Any

import yaml

from nitp.errors import UserError
from nitp.layers import check_layer

from .config_model import (
    DEFAULT_PRESET,
    DEFAULTS,
    TARGET_WORDS,
    Config,
    as_config,
    check_model,
    nested,
    upgrade_legacy_keys,
)
from .models import RECIPES, configs_dir, make_config, resolve_preset

DEFAULT_STEPS = 300

# Settings that may change when a run is resumed (they do not change the trajectory).
RESUMABLE_CHANGES = (
    "log",
    "checkpoint",
    "eval",  # evaluation during training leaves the trajectory bit for bit as it is
    "train.steps",
    "train.grad_accum",  # derived from the global batch and the world size (resume reshards)
    "train.threads",
    "run_name",
    "data.workers",
    "data.batch_docs",
)


def _merge(base: dict, update: dict) -> dict:
    """``update`` over ``base``: sections merge key by key, ``model`` field by field; every other
    value replaces (the types are checked once, on the merged result: :func:`validate`)."""
    out = copy.deepcopy(base)
    for key, value in (update or {}).items():
        key = str(key)
        if key == "model" and isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = {**out[key], **{str(k): _coerce_number(v) for k, v in value.items()}}
        elif key == "model" and value is None:
            continue  # "model:" with nothing under it
        elif isinstance(out.get(key), dict) and isinstance(value, dict):
            out[key] = _merge(out[key], value)
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
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as e:
        raise UserError(
            f"--set {item!r}: the value is not valid YAML ({yaml_problem(e)}); "
            f"quote it (--set '{key.strip()}=\"...\"') or close its brackets"
        ) from None
    return nested(key.strip(), value)


def yaml_problem(e: yaml.YAMLError) -> str:
    """What is wrong, in one line: ``while parsing a flow sequence: expected ',' or ']'...``."""
    parts = [getattr(e, "context", None), getattr(e, "problem", None)]
    text = ": ".join(str(p) for p in parts if p) or str(e)
    return text.strip().splitlines()[0]


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


def load_config(
    path: str | Path | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    preset: str | None = None,
) -> dict:
    """Defaults, then the YAML at ``path`` (see :func:`config_path`), then ``overrides``
    (``key=value``), resolved and validated (the batch plan is resolved by :func:`apply_plan`).

    ``preset`` picks the model; for an overlay file (``overlay: true``, e.g. an ablation) it
    also picks the recipe the overlay is applied to (:data:`RECIPES`; default tiny-dense), so
    ``load_config("configs/ablations/shift-0.yaml", preset="moe-9b-a1b")`` is the paper's 9B
    recipe with ``nitp.shift: 0``.
    """
    # train.loss_impl is left to validation: a deprecated train.loss_chunk is read against the
    # config's own loss_impl, not the default's
    train = {k: v for k, v in DEFAULTS["train"].items() if k != "loss_impl"}
    cfg = copy.deepcopy({**DEFAULTS, "train": train})
    if path is not None:
        chain = _read_chain(config_path(path))
        if chain and chain[0].pop("overlay", False):
            recipe = preset or "tiny-dense"
            if recipe not in RECIPES:
                resolve_preset(recipe)  # unknown names: the nearest known one
                raise UserError(
                    f"--preset {recipe}: has no recipe to apply {path} to; use one of {', '.join(RECIPES)}"
                )
            base = _read_chain(configs_dir() / RECIPES[recipe])
            name = f"{recipe}-{Path(path).stem}"
            chain = base + [{"run_name": name}] + chain
        for data in chain:
            cfg = _merge(cfg, data)
    if preset is not None:
        cfg = _merge(cfg, {"model": {"preset": preset}})
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
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise UserError(f"config {path}: invalid YAML ({str(e).splitlines()[0]}); fix the file") from None
    if not isinstance(data, dict):
        raise UserError(f"config {path}: expected a mapping at the top level")
    base = data.pop("base", None)
    if base is not None and data.get("overlay"):
        raise UserError(f"config {path}: an overlay takes its base from --preset; remove 'base:'")
    if base is not None and not isinstance(base, str):
        raise UserError(f"config {path}: base={base!r} must name a YAML file")
    chain = _read_chain(path.parent / base, seen + (path.resolve(),)) if base else []
    return chain + [data]


def overlay_keys(path: str | Path) -> dict[str, Any]:
    """The dotted keys an overlay file states, with their values (``{"nitp.shift": 0}``)."""
    data = _read_chain(config_path(path))[-1]
    data.pop("overlay", None)
    return _flatten(data)


def _flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict) and not (prefix == "" and k == "model" and not v):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def resolve(cfg: dict) -> dict:
    """Type-check ``cfg`` (:func:`nitp_train.config_model.as_config`), expand the preset, fill the
    preset-dependent nulls, and check the rules across keys; returns a new plain dict.

    A preset's recipe fills what the config leaves null: ``nitp.target_layer``, ``nitp.lambda``,
    ``train.lr``, and for a preset with a token budget (the paper's sizes) ``train.global_batch``
    and, when neither ``train.steps`` nor ``train.tokens`` is given, ``train.tokens``.
    """
    typed = as_config(cfg).model_copy(deep=True)
    check_model(typed.model)
    model = dict(typed.model)
    if model.get("init_from"):  # continued pre-training of an existing model (init_from.py)
        from .init_from import fill_cpt_defaults, model_spec

        preset, spec = "init_from", model_spec(model)
    else:
        preset = model.pop("preset", None) or DEFAULT_PRESET
        spec = resolve_preset(preset, model)
        make_config(spec)  # validates every model field (unknown keys name the nearest)
    _fill_from_recipe(typed, spec)
    if preset == "init_from":
        fill_cpt_defaults(typed, spec)
    typed.model = {"preset": preset, **spec}
    if typed.run_name is None:
        typed.run_name = f"{preset}-{typed.objective}"
    _validate(typed)
    return typed.model_dump(by_alias=True)


def _fill_from_recipe(cfg: Config, spec: dict) -> None:
    """The nulls of ``cfg`` that the preset's recipe (``spec``) or a general default fills."""
    nitp, train, data = cfg.nitp, cfg.train, cfg.data
    n_layers = spec["num_hidden_layers"]
    if nitp.target_layer is None:
        nitp.target_layer = spec.get("target_layer", 1)
    elif nitp.target_layer in TARGET_WORDS:
        nitp.target_layer = max(1, min(n_layers - 1, round(TARGET_WORDS[nitp.target_layer] * n_layers)))
    if nitp.lambda_ is None:
        nitp.lambda_ = spec.get("lambda", 1.0)
    if train.lr is None:
        train.lr = spec.get("lr", 1e-3)
    if data.vocab_size is None:
        data.vocab_size = spec["vocab_size"]
    has_budget = spec.get("tokens") is not None
    if has_budget and train.global_batch is None:
        train.global_batch = spec["global_batch"]
    if train.steps is None and train.tokens is None:
        if has_budget:
            train.tokens = spec["tokens"]
        else:
            train.steps = DEFAULT_STEPS


def _validate(cfg: Config) -> None:
    """Rules across keys (each key's own type and range: ``nitp_train.config_model.Config``)."""
    nitp, train, data, model = cfg.nitp, cfg.train, cfg.data, cfg.model
    nitp.target_layer = check_layer(
        nitp.target_layer, model["num_hidden_layers"], allow_last=False, name="nitp.target_layer"
    )
    if data.seq_len > model["max_position_embeddings"]:
        raise UserError(
            f"data.seq_len={data.seq_len} exceeds the model's max_position_embeddings="
            f"{model['max_position_embeddings']}: lower data.seq_len or set model.max_position_embeddings"
        )
    if train.steps is not None and train.tokens is not None:
        raise UserError(
            f"train.steps={train.steps} and train.tokens={train.tokens:g} are both given: "
            "give one (set the other to null)"
        )


def apply_plan(cfg: Config | dict, world_size: int = 1) -> tuple[Config | dict, dict]:
    """Resolve the batch and step plan of ``cfg`` for ``world_size`` processes.

    grad_accum = global_batch / (batch_size x world_size); steps = ceil(tokens / (global_batch x
    seq_len)) when a token budget is given. Returns ``(cfg with train.global_batch, grad_accum
    and steps filled in, plan)``, the config of the kind given (a :class:`Config` or a dict; a dict
    is validated first); ``plan`` holds the numbers :func:`plan_summary` prints.

    Example: global_batch 512, batch_size 1, 8 processes, seq_len 8192, tokens 200e9 ->
    grad_accum 64, 4,194,304 tokens/step, 47,684 steps.
    """
    typed = as_config(cfg)
    tc, seq = typed.train.model_copy(), typed.data.seq_len
    micro = tc.batch_size * world_size
    if tc.global_batch is None:
        tc.grad_accum = tc.grad_accum or 1
        tc.global_batch = micro * tc.grad_accum
    elif tc.global_batch % micro:
        raise UserError(
            f"train.global_batch={tc.global_batch}: not a multiple of train.batch_size={tc.batch_size} x "
            f"{world_size} processes = {micro}; choose a batch_size (or process count) that divides it"
        )
    elif tc.grad_accum not in (None, tc.global_batch // micro):
        raise UserError(
            f"train.grad_accum={tc.grad_accum}: global_batch {tc.global_batch} / (batch_size "
            f"{tc.batch_size} x {world_size} processes) needs {tc.global_batch // micro}; set it to null"
        )
    else:
        tc.grad_accum = tc.global_batch // micro
    tokens_per_step = tc.global_batch * seq
    if tc.tokens is not None:
        tc.steps = max(1, math.ceil(tc.tokens / tokens_per_step))
    warmup = min(tc.warmup_steps, tc.steps)
    decay = min(int(round(tc.decay_ratio * tc.steps)), tc.steps - warmup)
    plan = {
        "world_size": world_size,
        "global_batch": tc.global_batch,
        "batch_size": tc.batch_size,
        "grad_accum": tc.grad_accum,
        "seq_len": seq,
        "tokens_per_step": tokens_per_step,
        "steps": tc.steps,
        "tokens": tokens_per_step * tc.steps,
        "warmup_steps": warmup,
        "decay_steps": decay,
        "stable_steps": tc.steps - warmup - decay,
    }
    planned = typed.model_copy(update={"train": tc})
    return (planned if isinstance(cfg, Config) else planned.model_dump(by_alias=True)), plan


def plan_summary(cfg: Config | dict, plan: dict) -> str:
    """One line: ``global batch 512 x 8192 = 4.19M tokens/step, 47,684 steps = 200B tokens; ...``."""
    tc = as_config(cfg).train
    return (
        f"global batch {plan['global_batch']:,} x {plan['seq_len']:,} = {_count(plan['tokens_per_step'])} "
        f"tokens/step, {plan['steps']:,} steps = {_count(plan['tokens'])} tokens "
        f"(micro-batch {plan['batch_size']} x {plan['world_size']} processes x {plan['grad_accum']} "
        f"accumulation); lr {tc.lr:g}: warm-up {plan['warmup_steps']:,} steps from "
        f"{tc.warmup_start_ratio:g} x lr, stable {plan['stable_steps']:,}, {tc.decay_type} decay "
        f"{plan['decay_steps']:,} steps to {tc.min_lr_ratio:g} x lr"
    )


def _count(n: float) -> str:
    """4194304 -> '4.19M', 200000471040 -> '200B'."""
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g}{unit}"
    return f"{n:g}"


def config_diff(a: dict, b: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two resolved configs (a deprecated key counts as the
    key it maps to: an older run's ``train.loss_chunk: 0, loss_impl: auto`` equals ``loss_impl: plain``)."""
    if not prefix:  # deprecated keys mapped, silently (as they are when they cannot be mapped)
        with contextlib.suppress(UserError):
            a = upgrade_legacy_keys(a, note=False)
        with contextlib.suppress(UserError):
            b = upgrade_legacy_keys(b, note=False)
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
