"""Geometry of a set of hidden states ``x`` [N, d]: effective rank, anisotropy, norms.

Every function takes a numpy array or a torch tensor (any float dtype, CPU or GPU), works in
float64 and returns Python floats: the accumulators of ``nitp.streaming`` (for data that do not
fit in memory) fed a single batch.

Definitions (named in every output)
-----------------------------------
Let ``lambda_1 >= ... >= lambda_d >= 0`` be the eigenvalues of the empirical covariance of the
mean-centred rows, ``C = (X - mu)^T (X - mu) / N``, and ``sigma_i = sqrt(N lambda_i)`` the
singular values of the centred data matrix.

* ``effective_rank(x, "covariance")`` — the NITP paper's measure:
  ``p_i = lambda_i / sum(lambda)``, ``erank = exp(-sum_i p_i log p_i)``.
* ``effective_rank(x, "singular")`` — Roy & Vetterli's (2007) original:
  ``q_i = sigma_i / sum(sigma)``, ``erank = exp(-sum_i q_i log q_i)``. Since p is q squared and
  renormalised (more peaked), the covariance one is never larger.
* ``participation_ratio``, ``stable_rank``, ``top_eigenvalue_share``: see their functions.
* ``anisotropy(x)`` — exact mean cosine similarity over all pairs i != j (no sampling), with
  ``groups`` over pairs from different groups; ``anisotropy_sampled``, the paper's estimator.

All metrics are 0 when the rows have no variance at all.

Example
-------
>>> import numpy as np
>>> x = np.random.default_rng(0).normal(size=(4096, 64))
>>> round(effective_rank(x), 1), round(effective_rank(x, "singular"), 1)   # near 64 for white noise
(63.5, 63.9)
>>> abs(anisotropy(x)) < 1e-3
True
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from . import metrics_registry as registry
from .streaming import Moments, NormStats, UnitSums, as_rows

SPECTRA = ("covariance", "singular")


# ----------------------------------------------------------------------------- spectra
def spectrum_metrics(eigenvalues: np.ndarray, include_spectrum: bool = False) -> dict[str, Any]:
    """Every spectral metric of the registry from covariance eigenvalues (non-negative).

    Returns ``{name: f(lambda)}`` for each ``nitp.metrics_registry`` row of group ``spectrum``
    (``effective_rank_covariance``, ``effective_rank_singular``, ``participation_ratio``,
    ``stable_rank``, ``top_eigenvalue_share``, and any registered since), in registry order,
    and, when asked, ``spectrum`` (the eigenvalues).
    """
    lam = np.clip(np.asarray(eigenvalues, dtype=np.float64), 0.0, None)
    out: dict[str, Any] = {m.name: float(m.of_spectrum(lam)) for m in registry.metrics(group="spectrum")}
    if include_spectrum:
        out["spectrum"] = lam.tolist()
    return out


def covariance_eigenvalues(x) -> np.ndarray:
    """Eigenvalues of the covariance of the centred rows of ``x``, float64, descending."""
    t = as_rows(x)
    if t.shape[0] < 2:
        raise ValueError(f"need at least 2 rows to measure a spread, got {t.shape[0]}")
    return Moments().update(t).eigenvalues()


def effective_rank(x, spectrum: str = "covariance") -> float:
    """Effective rank of the rows of ``x`` [N, d] (float64 inside).

    Parameters
    ----------
    x : numpy array or torch tensor [N, d]
        Row vectors (e.g. the last hidden states of all valid tokens of a batch).
    spectrum : "covariance" (the paper's; p = lambda / sum lambda) or "singular"
        (Roy & Vetterli; p = sigma / sum sigma). See the module docstring.

    Returns
    -------
    float in [0, min(N - 1, d)] (at most N - 1: centring removes one direction).
    """
    if spectrum not in SPECTRA:
        raise ValueError(f"spectrum must be one of {SPECTRA}, got {spectrum!r}")
    return spectrum_metrics(covariance_eigenvalues(x))[f"effective_rank_{spectrum}"]


def participation_ratio(x) -> float:
    """``(sum lambda)^2 / sum lambda^2`` of the covariance eigenvalues."""
    return spectrum_metrics(covariance_eigenvalues(x))["participation_ratio"]


def stable_rank(x) -> float:
    """``sum lambda / lambda_max`` of the covariance (centred data's ||.||_F^2 / ||.||_2^2)."""
    return spectrum_metrics(covariance_eigenvalues(x))["stable_rank"]


def top_eigenvalue_share(x) -> float:
    """Share of the total variance along the top principal direction."""
    return spectrum_metrics(covariance_eigenvalues(x))["top_eigenvalue_share"]


def spectral_summary(x, include_spectrum: bool = False) -> dict[str, Any]:
    """All spectral metrics of ``x`` at once (one eigendecomposition)."""
    return spectrum_metrics(covariance_eigenvalues(x), include_spectrum)


def logged_geometry(x, groups) -> dict[str, float]:
    """What the trainer logs of a sample of hidden states: each registry row with ``logged_as``.

    ``x`` [N, d] (numpy or torch, any device), ``groups`` [N] the sequence of each row. Spectral
    rows come from one eigendecomposition (skipped below 2 rows), the others from ``of_rows``
    (skipped when undefined, e.g. ``mean_cos`` without two sequences). Today: ``erank`` =
    ``effective_rank(x)`` and ``mean_cos`` = ``anisotropy(x, groups)``.

    >>> x = np.random.default_rng(0).normal(size=(512, 8))
    >>> sorted(logged_geometry(x, np.arange(512) // 64))
    ['erank', 'mean_cos']
    """
    t = as_rows(x)
    lam = np.clip(Moments().update(t).eigenvalues(), 0.0, None) if t.shape[0] >= 2 else None
    out = {}
    for m in registry.logged():
        if m.of_spectrum is not None:
            value = math.nan if lam is None else m.of_spectrum(lam)
        else:
            value = m.of_rows(t, groups)
        if not math.isnan(value):
            out[m.logged_as] = float(value)
    return out


# ----------------------------------------------------------------------------- anisotropy
def anisotropy(x, groups=None) -> float:
    """Exact mean cosine similarity between the rows of ``x``, over all pairs i != j.

    ``O(N d)`` through ``||sum of unit vectors||^2``; no sampling. With ``groups`` (an id per
    row, e.g. the sequence each token comes from) only pairs from *different* groups count —
    the paper's "pairs across sentences". Zero rows (no direction) are left out.

    Parameters
    ----------
    x : numpy array or torch tensor [N, d]
    groups : optional integer array [N]

    Example
    -------
    >>> import numpy as np
    >>> x = np.ones((10, 4)) + np.random.default_rng(0).normal(scale=0.1, size=(10, 4))
    >>> anisotropy(x) > 0.9
    True
    """
    sums = UnitSums().update(x, groups)
    if sums.count < 2:
        raise ValueError(f"need at least 2 non-zero rows for a pairwise cosine, got {sums.count}")
    if groups is None:
        return sums.anisotropy()
    value = sums.anisotropy_across()
    if math.isnan(value):
        raise ValueError("anisotropy across groups needs rows from at least two groups")
    return value


def anisotropy_within(x, groups) -> float:
    """Exact mean cosine over pairs i != j from the *same* group."""
    value = UnitSums().update(x, groups).anisotropy_within()
    if math.isnan(value):
        raise ValueError("anisotropy within groups needs a group with at least two rows")
    return value


def sample_pairs(n: int, n_pairs: int, groups=None, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Indices of ``n_pairs`` random pairs (i != j; from different groups when given), seeded.

    Draws i and j uniformly and independently and rejects invalid pairs; the same
    ``(n, groups, seed)`` always gives the same pairs.
    """
    rng = np.random.default_rng(seed)
    g = None if groups is None else np.asarray(groups).reshape(-1)
    if g is not None and len(np.unique(g)) < 2:
        raise ValueError("sampling pairs across groups needs at least two groups")
    if n < 2:
        raise ValueError(f"need at least 2 rows to sample pairs, got {n}")
    got, have = [], 0
    while have < n_pairs:
        i = rng.integers(0, n, size=2 * (n_pairs - have) + 16)
        j = rng.integers(0, n, size=i.size)
        ok = (i != j) if g is None else (g[i] != g[j])
        got.append((i[ok][: n_pairs - have], j[ok][: n_pairs - have]))
        have += got[-1][0].size
    return tuple(np.concatenate(side) for side in zip(*got))  # (i, j)


def anisotropy_sampled(x, groups=None, n_pairs: int = 10_000, seed: int = 0) -> float:
    """The paper's estimator: mean cosine of ``n_pairs`` randomly drawn pairs (seeded).

    With ``groups``, pairs are drawn across different groups. Its standard error is about
    ``std(cos) / sqrt(n_pairs)``; ``anisotropy`` gives the exact value it estimates.
    """
    import torch

    t = as_rows(x)
    i, j = sample_pairs(t.shape[0], n_pairs, groups, seed)
    a, b = (t[torch.from_numpy(k).to(t.device)].to(torch.float64) for k in (i, j))
    cos = torch.nn.functional.cosine_similarity(a, b, dim=1, eps=1e-300)
    return float(cos.mean())


# ----------------------------------------------------------------------------- norms
def norm_stats(x) -> dict[str, float]:
    """Mean and max L2 norm of the rows, and the share carrying a massive activation.

    Massive activation: some coordinate with ``|x| > max(100, 1000 * median |x|)`` (Sun et al.
    2024), decided on a log grid of 100 bins per decade (see ``streaming.NormStats``).
    """
    return NormStats().update(x).metrics()


# ----------------------------------------------------------------------------- spectrum shape
ALPHA_REQ_FIT_RANGE = (6, 100)  # 1-based ranks k; reptrix's default np.arange(5, 100) (0-based)


def alpha_req(eigenvalues, fit_range: tuple[int, int] | None = None, weighted: bool = True) -> dict:
    """alpha-ReQ (Agrawal et al. 2022): power-law decay exponent of a covariance eigenspectrum.

    Fits ``log lambda_k = c - alpha log k`` over the ranks ``k = lo..hi`` (1-based, inclusive)
    of the descending eigenvalues; ``alpha`` is minus the slope. Default range: ``k = 6..100``,
    the authors' code (reptrix ``get_alpha``: ``fit_range = np.arange(5, 100)``, skipping the
    first eigenvalues to fit the tail), cut at the last positive eigenvalue. ``weighted=True``
    weights each point by ``1 / k`` as that code does (Stringer et al. 2019's fit; the log-rank
    axis is denser at large k); ``False`` is ordinary least squares. A spectrum that is exactly
    ``lambda_k = C k^-alpha`` gives ``alpha`` either way. Smaller alpha = slower decay (a flatter,
    higher-dimensional spectrum).

    Parameters
    ----------
    eigenvalues : array [d], non-negative (e.g. ``Moments.eigenvalues()``; any order)
    fit_range : (lo, hi) 1-based ranks, ``1 <= lo < hi``; None = ``ALPHA_REQ_FIT_RANGE``
    weighted : weight points by ``1 / k``

    Returns
    -------
    dict: ``alpha``, ``fit_range`` (the ranks used, after the cut), ``r2`` (of the fit in log-log,
    unweighted), ``n_points``.

    Example
    -------
    >>> k = np.arange(1, 513)
    >>> round(alpha_req(k ** -1.3)["alpha"], 9)
    1.3
    """
    from .errors import UserError

    lam = np.sort(np.asarray(eigenvalues, dtype=np.float64).reshape(-1))[::-1]
    lo, hi = ALPHA_REQ_FIT_RANGE if fit_range is None else (int(fit_range[0]), int(fit_range[1]))
    if not 1 <= lo < hi:
        raise UserError(f"alpha-ReQ fit_range {fit_range!r} is not 1 <= lo < hi; use e.g. (6, 100)")
    hi = min(hi, int(np.sum(lam > 0)))
    if hi - lo + 1 < 3:
        raise UserError(
            f"alpha-ReQ needs at least 3 positive eigenvalues in ranks {lo}..{hi}; "
            f"the spectrum has {int(np.sum(lam > 0))}: use a lower fit_range"
        )
    k = np.arange(lo, hi + 1, dtype=np.float64)
    x, y = np.log(k), np.log(lam[lo - 1 : hi])
    slope, intercept = np.polyfit(x, y, 1, w=1.0 / np.sqrt(k) if weighted else None)
    resid = y - (slope * x + intercept)
    ss_tot = float(np.sum((y - y.mean()) ** 2))
    r2 = 1.0 - float(resid @ resid) / ss_tot if ss_tot > 0 else math.nan
    return {"alpha": float(-slope), "fit_range": (lo, hi), "r2": r2, "n_points": int(k.size)}


# ----------------------------------------------------------------------------- matrix entropies
def _gram_spectrum(z: np.ndarray) -> np.ndarray:
    """Eigenvalues of ``Z Z^T`` [N, N] from the smaller of it and ``Z^T Z`` [D, D] (same non-zero
    eigenvalues), float64, clipped at 0, descending."""
    small = z @ z.T if z.shape[0] <= z.shape[1] else z.T @ z
    lam = np.linalg.eigvalsh(0.5 * (small + small.T))[::-1]
    return np.clip(lam, 0.0, None)


def _float64_rows(x, what: str, min_rows: int) -> np.ndarray:
    from .errors import UserError

    z = as_rows(x).to("cpu").double().numpy()
    if z.shape[0] < min_rows:
        raise UserError(f"{what} needs at least {min_rows} rows, got {z.shape[0]}")
    if not np.isfinite(z).all():
        raise UserError(f"{what}: the input holds NaN or inf; check the hidden states")
    return z


def renyi_entropy(p: np.ndarray, alpha: float = 1.0) -> float:
    """Renyi entropy of order alpha, in bits, of a probability vector ``p`` (sums to 1).

    ``S_alpha = log2(sum_i p_i^alpha) / (1 - alpha)``; ``alpha = 1`` is the limit, Shannon's
    ``-sum_i p_i log2 p_i`` (0 log 0 = 0).
    """
    p = p[p > 0]
    if alpha == 1:
        return float(-np.sum(p * np.log2(p)))
    return float(np.log2(np.sum(p**alpha)) / (1.0 - alpha))


def matrix_entropy(x, alpha: float = 1.0, normalize: bool = True) -> float:
    """Matrix-based Renyi entropy of the rows of ``x`` (Giraldo et al. 2015; Skean et al. 2025).

    ``K = Z Z^T`` [N, N] (linear kernel of the raw rows, not centred), ``A = K / tr K``,
    eigenvalues ``lambda_i`` of A (a probability vector), ``S_alpha(A) = renyi_entropy(lambda,
    alpha)`` in bits (alpha = 1: von Neumann). ``normalize`` divides by ``log2(min(N, D))``, the
    largest value A's rank allows (the reference code's default ``maxEntropy``; it is
    ``log2 N`` whenever N <= D), so the result is in [0, 1]: 0 = all rows on one line,
    1 = orthogonal rows of equal norm. The eigenvalues come from the smaller of the Gram and the
    covariance matrix. Unlike the reference code we do not clamp negative Gram entries to 0
    (that changes the eigenvalues, and differently for the two matrices). Cost:
    ``O(N D min(N, D))``.

    Parameters
    ----------
    x : array [N, D], N >= 2
    alpha : Renyi order > 0
    normalize : divide by ``log2(min(N, D))``
    """
    from .errors import UserError

    if not alpha > 0:
        raise UserError(f"Renyi order alpha must be > 0, got {alpha}")
    z = _float64_rows(x, "matrix entropy", 2)
    if z.shape[1] < 2:
        raise UserError(f"matrix entropy needs vectors of width >= 2, got {z.shape[1]}")
    lam = _gram_spectrum(z)
    total = float(lam.sum())
    if total <= 0:
        raise UserError("matrix entropy: every row is zero; nothing to measure")
    entropy = renyi_entropy(lam / total, alpha)
    return entropy / math.log2(min(z.shape)) if normalize else entropy


def prompt_entropy(x_tokens, alpha: float = 1.0, normalize: bool = True) -> float:
    """Prompt entropy (Skean et al. 2025, "Layer by Layer"): ``matrix_entropy`` of the token
    states [T, d] of ONE sequence at one layer. Low = the tokens collapse onto few directions.

    Example
    -------
    >>> round(prompt_entropy(np.eye(4, 16)), 12), round(prompt_entropy(np.ones((4, 16))), 12)
    (1.0, 0.0)
    """
    return matrix_entropy(x_tokens, alpha, normalize)


def dataset_entropy(pooled, alpha: float = 1.0, normalize: bool = True) -> float:
    """Dataset entropy (Skean et al. 2025): ``matrix_entropy`` of one vector per sequence [n, d]
    (mean-pooled token states at one layer: the representation MTEB scores). Low = the
    sequences are hard to tell apart at that layer."""
    return matrix_entropy(pooled, alpha, normalize)


def curvature(x_tokens) -> float:
    """Mean curvature of a token trajectory (Hosseini & Fedorenko 2023; Skean et al. 2025).

    With ``v_t = x_{t+1} - x_t``, the curvature at t is the angle ``arccos(cos(v_t, v_{t+1}))``
    in [0, pi]; returned is its mean over t = 1..T-2 in radians (0 = a straight line, pi/2 =
    every step orthogonal to the last, pi = going back and forth). Steps of length zero (a
    repeated state) have no direction and are skipped. (The reference code takes ``|cos|``,
    folding angles above pi/2 back; we follow the definition.)

    Parameters
    ----------
    x_tokens : array [T, d], the states of one sequence at one layer, T >= 3

    Example
    -------
    >>> zigzag = np.array([[0, 0], [1, 1], [2, 0], [3, 1], [4, 0]], dtype=float)
    >>> round(curvature(zigzag) / np.pi, 12)   # 90 degrees at every turn
    0.5
    """
    from .errors import UserError

    z = _float64_rows(x_tokens, "curvature", 3)
    v = np.diff(z, axis=0)
    norms = np.linalg.norm(v, axis=1)
    v = v[norms > 0] / norms[norms > 0, None]
    if v.shape[0] < 2:
        raise UserError("curvature needs at least two non-zero steps between successive tokens")
    cos = np.clip(np.sum(v[1:] * v[:-1], axis=1), -1.0, 1.0)
    return float(np.mean(np.arccos(cos)))


# ----------------------------------------------------------------------------- Diff-eRank
def normalized_covariance_entropy(x_tokens) -> float:
    """Von Neumann entropy (nats) of the normalised covariance of one sequence (Wei et al. 2024).

    Diff-eRank's normalisation: centre the token states, scale each centred row to unit norm
    (``z_i = (x_i - mean) / ||x_i - mean||``; rows equal to the mean are left out), and take
    ``Sigma = Z^T Z / N`` (trace 1). Returns ``H = -sum_i sigma_i log sigma_i`` over its
    eigenvalues; ``exp(H)`` is the sequence's effective rank.

    Parameters
    ----------
    x_tokens : array [T, d], T >= 2, one sequence at one layer (the paper: the last layer)
    """
    from .errors import UserError

    z = _float64_rows(x_tokens, "Diff-eRank entropy", 2)
    z = z - z.mean(0)
    norms = np.linalg.norm(z, axis=1)
    if not np.any(norms > 0):
        raise UserError("Diff-eRank entropy: every token state is identical; nothing to measure")
    z = z[norms > 0] / norms[norms > 0, None]
    lam = _gram_spectrum(z) / z.shape[0]
    return renyi_entropy(lam / lam.sum(), 1.0) * math.log(2)


def dataset_erank(entropies) -> float:
    """Diff-eRank's effective rank of a model on a data set: ``exp(mean_s H_s)`` over the
    sequences' ``normalized_covariance_entropy`` (the exponential of the MEAN entropy, as the
    authors' code does, not the mean of per-sequence ranks)."""
    from .errors import UserError

    h = np.asarray(entropies, dtype=np.float64).reshape(-1)
    if h.size == 0 or not np.isfinite(h).all():
        raise UserError("dataset_erank needs at least one finite per-sequence entropy")
    return float(math.exp(float(h.mean())))


def diff_erank(erank_random: float, erank_trained: float) -> float:
    """Diff-eRank (Wei et al. 2024) = eRank(randomly initialised copy) - eRank(trained model).

    Both ranks from ``dataset_erank`` on the same sequences. Sign: POSITIVE when training
    reduced the effective rank ("removed noise", the paper's reading: larger is better). This
    rewards the opposite direction from the NITP paper's "higher rank is better" (which counters
    representation collapse); report it under its own name, never as a rank.

    Example
    -------
    >>> diff_erank(erank_random=80.0, erank_trained=50.0)
    30.0
    """
    return float(erank_random) - float(erank_trained)


# ----------------------------------------------------------------------------- logit lens
def logit_lens_ce(
    hidden,
    final_norm,
    lm_head_weight,
    labels,
    *,
    lm_head_bias=None,
    ignore_index: int = -100,
    **chunking,
) -> dict:
    """Next-token cross-entropy of one layer's states read through the final norm and LM head.

    The logit lens (nostalgebraist 2020): ``logits_t = W norm(h_t) (+ b)``, and
    ``CE = mean_t [logsumexp(logits_t) - logits_t[y_{t+1}]]`` over positions whose next label
    is not ``ignore_index`` (labels as in transformers: ``labels[:, t]`` is token t, shifted here).
    The head is applied ``chunk`` vocabulary rows at a time and the log-sum-exp accumulated
    (``logaddexp``), ``row_chunk`` positions at a time, so a 151,936 x d head never forms the
    [B*T, V] logits: peak extra memory ``row_chunk x chunk`` floats.

    Parameters
    ----------
    hidden : tensor [B, T, d], one layer's states
    final_norm : callable (the model's final norm module) or None (identity; layer -1 is
        already normed)
    lm_head_weight : tensor [V, d]
    labels : int tensor [B, T]
    lm_head_bias : optional tensor [V]
    **chunking
        How it is computed (:func:`_lens_nll_sum`): ``chunk`` vocabulary rows per step (8192),
        ``row_chunk`` positions per step (4096), ``dtype`` (default float32; float64 for exact
        comparisons).

    Returns
    -------
    dict: ``ce`` (mean nats per predicted token), ``nll_sum``, ``n_tokens``.

    Example
    -------
    >>> import torch
    >>> h, w, y = torch.randn(2, 5, 8), torch.randn(50, 8), torch.randint(0, 50, (2, 5))
    >>> ref = torch.nn.functional.cross_entropy((h @ w.T)[:, :-1].reshape(-1, 50), y[:, 1:].reshape(-1))
    >>> abs(logit_lens_ce(h, None, w, y, chunk=7)["ce"] - float(ref)) < 1e-5
    True
    """
    states, targets = _lens_inputs(hidden, lm_head_weight, labels, ignore_index)
    total = _lens_nll_sum(states, targets, final_norm, (lm_head_weight, lm_head_bias), **chunking)
    n = int(targets.shape[0])
    return {"ce": total / n if n else math.nan, "nll_sum": total, "n_tokens": n}


def _lens_nll_sum(states, targets, final_norm, head, chunk: int = 8192, row_chunk: int = 4096, dtype=None):
    """Sum over rows of the lens NLL of ``states`` [M, d] (``head`` = (weight, bias or None)),
    ``row_chunk`` rows and ``chunk`` vocabulary rows at a time, in ``dtype`` (float32 default)."""
    import torch

    dtype = dtype or torch.float32
    total = torch.zeros((), dtype=torch.float64, device=states.device)
    with torch.no_grad():
        for start in range(0, states.shape[0], row_chunk):
            h = states[start : start + row_chunk]
            h = (final_norm(h) if final_norm is not None else h).to(dtype)
            nll = _chunked_nll(h, targets[start : start + row_chunk], *head, chunk)
            total += nll.sum().to(torch.float64)
    return float(total)


def _lens_inputs(hidden, weight, labels, ignore_index: int):
    """Flattened (states [M, d], next-token targets [M]) of the positions that are scored."""
    from .errors import UserError

    if hidden.ndim != 3 or labels.shape != hidden.shape[:2]:
        raise UserError(
            f"logit lens: hidden must be [B, T, d] and labels [B, T]; got {tuple(hidden.shape)} "
            f"and {tuple(labels.shape)}"
        )
    if weight.ndim != 2 or weight.shape[1] != hidden.shape[2]:
        raise UserError(
            f"logit lens: lm_head_weight must be [V, {hidden.shape[2]}], got {tuple(weight.shape)}"
        )
    states = hidden[:, :-1].reshape(-1, hidden.shape[2])
    targets = labels[:, 1:].reshape(-1).to(hidden.device)
    keep = targets != ignore_index
    states, targets = states[keep], targets[keep].long()
    if targets.numel() and (int(targets.min()) < 0 or int(targets.max()) >= weight.shape[0]):
        raise UserError(f"logit lens: labels must lie in 0..{weight.shape[0] - 1} or be {ignore_index}")
    return states, targets


def _chunked_nll(h, targets, weight, bias, chunk: int):
    """``logsumexp(h W^T + b) - (h W^T + b)[target]`` per row, ``chunk`` vocabulary rows at a time."""
    import torch

    lse = torch.full((h.shape[0],), -math.inf, dtype=h.dtype, device=h.device)
    target_logit = torch.zeros(h.shape[0], dtype=h.dtype, device=h.device)
    for v0 in range(0, weight.shape[0], chunk):
        w = weight[v0 : v0 + chunk].to(device=h.device, dtype=h.dtype)
        logits = h @ w.T
        if bias is not None:
            logits = logits + bias[v0 : v0 + chunk].to(device=h.device, dtype=h.dtype)
        lse = torch.logaddexp(lse, torch.logsumexp(logits, dim=1))
        inside = (targets >= v0) & (targets < v0 + w.shape[0])
        rows = inside.nonzero(as_tuple=True)[0]
        target_logit[rows] = logits[rows, targets[rows] - v0]
    return lse - target_logit


def logit_lens_profile(hidden_states, final_norm, lm_head_weight, labels, **kwargs) -> list[dict]:
    """``logit_lens_ce`` of every layer in ``hidden_states`` (a list of [B, T, d] tensors)."""
    return [logit_lens_ce(h, final_norm, lm_head_weight, labels, **kwargs) for h in hidden_states]
