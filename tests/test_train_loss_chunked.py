"""Chunked next-token CE (checkpointed and gradient-in-forward) equals the plain loss and its
gradients; NITP hooks and MoE aux loss still work."""

import pytest
import torch
import torch.nn.functional as F

from nitp.errors import UserError
from nitp_train.loss import (
    NITPObjective,
    chunked_gif_next_token_ce,
    chunked_next_token_ce,
    resolve_loss_impl,
)
from nitp_train.models import build_model, resolve_preset
from nitp_train.parallel import enable_activation_checkpointing

NITP_CFG = {"target_layer": 1, "shift": 1, "loss": "cosine", "stop_grad": True, "projector": "swiglu"}


@pytest.mark.parametrize("impl", [chunked_next_token_ce, chunked_gif_next_token_ce])
@pytest.mark.parametrize("bias", [False, True])
def test_chunked_ce_matches_plain_loss_and_gradients(impl, bias):
    torch.manual_seed(0)
    head = torch.nn.Linear(16, 50, bias=bias)
    h = torch.randn(3, 37, 16, requires_grad=True)
    labels = torch.randint(0, 50, (3, 37))
    labels[1, 30:] = -100  # padding is left out of the mean
    plain = F.cross_entropy(head(h).float().reshape(-1, 50), labels.reshape(-1), ignore_index=-100)
    plain_grads = torch.autograd.grad(plain, [h, head.weight])
    chunked = impl(h, head, labels, chunk=8)  # 8 does not divide 37
    chunked_grads = torch.autograd.grad(chunked * 1.0, [h, head.weight])
    torch.testing.assert_close(chunked, plain, rtol=1e-6, atol=1e-6)
    for a, b in zip(chunked_grads, plain_grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def _losses_and_grads(
    preset: str,
    objective: str,
    loss_chunk: int,
    checkpointing: bool = False,
    loss_impl: str = "auto",
    tied: bool = True,
):
    spec = {**resolve_preset(preset), "tie_word_embeddings": tied}
    model = build_model(spec, seed=0)
    if checkpointing:
        enable_activation_checkpointing(model)
    torch.manual_seed(1)
    obj = NITPObjective(
        model, objective, NITP_CFG, cos_reg_weight=0.1, loss_chunk=loss_chunk, loss_impl=loss_impl
    ).train()
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


def test_gif_loss_scales_its_stored_gradients_by_the_incoming_gradient():
    torch.manual_seed(3)
    head = torch.nn.Linear(8, 30, bias=False)
    h = torch.randn(2, 9, 8, requires_grad=True)
    labels = torch.randint(0, 30, (2, 9))
    labels[0, :4] = -100
    plain = F.cross_entropy(head(h).reshape(-1, 30), labels.reshape(-1), ignore_index=-100)
    want = torch.autograd.grad(2.5 * plain, [h, head.weight])
    got = torch.autograd.grad(2.5 * chunked_gif_next_token_ce(h, head, labels, chunk=4), [h, head.weight])
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    assert torch.all(got[0][0, :4] == 0)  # unlabelled positions get no gradient
    with torch.no_grad():  # validation: the value only
        torch.testing.assert_close(chunked_gif_next_token_ce(h, head, labels, chunk=4), plain.detach())


@pytest.mark.parametrize("preset", ["tiny-dense", "tiny-moe"])
@pytest.mark.parametrize("tied", [True, False])
def test_objective_with_gif_loss_equals_plain_and_checkpointed_chunked(preset, tied):
    plain, plain_grads = _losses_and_grads(preset, "nitp", loss_chunk=0, tied=tied)
    runs = {
        impl: _losses_and_grads(preset, "nitp", loss_chunk=7, loss_impl=impl, tied=tied)
        for impl in ("chunked", "chunked_gif")
    }
    for impl, (losses, grads) in runs.items():
        assert set(losses) == set(plain) and "loss_nitp" in losses
        assert ("aux_loss" in losses) == (preset == "tiny-moe")
        for k in plain:
            torch.testing.assert_close(losses[k], plain[k], rtol=1e-5, atol=1e-6, msg=f"{impl} {k}")
        assert set(grads) == set(plain_grads)
        assert any("lm_head" in n for n in grads) == (not tied)
        for n in plain_grads:
            torch.testing.assert_close(grads[n], plain_grads[n], rtol=1e-4, atol=1e-6, msg=f"{impl} {n}")


def test_loss_impl_and_loss_chunk_resolve_or_fail_in_one_line():
    assert resolve_loss_impl("auto", 0) == ("plain", 0)
    assert resolve_loss_impl("auto", 64) == ("chunked", 64)
    assert resolve_loss_impl("chunked_gif", 64) == ("chunked_gif", 64)
    assert resolve_loss_impl("chunked", 0)[1] > 0
    with pytest.raises(UserError, match="loss_impl=plain with train.loss_chunk=64"):
        resolve_loss_impl("plain", 64)


def test_liger_without_the_package_is_a_one_line_error():
    try:
        import liger_kernel  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("liger-kernel is installed")
    model = build_model(resolve_preset("tiny-dense"), seed=0)
    obj = NITPObjective(model, "ntp", NITP_CFG, loss_chunk=0, loss_impl="liger")
    with pytest.raises(UserError, match="liger-kernel") as e:
        obj(torch.randint(0, 100, (1, 8)))
    assert "\n" not in str(e.value)


def test_gif_loss_under_bf16_autocast_matches_the_checkpointed_one():
    torch.manual_seed(4)
    head = torch.nn.Linear(32, 200, bias=False)
    h = torch.randn(2, 33, 32, requires_grad=True)
    labels = torch.randint(0, 200, (2, 33))
    labels[0, :5] = -100
    results = []
    for impl in (chunked_next_token_ce, chunked_gif_next_token_ce):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = impl(h, head, labels, chunk=8)
        assert loss.dtype == torch.float32
        results.append((loss, *torch.autograd.grad(loss, [h, head.weight])))
    for a, b in zip(*results):
        assert a.dtype == b.dtype
        torch.testing.assert_close(a, b, rtol=2e-2, atol=2e-3)


def test_loss_impl_names_the_chunk_size_in_one_knob():
    from nitp_train.loss import parse_loss_impl

    assert parse_loss_impl("plain") == ("plain", 0) and parse_loss_impl("liger") == ("liger", 0)
    assert parse_loss_impl("chunked") == ("chunked", 1024)
    assert parse_loss_impl("chunked_gif:512") == ("chunked_gif", 512)
    for bad in ("auto", "chunked:0", "chunked:x", "plain:8", "liger:8", "chunked:99999999"):
        with pytest.raises(UserError, match="train.loss_impl=") as e:
            parse_loss_impl(bad)
        assert "\n" not in str(e.value)
    model = build_model(resolve_preset("tiny-dense"), seed=0)
    obj = NITPObjective(model, "ntp", NITP_CFG, loss_impl="chunked:7")
    assert (obj.loss_impl, obj.loss_chunk) == ("chunked", 7)


def test_a_config_with_the_old_loss_chunk_key_loads_and_means_the_same(capsys):
    from nitp_train.config import config_diff, load_config

    def train(*sets):
        return load_config("tiny-nitp", list(sets))["train"]

    assert train("train.loss_chunk=512")["loss_impl"] == "chunked:512"
    note = capsys.readouterr().err.strip().splitlines()
    assert note == [
        "note: train.loss_chunk is deprecated: read as train.loss_impl=chunked:512; write that instead"
    ]
    assert "loss_chunk" not in train("train.loss_chunk=0")
    assert train("train.loss_chunk=0", "train.loss_impl=auto")["loss_impl"] == "plain"
    assert train("train.loss_impl=chunked_gif", "train.loss_chunk=64")["loss_impl"] == "chunked_gif:64"
    assert train("train.loss_impl=chunked:64", "train.loss_chunk=64")["loss_impl"] == "chunked:64"
    assert capsys.readouterr().err.count("\n") == 2  # one line per config that sets loss_chunk > 0
    for sets, problem in (
        (["train.loss_impl=plain", "train.loss_chunk=64"], "loss_impl=plain with train.loss_chunk=64"),
        (["train.loss_impl=liger", "train.loss_chunk=64"], "loss_impl=liger with train.loss_chunk=64"),
        (["train.loss_impl=chunked:32", "train.loss_chunk=64"], "two chunk sizes"),
        (["train.loss_chunk=-1"], "train.loss_chunk=-1: must be an integer"),
    ):
        with pytest.raises(UserError, match=problem) as e:
            load_config("tiny-nitp", sets)
        assert "\n" not in str(e.value)
    # an older run's config.yaml (loss_chunk 0, loss_impl auto) equals today's: resume and studies go on
    new = load_config("tiny-nitp")
    old = {**new, "train": {**new["train"], "loss_chunk": 0, "loss_impl": "auto"}}
    assert config_diff(old, new) == [] and config_diff(new, old) == []
    chunked = {**new, "train": {**new["train"], "loss_chunk": 256, "loss_impl": "auto"}}
    assert config_diff(chunked, load_config("tiny-nitp", ["train.loss_impl=chunked:256"])) == []
    assert capsys.readouterr().err == ""  # comparing is silent
