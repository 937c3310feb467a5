"""The hidden-state encoder: pooling, normalisation, layer numbering, sentence-transformers parity.

Real models only: the tiny Qwen2 checkpoint of the run fixture and the real all-MiniLM-L6-v2.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from nitp.errors import UserError
from nitp_eval.embed import HiddenStateEncoder, pool_hidden_states

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
    return HiddenStateEncoder(tiny_checkpoint, device="cpu")


@pytest.fixture(scope="module")
def minilm_encoder(minilm_dir):
    return HiddenStateEncoder(minilm_dir, device="cpu")


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
        out = encoder.model(input_ids=input_ids, attention_mask=mask, output_hidden_states=True)
    return input_ids, mask, out


def _with_layer(encoder, layer):
    encoder.layer = layer
    return encoder


def test_decoder_layers_follow_the_project_numbering(tiny_encoder):
    """0 = embeddings, k = block k output, -1 = after the final norm (hidden_states[-1])."""
    input_ids, mask, out = _reference_hidden_states(tiny_encoder, TEXTS[:4])
    n = tiny_encoder.num_layers
    try:
        for k in range(n):  # transformers' hidden_states[k] is the input of block k+1
            got = _with_layer(tiny_encoder, k).hidden_states(input_ids, mask)
            torch.testing.assert_close(got, out.hidden_states[k], rtol=0, atol=1e-6)
        block_n = _with_layer(tiny_encoder, n).hidden_states(input_ids, mask)
        last = _with_layer(tiny_encoder, -1).hidden_states(input_ids, mask)
    finally:
        tiny_encoder.layer = -1
    torch.testing.assert_close(last, out.hidden_states[-1], rtol=0, atol=1e-6)
    # layer n is block n's output *before* the final norm: the norm of it is the last hidden state
    assert not torch.allclose(block_n, last, atol=1e-3)
    torch.testing.assert_close(tiny_encoder.model.norm(block_n), last, rtol=0, atol=1e-5)


def test_encoder_layers_match_output_hidden_states(minilm_encoder):
    input_ids, mask, out = _reference_hidden_states(minilm_encoder, TEXTS[:4])
    try:
        for k in range(minilm_encoder.num_layers + 1):
            got = _with_layer(minilm_encoder, k).hidden_states(input_ids, mask)
            torch.testing.assert_close(got, out.hidden_states[k], rtol=0, atol=1e-5)
    finally:
        minilm_encoder.layer = -1
    torch.testing.assert_close(
        minilm_encoder.hidden_states(input_ids, mask), out.hidden_states[-1], rtol=0, atol=1e-5
    )


def test_layer_out_of_range_is_a_user_error(tiny_checkpoint):
    with pytest.raises(UserError, match=r"--layer 5 is out of range.*0\.\.4"):
        HiddenStateEncoder(tiny_checkpoint, layer=5)
    with pytest.raises(UserError, match="out of range"):
        HiddenStateEncoder(tiny_checkpoint, layer=-2)


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
    enc = HiddenStateEncoder(tiny_checkpoint, pooling="eos")
    ids = enc.tokenize(["a cat", ""])
    assert all(seq[-1] == enc.tokenizer.eos_token_id for seq in ids)
    last = HiddenStateEncoder(tiny_checkpoint, pooling="last")
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
    enc = HiddenStateEncoder(copy_of_checkpoint, log=notes.append)
    assert enc.tokenizer.pad_token == enc.tokenizer.eos_token
    assert any("no pad token" in n and "EOS" in n for n in notes)
    assert np.isfinite(enc.encode_texts(["short", "a much longer sentence than that"])).all()


def test_model_without_tokenizer_is_a_user_error(copy_of_checkpoint):
    for f in ("tokenizer.json", "tokenizer_config.json"):
        (copy_of_checkpoint / f).unlink()
    with pytest.raises(UserError, match="no tokenizer files"):
        HiddenStateEncoder(copy_of_checkpoint)


def test_unknown_pooling_is_a_user_error(tiny_checkpoint):
    with pytest.raises(UserError, match="unknown pooling 'max'"):
        HiddenStateEncoder(tiny_checkpoint, pooling="max")
