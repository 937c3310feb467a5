"""Chunked next-token CE equals the plain loss and its gradients; NITP hooks and MoE aux loss still work."""

import pytest
import torch
import torch.nn.functional as F

from nitp_train.loss import NITPObjective, chunked_next_token_ce
from nitp_train.models import build_model, resolve_preset
from nitp_train.parallel import enable_activation_checkpointing

NITP_CFG = {"target_layer": 1, "shift": 1, "loss": "cosine", "stop_grad": True, "projector": "swiglu"}


def test_chunked_ce_matches_plain_loss_and_gradients():
    torch.manual_seed(0)
    head = torch.nn.Linear(16, 50, bias=False)
    h = torch.randn(3, 37, 16, requires_grad=True)
    labels = torch.randint(0, 50, (3, 37))
    labels[1, 30:] = -100  # padding is left out of the mean
    plain = F.cross_entropy(head(h).float().reshape(-1, 50), labels.reshape(-1), ignore_index=-100)
    plain_grads = torch.autograd.grad(plain, [h, head.weight])
    chunked = chunked_next_token_ce(h, head, labels, chunk=8)  # 8 does not divide 37
    chunked_grads = torch.autograd.grad(chunked, [h, head.weight])
    torch.testing.assert_close(chunked, plain, rtol=1e-6, atol=1e-6)
    for a, b in zip(chunked_grads, plain_grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def _losses_and_grads(preset: str, objective: str, loss_chunk: int, checkpointing: bool = False):
    spec = resolve_preset(preset)
    model = build_model(spec, seed=0)
    if checkpointing:
        enable_activation_checkpointing(model)
    torch.manual_seed(1)
    obj = NITPObjective(model, objective, NITP_CFG, cos_reg_weight=0.1, loss_chunk=loss_chunk).train()
    ids = torch.randint(0, spec["vocab_size"], (2, 24), generator=torch.Generator().manual_seed(2))
    mask = torch.ones_like(ids)
    mask[1, 19:] = 0
    out = obj(ids, attention_mask=mask)
    out["loss_total"].backward()
    grads = {n: p.grad.clone() for n, p in obj.named_parameters() if p.grad is not None}
    return {k: v.detach() for k, v in out.items()}, grads


@pytest.mark.parametrize("preset", ["tiny-dense", "tiny-moe"])
def test_objective_with_chunked_loss_equals_plain(preset):
    plain, plain_grads = _losses_and_grads(preset, "nitp", loss_chunk=0)
    chunked, chunked_grads = _losses_and_grads(preset, "nitp", loss_chunk=5)
    assert set(chunked) == set(plain) and "loss_nitp" in chunked
    if preset == "tiny-moe":
        assert "aux_loss" in chunked
    for k in plain:
        torch.testing.assert_close(chunked[k], plain[k], rtol=1e-5, atol=1e-6)
    assert set(chunked_grads) == set(plain_grads)
    for n in plain_grads:
        torch.testing.assert_close(chunked_grads[n], plain_grads[n], rtol=1e-4, atol=1e-6, msg=n)


def test_activation_checkpointing_keeps_losses_and_gradients():
    plain, plain_grads = _losses_and_grads("tiny-dense", "nitp", loss_chunk=0)
    ckpt, ckpt_grads = _losses_and_grads("tiny-dense", "nitp", loss_chunk=8, checkpointing=True)
    torch.testing.assert_close(ckpt["loss_total"], plain["loss_total"], rtol=1e-5, atol=1e-6)
    for n in plain_grads:
        torch.testing.assert_close(ckpt_grads[n], plain_grads[n], rtol=1e-4, atol=1e-6, msg=n)
