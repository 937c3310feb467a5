"""Model presets: Hugging Face causal LMs built from config and trained from scratch.

Dense presets are Qwen2-style (RMSNorm, SwiGLU, RoPE, grouped-query attention); MoE presets are
Qwen2-MoE (routed SwiGLU experts with top-k routing, one shared expert, a dense first layer,
and the router's load-balancing loss). Sizes are the paper's (PAPER_NOTES.md) plus tiny CPU
presets for the quickstart and tests.

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
from typing import Any

from nitp.errors import UserError

# Fields that describe the training recipe of a size, not the transformers config.
RECIPE_FIELDS = ("arch", "target_layer", "lambda", "lr", "global_batch", "tokens", "description")

_QWEN2_VOCAB = 151936  # the paper uses the Qwen2 tokenizer

PRESETS: dict[str, dict[str, Any]] = {
    # --- tiny CPU presets (a few million parameters) ----------------------------------------
    "tiny-dense": dict(
        arch="dense",
        description="tiny dense for CPU smoke tests",
        hidden_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=384,
        vocab_size=4096,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        target_layer=1,
        **{"lambda": 1.0},
        lr=3e-3,
        global_batch=16,
    ),
    "tiny-moe": dict(
        arch="moe",
        description="tiny MoE (1 dense + 3 MoE layers, 8 experts top-2 + 1 shared)",
        hidden_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=384,
        moe_intermediate_size=96,
        shared_expert_intermediate_size=96,
        num_experts=8,
        num_experts_per_tok=2,
        mlp_only_layers=[0],
        vocab_size=4096,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        router_aux_loss_coef=0.01,
        target_layer=1,
        **{"lambda": 1.0},
        lr=3e-3,
        global_batch=16,
    ),
    # --- micro CPU presets: past 30 tokens per parameter in minutes (docs/regime.md) -----------
    "micro-64": dict(
        arch="dense",
        description="micro dense, d 64 x 4 layers, 2,048-token vocabulary: 30 tokens/parameter on one CPU core in ~15 min",
        hidden_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=192,
        vocab_size=2048,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        target_layer=1,
        **{"lambda": 1.0},
        lr=3e-3,
        global_batch=16,
    ),
    "small-dense": dict(
        arch="dense",
        description="~30M dense for a one-GPU study",
        hidden_size=384,
        num_hidden_layers=8,
        num_attention_heads=6,
        num_key_value_heads=2,
        intermediate_size=1024,
        vocab_size=8192,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        target_layer=2,
        **{"lambda": 1.0},
        lr=1.5e-3,
        global_batch=64,
    ),
    # --- the paper's dense models ------------------------------------------------------------
    "dense-0.5b": dict(
        arch="dense",
        description="paper Dense 0.5B",
        hidden_size=896,
        num_hidden_layers=24,
        num_attention_heads=14,
        num_key_value_heads=2,
        head_dim=64,
        intermediate_size=4864,
        vocab_size=_QWEN2_VOCAB,
        max_position_embeddings=8192,
        tie_word_embeddings=True,
        target_layer=5,
        **{"lambda": 1.0},
        lr=4.2e-4,
        global_batch=512,
        tokens=200e9,
    ),
    "dense-2b": dict(
        arch="dense",
        description="paper Dense 2B",
        hidden_size=1792,
        num_hidden_layers=28,
        num_attention_heads=14,
        num_key_value_heads=2,
        head_dim=128,
        intermediate_size=10752,
        vocab_size=_QWEN2_VOCAB,
        max_position_embeddings=8192,
        tie_word_embeddings=True,  # 2.10B tied vs 2.37B untied: tied matches "2B" (docs/training.md)
        target_layer=6,
        **{"lambda": 1.0},
        lr=4.2e-4,
        global_batch=1024,
        tokens=330e9,
    ),
    "dense-3b": dict(
        arch="dense",
        description="paper Dense 3B",
        hidden_size=2560,
        num_hidden_layers=28,
        num_attention_heads=20,
        num_key_value_heads=4,
        head_dim=128,
        intermediate_size=10240,
        vocab_size=_QWEN2_VOCAB,
        max_position_embeddings=8192,
        tie_word_embeddings=True,  # 3.03B tied vs 3.42B untied: tied matches "3B" (docs/training.md)
        target_layer=6,
        **{"lambda": 0.8},
        lr=4.2e-4,
        global_batch=1024,
        tokens=330e9,
    ),
    # --- the paper's MoE models: 1 dense + N MoE layers, 144 experts top-8 + 1 shared --------
    "moe-1.9b-a0.3b": dict(
        arch="moe",
        description="paper MoE 1.9B-A0.3B",
        hidden_size=512,
        num_hidden_layers=16,
        num_attention_heads=8,
        num_key_value_heads=4,
        head_dim=64,
        intermediate_size=10944,
        moe_intermediate_size=496,
        shared_expert_intermediate_size=496,
        num_experts=144,
        num_experts_per_tok=8,
        mlp_only_layers=[0],
        vocab_size=_QWEN2_VOCAB,
        max_position_embeddings=8192,
        tie_word_embeddings=False,
        router_aux_loss_coef=0.001,
        target_layer=3,
        **{"lambda": 1.0},
        lr=6.0e-4,
        global_batch=256,
        tokens=105e9,
    ),
    "moe-3b-a0.5b": dict(
        arch="moe",
        description="paper MoE 3B-A0.5B",
        hidden_size=768,
        num_hidden_layers=17,
        num_attention_heads=8,
        num_key_value_heads=4,
        head_dim=96,
        intermediate_size=10944,
        moe_intermediate_size=544,
        shared_expert_intermediate_size=544,
        num_experts=144,
        num_experts_per_tok=8,
        mlp_only_layers=[0],
        vocab_size=_QWEN2_VOCAB,
        max_position_embeddings=8192,
        tie_word_embeddings=False,
        router_aux_loss_coef=0.001,
        target_layer=4,
        **{"lambda": 1.0},
        lr=8.7e-4,
        global_batch=512,
        tokens=200e9,
    ),
    "moe-9b-a1b": dict(
        arch="moe",
        description="paper MoE 9B-A1B",
        hidden_size=1280,
        num_hidden_layers=24,
        num_attention_heads=8,
        num_key_value_heads=4,
        head_dim=160,
        intermediate_size=10944,
        moe_intermediate_size=640,
        shared_expert_intermediate_size=640,
        num_experts=144,
        num_experts_per_tok=8,
        mlp_only_layers=[0],
        vocab_size=_QWEN2_VOCAB,
        max_position_embeddings=8192,
        tie_word_embeddings=False,
        router_aux_loss_coef=0.001,
        target_layer=5,
        **{"lambda": 0.8},
        lr=4.2e-4,
        global_batch=1024,
        tokens=330e9,
    ),
    # the paper's 45B: "24" layers read as 1 dense + 23 MoE (the paper's rule: the first layer
    # is dense); top-12 of 144 experts + 1 shared; untied embeddings give 44.9B / 5.52B active.
    "moe-45b-a5.5b": dict(
        arch="moe",
        description="paper MoE 45B-A5.5B",
        hidden_size=3072,
        num_hidden_layers=24,
        num_attention_heads=24,
        num_key_value_heads=8,
        head_dim=128,
        intermediate_size=12288,
        moe_intermediate_size=1408,
        shared_expert_intermediate_size=1408,
        num_experts=144,
        num_experts_per_tok=12,
        mlp_only_layers=[0],
        vocab_size=_QWEN2_VOCAB,
        max_position_embeddings=8192,
        tie_word_embeddings=False,
        router_aux_loss_coef=0.001,
        target_layer=5,
        **{"lambda": 0.6},
        lr=2.8e-4,
        global_batch=768,
        tokens=240e9,
    ),
}


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
    config = make_config(spec)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    return model


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
    embedding = model.get_input_embeddings().weight.numel()
    return {"total": total, "active": active, "embedding": embedding}


def count_parameters_from_spec(spec: dict[str, Any]) -> dict[str, int]:
    """Parameter counts without allocating the model (meta device)."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(make_config(spec))
    return count_parameters(model)
