"""The diagnostics of issue 27: the gradient probe, the fixed held-out batch, matched-CE curves."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from tests.helpers import builtin_prepared_dir, make_tiny_run


def _tiny_objective(objective: str = "nitp", seed: int = 0):
    from nitp_train.loss import NITPObjective
    from nitp_train.models import build_model, resolve_preset

    torch.manual_seed(seed)
    cfg = {**resolve_preset("tiny-dense"), "hidden_size": 32, "num_hidden_layers": 3, "intermediate_size": 64}
    model = build_model(cfg, seed=seed)
    nitp = {
        "target_layer": 1,
        "lambda": 1.0,
        "shift": 1,
        "loss": "cosine",
        "stop_grad": True,
        "projector": "swiglu",
    }
    return NITPObjective(model, objective, nitp)


def _by_hand(objective, tokens, docs, weight):
    """Gradients of CE and of weight x NITP per parameter, from two separate backward passes."""
    grads = {}
    for term in ("loss_ntp", "loss_nitp"):
        objective.zero_grad(set_to_none=True)
        out = objective(tokens, nitp_weight=weight, document_ids=docs)
        ((weight if term == "loss_nitp" else 1.0) * out[term]).backward()
        grads[term] = {
            n: (p.grad.clone() if p.grad is not None else torch.zeros_like(p))
            for n, p in objective.model.named_parameters()
        }
    objective.zero_grad(set_to_none=True)
    return grads


def test_probe_equals_two_backward_passes():
    from nitp_train.probe import gradient_probe

    obj = _tiny_objective()
    gen = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, 4096, (4, 16), generator=gen)
    docs = torch.zeros(4, 16, dtype=torch.int64)
    docs[:, 9:] = 1  # two documents per row: the pair rule applies
    weight = 0.3
    row = gradient_probe(obj, (tokens.numpy(), docs.numpy()), torch.device("cpu"), weight)
    hand = _by_hand(obj, tokens, docs, weight)
    assert all(p.grad is None for p in obj.parameters())  # the probe wrote no .grad

    def flat(term, prefix):
        return torch.cat([g.reshape(-1) for n, g in hand[term].items() if n.startswith(prefix)])

    block1 = "model.layers.0."  # block k = model.layers[k-1]
    for term, kind in (("loss_ntp", "ce"), ("loss_nitp", "nitp")):
        assert row[f"probe_grad_{kind}_block1"] == pytest.approx(float(flat(term, block1).norm()), rel=1e-4)
        assert row[f"probe_grad_{kind}_block3"] == pytest.approx(
            float(flat(term, "model.layers.2.").norm()), rel=1e-4
        )
    a, b = flat("loss_ntp", block1), flat("loss_nitp", block1)
    assert row["probe_cos_block1"] == pytest.approx(
        float(torch.nn.functional.cosine_similarity(a, b, dim=0)), abs=1e-4
    )
    assert row["probe_ratio_block1"] == pytest.approx(float(b.norm() / a.norm()), rel=1e-4)
    # the stop-gradient target gets no NITP gradient below block 1 except through the input path
    assert row["probe_grad_nitp_block3"] > 0 and 0 < row["nitp_grad_share"] < 1


def test_probe_of_ntp_logs_ce_only():
    from nitp_train.probe import gradient_probe

    obj = _tiny_objective("ntp")
    tokens = torch.randint(0, 4096, (2, 8), generator=torch.Generator().manual_seed(0))
    row = gradient_probe(obj, (tokens.numpy(), np.zeros((2, 8), dtype=np.int64)), torch.device("cpu"), 0.0)
    assert row["probe_grad_ce"] > 0 and not any(k.startswith(("probe_grad_nitp", "probe_cos")) for k in row)


def test_grad_share_is_the_dropin_definition():
    from nitp_train.dropin.core import NITPStats
    from nitp_train.probe import grad_share

    stats = NITPStats()
    stats.sums = {"grad_ntp": torch.tensor(3.0), "grad_nitp": torch.tensor(1.0)}
    assert stats.read()["nitp_grad_share"] == grad_share(3.0, 1.0) == 0.25


def test_heldout_batch_is_fixed_and_spread_over_validation():
    from nitp_train.data import TokenShards
    from nitp_train.probe import heldout_batch

    shards = TokenShards(builtin_prepared_dir())
    a, b = heldout_batch(shards, 64), heldout_batch(shards, 64)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert a[0].shape[0] >= 8 and len(np.unique(a[1])) > 1  # several held-out documents
    assert np.isin(a[0][0], np.asarray(shards.val)).all()


@pytest.mark.slow
def test_heldout_geometry_same_tokens_in_every_run_and_probe_changes_nothing(tmp_path):
    """Two runs (NTP and NITP) log the same held-out batch id at every measured
    step; a run with the probe on ends with the same weights as one without."""
    from safetensors.torch import load_file

    sets = ["log.geom_every=2", "log.probe_every=2", "checkpoint.keep_last=1"]
    a = make_tiny_run(tmp_path / "a", "nitp", steps=4, extra=sets)
    b = make_tiny_run(tmp_path / "b", "ntp", steps=4, extra=sets)
    c = make_tiny_run(tmp_path / "c", "nitp", steps=4, extra=["log.geom_every=0", "log.probe_every=0"])
    ids = set()
    for run in (a, b):
        rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        geom = [r for r in rows if "erank" in r]
        assert [r["step"] for r in geom] == [2, 4]
        ids |= {r["geom_batch"] for r in geom}
        assert all(math.isfinite(r["probe_grad_ce"]) for r in rows if r["step"] in (2, 4))
    assert len(ids) == 1
    nitp_rows = [json.loads(x) for x in (a / "metrics.jsonl").read_text().splitlines()]
    assert any("probe_cos_block1" in r and "proj_erank" in r for r in nitp_rows)
    # the regime report reads both runs: premise rows, the matched table, the figures
    from reports.regime import markdown_sections, regime_report

    report = regime_report([b, a], tmp_path / "regime").read_text()
    assert "| b | 128 x 4 |" in report and "| a | 128 x 4 |" in report and "NITP λ=1" in report
    assert (tmp_path / "regime" / "figures" / "geometry.png").stat().st_size > 10_000
    heads = [h for h, _ in markdown_sections([a, b])]
    assert heads == ["Geometry at matched step and matched validation CE", "Gradient probe"]
    # nitp-geom's --corpus auto: the runs' own held-out documents, decoded from their prepared data
    from analysis.hidden import resolve_corpus
    from nitp.runs import read_run_config
    from nitp_train.data import validation_documents

    path = resolve_corpus("auto", [a, b / "checkpoints" / "step_000004"])
    texts = [json.loads(line)["text"] for line in open(path)]
    want = [d.strip() for d in validation_documents(read_run_config(a)["data"]) if d.strip()]
    assert texts == want
    assert resolve_corpus("auto", [a, tmp_path]) == "builtin" and resolve_corpus("x.txt", [a]) == "x.txt"
    wa = load_file(a / "checkpoints" / "step_000004" / "model.safetensors")
    wc = load_file(c / "checkpoints" / "step_000004" / "model.safetensors")
    assert all(torch.equal(wa[k], wc[k]) for k in wa)


def test_matched_ce_interpolation_on_synthetic_curves():
    from reports.matched import Curves, at_level, matched, paired_over_seeds, step_at_ce

    steps = list(range(0, 1001, 100))
    # A: CE 6 - 0.003 t; B lags by 100 steps: the same curve shifted; erank = 10 + CE-progress
    ce_a = [6 - 0.003 * s for s in steps]
    ce_b = [6 - 0.003 * max(s - 100, 0) for s in steps]
    rank = {"erank": (steps, [10 + 0.01 * s for s in steps])}
    rank_b = {"erank": (steps, [10 + 0.01 * max(s - 100, 0) for s in steps])}
    a, b = Curves(steps, ce_a, rank), Curves(steps, ce_b, rank_b)
    assert step_at_ce(a, 4.5) == pytest.approx(500.0)
    assert step_at_ce(b, 4.5) == pytest.approx(600.0)
    assert at_level(a, "erank", 4.5) == pytest.approx(15.0)
    m = matched(a, b, "erank")
    assert m["delta_step"] == pytest.approx(-1.0)  # B is 100 steps behind at step 1000
    assert m["delta_ce"] == pytest.approx(0.0, abs=1e-9)  # at equal CE the geometry is equal
    assert m["explained"] == pytest.approx(1.0)
    # a curve that never reaches the level gives None, a running minimum ignores a bump
    assert step_at_ce(Curves([0, 100], [6.0, 5.0]), 4.0) is None
    assert step_at_ce(Curves([0, 100, 200, 300], [6.0, 5.0, 5.5, 4.0]), 5.0) == pytest.approx(100.0)
    s = paired_over_seeds([(a, b), (a, b)], "erank")
    assert s["n"] == 2 and s["delta_ce_ci"] is None  # no spread: no interval
