"""nitp_train.flops: the paper's Appendix-G figures, and the 6-FLOPs-per-parameter rule on real configs."""

from __future__ import annotations

import pytest

from nitp.errors import UserError
from nitp_train.flops import (
    flops_breakdown,
    flops_for_preset,
    load_config_source,
    nitp_flops_per_token,
    paper_moe_flops_per_token,
    training_flops_per_token,
)
from nitp_train.models import count_parameters_from_spec, make_config, resolve_preset

PAPER_9B = dict(d=1280, d_expert=640, k=9, n_layers=24, vocab=152064)


def test_paper_9b_moe_figures():
    base = paper_moe_flops_per_token(**PAPER_9B)
    extra = nitp_flops_per_token(1280)
    assert f"{extra:.3g}" == "1.18e+08" and f"{base:.3g}" == "5.06e+09"
    assert extra == 72 * 1280**2 + 18 * 1280
    assert 100 * extra / base == pytest.approx(2.33, abs=0.005)  # the paper's "~2.3%"


def test_breakdown_of_the_9b_config_reduces_to_the_paper_formula():
    """All layers MoE, the paper's vocabulary, no attention-score term: exactly the paper's count."""
    cfg = make_config(resolve_preset("moe-9b-a1b", {"mlp_only_layers": [], "vocab_size": PAPER_9B["vocab"]}))
    b = flops_breakdown(cfg, seq_len=0)
    assert b["attention_scores"] == 0 and b["ffn_dense"] == 0 and b["moe_layers"] == 24
    assert b["attention_linear"] + b["ffn_experts"] + b["lm_head"] == paper_moe_flops_per_token(**PAPER_9B)
    # the real preset: a dense first layer, the router, the attention-score term at 8192
    rep = flops_for_preset("moe-9b-a1b")
    assert rep["seq_len"] == 8192 and rep["breakdown"]["moe_layers"] == 23
    assert rep["breakdown"]["attention_scores"] == 12 * 24 * 8192 * 8 * 160
    assert 0.021 < rep["nitp_overhead_without_attention_scores"] < 0.024
    assert rep["nitp_overhead"] < rep["nitp_overhead_without_attention_scores"]
    assert rep["total_training_flops_ntp"] == pytest.approx(rep["ntp_flops_per_token"] * 330e9)


@pytest.mark.parametrize("preset", ["tiny-dense", "tiny-moe", "dense-3b", "moe-9b-a1b"])
def test_six_flops_per_active_matmul_parameter(preset):
    """Without the score term, FLOPs = 6 x the active parameters a token multiplies (transformers' count)."""
    import torch
    from transformers import AutoModelForCausalLM

    spec = resolve_preset(preset)
    counts = count_parameters_from_spec(spec)  # built by transformers on the meta device
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(make_config(spec))
    no_matmul = sum(p.numel() for n, p in model.named_parameters() if "norm" in n or n.endswith(".bias"))
    lm_head = 0 if spec.get("tie_word_embeddings") else counts["embedding"]
    # active parameters minus the embedding lookup, plus the head's matmul (tied or not), minus norms / biases
    matmul_active = (
        counts["active"]
        - counts["embedding"]
        - lm_head
        + spec["vocab_size"] * spec["hidden_size"]
        - no_matmul
    )
    assert training_flops_per_token(make_config(spec), seq_len=0) == 6 * matmul_active


def test_config_sources_and_errors(tiny_checkpoint, tiny_run):
    from pathlib import Path

    cfg, name, _ = load_config_source("tiny-moe")
    assert cfg.num_experts == 8 and name == "tiny-moe"
    cfg, _, _ = load_config_source(str(tiny_checkpoint))  # a model folder's config.json
    assert cfg.hidden_size == 128
    cfg, _, _ = load_config_source(str(tiny_checkpoint / "config.json"))
    assert cfg.num_hidden_layers == 4
    cfg, _, seq_len = load_config_source(str(tiny_run))  # a run directory's config.yaml
    assert cfg.hidden_size == 128 and seq_len == 64
    yaml_cfg = Path(__file__).resolve().parent.parent / "configs" / "paper-moe-9b-a1b-nitp.yaml"
    cfg, _, seq_len = load_config_source(str(yaml_cfg))  # a nitp-train YAML config
    assert cfg.num_experts == 144 and seq_len == 8192
    assert training_flops_per_token(cfg, seq_len) == flops_for_preset("moe-9b-a1b")["ntp_flops_per_token"]
    with pytest.raises(UserError, match="did you mean tiny-dense"):
        load_config_source("tiny-dens")
    with pytest.raises(UserError, match="model_type 'bert' is not covered"):
        flops_breakdown({"model_type": "bert", "hidden_size": 8}, 0)


def test_paper_closed_form_beside_the_exact_count():
    """The 9B preset: 5.06e9 and 2.3% by the paper's closed form, 8.2e9 exact, and the lines saying why."""
    from nitp_train.flops import paper_closed_form

    rep = flops_for_preset("moe-9b-a1b")
    paper = rep["paper_closed_form"]
    assert f"{paper['total']:.3g}" == "5.06e+09" and f"{100 * paper['nitp_overhead']:.1f}" == "2.3"
    cfg = make_config(resolve_preset("moe-9b-a1b"))
    assert paper["total"] == paper_moe_flops_per_token(1280, 640, 9, 24, cfg.vocab_size)
    assert f"{rep['ntp_flops_per_token']:.2g}" == "8.2e+09"
    diff = " ".join(rep["differences"])
    assert (
        "attention scores" in diff and "T=8192" in diff and "1 dense FFN layer" in diff and "router" in diff
    )
    # removing each difference closes the gap: all-MoE, no scores -> only the router is left
    all_moe = make_config(resolve_preset("moe-9b-a1b", {"mlp_only_layers": []}))
    exact = flops_breakdown(all_moe, seq_len=0)
    assert exact["total"] - exact["router"] == paper_closed_form(all_moe)["total"]
    dense = flops_for_preset("dense-0.5b")  # kv heads 2 x 64 != d / 2: the 18 d^2 term is approximate
    assert any("18 d^2 assumes" in line for line in dense["differences"])


def test_paper_sizes_table_handles_absent_presets(monkeypatch):
    from nitp_train import models
    from nitp_train.flops import PAPER_SIZES, paper_sizes_table

    rows = paper_sizes_table()
    assert [r["preset"] for r in rows] == list(PAPER_SIZES) and len(rows) == 7
    monkeypatch.delitem(models.PRESETS, "moe-9b-a1b")
    row = next(r for r in paper_sizes_table() if r["preset"] == "moe-9b-a1b")
    assert "no such preset" in row["note"] and "exact" not in row
