"""Geometry beyond the anchors: each metric against an independent computation with a known answer.

Similarity maps (linear CKA, debiased CKA, Procrustes), intrinsic dimension, alpha-ReQ,
Diff-eRank, prompt / dataset entropy, curvature and the chunked logit lens.
"""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
import torch

from nitp import geometry as G
from nitp import intrinsic as I
from nitp import streaming as S
from nitp.errors import UserError


def rotation(d: int, seed: int) -> np.ndarray:
    return np.linalg.qr(np.random.default_rng(seed).normal(size=(d, d)))[0]


def streamed_pair(a: np.ndarray, b: np.ndarray, seed: int = 0) -> S.HSICMoments:
    """HSICMoments of (a, b) fed in random batch sizes, merged from two halves."""
    rng = np.random.default_rng(seed)
    cut = a.shape[0] // 2
    halves = []
    for lo, hi in ((0, cut), (cut, a.shape[0])):
        state, i = S.HSICMoments(), lo
        while i < hi:
            j = min(hi, i + int(rng.integers(1, 40)))
            state.update(a[i:j], b[i:j])
            i = j
        halves.append(state)
    return halves[0].merge(halves[1])


def song_unbiased_hsic(x: np.ndarray, y: np.ndarray) -> float:
    """Song et al. (2012), eq. 5, on the RAW (uncentred) n x n Gram matrices.

    HSIC_1 = [tr(K~ L~) + (1^T K~ 1)(1^T L~ 1) / ((n-1)(n-2)) - 2/(n-2) 1^T K~ L~ 1] / (n(n-3)),
    K~ = K with its diagonal set to 0.
    """
    n = x.shape[0]
    k, l_ = x @ x.T, y @ y.T
    np.fill_diagonal(k, 0.0)
    np.fill_diagonal(l_, 0.0)
    one = np.ones(n)
    return (
        np.trace(k @ l_)
        + (one @ k @ one) * (one @ l_ @ one) / ((n - 1) * (n - 2))
        - 2.0 / (n - 2) * (one @ k @ l_ @ one)
    ) / (n * (n - 3))


def brute_cka(x: np.ndarray, y: np.ndarray, debiased: bool) -> float:
    if debiased:
        hsic = song_unbiased_hsic
    else:

        def hsic(p, q):
            n = p.shape[0]
            h = np.eye(n) - np.ones((n, n)) / n
            return np.trace(p @ p.T @ h @ q @ q.T @ h)

    return hsic(x, y) / math.sqrt(hsic(x, x) * hsic(y, y))


def cka_of(x, y, debiased=False) -> float:
    return S.cka_from_hsic(streamed_pair(x, x), streamed_pair(y, y), streamed_pair(x, y), debiased=debiased)


# ----------------------------------------------------------------------------- HSIC / CKA
def test_streamed_hsic_state_equals_numpy_sums_under_a_large_offset():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 7)) + 1e4
    y = rng.normal(size=(300, 5)) * 3 - 2e3
    state = streamed_pair(x, y)
    xc, yc = x - x.mean(0), y - y.mean(0)
    rx, ry = (xc * xc).sum(1), (yc * yc).sum(1)
    np.testing.assert_allclose(state.cross.numpy(), xc.T @ yc, rtol=1e-9, atol=1e-7)
    assert state.quartic == pytest.approx(float(rx @ ry), rel=1e-9)
    assert state.trace_a == pytest.approx(float(rx.sum()), rel=1e-9)
    np.testing.assert_allclose(state.sq_a_b.numpy(), yc.T @ rx, rtol=1e-7, atol=1e-5)
    np.testing.assert_allclose(state.sq_b_a.numpy(), xc.T @ ry, rtol=1e-7, atol=1e-5)


def test_debiased_hsic_equals_song_et_al_on_raw_gram_matrices():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(30, 6)) + 5.0
    y = x[:, :4] @ rng.normal(size=(4, 9)) + rng.normal(size=(30, 9)) - 3.0
    ours = S.linear_hsic(streamed_pair(x, y), debiased=True)
    assert ours == pytest.approx(song_unbiased_hsic(x, y), rel=1e-9)


@pytest.mark.parametrize("debiased", [False, True])
def test_cka_equals_brute_force_from_gram_matrices(debiased):
    rng = np.random.default_rng(2)
    x = rng.normal(size=(25, 12))
    y = np.tanh(x @ rng.normal(size=(12, 8))) + 0.5 * rng.normal(size=(25, 8))
    assert cka_of(x, y, debiased) == pytest.approx(brute_cka(x, y, debiased), rel=1e-9)


def test_biased_cka_from_hsic_equals_the_existing_linear_cka():
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(200, 6)), rng.normal(size=(200, 4))
    existing = S.linear_cka(S.Moments().update(x), S.Moments().update(y), S.CrossMoments().update(x, y))
    assert cka_of(x, y) == pytest.approx(existing, rel=1e-9)


@pytest.mark.parametrize("debiased", [False, True])
def test_cka_of_a_rotated_scaled_shifted_copy_is_one(debiased):
    x = np.random.default_rng(4).normal(size=(60, 16))
    y = 3.0 * x @ rotation(16, 5) + 7.0
    assert cka_of(x, y, debiased) == pytest.approx(1.0, abs=1e-10)


def test_debiased_cka_of_independent_noise_is_near_zero_where_biased_is_not():
    rng = np.random.default_rng(6)
    biased, debiased = [], []
    for _ in range(5):
        x, y = rng.normal(size=(40, 200)), rng.normal(size=(40, 200))
        biased.append(cka_of(x, y))
        debiased.append(cka_of(x, y, debiased=True))
    assert min(biased) > 0.5  # n = 40 << width 200: the biased estimator sees structure
    assert max(abs(v) for v in debiased) < 0.15  # sd ~ 1 / n
    assert abs(np.mean(debiased)) < np.mean(biased) / 10


# ----------------------------------------------------------------------------- Procrustes
def scipy_procrustes_sq(x: np.ndarray, y: np.ndarray) -> float:
    """min_R ||X R - Y||_F^2 by scipy, on centred, unit-Frobenius, zero-padded rows."""
    from scipy.linalg import orthogonal_procrustes

    width = max(x.shape[1], y.shape[1])

    def prep(a):
        a = a - a.mean(0)
        a = a / np.linalg.norm(a)
        return np.pad(a, ((0, 0), (0, width - a.shape[1])))

    a, b = prep(x), prep(y)
    r, _ = orthogonal_procrustes(a, b)
    return float(np.linalg.norm(a @ r - b) ** 2)


def test_procrustes_equals_scipy_orthogonal_procrustes():
    rng = np.random.default_rng(7)
    x = rng.normal(size=(150, 10)) + 2.0
    y = x[:, :6] @ rng.normal(size=(6, 7)) + rng.normal(size=(150, 7))
    expected = scipy_procrustes_sq(x, y)
    assert 0.05 < expected < 2
    from_moments = S.procrustes_distance(
        S.Moments().update(x), S.Moments().update(y), S.CrossMoments().update(x, y)
    )
    assert from_moments == pytest.approx(expected, rel=1e-9)
    assert S.similarity_map([x], [y])["procrustes"][0, 0] == pytest.approx(expected, rel=1e-9)


def test_procrustes_of_a_rotated_copy_is_zero():
    x = np.random.default_rng(8).normal(size=(80, 12))
    maps = S.similarity_map([x], [2.0 * x @ rotation(12, 9) - 1.0])
    assert maps["procrustes"][0, 0] == pytest.approx(0.0, abs=1e-9)


# ----------------------------------------------------------------------------- maps
def test_similarity_map_entries_equal_the_pairwise_measures():
    rng = np.random.default_rng(10)
    a = [rng.normal(size=(50, 6)) for _ in range(3)]
    b = [a[0] @ rotation(6, 11), rng.normal(size=(50, 4))]
    maps = S.similarity_map(a, b)
    assert set(maps) == {"cka", "cka_debiased", "procrustes"}
    assert maps["cka"].shape == (3, 2)
    for i in range(3):
        for j in range(2):
            assert maps["cka"][i, j] == pytest.approx(brute_cka(a[i], b[j], False), rel=1e-9)
            assert maps["cka_debiased"][i, j] == pytest.approx(brute_cka(a[i], b[j], True), rel=1e-9)
            assert maps["procrustes"][i, j] == pytest.approx(scipy_procrustes_sq(a[i], b[j]), abs=1e-9)
    assert maps["cka"][0, 0] == pytest.approx(1.0)


def test_self_map_is_symmetric_with_unit_diagonal():
    rng = np.random.default_rng(12)
    h0 = rng.normal(size=(64, 8))
    layers = [h0, np.tanh(h0 @ rng.normal(size=(8, 8))), rng.normal(size=(64, 5))]
    maps = S.similarity_map(layers)
    for name in ("cka", "cka_debiased", "procrustes"):
        np.testing.assert_allclose(maps[name], maps[name].T, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(np.diag(maps["cka"]), 1.0)
    np.testing.assert_allclose(np.diag(maps["procrustes"]), 0.0, atol=1e-9)
    assert maps["cka_debiased"][0, 2] == pytest.approx(brute_cka(layers[0], layers[2], True), rel=1e-9)


def test_similarity_map_refuses_layers_of_different_tokens():
    with pytest.raises(ValueError, match="same tokens"):
        S.similarity_map([np.zeros((10, 3))], [np.zeros((11, 3))])


# ----------------------------------------------------------------------------- intrinsic dimension
def subspace_points(n: int, d: int, ambient: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d)) @ rng.normal(size=(d, ambient)) + 3.0


def test_twonn_and_gride_of_a_5d_subspace_of_r64_are_near_5():
    out = I.intrinsic_dimension(subspace_points(1500, 5, 64, 0))
    assert out["twonn"] == pytest.approx(5, rel=0.15)
    assert out["gride"] == pytest.approx(5, rel=0.15)
    assert out["n_used"] == 1500 and out["n_duplicates"] == 0


def test_mle_estimator_sees_the_dimension_too():
    out = I.intrinsic_dimension(subspace_points(1000, 3, 32, 1), estimators=("mle",))
    assert out["mle"] == pytest.approx(3, rel=0.15)
    assert "twonn" not in out


def test_duplicates_are_dropped_counted_and_do_not_change_the_estimate():
    x = subspace_points(1200, 5, 64, 2)
    clean = I.intrinsic_dimension(x)
    repeated = np.concatenate([x, x[:400], x[:400], x[:50]])  # like repeated tokens at layer 0
    out = I.intrinsic_dimension(repeated)
    assert out["n_duplicates"] == 850 and out["n_input"] == 2050 and out["n_used"] == 1200
    assert out["twonn"] == pytest.approx(clean["twonn"], rel=1e-12)
    assert out["gride"] == pytest.approx(clean["gride"], rel=1e-12)
    assert "850 exact duplicates" in out["sample"]


def test_subsample_is_seeded_and_bounded():
    x = subspace_points(900, 4, 16, 3)
    a = I.intrinsic_dimension(x, max_points=500, seed=1)
    b = I.intrinsic_dimension(x, max_points=500, seed=1)
    c = I.intrinsic_dimension(x, max_points=500, seed=2)
    assert a["n_used"] == 500 and a["twonn"] == b["twonn"] and a["twonn"] != c["twonn"]


def test_intrinsic_dimension_bad_inputs_are_user_errors():
    with pytest.raises(UserError, match="distinct rows"):
        I.intrinsic_dimension(np.ones((100, 8)))
    with pytest.raises(UserError, match="NaN"):
        I.intrinsic_dimension(np.full((20, 4), np.nan))
    with pytest.raises(UserError, match="estimator"):
        I.intrinsic_dimension(subspace_points(50, 2, 4, 0), estimators=("pca",))


def test_importing_intrinsic_does_not_import_skdim():
    code = "import sys, nitp.intrinsic; assert 'skdim' not in sys.modules and 'numba' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


# ----------------------------------------------------------------------------- alpha-ReQ
@pytest.mark.parametrize("weighted", [True, False])
@pytest.mark.parametrize("alpha", [0.7, 1.0, 2.3])
def test_alpha_req_of_an_exact_power_law(alpha, weighted):
    k = np.arange(1, 257, dtype=np.float64)
    out = G.alpha_req(5.0 * k**-alpha, weighted=weighted)
    assert out["alpha"] == pytest.approx(alpha, abs=1e-9)
    assert out["fit_range"] == (6, 100) and out["n_points"] == 95
    assert out["r2"] == pytest.approx(1.0, abs=1e-12)


def test_alpha_req_fits_only_the_stated_range():
    k = np.arange(1, 201, dtype=np.float64)
    lam = np.where(k <= 20, k**-0.5, 20.0**-0.5 * (k / 20) ** -1.5)  # the slope changes at k = 20
    shuffled = np.random.default_rng(0).permutation(lam)  # any order: sorted inside
    assert G.alpha_req(shuffled, fit_range=(30, 150))["alpha"] == pytest.approx(1.5, abs=1e-9)
    assert G.alpha_req(shuffled, fit_range=(2, 15))["alpha"] == pytest.approx(0.5, abs=1e-9)
    assert 0.5 + 0.05 < G.alpha_req(lam, fit_range=(2, 150))["alpha"] < 1.5


def test_alpha_req_cuts_the_range_at_the_last_positive_eigenvalue():
    lam = np.concatenate([np.arange(1, 41, dtype=np.float64) ** -1.2, np.zeros(60)])
    out = G.alpha_req(lam)
    assert out["fit_range"] == (6, 40) and out["alpha"] == pytest.approx(1.2, abs=1e-9)
    with pytest.raises(UserError, match="fit_range"):
        G.alpha_req(lam, fit_range=(50, 20))
    with pytest.raises(UserError, match="positive eigenvalues"):
        G.alpha_req(lam, fit_range=(39, 100))


# ----------------------------------------------------------------------------- entropies
def test_prompt_entropy_of_identical_and_of_orthonormal_rows():
    q = rotation(32, 13)[:10]  # 10 orthonormal rows in R^32
    assert G.prompt_entropy(q) == pytest.approx(1.0, abs=1e-12)
    assert G.prompt_entropy(q, alpha=2.0) == pytest.approx(1.0, abs=1e-12)
    assert G.prompt_entropy(np.tile(q[0], (10, 1))) == pytest.approx(0.0, abs=1e-12)


def test_matrix_entropy_equals_renyi_entropy_of_known_gram_eigenvalues():
    # orthogonal rows with squared norms 1, 2, 3, 4: K / tr K has eigenvalues 0.1, 0.2, 0.3, 0.4
    x = rotation(6, 14)[:4] * np.sqrt([1.0, 2.0, 3.0, 4.0])[:, None]
    p = np.array([0.1, 0.2, 0.3, 0.4])
    shannon = -np.sum(p * np.log2(p))
    assert G.matrix_entropy(x, normalize=False) == pytest.approx(shannon, rel=1e-12)
    assert G.matrix_entropy(x) == pytest.approx(shannon / 2.0, rel=1e-12)  # log2(min(4, 6)) = 2
    assert G.matrix_entropy(x, alpha=2, normalize=False) == pytest.approx(-np.log2(np.sum(p**2)), rel=1e-12)


def test_matrix_entropy_is_the_same_from_the_gram_and_the_covariance_side():
    rng = np.random.default_rng(15)
    wide, tall = rng.normal(size=(8, 20)), rng.normal(size=(20, 8))
    for z in (wide, tall):  # N <= D uses the N x N Gram matrix, N > D the D x D one
        lam = np.clip(np.linalg.eigvalsh(z @ z.T), 0, None)
        p = lam / lam.sum()
        p = p[p > 1e-15]
        expected = -np.sum(p * np.log2(p)) / np.log2(8)
        assert G.matrix_entropy(z) == pytest.approx(expected, rel=1e-10)


def test_dataset_entropy_is_the_matrix_entropy_of_pooled_vectors():
    pooled = np.random.default_rng(16).normal(size=(30, 12))
    assert G.dataset_entropy(pooled) == pytest.approx(G.matrix_entropy(pooled), rel=1e-15)
    assert 0.8 < G.dataset_entropy(pooled) < 1.0


# ----------------------------------------------------------------------------- curvature
def test_curvature_of_a_straight_line_is_zero():
    t = np.linspace(0, 1, 12)[:, None]
    line = 2.0 + t * np.random.default_rng(17).normal(size=(1, 9)) * np.exp(3 * t)  # uneven steps
    assert G.curvature(line) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("angle", [0.3, 1.1, 2.5])
def test_curvature_of_a_zigzag_is_its_turning_angle(angle):
    up = np.array([math.cos(angle / 2), math.sin(angle / 2)])
    down = np.array([math.cos(angle / 2), -math.sin(angle / 2)])
    steps = np.array([up if i % 2 == 0 else down for i in range(9)])
    points = np.vstack([np.zeros((1, 2)), np.cumsum(steps, axis=0)])
    points = np.hstack([points, np.zeros((10, 3))]) @ rotation(5, 18)
    assert G.curvature(points) == pytest.approx(angle, abs=1e-12)


def test_curvature_skips_repeated_states_and_refuses_short_input():
    back_and_forth = np.array([[0.0, 0], [1, 0], [1, 0], [0, 0], [1, 0]])
    assert G.curvature(back_and_forth) == pytest.approx(math.pi, abs=1e-12)
    with pytest.raises(UserError, match="at least 3"):
        G.curvature(np.zeros((2, 4)))


# ----------------------------------------------------------------------------- Diff-eRank
def test_normalized_covariance_entropy_follows_the_papers_normalisation():
    rng = np.random.default_rng(19)
    x = rng.normal(size=(40, 16)) * np.linspace(0.1, 3, 16) + 5.0
    z = x - x.mean(0)
    z = z / np.linalg.norm(z, axis=1, keepdims=True)
    sigma = np.linalg.eigvalsh(z.T @ z / z.shape[0])
    sigma = sigma[sigma > 1e-15] / sigma.sum()
    expected = -np.sum(sigma * np.log(sigma))  # natural log, as the authors' code
    assert G.normalized_covariance_entropy(x) == pytest.approx(expected, rel=1e-10)
    pm = np.array([[1.0, 0, 0], [-1, 0, 0], [0, 4, 0], [0, -4, 0]])  # normalised cov diag(1/2, 1/2, 0)
    assert G.normalized_covariance_entropy(pm) == pytest.approx(math.log(2), rel=1e-12)


def test_diff_erank_is_random_minus_trained_on_exp_of_mean_entropy():
    assert G.dataset_erank([math.log(2), math.log(8)]) == pytest.approx(4.0)  # exp(mean), not mean(exp)
    assert G.diff_erank(erank_random=4.0, erank_trained=1.5) == pytest.approx(2.5)
    assert G.diff_erank(erank_random=1.5, erank_trained=4.0) < 0
    with pytest.raises(UserError):
        G.dataset_erank([])


# ----------------------------------------------------------------------------- logit lens
def test_chunked_logit_lens_equals_plain_cross_entropy():
    torch.manual_seed(0)
    b, t, d, v = 3, 7, 16, 103
    hidden = torch.randn(b, t, d, dtype=torch.float64) * 3
    weight = torch.randn(v, d, dtype=torch.float64)
    bias = torch.randn(v, dtype=torch.float64)
    norm = torch.nn.LayerNorm(d, dtype=torch.float64)
    torch.nn.init.normal_(norm.weight)
    labels = torch.randint(0, v, (b, t))
    labels[0, 3] = labels[2, 6] = -100
    with torch.no_grad():
        logits = norm(hidden) @ weight.T + bias
        ref = torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, v), labels[:, 1:].reshape(-1), ignore_index=-100
        )
    for chunk, row_chunk in ((10, 4), (103, 4096), (8192, 5)):
        out = G.logit_lens_ce(
            hidden,
            norm,
            weight,
            labels,
            chunk=chunk,
            lm_head_bias=bias,
            row_chunk=row_chunk,
            dtype=torch.float64,
        )
        assert out["ce"] == pytest.approx(float(ref), rel=1e-12)
        assert out["n_tokens"] == b * (t - 1) - 2


def test_logit_lens_profile_reads_each_layer_and_float32_is_close():
    torch.manual_seed(1)
    layers = [torch.randn(2, 5, 8) for _ in range(3)]
    weight, labels = torch.randn(40, 8), torch.randint(0, 40, (2, 5))
    profile = G.logit_lens_profile(layers, None, weight, labels, chunk=9)
    for h, got in zip(layers, profile):
        ref = torch.nn.functional.cross_entropy(
            (h @ weight.T)[:, :-1].reshape(-1, 40), labels[:, 1:].reshape(-1)
        )
        assert got["ce"] == pytest.approx(float(ref), rel=1e-5)
    assert len({round(p["ce"], 6) for p in profile}) == 3


def test_logit_lens_bad_inputs_are_user_errors():
    h, w = torch.randn(2, 5, 8), torch.randn(40, 8)
    with pytest.raises(UserError, match="labels must lie"):
        G.logit_lens_ce(h, None, w, torch.full((2, 5), 40))
    with pytest.raises(UserError, match=r"\[V, 8\]"):
        G.logit_lens_ce(h, None, torch.randn(40, 7), torch.zeros(2, 5, dtype=torch.long))
    with pytest.raises(UserError, match=r"\[B, T, d\]"):
        G.logit_lens_ce(h[0], None, w, torch.zeros(5, dtype=torch.long))
