"""nitp_train.objective: one pair rule and one NITP sum behind all three integrations.

The trainer's ``NITPObjective``, ``wrap_model``'s ``NITPWrapped`` and torchtitan's ``NITPTerm``
give the same NITP loss and the same gradients on one packed batch (tiny Qwen2, two documents per
row, padding); the pairs equal a brute-force enumeration of the documented rule.
"""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

from nitp_train.dropin import wrap_model
from nitp_train.dropin.titan import NITPTerm
from nitp_train.loss import LOSS_KINDS, NITPObjective, nitp_loss
from nitp_train.objective import nitp_pairs, nitp_sum

TARGET = 2
DOCS = [(6, 8), (5, 6), (7, 4)]  # two documents per row, then padding up to T
T = 14


def tiny_qwen2(seed: int = 0):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    cfg = Qwen2Config(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=97,
        attn_implementation="sdpa",
    )
    return Qwen2ForCausalLM(cfg)


def packed_batch(seed: int = 1):
    """ids [3, 14], attention mask (right padding), per-token document ids, HF labels (-100 on padding)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 97, (len(DOCS), T), generator=g)
    mask = torch.zeros_like(ids)
    docs = torch.full_like(ids, 9)
    for row, (a, b) in enumerate(DOCS):
        mask[row, : a + b] = 1
        docs[row, :a], docs[row, a : a + b] = 0, 1
    return ids, mask, docs, ids.masked_fill(mask == 0, -100)


def brute_force_pairs(labels, mask, docs, shift, cross=False) -> set[tuple[int, int]]:
    """The documented rule, one pair at a time."""
    out = set()
    B, n = labels.shape
    for b in range(B):
        for t in range(n - max(shift, 1)):
            ok = labels[b, t + 1] != -100 and mask[b, t] == 1 and mask[b, t + shift] == 1
            ok = ok and (shift == 0 or labels[b, t + shift] != -100)
            ok = ok and (cross or docs[b, t] == docs[b, t + shift])
            if ok:
                out.add((b, t))
    return out


def as_set(pairs: torch.Tensor) -> set[tuple[int, int]]:
    return {tuple(x) for x in pairs.nonzero().tolist()}


def named_grads(named) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in named if p.grad is not None}


def nitp_cfg(shift: int, kind: str) -> dict:
    return dict(target_layer=TARGET, shift=shift, loss=kind, projector="swiglu", stop_grad=True)


def trainer_nitp(model, head_sd, batch, shift, kind, cross=False):
    ids, mask, docs, _ = batch
    obj = NITPObjective(copy.deepcopy(model), "nitp", nitp_cfg(shift, kind), cross_documents=cross)
    obj.head.load_state_dict(head_sd)
    loss = obj(ids, mask, document_ids=docs)["loss_nitp"]
    loss.backward()
    return loss.detach(), named_grads(obj.named_parameters())


def wrapper_nitp(model, head_sd, batch, shift, kind, cross=False):
    ids, mask, docs, labels = batch
    wrapped = wrap_model(copy.deepcopy(model), TARGET, shift=shift, loss=kind, cross_documents=cross)
    wrapped.head.load_state_dict(head_sd)
    loss = wrapped(input_ids=ids, attention_mask=mask, labels=labels, document_ids=docs).loss_nitp
    loss.backward()
    return loss.detach(), named_grads(wrapped.named_parameters())


def titan_nitp(model, head_sd, batch, shift, kind, cross=False):
    ids, mask, docs, labels = batch
    lm = copy.deepcopy(model)
    term = NITPTerm(32, loss=kind, shift=shift, cross_documents=cross)
    term.attach(lm, TARGET)
    term.head.load_state_dict(head_sd)
    lm(input_ids=ids, attention_mask=mask)
    shifted = torch.cat([labels[:, 1:], torch.full_like(labels[:, :1], -100)], 1)  # torchtitan's layout
    total, count = term(shifted, document_ids=docs)
    (total / count).backward()
    names = lambda n: "head." + n[len("nitp_head.") :] if n.startswith("nitp_head.") else "model." + n  # noqa: E731
    return (total / count).detach(), {names(n): g for n, g in named_grads(lm.named_parameters()).items()}


@pytest.mark.parametrize("shift", [0, 1])
@pytest.mark.parametrize("kind", LOSS_KINDS)
def test_three_integrations_give_one_loss_and_one_gradient(shift, kind):
    model, batch = tiny_qwen2(), packed_batch()
    head_sd = wrap_model(tiny_qwen2(), TARGET).head.state_dict()  # one projector for all three
    results = [f(model, head_sd, batch, shift, kind) for f in (trainer_nitp, wrapper_nitp, titan_nitp)]
    (loss, grads), others = results[0], results[1:]
    assert float(loss) > 0
    assert len(grads) > 10 and any(n.startswith("head.") for n in grads)
    for other_loss, other_grads in others:
        torch.testing.assert_close(other_loss, loss, rtol=1e-5, atol=1e-7)
        assert set(other_grads) == set(grads)
        for name, g in grads.items():
            torch.testing.assert_close(other_grads[name], g, rtol=1e-4, atol=1e-7, msg=name)


@pytest.mark.parametrize("shift", [0, 1, 2])
def test_pairs_equal_the_brute_force_rule_and_never_cross_a_document(shift):
    ids, mask, docs, labels = packed_batch()
    labels = labels.clone()
    labels[1, 5] = -100  # an ignored label inside a document (e.g. a prompt token)
    got = nitp_pairs(labels.shape, shift, labels=labels, attention_mask=mask, document_ids=docs)
    want = brute_force_pairs(labels, mask, docs, shift)
    assert as_set(got) == want and want
    assert all(docs[b, t] == docs[b, t + shift] for b, t in as_set(got))
    assert (1, 4) not in as_set(got)  # t = 4 predicts the ignored label at 5
    crossing = brute_force_pairs(labels, mask, docs, shift, cross=True) - want
    if shift > 0:
        assert crossing  # the batch has boundary pairs the default leaves out ...
    switched = nitp_pairs(
        labels.shape, shift, labels=labels, attention_mask=mask, document_ids=docs, cross_documents=True
    )
    assert as_set(switched) == want | crossing  # ... and the switch includes them


def test_position_id_restarts_and_document_ids_give_the_same_pairs():
    _, mask, docs, labels = packed_batch()
    pos = torch.zeros_like(docs)
    for row, (a, _) in enumerate(DOCS):
        pos[row, :a], pos[row, a:] = torch.arange(a), torch.arange(T - a)
    by_pos = nitp_pairs(labels.shape, 1, labels=labels, attention_mask=mask, position_ids=pos)
    by_docs = nitp_pairs(labels.shape, 1, labels=labels, attention_mask=mask, document_ids=docs)
    assert torch.equal(by_pos, by_docs)


def test_cross_documents_changes_the_trainers_loss_only_through_boundary_pairs():
    model, batch = tiny_qwen2(), packed_batch()
    head_sd = wrap_model(tiny_qwen2(), TARGET).head.state_dict()
    within, _ = trainer_nitp(model, head_sd, batch, 1, "cosine")
    across, _ = trainer_nitp(model, head_sd, batch, 1, "cosine", cross=True)
    no_docs = NITPObjective(copy.deepcopy(model), "nitp", nitp_cfg(1, "cosine"))
    no_docs.head.load_state_dict(head_sd)
    ids, mask, _, _ = batch
    torch.testing.assert_close(no_docs(ids, mask)["loss_nitp"].detach(), across)  # no documents = one
    assert abs(float(within - across)) > 1e-5


def test_nitp_loss_is_sum_over_count_and_zero_with_a_graph_without_pairs():
    torch.manual_seed(0)
    h, z = torch.randn(2, 5, 4, requires_grad=True), torch.randn(2, 5, 4)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    docs = torch.tensor([[0, 0, 1, 1, 1], [0, 0, 0, 0, 0]])
    total, count = nitp_sum(h, z, nitp_pairs((2, 5), 1, attention_mask=mask, document_ids=docs))
    assert int(count) == 3 + 2  # row 0: (0,1), (2,3), (3,4); row 1: (0,1), (1,2)
    torch.testing.assert_close(nitp_loss(h, z, attention_mask=mask, document_ids=docs), total / count)
    empty = nitp_loss(h, z, attention_mask=torch.zeros(2, 5, dtype=torch.long))
    assert float(empty.detach()) == 0.0 and empty.requires_grad


def test_shift_zero_leaves_the_last_position_out():
    """Every shift uses the positions that predict a next token: t < T - 1 for s = 0 and 1."""
    assert nitp_pairs((1, 4), 0).shape == nitp_pairs((1, 4), 1).shape == (1, 3)
    assert nitp_pairs((1, 4), 2).shape == (1, 2)
    with pytest.raises(ValueError, match="shift"):
        nitp_pairs((1, 4), -1)


def test_document_batches_label_each_token_with_its_document(tmp_path):
    from nitp_train.data import TokenShards

    tokens = np.arange(40, dtype=np.uint16)
    tokens.tofile(tmp_path / "train.bin")
    tokens[:8].tofile(tmp_path / "val.bin")
    starts = np.array([0, 5, 13, 30], dtype=np.uint64)
    starts.tofile(tmp_path / "train.idx")
    (tmp_path / "meta.json").write_text(json.dumps({"dtype": "uint16"}))
    shards = TokenShards(tmp_path)
    both = zip(shards.batches(4, 2, seed=3, start=1), shards.document_batches(4, 2, seed=3, start=1))
    for _, ((i, x), (j, y, docs)) in zip(range(12), both):  # past an epoch (5 batches)
        assert i == j and np.array_equal(x, y)  # the same windows as batches()
        want = np.searchsorted([0, 5, 13, 30], x, side="right") - 1  # tokens are their own offsets
        assert docs.dtype == np.int64 and np.array_equal(docs, want)
