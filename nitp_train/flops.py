"""Training FLOPs per token of dense and MoE transformers, and the cost of NITP.

Convention (Kaplan et al. 2020, PaLM, nanoGPT's ``estimate_mfu``): a weight matrix with P
parameters costs 2P FLOPs per token forward and 4P backward, so **6 FLOPs per parameter a token
touches**; attention scores add ``12 L T h d_head`` per token (QK^T and AV, forward + backward,
without halving for the causal mask). Norms, activations, softmax, the embedding lookup and the
optimizer are left out, as in the paper.

Per token, for a config with L layers, hidden size d, h query heads / kv key-value heads of
size d_head, vocabulary V and context T::

    attention_linear = 6 L (2 d h d_head + 2 d kv d_head)        q, o  +  k, v projections
    attention_scores = 12 L T h d_head
    ffn_dense        = 18 d d_ff            per dense layer       SwiGLU: gate, up, down
    ffn_experts      = 18 d (k d_e + d_s)   per MoE layer         k routed experts + shared one
    router           = 6 d (E + 1)          per MoE layer         router + shared-expert gate
    lm_head          = 6 V d

The NITP paper (Appendix G) writes the baseline as ``L (18 d^2 + 18 k d d_e) + 6 V d`` (every
layer MoE, GQA with h d_head = d and kv d_head = d / 2, no attention-score term, k counting the
shared expert) and the NITP extra as ``72 d^2 + 18 d`` (SwiGLU projector of 12 d^2 parameters,
plus the cosine). At 9B-A1B MoE (d=1280, d_e=640, k=9, L=24, V=152064): 1.18e8 vs 5.06e9, 2.3 %.

``flops_report`` puts that closed form (:func:`paper_closed_form`) beside the exact count; for
the real 9B-A1B preset at T = 8192 the exact count is larger mainly through the attention scores.

Example
-------
>>> f"{paper_moe_flops_per_token(1280, 640, 9, 24, 152064):.3g}"
'5.06e+09'
>>> f"{nitp_flops_per_token(1280):.3g}"
'1.18e+08'
"""

from __future__ import annotations

from typing import Any

from nitp.errors import UserError

GATED_MLP_TYPES = {
    "qwen2",
    "qwen2_moe",
    "qwen3",
    "qwen3_moe",
    "llama",
    "mistral",
    "mixtral",
    "gemma",
    "gemma2",
    "olmo",
    "olmo2",
}


def nitp_flops_per_token(hidden_size: int) -> float:
    """Training FLOPs per token that NITP adds: ``72 d^2 + 18 d`` (projector + cosine loss).

    The SwiGLU projector has 12 d^2 parameters (d -> 4d gate and up, 4d -> d down): 6 x 12 d^2;
    the cosine against the stop-gradient target adds 18 d (the paper's count).
    """
    d = float(hidden_size)
    return 72.0 * d * d + 18.0 * d


def paper_moe_flops_per_token(d: int, d_expert: int, k: int, n_layers: int, vocab: int) -> float:
    """The paper's Appendix-G baseline: ``L (18 d^2 + 18 k d d_e) + 6 V d`` (k incl. shared)."""
    return float(n_layers * (18 * d * d + 18 * k * d * d_expert) + 6 * vocab * d)


def _get(config: Any, name: str, default=None):
    if isinstance(config, dict):
        return config.get(name, default)
    return getattr(config, name, default)


def _sizes(config: Any) -> tuple[int, int, int, int, int, int]:
    """``(d, L, h, kv, d_head, V)`` of ``config``; a one-line ``UserError`` when one is missing."""
    try:
        d, n_layers = int(_get(config, "hidden_size")), int(_get(config, "num_hidden_layers"))
        heads, vocab = int(_get(config, "num_attention_heads")), int(_get(config, "vocab_size"))
    except (TypeError, ValueError):
        raise UserError(
            "FLOPs: the config lacks hidden_size, num_hidden_layers, num_attention_heads or vocab_size"
        ) from None
    kv = int(_get(config, "num_key_value_heads") or heads)
    return d, n_layers, heads, kv, int(_get(config, "head_dim") or d // heads), vocab


def _moe_layers(config: Any, n_layers: int) -> list[bool]:
    """Which layers are MoE (Qwen2-MoE's rule: not in mlp_only_layers, every decoder_sparse_step)."""
    n_experts = _get(config, "num_experts") or _get(config, "num_local_experts") or 0
    if not n_experts:
        return [False] * n_layers
    only_mlp = set(_get(config, "mlp_only_layers") or [])
    step = _get(config, "decoder_sparse_step", 1) or 1
    return [(i not in only_mlp) and (i + 1) % step == 0 for i in range(n_layers)]


def flops_breakdown(config: Any, seq_len: int) -> dict[str, float]:
    """Training FLOPs per token, by component (see the module docstring for the formulas).

    Parameters
    ----------
    config : a transformers config (Qwen2Config, Qwen2MoeConfig, LlamaConfig, MixtralConfig, ...)
        or a dict with the same fields.
    seq_len : context length T used for the attention-score term (0 leaves it out).

    Returns
    -------
    dict with ``attention_linear``, ``attention_scores``, ``ffn_dense``, ``ffn_experts``,
    ``router``, ``lm_head``, ``total`` (FLOPs per token) and ``moe_layers`` (count).
    """
    model_type = _get(config, "model_type")
    if model_type is not None and model_type not in GATED_MLP_TYPES:
        raise UserError(
            f"FLOPs: model_type {model_type!r} is not covered (SwiGLU decoders only: {', '.join(sorted(GATED_MLP_TYPES))})"
        )
    d, n_layers, heads, kv, head_dim, vocab = _sizes(config)
    n_moe = sum(_moe_layers(config, n_layers))
    out = {
        "attention_linear": 6.0 * n_layers * (2 * d * heads * head_dim + 2 * d * kv * head_dim),
        "attention_scores": 12.0 * n_layers * seq_len * heads * head_dim,
        "ffn_dense": 18.0 * d * int(_get(config, "intermediate_size") or 0) * (n_layers - n_moe),
        "ffn_experts": 0.0,
        "router": 0.0,
        "lm_head": 6.0 * vocab * d,
    }
    if n_moe:
        n_experts = int(_get(config, "num_experts") or _get(config, "num_local_experts"))
        top_k = int(_get(config, "num_experts_per_tok"))
        d_e = int(_get(config, "moe_intermediate_size") or _get(config, "intermediate_size"))
        d_s = int(_get(config, "shared_expert_intermediate_size") or 0)
        out["ffn_experts"] = 18.0 * d * (top_k * d_e + d_s) * n_moe
        out["router"] = 6.0 * d * (n_experts + (1 if d_s else 0)) * n_moe
    out["total"] = sum(out.values())
    out["moe_layers"] = n_moe
    return out


def paper_closed_form(config: Any) -> dict[str, float]:
    """The paper's Appendix-G closed form (module docstring) evaluated on this config's sizes.

    Every layer counts as MoE, k = routed experts per token + the shared expert, d_e = the routed
    expert's width; a dense config uses ``18 d d_ff`` for the FFN term.

    Returns
    -------
    dict with ``attention_linear``, ``attention_scores`` (0), ``ffn``, ``router`` (0), ``lm_head``,
    ``total``, ``nitp_extra``, ``nitp_overhead`` (FLOPs per token; the last is a ratio).
    """
    d, n_layers, _, _, _, vocab = _sizes(config)
    if any(_moe_layers(config, n_layers)):
        k = int(_get(config, "num_experts_per_tok")) + (
            1 if _get(config, "shared_expert_intermediate_size") else 0
        )
        ffn = 18.0 * k * d * int(_get(config, "moe_intermediate_size") or _get(config, "intermediate_size"))
    else:
        ffn = 18.0 * d * int(_get(config, "intermediate_size") or 0)
    out = {
        "attention_linear": 18.0 * d * d * n_layers,
        "attention_scores": 0.0,
        "ffn": ffn * n_layers,
        "router": 0.0,
        "lm_head": 6.0 * vocab * d,
    }
    out["total"] = sum(out.values())
    out["nitp_extra"] = nitp_flops_per_token(d)
    out["nitp_overhead"] = out["nitp_extra"] / out["total"]
    return out


def closed_form_differences(config: Any, seq_len: int) -> list[str]:
    """Where the exact per-architecture count departs from the paper's closed form, one line each."""
    d, n_layers, heads, kv, head_dim, _ = _sizes(config)
    out = []
    if seq_len:
        out.append(f"attention scores 12 L T h d_head at T={seq_len} (the closed form leaves them out)")
    if heads * head_dim != d or 2 * kv * head_dim != d:
        out.append(
            f"attention projections from the real head sizes (q/o {heads}x{head_dim}, k/v {kv}x{head_dim}); "
            f"18 d^2 assumes h d_head = d and kv d_head = d/2"
        )
    moe = _moe_layers(config, n_layers)
    if any(moe):
        dense = n_layers - sum(moe)
        if dense:
            out.append(
                f"{dense} dense FFN layer(s) (d_ff={_get(config, 'intermediate_size')}) counted as MoE there"
            )
        d_s, d_e = _get(config, "shared_expert_intermediate_size") or 0, _get(config, "moe_intermediate_size")
        if d_s and d_s != d_e:
            out.append(f"shared expert of width {d_s}, counted as one of width d_e={d_e} there")
        out.append("router and shared-expert gate 6 d (E + 1) per MoE layer (not counted there)")
    return out


def training_flops_per_token(config: Any, seq_len: int) -> float:
    """Total training FLOPs per token of the backbone + LM head (no NITP); see ``flops_breakdown``."""
    return flops_breakdown(config, seq_len)["total"]


def flops_report(config: Any, seq_len: int) -> dict[str, Any]:
    """Breakdown, NITP overhead and the paper's formula side by side, for one config."""
    base = flops_breakdown(config, seq_len)
    d = int(_get(config, "hidden_size"))
    extra = nitp_flops_per_token(d)
    return {
        "seq_len": seq_len,
        "hidden_size": d,
        "breakdown": base,
        "ntp_flops_per_token": base["total"],
        "nitp_extra_flops_per_token": extra,
        "nitp_overhead": extra / base["total"],
        "ntp_flops_per_token_without_attention_scores": base["total"] - base["attention_scores"],
        "nitp_overhead_without_attention_scores": extra / (base["total"] - base["attention_scores"]),
        "paper_closed_form": paper_closed_form(config),
        "differences": closed_form_differences(config, seq_len),
    }


def default_seq_len(config: Any) -> int:
    """The paper's context, 8192, capped by the model's ``max_position_embeddings``."""
    return int(min(8192, _get(config, "max_position_embeddings") or 8192))


def flops_for_preset(name: str, seq_len: int | None = None, overrides: dict | None = None) -> dict[str, Any]:
    """``flops_report`` of a model preset of ``nitp_train.models`` (e.g. "moe-9b-a1b").

    Adds ``total_training_flops`` (per-token FLOPs x the preset's token budget) when the preset
    names one.
    """
    from .models import make_config, resolve_preset

    spec = resolve_preset(name, overrides)
    config = make_config(spec)
    rep = flops_report(config, seq_len if seq_len is not None else default_seq_len(config))
    rep["preset"] = name
    if spec.get("tokens"):
        rep["tokens"] = spec["tokens"]
        rep["total_training_flops_ntp"] = rep["ntp_flops_per_token"] * spec["tokens"]
        rep["total_training_flops_nitp"] = (
            rep["ntp_flops_per_token"] + rep["nitp_extra_flops_per_token"]
        ) * spec["tokens"]
    return rep


def parameter_count(config) -> int:
    """Total parameters of the causal LM a transformers ``config`` describes, counted on the meta
    device (no memory, no weights): ``count_parameters(model)["total"]``."""
    import torch
    from transformers import AutoModelForCausalLM

    from .models import count_parameters

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return int(count_parameters(model)["total"])


def model_compute(model_spec: dict, seq_len: int) -> dict[str, float]:
    """``parameters`` (total, counted on the meta device: no memory), ``ntp_flops_per_token``
    (:func:`training_flops_per_token`) and ``nitp_extra_flops_per_token`` of a resolved
    ``model`` section (a preset name and its fields), e.g. for a study's dry run or compute matching.
    """
    from .models import make_config

    config = make_config(model_spec)
    return {
        "parameters": parameter_count(config),
        "ntp_flops_per_token": training_flops_per_token(config, seq_len),
        "nitp_extra_flops_per_token": nitp_flops_per_token(config.hidden_size),
    }


# the paper's seven sizes, as preset names (a preset this version lacks is reported as absent)
PAPER_SIZES = (
    "dense-0.5b",
    "dense-2b",
    "dense-3b",
    "moe-1.9b-a0.3b",
    "moe-3b-a0.5b",
    "moe-9b-a1b",
    "moe-45b-a5.5b",
)


def paper_sizes_table(seq_len: int = 8192) -> list[dict[str, Any]]:
    """One row per paper size: the closed form and the exact count side by side, NITP overhead of each.

    Rows of presets missing from ``nitp_train.models.PRESETS`` say so in ``note``.
    """
    from .models import PRESETS

    rows = []
    for name in PAPER_SIZES:
        if name not in PRESETS:
            rows.append({"preset": name, "note": "no such preset in this version"})
            continue
        rep = flops_for_preset(name, seq_len)
        paper = rep["paper_closed_form"]
        rows.append(
            {
                "preset": name,
                "paper_closed_form": paper["total"],
                "exact": rep["ntp_flops_per_token"],
                "exact_without_scores": rep["ntp_flops_per_token_without_attention_scores"],
                "nitp_extra": rep["nitp_extra_flops_per_token"],
                "overhead_paper": paper["nitp_overhead"],
                "overhead_exact": rep["nitp_overhead"],
            }
        )
    return rows


def load_config_source(source: str) -> tuple[Any, str, int | None]:
    """``(transformers config, name, seq_len or None)`` from what ``nitp-geom flops`` accepts.

    A preset name, a nitp-train YAML config or run directory (their ``model`` section; seq_len
    from ``data.seq_len``), a model folder or a ``config.json``.
    """
    from pathlib import Path

    from .models import PRESETS, make_config, resolve_preset

    if source in PRESETS:
        return make_config(resolve_preset(source)), source, None
    p = Path(source).expanduser()
    yaml_file = p / "config.yaml" if p.is_dir() and not (p / "config.json").is_file() else p
    if yaml_file.is_file() and yaml_file.suffix in (".yaml", ".yml"):
        from .config import load_config

        cfg = load_config(yaml_file, [])
        model = dict(cfg.get("model") or {})
        preset = model.get("preset")
        if preset is not None and "hidden_size" not in model:
            model = resolve_preset(model.pop("preset"), model)
        return make_config(model), f"{p.name} ({preset})", (cfg.get("data") or {}).get("seq_len")
    cfg_file = p / "config.json" if p.is_dir() else p
    if cfg_file.is_file() and cfg_file.suffix == ".json":
        from transformers import AutoConfig

        folder = cfg_file.parent if cfg_file.name == "config.json" else cfg_file
        try:
            return AutoConfig.from_pretrained(folder), p.name, None
        except Exception as e:  # noqa: BLE001
            raise UserError(f"{source}: not a readable Hugging Face config ({type(e).__name__})") from None
    if p.is_dir():
        from nitp.runs import resolve_checkpoint

        return load_config_source(str(resolve_checkpoint(p)))
    if p.suffix:
        raise UserError(
            f"{source}: no such config file (give a preset name, a .yaml config, a config.json or a model folder)"
        )
    resolve_preset(source)  # raises "unknown model preset ...; did you mean ..."
    raise AssertionError("unreachable")
