"""nitp.geometry: every metric against a brute-force float64 numpy computation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nitp import geometry as G

RTOL = 1e-9


# ----------------------------------------------------------------------------- references
def brute_spectrum(x: np.ndarray) -> dict:
    """Straight from the definitions: SVD of the centred float64 data (no covariance matrix)."""
    x = np.asarray(x, dtype=np.float64)
    xc = x - x.mean(0)
    sigma = np.linalg.svd(xc, compute_uv=False)
    sigma = sigma[sigma > sigma.max() * max(xc.shape) * np.finfo(np.float64).eps]
    lam = sigma**2 / x.shape[0]

    def erank(w):
        p = w / w.sum()
        return float(np.exp(-np.sum(p * np.log(p))))

    return {
        "effective_rank_covariance": erank(lam),
        "effective_rank_singular": erank(sigma),
        "participation_ratio": float(lam.sum() ** 2 / np.sum(lam**2)),
        "stable_rank": float(lam.sum() / lam.max()),
        "top_eigenvalue_share": float(lam.max() / lam.sum()),
    }


def brute_pair_cos(x: np.ndarray, groups=None, same: bool = False) -> float:
    """Mean cosine over every ordered pair i != j (of different / the same group), O(N^2)."""
    x = np.asarray(x, dtype=np.float64)
    norms = np.linalg.norm(x, axis=1)
    keep = norms > 0
    u = x[keep] / norms[keep, None]
    sim = u @ u.T
    pair = ~np.eye(len(u), dtype=bool)
    if groups is not None:
        g = np.asarray(groups)[keep]
        pair &= (g[:, None] == g[None, :]) if same else (g[:, None] != g[None, :])
    return float(sim[pair].mean())


def rotated(sigmas: np.ndarray, n: int, seed: int, offset: float = 0.0) -> np.ndarray:
    """n rows with the given principal standard deviations, randomly rotated, plus an offset."""
    rng = np.random.default_rng(seed)
    d = sigmas.size
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    z = rng.normal(size=(n, d))
    z = (z - z.mean(0)) / z.std(0)
    return z * sigmas @ q.T + offset


CASES = {
    "gaussian": lambda: (
        np.random.default_rng(0).normal(size=(2000, 48)) @ np.random.default_rng(1).normal(size=(48, 48))
    ),
    "ill_conditioned": lambda: rotated(np.logspace(0, -6, 32), 3000, seed=2),
    "large_offset": lambda: rotated(np.linspace(1.0, 0.05, 32), 3000, seed=3, offset=3e4).astype(np.float32),
    "fewer_rows_than_dims": lambda: np.random.default_rng(4).normal(size=(40, 96)),
    "low_rank": lambda: (
        np.random.default_rng(5).normal(size=(500, 6)) @ np.random.default_rng(6).normal(size=(6, 64))
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_spectral_metrics_match_brute_force(case):
    x = CASES[case]()
    ref = brute_spectrum(x)
    got = G.spectral_summary(x)
    for key, want in ref.items():
        assert got[key] == pytest.approx(want, rel=RTOL), key
    assert G.effective_rank(x) == pytest.approx(ref["effective_rank_covariance"], rel=RTOL)
    assert G.effective_rank(x, "singular") == pytest.approx(ref["effective_rank_singular"], rel=RTOL)
    assert G.participation_ratio(x) == pytest.approx(ref["participation_ratio"], rel=RTOL)
    assert G.stable_rank(x) == pytest.approx(ref["stable_rank"], rel=RTOL)
    assert G.top_eigenvalue_share(x) == pytest.approx(ref["top_eigenvalue_share"], rel=RTOL)


def test_large_offset_defeats_float32_accumulation_but_not_ours():
    """The same float32 data: E[x x^T] - mu mu^T in float32 loses the covariance; we do not."""
    x = CASES["large_offset"]()
    t = torch.from_numpy(x)
    mu = t.mean(0)
    naive_cov = (t.T @ t) / t.shape[0] - torch.outer(mu, mu)  # float32 throughout
    lam = torch.linalg.eigvalsh(naive_cov.double()).clamp_min(0).numpy()
    p = lam[lam > 0] / lam.sum()
    naive = float(np.exp(-np.sum(p * np.log(p))))
    exact = brute_spectrum(x)["effective_rank_covariance"]
    assert abs(naive - exact) / exact > 0.1, "the input is meant to break float32 accumulation"
    assert G.effective_rank(t) == pytest.approx(exact, rel=RTOL)


def test_rank_is_capped_by_rows_and_singular_never_smaller():
    x = CASES["fewer_rows_than_dims"]()
    assert G.effective_rank(x, "singular") <= x.shape[0] - 1 + 1e-9
    lam = G.covariance_eigenvalues(x)
    assert int((lam > 0).sum()) == x.shape[0] - 1  # centring removes one direction
    for seed in range(20):
        rng = np.random.default_rng(seed)
        y = rng.normal(size=(300, 24)) * rng.lognormal(sigma=2.0, size=24)
        assert G.effective_rank(y) <= G.effective_rank(y, "singular") + 1e-12


def test_white_noise_is_near_full_rank_and_one_direction_is_rank_one():
    rng = np.random.default_rng(7)
    white = rng.normal(size=(20000, 16))
    assert 15.9 < G.effective_rank(white) <= 16
    line = rng.normal(size=(500, 1)) * rng.normal(size=(1, 16)) + 5.0
    assert G.effective_rank(line) == pytest.approx(1.0, abs=1e-9)
    assert G.top_eigenvalue_share(line) == pytest.approx(1.0, abs=1e-12)
    assert G.effective_rank(np.ones((10, 4))) == 0.0  # no variance at all


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_torch_tensors_of_any_dtype_give_the_numpy_answer(dtype):
    x = torch.randn(700, 40, generator=torch.Generator().manual_seed(0)).to(dtype)
    ref_x = x.double().numpy()
    assert G.effective_rank(x) == pytest.approx(brute_spectrum(ref_x)["effective_rank_covariance"], rel=RTOL)
    assert G.anisotropy(x) == pytest.approx(brute_pair_cos(ref_x), rel=1e-9, abs=1e-12)


# ----------------------------------------------------------------------------- anisotropy
def _clustered(seed: int = 0):
    rng = np.random.default_rng(seed)
    groups = rng.integers(0, 7, size=400)
    centres = rng.normal(size=(7, 24)) * 2
    x = centres[groups] + rng.normal(size=(400, 24)) + 0.5
    x[13] = 0.0  # a zero vector has no direction
    return x, groups


def test_anisotropy_exact_equals_all_pairs():
    x, groups = _clustered()
    assert G.anisotropy(x) == pytest.approx(brute_pair_cos(x), rel=1e-10)
    assert G.anisotropy(x, groups) == pytest.approx(brute_pair_cos(x, groups), rel=1e-10)
    assert G.anisotropy_within(x, groups) == pytest.approx(brute_pair_cos(x, groups, same=True), rel=1e-10)
    # clusters: within-group pairs are more similar than pairs across groups
    assert G.anisotropy_within(x, groups) > G.anisotropy(x) > G.anisotropy(x, groups)


def test_anisotropy_on_torch_with_many_groups_uses_the_large_path():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(3000, 8)) + 1.0
    groups = np.arange(3000) // 2  # 1500 groups: index_add path
    t = torch.from_numpy(x)
    assert G.anisotropy(t, torch.from_numpy(groups)) == pytest.approx(brute_pair_cos(x, groups), rel=1e-10)


def test_sampled_estimator_uses_seeded_pairs_and_estimates_the_exact_value():
    x, groups = _clustered(2)
    i, j = G.sample_pairs(len(x), 5000, groups, seed=3)
    assert np.all(groups[i] != groups[j])
    i2, j2 = G.sample_pairs(len(x), 5000, groups, seed=3)
    assert np.array_equal(i, i2) and np.array_equal(j, j2)
    u = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-300)
    cos = np.sum(u[i] * u[j], axis=1)
    got = G.anisotropy_sampled(x, groups, n_pairs=5000, seed=3)
    assert got == pytest.approx(cos.mean(), rel=1e-12)
    stderr = cos.std() / np.sqrt(cos.size)
    assert abs(got - G.anisotropy(x, groups)) < 5 * stderr


def test_anisotropy_rejects_what_has_no_pairs():
    with pytest.raises(ValueError):
        G.anisotropy(np.ones((1, 3)))
    with pytest.raises(ValueError):
        G.anisotropy(np.random.default_rng(0).normal(size=(5, 3)), groups=np.zeros(5))
    with pytest.raises(ValueError):
        G.effective_rank(np.ones(5))
    with pytest.raises(ValueError):
        G.effective_rank(np.ones((5, 2)), spectrum="eigen")


# ----------------------------------------------------------------------------- norms
def test_norm_stats_and_massive_activations():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1000, 64))  # median |x| ~ 0.67 -> threshold 674.5
    x[[3, 500, 998], 5] = 5000.0  # massive
    x[[10, 11], 7] = 300.0  # large but under 1000 x median
    got = G.norm_stats(x)
    norms = np.linalg.norm(x, axis=1)
    assert got["mean_norm"] == pytest.approx(norms.mean(), rel=1e-12)
    assert got["max_norm"] == pytest.approx(norms.max(), rel=1e-12)
    assert got["massive_activation_share"] == pytest.approx(3 / 1000)
    small = rng.normal(size=(200, 8)) * 1e-3  # 1000 x median < 100: the absolute floor applies
    small[0, 0] = 50.0
    assert G.norm_stats(small)["massive_activation_share"] == 0.0
    small[0, 0] = 150.0
    assert G.norm_stats(small)["massive_activation_share"] == pytest.approx(1 / 200)
