"""analysis.hidden + analysis.layers on real checkpoints: hooks, corpus sample, streamed statistics.

The streamed per-layer statistics are checked against brute-force numpy computations on the
hidden states that transformers itself returns (``output_hidden_states=True``).
"""

from __future__ import annotations

import shutil
import warnings

import numpy as np
import pytest
import torch

from analysis.hidden import LayerCapture, batch_plan, corpus_sample, load_model, padded, resolve_layers
from analysis.layers import GeometryWarning
from analysis.measure import measure
from analysis.settings import GeomSettings
from nitp.errors import UserError
from nitp.geometry import sample_pairs
from nitp.layers import transformer_blocks
from tests.test_analysis_geometry import brute_pair_cos, brute_spectrum

SMALL = dict(n_tokens=1200, seq_len=64, batch_size=4, n_pairs=500)


def _output_hidden_states(loaded, sample, batch_size):
    """Per layer, the real tokens' states from transformers' own output_hidden_states."""
    per_layer: dict[int, list] = {}
    for lo, hi, _ in batch_plan(sample, batch_size):
        ids, attn = padded(sample.sequences[lo:hi], loaded.tokenizer.pad_token_id or 0, "cpu")
        with torch.no_grad():
            out = loaded.model(input_ids=ids, attention_mask=attn, output_hidden_states=True)
        for k, h in enumerate(out.hidden_states):
            per_layer.setdefault(k, []).append(h[attn.bool()].double().numpy())
    return {k: np.concatenate(v) for k, v in per_layer.items()}


# ----------------------------------------------------------------------------- hooks
def test_hooks_equal_output_hidden_states_on_a_decoder(tiny_checkpoint):
    loaded = load_model(tiny_checkpoint, device="cpu")
    L = loaded.n_layers
    ids = torch.randint(0, 4000, (3, 20), generator=torch.Generator().manual_seed(0))
    attn = torch.ones_like(ids)
    attn[1, 15:] = 0
    with torch.no_grad():
        ref = loaded.model(input_ids=ids, attention_mask=attn, output_hidden_states=True)
    block = transformer_blocks(loaded.model)[0]
    hooks_before = (len(block._forward_hooks), len(block._forward_pre_hooks))
    with LayerCapture(loaded, resolve_layers(None, L)) as cap:
        got = cap.run(ids, attn)
    for k in range(L):
        assert torch.equal(got[k], ref.hidden_states[k]), k
    # transformers puts the final-norm output last; our layer L is the block output before it
    assert torch.equal(got[-1], ref.hidden_states[L]) and torch.equal(got[-1], ref.last_hidden_state)
    assert torch.allclose(loaded.model.norm(got[L]), got[-1], atol=1e-6)
    assert not torch.allclose(got[L], got[-1])
    assert loaded.has_final_norm and loaded.layer_name(-1) == "last (final norm)"
    assert (len(block._forward_hooks), len(block._forward_pre_hooks)) == hooks_before  # ours removed on exit


def test_hooks_equal_output_hidden_states_on_minilm(minilm_dir):
    loaded = load_model(minilm_dir, device="cpu")
    enc = loaded.tokenizer(
        ["The cat sat on the mat.", "A much longer sentence about the weather today."],
        padding=True,
        return_tensors="pt",
    )
    with LayerCapture(loaded, resolve_layers(None, loaded.n_layers)) as cap:
        got = cap.run(enc["input_ids"], enc["attention_mask"])
    with torch.no_grad():
        ref = loaded.model(**enc, output_hidden_states=True)
    assert len(ref.hidden_states) == loaded.n_layers + 1 == 7
    for k in range(7):
        assert torch.equal(got[k], ref.hidden_states[k]), k
    assert not loaded.has_final_norm  # encoder: last hidden state = block L output
    assert torch.equal(got[-1], got[6])


# ----------------------------------------------------------------------------- sample
def test_corpus_sample_is_fixed_seeded_and_exact(minilm_dir, tiny_checkpoint):
    tok = load_model(minilm_dir, device="cpu").tokenizer
    a = corpus_sample(tok, "builtin", 3000, seq_len=100, seed=0)
    b = corpus_sample(tok, "builtin", 3000, seq_len=100, seed=0)
    c = corpus_sample(tok, "builtin", 3000, seq_len=100, seed=1)
    assert a.n_tokens == 3000 and a.sha256 == b.sha256 != c.sha256
    assert max(len(s) for s in a.sequences) == 100
    full = [s for s in a.sequences if len(s) == 100]
    assert all(s[0] == tok.cls_token_id and s[-1] == tok.sep_token_id for s in full)  # BERT wrapping
    d = a.describe()
    assert d["token_ids_sha256"] == a.sha256 and len(d["sequences"]) == len(a.sequences)
    assert 0 < a.heldout_start < len(a.sequences)


def test_small_corpus_and_layer_errors_name_the_fix(tmp_path, tiny_checkpoint):
    corpus = tmp_path / "small.txt"
    corpus.write_text("Just a few words of text here.")
    tok = load_model(tiny_checkpoint, device="cpu").tokenizer
    have = len(tok(corpus.read_text(), add_special_tokens=False)["input_ids"])
    with pytest.raises(
        UserError, match=rf"only {have} tokens .*asked for 5,000.*lower --tokens to at most {have}"
    ):
        corpus_sample(tok, str(corpus), 5000, seq_len=64)
    with pytest.raises(UserError, match=r"layer 9 is out of range .*0\.\.4"):
        resolve_layers("0,9", 4)
    with pytest.raises(UserError, match="comma-separated"):
        resolve_layers("one,two", 4)
    assert resolve_layers("2,-1,2", 4) == [2, -1]


# ----------------------------------------------------------------------------- statistics
def test_streamed_layer_statistics_equal_brute_force_on_real_states(tiny_checkpoint):
    from sklearn.linear_model import Ridge
    from sklearn.metrics import r2_score

    _, settings, scores = measure(tiny_checkpoint, GeomSettings(**SMALL), progress=False)
    loaded = load_model(tiny_checkpoint, device="cpu")
    sample = corpus_sample(loaded.tokenizer, "builtin", 1200, 64, 0)
    assert sample.sha256 == settings["sample"]["token_ids_sha256"]
    states = _output_hidden_states(loaded, sample, 4)
    L = loaded.n_layers
    lengths = sample.lengths
    groups = np.repeat(np.arange(len(lengths)), lengths)
    docs = np.repeat(np.asarray(sample.documents), lengths)
    assert len(set(sample.documents)) < len(lengths)  # some document gives several sequences
    first = np.concatenate([[True] + [False] * (n - 1) for n in lengths])
    src = np.flatnonzero(
        np.concatenate([[True] * (n - 1) + [False] for n in lengths])
    )  # t with t+1 in the sequence
    fit = groups[src] < sample.heldout_start
    by_layer = {r["layer"]: r for r in scores["layers"]}
    last = states[L]  # final-norm output = our layer -1

    def unit(v):
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    for k, x in [(k, states[k]) for k in range(L)] + [(-1, last)]:
        row = by_layer[k]
        ref = brute_spectrum(x)
        assert row["effective_rank_covariance"] == pytest.approx(ref["effective_rank_covariance"], rel=1e-8)
        assert row["effective_rank_singular"] == pytest.approx(ref["effective_rank_singular"], rel=1e-8)
        assert row["anisotropy"] == pytest.approx(brute_pair_cos(x), rel=1e-9)
        assert row["anisotropy_across_sequences"] == pytest.approx(brute_pair_cos(x, groups), rel=1e-9)
        assert row["anisotropy_within_sequences"] == pytest.approx(
            brute_pair_cos(x, groups, same=True), rel=1e-9
        )
        assert row["anisotropy_across_documents"] == pytest.approx(brute_pair_cos(x, docs), rel=1e-9)
        assert row["anisotropy_within_documents"] == pytest.approx(
            brute_pair_cos(x, docs, same=True), rel=1e-9
        )
        assert row["anisotropy_across_documents"] != pytest.approx(
            row["anisotropy_across_sequences"], rel=1e-6
        )
        no_first = row["without_first_position"]
        assert no_first["n_tokens"] == len(x) - len(lengths)
        assert no_first["effective_rank_covariance"] == pytest.approx(
            brute_spectrum(x[~first])["effective_rank_covariance"], rel=1e-8
        )
        assert row["mean_norm"] == pytest.approx(np.linalg.norm(x, axis=1).mean(), rel=1e-12)
        temporal = np.mean(np.sum(unit(x[src]) * unit(x[src + 1]), axis=1))
        assert row["temporal_self_similarity"] == pytest.approx(temporal, rel=1e-9)
        if k == -1:
            continue
        raw = np.mean(np.sum(unit(last[src]) * unit(x[src + 1]), axis=1))
        assert row["cos_last_to_next"] == pytest.approx(raw, rel=1e-9)
        a_fit, b_fit = last[src[fit]], x[src[fit] + 1]
        alpha = row["ridge_strength"] * np.trace(np.cov(a_fit.T, bias=True)) * len(a_fit) / a_fit.shape[1]
        model = Ridge(alpha=alpha, solver="cholesky").fit(a_fit, b_fit)
        a_held, b_held = last[src[~fit]], x[src[~fit] + 1]
        pred = model.predict(a_held)
        assert row["ridge_r2"] == pytest.approx(
            r2_score(b_held, pred, multioutput="variance_weighted"), rel=1e-6, abs=1e-9
        )
        assert row["ridge_cos"] == pytest.approx(np.mean(np.sum(unit(pred) * unit(b_held), axis=1)), rel=1e-7)
        assert row["ridge_heldout_pairs"] == int((~fit).sum())
    i, j = sample_pairs(len(last), 500, docs, seed=0)  # the paper's pairs: from different documents
    sampled = np.mean(np.sum(unit(last[i]) * unit(last[j]), axis=1))
    assert scores["summary"]["anisotropy_sampled"] == pytest.approx(sampled, rel=1e-9)
    assert scores["summary"]["effective_rank_covariance"] == by_layer[-1]["effective_rank_covariance"]
    assert scores["paper_depth_rule_layer"] == scores["paper_depth_rule"]["layer"] == 1  # round(0.21 * 4)
    assert "the paper's depth rule" in scores["paper_depth_rule"]["reason"]
    assert scores["summary"]["n_documents"] == len(set(sample.documents))


def test_reference_cka_is_one_against_itself_and_exclude_first_drops_one_token_per_sequence(
    tiny_checkpoint, tmp_path
):
    _, settings, scores = measure(
        tiny_checkpoint,
        GeomSettings(layers=[1, -1], exclude_first=True, **SMALL),
        reference=tiny_checkpoint,
        progress=False,
    )
    n_seq = settings["sample"]["n_sequences"]
    for row in scores["layers"]:
        assert row["cka_vs_reference"] == pytest.approx(1.0, rel=1e-9)
        assert row["n_tokens"] == 1200 - n_seq == row["without_first_position"]["n_tokens"]
    assert [r["layer"] for r in scores["layers"]] == [1, -1]


def test_minilm_statistics_define_the_last_state_as_the_last_block(minilm_dir):
    _, _, scores = measure(minilm_dir, GeomSettings(layers=[5, 6, -1], **SMALL), progress=False)
    rows = {r["layer"]: r for r in scores["layers"]}
    assert scores["summary"]["has_final_norm"] is False
    assert "no final norm" in rows[-1]["name"]
    for key in ("effective_rank_covariance", "anisotropy", "mean_norm"):
        assert rows[-1][key] == pytest.approx(rows[6][key], rel=1e-12)
    assert 1.0 < rows[6]["effective_rank_covariance"] < 384
    assert rows[6]["cos_last_to_next"] == pytest.approx(rows[6]["temporal_self_similarity"], rel=1e-12)


# ----------------------------------------------------------------------------- bad input
def _copy_checkpoint(src, dst):
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("trainer_state", "nitp_head*"))
    return dst


def test_nan_activations_name_the_first_broken_layer(tiny_checkpoint, tmp_path):
    from safetensors.torch import load_file, save_file

    ck = _copy_checkpoint(tiny_checkpoint, tmp_path / "nan")
    weights = load_file(ck / "model.safetensors")
    weights["model.layers.1.mlp.down_proj.weight"][0, 0] = float("nan")  # block 2
    save_file(weights, ck / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(UserError, match="layer 2 has NaN/inf activations"):
        measure(ck, GeomSettings(**SMALL), progress=False)


def test_unreadable_weights_and_folders_that_are_not_models(tiny_checkpoint, tmp_path):
    ck = _copy_checkpoint(tiny_checkpoint, tmp_path / "broken")
    data = (ck / "model.safetensors").read_bytes()
    (ck / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="could not load the model weights"):
        load_model(ck, device="cpu")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="not a model folder"):
        load_model(tmp_path / "empty", device="cpu")


def test_fewer_tokens_than_dimensions_warns(tiny_checkpoint):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        measure(
            tiny_checkpoint, GeomSettings(layers=[-1], n_tokens=100, seq_len=64, batch_size=4), progress=False
        )
    assert any(issubclass(w.category, GeometryWarning) and "capped" in str(w.message) for w in caught)
