"""nitp_loss and the objective module against hand computations."""

import math

import pytest
import torch

from nitp_train.loss import (
    NITPObjective,
    SwiGLUHead,
    embedding_cosine_regulariser,
    mean_pairwise_cosine,
    nitp_loss,
)


def test_cosine_loss_matches_hand_computation():
    h = torch.tensor([[[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]]])
    z = torch.tensor([[[5.0, 5.0], [0.0, 3.0], [2.0, 0.0]]])
    # pairs (h_0, z_1) and (h_1, z_2): cos = 0 and 1/sqrt(2)
    expected = ((1 - 0.0) + (1 - 1 / math.sqrt(2))) / 2
    assert nitp_loss(h, z).item() == pytest.approx(expected, rel=1e-6)


def test_shift_zero_compares_same_positions():
    h = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    assert nitp_loss(h, h.clone(), shift=0).item() == pytest.approx(0.0, abs=1e-6)
    assert nitp_loss(h, h.clone(), shift=1).item() == pytest.approx(1.0, abs=1e-6)


def test_padding_and_last_position_are_excluded():
    torch.manual_seed(0)
    h, z = torch.randn(2, 5, 4), torch.randn(2, 5, 4)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    got = nitp_loss(h, z, attention_mask=mask)
    pairs = [(0, t) for t in range(4)] + [(1, t) for t in range(2)]
    want = sum(
        1 - torch.nn.functional.cosine_similarity(h[b, t], z[b, t + 1], dim=0) for b, t in pairs
    ) / len(pairs)
    assert got.item() == pytest.approx(want.item(), rel=1e-6)
    # changing a padded target must not change the loss
    z2 = z.clone()
    z2[1, 3:] = 100.0
    assert nitp_loss(h, z2, attention_mask=mask).item() == pytest.approx(got.item(), rel=1e-6)


def test_head_is_applied_and_gets_gradients_but_target_does_not():
    torch.manual_seed(0)
    head = SwiGLUHead(4, 4)
    h = torch.randn(2, 6, 4, requires_grad=True)
    z = torch.randn(2, 6, 4, requires_grad=True)
    loss = nitp_loss(h, z, head=head)
    want = (1 - torch.nn.functional.cosine_similarity(head(h[:, :-1]), z[:, 1:], dim=-1)).mean()
    assert loss.item() == pytest.approx(want.item(), rel=1e-6)
    loss.backward()
    assert z.grad is None
    assert h.grad is not None and head.gate.weight.grad.abs().sum() > 0
    z.grad = None
    nitp_loss(h, z, head=head, stop_grad=False).backward()
    assert z.grad is not None and z.grad.abs().sum() > 0


@pytest.mark.parametrize("kind", ["mse", "smooth_l1", "kl"])
def test_other_kinds_are_zero_on_identical_vectors_and_positive_otherwise(kind):
    h = torch.randn(1, 4, 8)
    same = torch.cat([h[:, :1], h[:, :-1]], dim=1)  # z[t+1] = h[t]
    assert nitp_loss(h, same, kind=kind).item() == pytest.approx(0.0, abs=1e-6)
    assert nitp_loss(h, torch.randn(1, 4, 8), kind=kind).item() > 0


def test_mean_pairwise_cosine_equals_brute_force():
    torch.manual_seed(1)
    x = torch.randn(50, 16) + 0.5
    u = torch.nn.functional.normalize(x, dim=-1)
    c = u @ u.T
    brute = (c.sum() - c.diagonal().sum()) / (50 * 49)
    assert mean_pairwise_cosine(x).item() == pytest.approx(brute.item(), rel=1e-5)


def test_objective_uses_one_forward_and_hooks_give_the_right_layers():
    from nitp_train.models import build_model, resolve_preset

    model = build_model(resolve_preset("tiny-dense", {"vocab_size": 64}), seed=0)
    obj = NITPObjective(
        model,
        "nitp",
        {"target_layer": 2, "projector": "swiglu", "shift": 1, "loss": "cosine", "stop_grad": True},
    )
    x = torch.randint(0, 64, (2, 12))
    calls = []
    model.model.register_forward_hook(lambda *a: calls.append(1))
    out = obj(x, keep_last_hidden=True)
    assert len(calls) == 1
    ref = model(input_ids=x, output_hidden_states=True)
    assert torch.allclose(out["last_hidden"], ref.hidden_states[-1], atol=1e-6)
    want = nitp_loss(ref.hidden_states[-1], ref.hidden_states[2], head=obj.head)
    assert out["loss_nitp"].item() == pytest.approx(want.item(), rel=1e-5)
    ce = torch.nn.functional.cross_entropy(ref.logits[:, :-1].reshape(-1, 64), x[:, 1:].reshape(-1))
    assert out["loss_ntp"].item() == pytest.approx(ce.item(), rel=1e-5)
    assert out["loss_total"].item() == pytest.approx(ce.item() + want.item(), rel=1e-5)


def test_embedding_regulariser_equals_gao_brute_force():
    """Gao et al. (2019): (1 / V^2) sum_i sum_{j != i} cos(w_i, w_j) over the rows of W, and its gradient."""
    torch.manual_seed(2)
    w = (torch.randn(300, 24, dtype=torch.float64) + 0.3).requires_grad_()
    got = embedding_cosine_regulariser(w)
    w_ref = w.detach().clone().requires_grad_()
    u = torch.nn.functional.normalize(w_ref, dim=-1)
    c = u @ u.T
    brute = (c.sum() - c.diagonal().sum()) / 300**2
    assert got.item() == pytest.approx(brute.item(), rel=1e-5)
    got.backward()
    brute.backward()
    assert torch.allclose(w.grad.double(), w_ref.grad, rtol=1e-4, atol=1e-7)
    same = torch.ones(4, 3)  # all rows parallel: 12 ordered pairs of cosine 1, over 16
    assert embedding_cosine_regulariser(same).item() == pytest.approx(12 / 16)


@pytest.mark.parametrize("kind", ["hidden", "embedding"])
def test_cos_reg_kind_picks_what_is_regularised(kind):
    """hidden: the batch's final hidden states (the NITP paper's baseline); embedding: LM-head rows (Gao et al.)."""
    from nitp_train.models import build_model, resolve_preset

    model = build_model(resolve_preset("tiny-dense", {"vocab_size": 64}), seed=0)
    obj = NITPObjective(model, "ntp", {"projector": "none"}, cos_reg_weight=0.5, cos_reg_kind=kind)
    x = torch.randint(0, 64, (2, 12))
    out = obj(x, keep_last_hidden=True)
    h = out["last_hidden"].reshape(-1, out["last_hidden"].shape[-1])
    want = (
        mean_pairwise_cosine(h)
        if kind == "hidden"
        else embedding_cosine_regulariser(model.get_output_embeddings().weight)
    )
    assert out["loss_cos_reg"].item() == pytest.approx(want.item(), rel=1e-5)
    assert out["loss_total"].item() == pytest.approx(out["loss_ntp"].item() + 0.5 * want.item(), rel=1e-5)
    out["loss_total"].backward()
    assert model.get_output_embeddings().weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="cos_reg.kind"):
        NITPObjective(model, "ntp", {"projector": "none"}, cos_reg_weight=0.5, cos_reg_kind="rows")


def test_in_loop_geometry_spans_several_sequences_with_batch_size_one():
    """The paper's setting (batch_size 1): mean_cos is over pairs from different sequences, never one."""
    from nitp.geometry import anisotropy
    from nitp_train.metrics import GEOM_MIN_SEQUENCES, GeometrySample

    gs = GeometrySample(seq_len=64, seqs_per_step=1, world=1, geom_every=50, seed=3)
    assert gs.window_steps == GEOM_MIN_SEQUENCES
    steps = [s for s in range(1, 101) if gs.collecting(s)]
    assert steps == list(range(43, 51)) + list(range(93, 101))
    torch.manual_seed(0)
    last = None
    for i, step in enumerate(steps[:8]):
        h = torch.zeros(1, 64, 16)
        h[..., i] = 5.0  # sequence i points along axis i: within-sequence cosine ~1, across ~0
        last = h + 0.1 * torch.randn(1, 64, 16)
        gs.add(last, step)
    rows, groups = torch.cat(gs.rows), torch.cat(gs.groups)
    got = gs.result()
    assert got["geom_sequences"] == 8 and got["geom_tokens"] == 8 * gs.per_sequence and got["geom_steps"] == 8
    u = torch.nn.functional.normalize(rows.double(), dim=-1)
    across = groups[:, None] != groups[None, :]
    assert got["mean_cos"] == pytest.approx(float((u @ u.T)[across].mean()), abs=1e-9)
    assert abs(got["mean_cos"]) < 0.05
    assert anisotropy(last.reshape(64, 16)) > 0.9  # the old in-loop figure: all pairs of one sequence
    assert gs.rows == [] and gs.result() == {}  # cleared for the next window


def test_in_loop_geometry_samples_tokens_within_the_budget():
    from nitp_train.metrics import GEOM_TOKENS, GeometrySample

    gs = GeometrySample(seq_len=8192, seqs_per_step=8, world=8, geom_every=200)  # the 9B config
    assert gs.window_steps == 1 and gs.per_sequence * 8 * 8 == GEOM_TOKENS
    small = GeometrySample(seq_len=128, seqs_per_step=16, world=1, geom_every=20)  # tiny: every token
    assert small.window_steps == 1 and small.per_sequence == 128
    h = torch.randn(2, 8192, 4)
    gs.add(h, step=200)
    assert gs.rows[0].shape == (2 * gs.per_sequence, 4) and len(set(gs.groups[0].tolist())) == 2


def _geom_worker(rank: int, world: int, port: int, h, out_q) -> None:
    import torch.distributed as dist

    from nitp_train.metrics import GeometrySample
    from nitp_train.parallel import Dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    gs = GeometrySample(seq_len=h.shape[1], seqs_per_step=1, world=world, geom_every=10, rank=rank)
    for step in range(7, 11):  # window of 4 steps: 4 sequences per rank, 8 in all
        gs.add(h[rank * 4 + step - 7][None], step)
    got = gs.result(Dist(rank=rank, world=world))
    if rank == 0:
        out_q.put(got)
    dist.destroy_process_group()


@pytest.mark.slow
def test_in_loop_geometry_gathers_sequences_from_every_rank():
    """Two gloo ranks, batch_size 1: the figure spans both ranks' sequences."""
    import socket

    import torch.multiprocessing as mp

    torch.manual_seed(0)
    h = torch.zeros(8, 16, 8)
    for i in range(8):
        h[i, :, i] = 1.0  # one direction per sequence: across-sequence cosine 0, within 1
    h = h + 0.01 * torch.randn_like(h)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=_geom_worker, args=(r, 2, port, h, q)) for r in range(2)]
    for p in procs:
        p.start()
    got = q.get(timeout=120)
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert got["geom_sequences"] == 8 and got["geom_tokens"] == 8 * 16 and got["geom_steps"] == 4
    assert abs(got["mean_cos"]) < 0.01 and got["erank"] > 6
