"""The hidden-state encoder: pooling, normalisation, layer numbering, sentence-transformers parity,
token-budget batching, and the saved SentenceTransformer reloading with the same embeddings.

Real models only: the tiny Qwen2 checkpoint of the run fixture and the real all-MiniLM-L6-v2.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from nitp.errors import UserError
from nitp_eval.mteb.encoder import (
    pool_hidden_states,
    preflight,
    save_encoder,
    token_batches,
)
from tests.helpers import hidden_encoder

TEXTS = [
    "The cat sat on the mat.",
    "A quick brown fox jumps over the lazy dog near the bank of the river, twice.",
    "hi",
    "Space shuttle launches are expensive.",
    "The cat sat on the mat.",  # a duplicate: encoded once, returned twice
    "word " * 60,
]


@pytest.fixture(scope="module")
def tiny_encoder(tiny_checkpoint):
    return hidden_encoder().HiddenStateEncoder(tiny_checkpoint, device="cpu")


@pytest.fixture(scope="module")
def minilm_encoder(minilm_dir):
    return hidden_encoder().HiddenStateEncoder(minilm_dir, device="cpu")


@pytest.fixture(scope="module")
def tiny_layer_encoder(tiny_checkpoint):
    """An encoder with the layer-reading Transformer module (``--layer 1``); tests move its layer."""
    return hidden_encoder().HiddenStateEncoder(tiny_checkpoint, layer=1, device="cpu")


@pytest.fixture(scope="module")
def minilm_layer_encoder(minilm_dir):
    return hidden_encoder().HiddenStateEncoder(minilm_dir, layer=1, device="cpu")


# ----------------------------------------------------------------------------- pooling by hand
def test_mean_pooling_matches_hand_computation():
    hidden = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]], [[0.0, 5.0], [9.0, 9.0], [9.0, 9.0]]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    # row 0: mean of the two valid tokens = (2, 3); row 1: the single valid token (0, 5)
    expected = np.array([[2.0, 3.0] / np.sqrt(13.0), [0.0, 1.0]])
    got = pool_hidden_states(hidden, mask, "mean").numpy()
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-7)


def test_last_pooling_takes_last_valid_token_and_normalises():
    hidden = torch.tensor([[[1.0, 0.0], [3.0, 4.0], [7.0, 7.0]], [[0.0, -2.0], [8.0, 8.0], [8.0, 8.0]]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    got = pool_hidden_states(hidden, mask, "last").numpy()
    np.testing.assert_allclose(got, [[0.6, 0.8], [0.0, -1.0]], rtol=0, atol=1e-7)


def test_embeddings_have_unit_norm(tiny_encoder):
    emb = tiny_encoder.encode_texts(TEXTS)
    assert emb.dtype == np.float32 and emb.shape == (len(TEXTS), tiny_encoder.hidden_size)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-6)


# ----------------------------------------------------------------------------- layer numbering
def _reference_hidden_states(encoder, texts):
    ids = encoder.tokenize(texts)
    width = max(map(len, ids))
    input_ids = torch.full((len(ids), width), encoder.tokenizer.pad_token_id)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    for i, seq in enumerate(ids):
        input_ids[i, : len(seq)], mask[i, : len(seq)] = torch.tensor(seq), 1
    with torch.inference_mode():
        out = encoder.transformer.auto_model(
            input_ids=input_ids, attention_mask=mask, output_hidden_states=True
        )
    return input_ids, mask, out


def _with_layer(encoder, layer):
    encoder.transformer.layer = layer
    return encoder


def test_decoder_layers_follow_the_project_numbering(tiny_layer_encoder):
    """0 = embeddings, k = block k output, -1 = after the final norm (hidden_states[-1])."""
    enc = tiny_layer_encoder
    input_ids, mask, out = _reference_hidden_states(enc, TEXTS[:4])
    n = enc.spec.num_layers
    try:
        for k in range(n):  # transformers' hidden_states[k] is the input of block k+1
            got = _with_layer(enc, k).hidden_states(input_ids, mask)
            torch.testing.assert_close(got, out.hidden_states[k], rtol=0, atol=1e-6)
        block_n = _with_layer(enc, n).hidden_states(input_ids, mask)
        last = _with_layer(enc, -1).hidden_states(input_ids, mask)
    finally:
        enc.transformer.layer = 1
    torch.testing.assert_close(last, out.hidden_states[-1], rtol=0, atol=1e-6)
    # layer n is block n's output *before* the final norm: the norm of it is the last hidden state
    assert not torch.allclose(block_n, last, atol=1e-3)
    torch.testing.assert_close(enc.transformer.auto_model.norm(block_n), last, rtol=0, atol=1e-5)


def test_encoder_layers_match_output_hidden_states(minilm_layer_encoder):
    enc = minilm_layer_encoder
    input_ids, mask, out = _reference_hidden_states(enc, TEXTS[:4])
    try:
        for k in range(enc.spec.num_layers + 1):
            got = _with_layer(enc, k).hidden_states(input_ids, mask)
            torch.testing.assert_close(got, out.hidden_states[k], rtol=0, atol=1e-5)
        last = _with_layer(enc, -1).hidden_states(input_ids, mask)
    finally:
        enc.transformer.layer = 1
    torch.testing.assert_close(last, out.hidden_states[-1], rtol=0, atol=1e-5)


def test_layer_out_of_range_is_a_user_error(tiny_checkpoint):
    with pytest.raises(UserError, match=r"--layer 5 is out of range.*0\.\.4"):
        hidden_encoder().HiddenStateEncoder(tiny_checkpoint, layer=5)
    with pytest.raises(UserError, match="out of range"):
        hidden_encoder().HiddenStateEncoder(tiny_checkpoint, layer=-2)


# ----------------------------------------------------------------------------- parity with sentence-transformers
def _sentence_transformer(path):
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer

    transformer = Transformer(str(path))
    pooling = Pooling(transformer.get_embedding_dimension(), "mean")
    return SentenceTransformer(modules=[transformer, pooling, Normalize()], device="cpu")


@pytest.mark.parametrize("which", ["tiny", "minilm"])
def test_same_embeddings_as_sentence_transformers(
    which, tiny_checkpoint, minilm_dir, tiny_encoder, minilm_encoder
):
    path, encoder = (tiny_checkpoint, tiny_encoder) if which == "tiny" else (minilm_dir, minilm_encoder)
    reference = _sentence_transformer(path).encode(TEXTS, batch_size=4, convert_to_numpy=True)
    ours = encoder.encode_texts(TEXTS, batch_size=3)  # other batches, sorted by length, restored
    np.testing.assert_allclose(ours, reference, rtol=0, atol=1e-6)


def test_batching_and_order_do_not_change_embeddings(tiny_encoder):
    together = tiny_encoder.encode_texts(TEXTS, batch_size=2)
    one_by_one = np.stack([tiny_encoder.encode_texts([t])[0] for t in TEXTS])
    np.testing.assert_allclose(together, one_by_one, rtol=0, atol=1e-5)
    reversed_ = tiny_encoder.encode_texts(TEXTS[::-1], batch_size=4)[::-1]
    np.testing.assert_allclose(together, reversed_, rtol=0, atol=1e-5)


def test_minilm_sentence_bert_max_length_is_used(minilm_encoder):
    assert minilm_encoder.max_length == 256  # sentence_bert_config.json, as sentence-transformers


# ----------------------------------------------------------------------------- awkward input
def test_empty_texts_are_encoded(tiny_encoder, minilm_encoder):
    for enc in (tiny_encoder, minilm_encoder):
        emb = enc.encode_texts(["", "   ", "a real sentence"])
        assert np.isfinite(emb).all()
        np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-6)


def test_eos_pooling_reads_the_appended_eos(tiny_checkpoint):
    enc = hidden_encoder().HiddenStateEncoder(tiny_checkpoint, pooling="eos")
    ids = enc.tokenize(["a cat", ""])
    assert all(seq[-1] == enc.tokenizer.eos_token_id for seq in ids)
    last = hidden_encoder().HiddenStateEncoder(tiny_checkpoint, pooling="last")
    eos_text = "a cat" + enc.tokenizer.eos_token
    np.testing.assert_allclose(enc.encode_texts(["a cat"]), last.encode_texts([eos_text]), atol=1e-6)


@pytest.fixture()
def copy_of_checkpoint(tiny_checkpoint, tmp_path):
    dst = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, dst)
    return dst


def test_tokenizer_without_pad_token_pads_with_eos_and_says_so(copy_of_checkpoint):
    cfg_path = copy_of_checkpoint / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["pad_token"] = None  # explicit: Qwen2Tokenizer would otherwise default it to EOS itself
    cfg_path.write_text(json.dumps(cfg))
    notes = []
    enc = hidden_encoder().HiddenStateEncoder(copy_of_checkpoint, log=notes.append)
    assert enc.tokenizer.pad_token == enc.tokenizer.eos_token
    assert any("no pad token" in n and "EOS" in n for n in notes)
    assert np.isfinite(enc.encode_texts(["short", "a much longer sentence than that"])).all()


def test_model_without_tokenizer_is_a_user_error(copy_of_checkpoint):
    for f in ("tokenizer.json", "tokenizer_config.json"):
        (copy_of_checkpoint / f).unlink()
    with pytest.raises(UserError, match="no tokenizer files"):
        hidden_encoder().HiddenStateEncoder(copy_of_checkpoint)


def test_unknown_pooling_is_a_user_error(tiny_checkpoint):
    with pytest.raises(UserError, match="unknown pooling 'max'"):
        hidden_encoder().HiddenStateEncoder(tiny_checkpoint, pooling="max")


# ----------------------------------------------------------------------------- bounded memory
def test_token_batches_fill_up_to_the_budget_longest_first():
    assert token_batches([5, 1, 3, 3], batch_tokens=6, batch_size=32) == [[0], [2, 3], [1]]
    assert token_batches([2, 2, 2], batch_tokens=100, batch_size=2) == [[0, 1], [2]]
    assert token_batches([9], batch_tokens=4, batch_size=8) == [[0]]  # too long alone: its own batch
    with pytest.raises(UserError, match="--batch-tokens"):  # checked once, before any model loads
        preflight("no-model-needed", batch_tokens=0)


def test_forward_passes_stay_within_the_token_budget(tiny_checkpoint, tiny_encoder):
    budget = 40
    enc = hidden_encoder().HiddenStateEncoder(
        tiny_checkpoint, device="cpu", batch_tokens=budget, max_length=16
    )
    shapes = []
    # sentence-transformers calls the model's forward directly: hook its token embedding instead
    handle = enc.transformer.auto_model.get_input_embeddings().register_forward_pre_hook(
        lambda _m, args: shapes.append(tuple(args[0].shape))
    )
    try:
        emb = enc.encode_texts(TEXTS)
    finally:
        handle.remove()
    assert len(shapes) > 1 and max(rows * width for rows, width in shapes) <= budget
    assert max(width for _, width in shapes) <= 16  # --max-length truncates
    assert all(len(ids) <= 16 for ids in enc.tokenize(TEXTS))
    short = [t for t in TEXTS if len(tiny_encoder.tokenize([t])[0]) <= 16]  # untouched by truncation
    np.testing.assert_allclose(enc.encode_texts(short), tiny_encoder.encode_texts(short), rtol=0, atol=1e-5)
    assert emb.shape == (len(TEXTS), enc.hidden_size)


def test_default_max_length_is_512_capped_by_the_model(tiny_encoder):
    positions = tiny_encoder.transformer.auto_model.config.max_position_embeddings
    assert tiny_encoder.max_length == min(512, positions)


# ----------------------------------------------------------------------------- the saved SentenceTransformer
@pytest.mark.slow
@pytest.mark.parametrize("pooling, layer", [("mean", -1), ("last", 2), ("eos", -1)])
def test_saved_encoder_reloads_with_the_same_embeddings(pooling, layer, tiny_checkpoint, tmp_path):
    from sentence_transformers import SentenceTransformer

    enc = hidden_encoder().HiddenStateEncoder(tiny_checkpoint, pooling=pooling, layer=layer, device="cpu")
    folder = save_encoder(enc, tmp_path / "encoder")
    modules = json.loads((folder / "modules.json").read_text())
    assert [m["type"].rsplit(".", 1)[1] for m in modules] == [
        "Transformer" if layer == -1 else "LayerTransformer",
        "Pooling",
        "Normalize",
    ]
    # the paper's setting reloads with plain sentence-transformers; a layer module needs trust
    reloaded = SentenceTransformer(str(folder), device="cpu", trust_remote_code=layer != -1)
    texts = [t for t in TEXTS if t.strip()]
    np.testing.assert_allclose(
        reloaded.encode(texts, convert_to_numpy=True), enc.encode_texts(texts), rtol=0, atol=1e-6
    )
    with pytest.raises(UserError, match="not empty"):
        save_encoder(enc, folder)
