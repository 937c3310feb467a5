"""nitp.streaming: streamed (and DDP-merged) states equal the in-memory computation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nitp import geometry as G
from nitp.streaming import (
    RIDGE_GRID,
    CrossMoments,
    MeanTrace,
    Moments,
    NormStats,
    RidgeSolver,
    UnitSums,
    linear_cka,
)

RTOL = 1e-9


def random_splits(n: int, seed: int) -> list[slice]:
    """Batches of random sizes, including size-1 batches."""
    rng = np.random.default_rng(seed)
    cuts = np.sort(rng.choice(np.arange(1, n), size=min(n - 1, 25), replace=False))
    cuts = np.concatenate([[0], cuts, [n]])
    return [slice(a, b) for a, b in zip(cuts[:-1], cuts[1:])]


def offset_data(n=3000, d=24, seed=0, offset=1e4):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(n, d)) * rng.lognormal(size=d) + offset).astype(np.float32)


@pytest.mark.parametrize("offset", [0.0, 1e4])
def test_streamed_moments_equal_in_memory(offset):
    x = offset_data(offset=offset)
    stream = Moments()
    for s in random_splits(len(x), seed=1):
        stream.update(torch.from_numpy(x[s]))
    whole = Moments().update(x)
    ref = np.cov(x.astype(np.float64).T, bias=True)
    np.testing.assert_allclose(stream.covariance(), ref, rtol=1e-9, atol=1e-12 * np.abs(ref).max())
    got, want = G.spectrum_metrics(stream.eigenvalues()), G.spectral_summary(x)
    for key in want:
        assert got[key] == pytest.approx(want[key], rel=RTOL), key
    np.testing.assert_allclose(stream.mean.numpy(), whole.mean.numpy(), rtol=1e-12)


def test_merge_is_order_free_and_chunking_inside_update_is_exact(monkeypatch):
    import nitp.streaming as S

    x = offset_data(n=1000, offset=50.0)
    a, b = Moments().update(x[:300]), Moments().update(x[300:])
    ab, ba = a.copy().merge(b), b.copy().merge(a)
    np.testing.assert_allclose(ab.covariance(), ba.covariance(), rtol=1e-12)
    monkeypatch.setattr(S, "CHUNK_ROWS", 7)  # force many chunks inside one update call
    chunked = Moments().update(x)
    np.testing.assert_allclose(chunked.covariance(), ab.covariance(), rtol=1e-10)


def test_cross_moments_and_mean_trace():
    rng = np.random.default_rng(3)
    a = rng.normal(size=(2000, 10)) + 100.0
    b = a[:, :6] @ rng.normal(size=(6, 7)) + rng.normal(size=(2000, 7)) - 40.0
    cross, trace = CrossMoments(), MeanTrace()
    for s in random_splits(2000, seed=4):
        cross.update(a[s], b[s])
        trace.update(b[s])
    ref = (a - a.mean(0)).T @ (b - b.mean(0))
    np.testing.assert_allclose(cross.cross.numpy(), ref, rtol=1e-9, atol=1e-9 * np.abs(ref).max())
    assert trace.trace == pytest.approx(float(((b - b.mean(0)) ** 2).sum()), rel=1e-11)
    with pytest.raises(ValueError):
        CrossMoments().update(a[:5], b[:4])


def test_streamed_unit_sums_with_groups_equal_in_memory():
    rng = np.random.default_rng(5)
    lengths = rng.integers(1, 40, size=60)
    groups = np.repeat(np.arange(60), lengths)
    x = rng.normal(size=(groups.size, 16)) + rng.normal(size=(60, 16))[groups]
    sums = UnitSums()
    start = 0
    for chunk in np.array_split(np.arange(60), 9):  # whole groups per call
        stop = start + int(lengths[chunk].sum())
        sums.update(x[start:stop], groups[start:stop])
        start = stop
    assert sums.anisotropy() == pytest.approx(G.anisotropy(x), rel=RTOL)
    assert sums.anisotropy_across() == pytest.approx(G.anisotropy(x, groups), rel=RTOL)
    assert sums.anisotropy_within() == pytest.approx(G.anisotropy_within(x, groups), rel=RTOL)
    with pytest.raises(ValueError, match="already seen"):
        sums.update(x[:3], groups[:3])


def test_streamed_norm_stats_equal_in_memory():
    rng = np.random.default_rng(6)
    x = rng.normal(size=(3000, 32))
    x[::250, 3] = 4000.0
    stream = NormStats()
    for s in random_splits(len(x), seed=7):
        stream.update(x[s])
    whole = G.norm_stats(x)
    got = stream.metrics()
    assert got["massive_activation_share"] == whole["massive_activation_share"] == pytest.approx(12 / 3000)
    assert got["mean_norm"] == pytest.approx(whole["mean_norm"], rel=1e-12)
    assert got["max_norm"] == whole["max_norm"]


# ----------------------------------------------------------------------------- ridge, CKA
def _regression(n=1500, da=12, db=5, seed=8):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(n, da)) * rng.lognormal(size=da) + 3.0
    b = a @ rng.normal(size=(da, db)) * 0.3 + rng.normal(size=(n, db)) * 2.0 + 1.0
    return a, b


def test_fixed_ridge_equals_scikit_learn():
    from sklearn.linear_model import Ridge
    from sklearn.metrics import r2_score

    a, b = _regression()
    fit, test = slice(0, 1000), slice(1000, None)
    ma, cross = Moments().update(a[fit]), CrossMoments().update(a[fit], b[fit])
    sol = RidgeSolver(ma).solve(cross, ridge=0.05)
    ref = Ridge(alpha=sol["alpha"], fit_intercept=True, solver="cholesky").fit(a[fit], b[fit])
    np.testing.assert_allclose(sol["W"].numpy(), ref.coef_.T, rtol=1e-8, atol=1e-10)
    pred = (torch.from_numpy(a[test]) - sol["mean_a"]) @ sol["W"] + sol["mean_b"]
    r2 = 1 - float(((b[test] - pred.numpy()) ** 2).sum()) / float(((b[test] - b[test].mean(0)) ** 2).sum())
    assert r2 == pytest.approx(
        r2_score(b[test], ref.predict(a[test]), multioutput="variance_weighted"), rel=1e-9
    )


def test_gcv_choice_equals_brute_force_hat_matrix():
    a, b = _regression(n=300, da=40, db=3, seed=9)  # few rows per parameter: GCV matters
    ma, cross, tr = Moments().update(a), CrossMoments().update(a, b), MeanTrace().update(b)
    sol = RidgeSolver(ma).solve(cross, trace_bb=tr.trace)
    ac = a - a.mean(0)
    n, d = a.shape
    scale = np.trace(ac.T @ ac) / d
    scores = []
    for r in RIDGE_GRID:
        hat = ac @ np.linalg.solve(ac.T @ ac + r * scale * np.eye(d), ac.T) + np.full((n, n), 1.0 / n)
        resid = b - hat @ b
        scores.append((np.sum(resid**2) / n) / (1 - np.trace(hat) / n) ** 2)
    best = int(np.argmin(scores))
    assert sol["ridge"] == RIDGE_GRID[best]
    assert sol["gcv"] == pytest.approx(scores[best], rel=1e-8)
    assert RIDGE_GRID[0] < sol["ridge"] < RIDGE_GRID[-1]  # an interior optimum: the grid is wide enough


def test_linear_cka_matches_formula_and_invariances():
    rng = np.random.default_rng(10)
    x = rng.normal(size=(800, 9)) + 4
    y = x @ rng.normal(size=(9, 6)) + rng.normal(size=(800, 6))
    q, _ = np.linalg.qr(rng.normal(size=(9, 9)))

    def cka(p, r):
        mp, mr, c = Moments(), Moments(), CrossMoments()
        for s in random_splits(len(p), seed=11):
            mp.update(p[s]), mr.update(r[s]), c.update(p[s], r[s])
        return linear_cka(mp, mr, c)

    xc, yc = x - x.mean(0), y - y.mean(0)
    ref = np.linalg.norm(xc.T @ yc) ** 2 / (np.linalg.norm(xc.T @ xc) * np.linalg.norm(yc.T @ yc))
    assert cka(x, y) == pytest.approx(ref, rel=1e-9)
    assert cka(x, 3.0 * x @ q + 7.0) == pytest.approx(1.0, rel=1e-9)  # rotation, scale, shift
    assert cka(x, rng.normal(size=(800, 6))) < 0.05


# ----------------------------------------------------------------------------- DDP
def _ddp_worker(rank: int, world: int, port: int, x: np.ndarray, groups: np.ndarray, out_q) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    mine = np.isin(groups, np.arange(rank, groups.max() + 1, world))  # whole groups per rank
    xs, gs = x[mine], groups[mine]
    m, u, nrm = Moments().update(xs), UnitSums().update(xs, gs), NormStats().update(xs)
    c = CrossMoments().update(xs, xs[:, :3] * 2.0)
    m.all_reduce_(), u.all_reduce_(), nrm.all_reduce_(), c.all_reduce_()
    if rank == 0:
        out_q.put(
            {
                "cov": m.covariance(),
                "count": m.count,
                "aniso": u.anisotropy(),
                "across": u.anisotropy_across(),
                "norms": nrm.metrics(),
                "cross": c.cross.numpy(),
            }
        )
    dist.destroy_process_group()


@pytest.mark.slow  # seconds: out of the fast subset
def test_all_reduce_across_ranks_equals_one_process():
    import socket

    import torch.multiprocessing as mp

    rng = np.random.default_rng(12)
    groups = np.repeat(np.arange(30), 20)
    x = rng.normal(size=(600, 8)) + rng.normal(size=(30, 8))[groups] + 20.0
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=_ddp_worker, args=(r, 2, port, x, groups, q)) for r in range(2)]
    for p in procs:
        p.start()
    got = q.get(timeout=120)
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert got["count"] == 600
    np.testing.assert_allclose(got["cov"], np.cov(x.T, bias=True), rtol=1e-10)
    assert got["aniso"] == pytest.approx(G.anisotropy(x), rel=1e-10)
    assert got["across"] == pytest.approx(G.anisotropy(x, groups), rel=1e-10)
    assert got["norms"] == pytest.approx(G.norm_stats(x), rel=1e-12)
    ref = (x - x.mean(0)).T @ (2.0 * (x[:, :3] - x[:, :3].mean(0)))
    np.testing.assert_allclose(got["cross"], ref, rtol=1e-10)


def test_document_sums_across_batches_equal_the_grouped_anisotropy():
    """Documents cut into sequences that land in different batches: still exact across / within documents."""
    import torch

    from analysis.layers import SpanningGroupSums
    from nitp.geometry import anisotropy, anisotropy_within
    from nitp.streaming import UnitSums

    rng = np.random.default_rng(0)
    sizes = [7, 30, 3, 19, 11]  # tokens per document, contiguous in the stream
    docs = np.repeat(np.arange(len(sizes)), sizes)
    x = rng.normal(size=(len(docs), 8)) + rng.normal(size=(len(sizes), 8))[docs]  # a direction per document
    u = torch.from_numpy(x / np.linalg.norm(x, axis=1, keepdims=True))
    units, by_doc = UnitSums(), SpanningGroupSums()
    for lo, hi in [(0, 5), (5, 20), (20, 21), (21, 50), (50, len(docs))]:  # cuts inside documents
        units.add_units(u[lo:hi])
        by_doc.add_units(u[lo:hi], torch.from_numpy(docs[lo:hi]))
    assert by_doc.across(units) == pytest.approx(anisotropy(x, groups=docs), rel=1e-12)
    assert by_doc.within(units) == pytest.approx(anisotropy_within(x, docs), rel=1e-12)
    with pytest.raises(ValueError, match="contiguous"):
        by_doc.add_units(u[:2], torch.tensor([0, 0]))  # document 0 was closed long ago


def test_paper_depth_rule_is_named_and_the_same_for_ntp_and_nitp():
    from analysis.layers import paper_depth_rule

    rows = [{"layer": 5, "effective_rank_covariance": 1.2, "temporal_self_similarity": 0.5}]
    ntp = paper_depth_rule(rows, 24)
    nitp = paper_depth_rule(rows, 24, trained_target=4)
    assert ntp["layer"] == nitp["layer"] == 5  # nitp.layers.default_target_layer(24)
    assert "paper's depth rule" in ntp["reason"] and "not chosen from these statistics" in ntp["reason"]
    assert "collapsed" in ntp["reason"]  # what was measured is a note, not a different layer
    assert "trained with target layer 4" in nitp["reason"] and "trained" not in ntp["reason"]
