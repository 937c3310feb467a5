"""Model presets: Hugging Face causal LMs built from config and trained from scratch.

Dense presets are Qwen2-style (RMSNorm, SwiGLU, RoPE, grouped-query attention); MoE presets are
Qwen2-MoE (routed SwiGLU experts with top-k routing, one shared expert, a dense first layer,
and the router's load-balancing loss). Sizes are the paper's (PAPER_NOTES.md) plus tiny CPU
presets for the quickstart and tests, all in ``nitp_train/presets.yaml`` (:data:`PRESETS`).

Each preset is a flat dict: ``arch`` ("dense" | "moe"), transformers config fields, and the
NITP defaults of that size (``target_layer``, ``lambda``) plus the paper's ``lr`` and
``global_batch``. Any field can be overridden (``model: {hidden_size: 256}`` in a config or
``--set model.hidden_size=256``).

Example
-------
>>> model = build_model(resolve_preset("tiny-dense"))       # doctest: +SKIP
>>> count_parameters(model)                                  # doctest: +SKIP
{'total': 2_4..., 'active': 2_4..., 'embedding': ...}
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import yaml

from nitp.errors import UserError

# Fields that describe the training recipe of a size, not the transformers config.
RECIPE_FIELDS = ("arch", "target_layer", "lambda", "lr", "global_batch", "tokens", "description")


def configs_dir() -> Path:
    """The shipped YAML presets: ``configs/`` of a source tree, or ``nitp.configs`` of a wheel."""
    tree = Path(__file__).resolve().parent.parent / "configs"
    if (tree / "tiny-nitp.yaml").is_file():
        return tree
    from importlib.resources import files

    return Path(str(files("nitp.configs")))


_PRESETS_FILE = yaml.load(  # libyaml's loader where installed: ~10x faster at import
    Path(__file__).with_name("presets.yaml").read_text(encoding="utf-8"),
    Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader),
)
PRESETS: dict[str, dict[str, Any]] = _PRESETS_FILE["presets"]
# The recipe of each preset: the config an overlay (``overlay: true``) is applied to.
RECIPES: dict[str, str] = _PRESETS_FILE["recipes"]


def resolve_preset(name: str, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The preset's fields with ``overrides`` applied; unknown names suggest the nearest."""
    if name not in PRESETS:
        near = difflib.get_close_matches(name, PRESETS, n=3)
        hint = f"; did you mean {', '.join(near)}?" if near else f"; known: {', '.join(PRESETS)}"
        raise UserError(f"unknown model preset {name!r}{hint}")
    spec = dict(PRESETS[name])
    spec.update(overrides or {})
    return spec


def make_config(spec: dict[str, Any]):
    """A transformers config (Qwen2Config or Qwen2MoeConfig) from a preset spec."""
    from transformers import Qwen2Config, Qwen2MoeConfig

    fields = {k: v for k, v in spec.items() if k not in RECIPE_FIELDS and k != "preset"}
    arch = spec.get("arch", "dense")
    if arch == "dense":
        fields.setdefault("use_sliding_window", False)
        cls = Qwen2Config
    elif arch == "moe":
        fields.setdefault("decoder_sparse_step", 1)
        fields.setdefault("output_router_logits", True)  # so the aux loss is computed and logged
        fields.setdefault("norm_topk_prob", True)
        cls = Qwen2MoeConfig
    else:
        raise UserError(f"model.arch must be 'dense' or 'moe', got {arch!r}")
    known = set(cls().to_dict()) | {"head_dim"}
    unknown = sorted(set(fields) - known)
    if unknown:
        near = {u: difflib.get_close_matches(u, known, n=1) for u in unknown}
        hints = ", ".join(f"{u}" + (f" (did you mean {near[u][0]}?)" if near[u] else "") for u in unknown)
        raise UserError(f"unknown model config key(s): {hints}")
    return cls(**fields)


def build_model(spec: dict[str, Any], seed: int | None = None):
    """A randomly initialised causal LM for ``spec`` (float32 master weights)."""
    import torch
    from transformers import AutoModelForCausalLM

    if seed is not None:
        torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(make_config(spec), dtype=torch.float32)


def count_parameters(model) -> dict[str, int]:
    """Total and active (per token) parameter counts.

    Active = total minus the routed experts a token does not visit:
    ``(num_experts - top_k) / num_experts`` of each MoE layer's routed-expert weights.
    """
    cfg = model.config
    total = sum(p.numel() for p in model.parameters())
    active = total
    n_experts = getattr(cfg, "num_experts", None)
    if n_experts:
        routed = sum(p.numel() for n, p in model.named_parameters() if ".mlp.experts." in n)
        active = total - routed * (n_experts - cfg.num_experts_per_tok) // n_experts
    return {"total": total, "active": active, "embedding": model.get_input_embeddings().weight.numel()}


def count_parameters_from_spec(spec: dict[str, Any]) -> dict[str, int]:
    """Parameter counts without allocating the model (meta device)."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(make_config(spec))
    return count_parameters(model)
