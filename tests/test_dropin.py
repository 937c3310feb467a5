"""nitp_train.dropin: wrap_model's loss, gradients, normalisation, packing, export and resume."""

from __future__ import annotations

import copy

import pytest
import torch

from nitp.errors import UserError
from nitp_train.dropin import wrap_model
from nitp_train.loss import NITPObjective
from nitp_train.objective import documents_from_positions, nitp_pairs


def tiny_llama(seed: int = 0, vocab: int = 97):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=5,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=vocab,
        tie_word_embeddings=True,
        attn_implementation="sdpa",
    )
    return LlamaForCausalLM(cfg)


def padded_batch(seed: int = 1, vocab: int = 97):
    """4 rows of 12 tokens, right-padded to lengths 12, 9, 12, 5; labels -100 on padding (HF style)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (4, 12), generator=g)
    mask = torch.ones_like(ids)
    for row, n in enumerate((12, 9, 12, 5)):
        mask[row, n:] = 0
    return ids, mask, ids.masked_fill(mask == 0, -100)


def grads(module) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}


def test_pairs_exclude_padding_unsupervised_targets_and_document_boundaries():
    labels = torch.tensor([[-100, 5, 6, 7, 8, 9]])  # position 0 unsupervised (e.g. a prompt)
    pos = torch.tensor([[0, 1, 2, 0, 1, 2]])  # two packed documents
    assert documents_from_positions(pos).tolist() == [[1, 1, 1, 2, 2, 2]]
    assert nitp_pairs((1, 6), labels=labels).all()
    assert nitp_pairs((1, 6), labels=labels, position_ids=pos).tolist() == [[True, True, False, True, True]]
    mask = torch.tensor([[1, 1, 1, 1, 1, 0]])
    got = nitp_pairs((1, 6), labels=labels, attention_mask=mask, position_ids=pos)
    assert got.tolist() == [[True, True, False, True, False]]
    assert nitp_pairs((1, 3), labels=torch.tensor([[-100, -100, 5]])).tolist() == [[False, True]]


def test_default_target_layer_and_bad_settings():
    model = tiny_llama()
    assert wrap_model(model).nitp["target_layer"] == 1  # round(0.21 * 5)
    for bad, match in [
        (dict(target_layer=6), "target_layer 6 is out of range"),
        (dict(target_layer=-1), "out of range"),
        (dict(loss="l2"), "loss 'l2'"),
        (dict(projector="mlp"), "projector 'mlp'"),
        (dict(shift=-1), "shift=-1: use 1 or 0"),
        (dict(shift=2), "shift=2: use 1 or 0"),
        (dict(weight=-0.5), "weight -0.5"),
    ]:
        with pytest.raises(UserError, match=match):
            wrap_model(tiny_llama(), **bad)


def test_wrap_model_takes_nitp_settings_and_keywords_override_them():
    from nitp_train.nitp_module import NITPSettings

    settings = NITPSettings(target_layer=2, projector="linear", cross_documents=True)
    got = wrap_model(tiny_llama(), settings=settings, weight=0.5, shift=0).nitp
    assert got == dict(
        target_layer=2,
        shift=0,
        loss="cosine",
        projector="linear",
        stop_grad=True,
        cross_documents=True,
        weight=0.5,
    )
    assert wrap_model(tiny_llama(), 3, settings=settings).nitp["target_layer"] == 3
    with pytest.raises(TypeError, match="lam"):
        wrap_model(tiny_llama(), lam=0.5)


def test_wrap_model_refuses_wrapped_non_causal_and_non_finite_inputs():
    wrapped = wrap_model(tiny_llama())
    with pytest.raises(UserError, match="already wrapped"):
        wrap_model(wrapped)
    with pytest.raises(UserError, match="already wrapped"):
        wrap_model(torch.compile(wrapped))  # found through torch.compile's ._orig_mod (not compiled)
    from transformers import BertConfig, BertForMaskedLM, BertModel

    bert = BertConfig(
        hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32, vocab_size=50
    )
    for encoder in (BertModel(bert), BertForMaskedLM(bert)):
        with pytest.raises(UserError, match="not a causal LM"):
            wrap_model(encoder)
    for weight in (float("nan"), float("inf")):
        with pytest.raises(UserError, match="finite"):
            wrap_model(tiny_llama(), weight=weight)
    assert wrap_model(wrapped.model).model is wrapped.model  # rewrapping the inner LM is fine


def test_loss_and_gradients_equal_nitp_train_objective():
    """Same weights, same batch: wrapper == nitp_train.loss.NITPObjective (loss terms and all grads)."""
    ids, mask, labels = padded_batch()
    wrapped = wrap_model(tiny_llama(), target_layer=2, weight=0.8)
    objective = NITPObjective(
        copy.deepcopy(wrapped.model),
        "nitp",
        dict(target_layer=2, shift=1, loss="cosine", projector="swiglu", stop_grad=True),
    )
    objective.head.load_state_dict(wrapped.head.state_dict())

    out = wrapped(input_ids=ids, attention_mask=mask, labels=labels)
    ref = objective(ids, mask, nitp_weight=0.8)
    out.loss.backward()
    ref["loss_total"].backward()

    torch.testing.assert_close(out.loss_ntp, ref["loss_ntp"], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(out.loss_nitp, ref["loss_nitp"], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(out.loss, ref["loss_total"], rtol=1e-6, atol=1e-6)
    assert 0.5 < out.loss_nitp.item() < 1.5  # random init: cosine near 0
    got, want = grads(wrapped), grads(objective)
    assert set(got) == set(want) and len(got) > 10
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-5, atol=1e-7, msg=name)


def test_num_items_in_batch_makes_micro_batches_sum_to_the_full_batch():
    """Gradient accumulation as HF Trainer does it: each micro-batch's loss is its sums divided by the
    accumulated batch's label count; their sum equals the full batch's token mean (CE and NITP)."""
    ids, mask, labels = padded_batch()
    wrapped = wrap_model(tiny_llama(), target_layer=1)
    n_items = (labels[:, 1:] != -100).sum()  # what Trainer._get_num_items_in_batch counts
    full = wrapped(input_ids=ids, attention_mask=mask, labels=labels).loss
    parts = [
        wrapped(input_ids=ids[s], attention_mask=mask[s], labels=labels[s], num_items_in_batch=n_items).loss
        for s in (slice(0, 1), slice(1, 4))
    ]
    torch.testing.assert_close(parts[0] + parts[1], full, rtol=1e-5, atol=1e-6)
    # a plain per-micro-batch mean would weight the 12-token row like 3 rows: not the same
    plain = [
        wrapped(input_ids=ids[s], attention_mask=mask[s], labels=labels[s]).loss
        for s in (slice(0, 1), slice(1, 4))
    ]
    assert abs(float((plain[0] + plain[1]) / 2 - full)) > 1e-3


def test_packed_row_gives_the_loss_of_separate_rows():
    """Two documents packed in one row with restarting position_ids (TRL padding-free layout:
    labels -100 at each document start) == the same documents as separate rows: no NITP pair
    crosses the boundary."""
    wrapped = wrap_model(tiny_llama(), target_layer=2).eval()
    g = torch.Generator().manual_seed(3)
    a, b = torch.randint(0, 97, (1, 7), generator=g), torch.randint(0, 97, (1, 5), generator=g)
    packed = torch.cat([a, b], 1)
    pos = torch.cat([torch.arange(7), torch.arange(5)])[None]
    labels = packed.masked_fill(pos == 0, -100)
    out = wrapped(input_ids=packed, position_ids=pos, labels=labels)
    sep = [wrapped(input_ids=x, labels=x) for x in (a, b)]
    pairs = torch.tensor([6.0, 4.0])
    want_nitp = (torch.stack([s.loss_nitp for s in sep]) * pairs).sum() / pairs.sum()
    torch.testing.assert_close(out.loss_nitp, want_nitp, rtol=1e-5, atol=1e-6)
    unpacked = wrapped(input_ids=packed, labels=packed)  # no restarts: pairs across the boundary
    assert abs(float(unpacked.loss_nitp - want_nitp)) > 1e-4


def test_without_labels_it_is_the_plain_model():
    ids, mask, _ = padded_batch()
    wrapped = wrap_model(tiny_llama()).eval()
    with torch.no_grad():
        torch.testing.assert_close(
            wrapped(input_ids=ids, attention_mask=mask).logits,
            wrapped.model(input_ids=ids, attention_mask=mask).logits,
        )
    assert wrapped.config is wrapped.model.config  # attributes read through


def test_gradient_share_is_logged_and_zero_weight_gives_zero_share():
    ids, mask, labels = padded_batch()
    for weight, check in [(1.0, lambda s: 0.05 < s < 0.95), (0.0, lambda s: s == 0.0)]:
        wrapped = wrap_model(tiny_llama(), weight=weight).train()
        wrapped(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
        stats = wrapped.stats.read()
        assert check(stats["nitp_grad_share"]), (weight, stats)
        assert stats["loss_ntp"] > 4.0 and 0.5 < stats["loss_nitp"] < 1.5
        assert wrapped.stats.read() == {}  # read resets


def test_save_pretrained_exports_plain_model_and_head_and_resumes(tmp_path):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from nitp.runs import checkpoint_info

    model = tiny_llama()
    plain_keys = set(model.state_dict())
    wrapped = wrap_model(model, target_layer=2)
    with torch.no_grad():
        wrapped.head.down.weight.add_(1.0)
    wrapped.save_pretrained(tmp_path / "out")

    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    assert set(loaded.state_dict()) == plain_keys
    head = load_file(tmp_path / "out" / "nitp_head.safetensors")
    assert set(head) == {"gate.weight", "up.weight", "down.weight"}  # NITPObjective's head layout
    assert checkpoint_info(tmp_path / "out")["objective"] == "nitp"

    resumed = wrap_model(loaded, target_layer=2, head_from=tmp_path / "out")
    torch.testing.assert_close(resumed.head.down.weight, wrapped.head.down.weight)
    with pytest.raises(UserError, match="no nitp_head.safetensors"):
        wrap_model(tiny_llama(), head_from=tmp_path / "nowhere.safetensors")
    with pytest.raises(UserError, match="projector does not fit"):
        wrap_model(tiny_llama(), projector="linear", head_from=tmp_path / "out")

    # HF Trainer's resume loads the plain folder's weights into the wrapper
    fresh = wrap_model(tiny_llama(seed=5), target_layer=2)
    fresh.load_state_dict(load_file(tmp_path / "out" / "model.safetensors"), strict=False)
    torch.testing.assert_close(fresh.model.model.embed_tokens.weight, model.model.embed_tokens.weight)


def test_torchtitan_term_equals_the_wrapper_and_filter_drops_the_head():
    """torchtitan's loss contract (shifted labels, sum / global_valid_tokens) on an HF model's blocks:
    the NITP term equals wrap_model's on the same weights and batch (without torchtitan itself;
    tests/test_dropin_titan.py runs torchtitan's own loss classes)."""
    from nitp_train.dropin.titan import NITPTerm, drop_nitp_head

    ids, mask, labels = padded_batch()
    wrapped = wrap_model(tiny_llama(), target_layer=2)
    model = copy.deepcopy(wrapped.model)
    term = NITPTerm(32)
    term.attach(model, 2)
    term.head.load_state_dict(wrapped.head.state_dict())
    n_items = (labels[:, 1:] != -100).sum()
    want = wrapped(input_ids=ids, attention_mask=mask, labels=labels, num_items_in_batch=n_items)
    model(input_ids=ids, attention_mask=mask)
    shifted = torch.cat([labels[:, 1:], torch.full((4, 1), -100)], 1)  # torchtitan's label layout
    nitp_sum, pairs = term(shifted)
    torch.testing.assert_close(nitp_sum / n_items, want.loss - want.loss_ntp, rtol=1e-5, atol=1e-6)
    assert int(pairs) == int(n_items)
    sd = model.state_dict()
    assert any(k.startswith("nitp_head.") for k in sd)
    assert set(drop_nitp_head(sd)) == set(wrapped.model.state_dict())
