"""Geometry of a set of hidden states ``x`` [N, d]: effective rank, anisotropy, norms.

Every function takes a numpy array or a torch tensor (any float dtype, CPU or GPU), works in
float64 a chunk at a time (``streaming.CHUNK_ROWS`` rows), and returns Python floats. The
streaming accumulators of ``analysis.streaming`` hold the same statistics for data that do not
fit in memory; these functions are those accumulators fed a single batch.

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
* ``participation_ratio`` = ``(sum lambda)^2 / sum lambda^2``.
* ``stable_rank`` = ``sum lambda / lambda_1`` (``||X_c||_F^2 / ||X_c||_2^2``, centred data).
* ``top_eigenvalue_share`` = ``lambda_1 / sum lambda``.
* ``anisotropy(x)`` — exact mean cosine similarity over all pairs i != j (no sampling),
  ``(||sum_i u_i||^2 - N) / (N (N - 1))`` with ``u_i = x_i / ||x_i||``; with ``groups``, the exact
  mean over pairs from different groups (the paper's "pairs across sentences").
* ``anisotropy_sampled`` — the paper's estimator: mean cosine of randomly drawn pairs (seeded).

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

from .streaming import Moments, NormStats, UnitSums, as_rows

SPECTRA = ("covariance", "singular")


# ----------------------------------------------------------------------------- spectra
def _entropy_rank(weights: np.ndarray) -> float:
    """exp of the Shannon entropy of ``weights / sum(weights)`` (0 log 0 = 0)."""
    total = float(weights.sum())
    if total <= 0:
        return 0.0
    p = weights[weights > 0] / total
    return float(math.exp(-float(np.sum(p * np.log(p)))))


def spectrum_metrics(eigenvalues: np.ndarray, include_spectrum: bool = False) -> dict[str, Any]:
    """Every spectral metric from covariance eigenvalues (descending, non-negative).

    Returns ``effective_rank_covariance``, ``effective_rank_singular``, ``participation_ratio``,
    ``stable_rank``, ``top_eigenvalue_share`` and, when asked, ``spectrum`` (the eigenvalues).
    """
    lam = np.clip(np.asarray(eigenvalues, dtype=np.float64), 0.0, None)
    total = float(lam.sum())
    out: dict[str, Any] = {
        "effective_rank_covariance": _entropy_rank(lam),
        "effective_rank_singular": _entropy_rank(np.sqrt(lam)),
        "participation_ratio": total**2 / float(np.sum(lam**2)) if total > 0 else 0.0,
        "stable_rank": total / float(lam.max()) if total > 0 else 0.0,
        "top_eigenvalue_share": float(lam.max()) / total if total > 0 else 0.0,
    }
    if include_spectrum:
        out["spectrum"] = lam.tolist()
    return out


def covariance_eigenvalues(x) -> np.ndarray:
    """Eigenvalues of the covariance of the centred rows of ``x``, float64, descending."""
    return _moments(x).eigenvalues()


def _moments(x) -> Moments:
    t = as_rows(x)
    if t.shape[0] < 2:
        raise ValueError(f"need at least 2 rows to measure a spread, got {t.shape[0]}")
    return Moments().update(t)


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
    got_i, got_j, have = [], [], 0
    while have < n_pairs:
        i = rng.integers(0, n, size=2 * (n_pairs - have) + 16)
        j = rng.integers(0, n, size=i.size)
        ok = (i != j) if g is None else (g[i] != g[j])
        i, j = i[ok][: n_pairs - have], j[ok][: n_pairs - have]
        got_i.append(i)
        got_j.append(j)
        have += i.size
    return np.concatenate(got_i), np.concatenate(got_j)


def anisotropy_sampled(x, groups=None, n_pairs: int = 10_000, seed: int = 0) -> float:
    """The paper's estimator: mean cosine of ``n_pairs`` randomly drawn pairs (seeded).

    With ``groups``, pairs are drawn across different groups. Its standard error is about
    ``std(cos) / sqrt(n_pairs)``; ``anisotropy`` gives the exact value it estimates.
    """
    import torch

    t = as_rows(x)
    i, j = sample_pairs(t.shape[0], n_pairs, groups, seed)
    a = t[torch.from_numpy(i).to(t.device)].to(torch.float64)
    b = t[torch.from_numpy(j).to(t.device)].to(torch.float64)
    cos = torch.nn.functional.cosine_similarity(a, b, dim=1, eps=1e-300)
    return float(cos.mean())


# ----------------------------------------------------------------------------- norms
def norm_stats(x) -> dict[str, float]:
    """Mean and max L2 norm of the rows, and the share carrying a massive activation.

    Massive activation: some coordinate with ``|x| > max(100, 1000 * median |x|)`` (Sun et al.
    2024), decided on a log grid of 100 bins per decade (see ``streaming.NormStats``).
    """
    return NormStats().update(x).metrics()


def positions_mask(lengths, exclude_first: bool):
    """Boolean mask over concatenated sequences of the given lengths, False at each first position.

    Helper for "every metric with and without the first position of each sequence": the
    first token (BOS / attention sink) often dominates norms and directions.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    mask = np.ones(int(lengths.sum()), dtype=bool)
    if exclude_first:
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        mask[starts[lengths > 0]] = False
    return mask
