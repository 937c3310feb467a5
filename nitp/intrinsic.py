"""Intrinsic dimension of hidden states, through scikit-dimension (``skdim``).

The intrinsic dimension (ID) is the number of coordinates needed to describe the points
locally: ``d`` for points on a d-dimensional linear subspace of R^D, however large D is.
Nearest-neighbour estimators read it off distance ratios:

* ``twonn`` (Facco et al. 2017): ``mu_i = r_2 / r_1`` (second over first neighbour distance)
  follows ``Pareto(1, d)``; d is the slope of ``-log(1 - F_emp(mu))`` against ``log mu``
  through the origin, the largest 10 % of ratios discarded (the paper's fit;
  ``skdim.id.TwoNN(discard_fraction=0.1)``).
* ``gride`` (Denti et al. 2022): the same law for ``r_{2 n1} / r_{n1}``, solved by maximum
  likelihood (``skdim.id.GRIDE(n1=GRIDE_N1)``); a larger neighbour order probes a larger scale
  and is less sensitive to short-scale noise than TwoNN.
* ``mle`` (Levina & Bickel 2005): maximum likelihood on the distances to the first
  ``MLE_NEIGHBOURS`` neighbours (``skdim.id.MLE``), harmonic mean over points.

Identical vectors break every ratio (``r_1 = 0``; repeated tokens at layer 0 are identical
embeddings), so duplicate rows are removed first and counted. The estimators cost
``O(n^2 D)`` (exact neighbours), so at most ``MAX_POINTS`` distinct rows are used, drawn
without replacement with a seeded generator; the output names the sample.

Example
-------
>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> x = rng.normal(size=(2000, 5)) @ rng.normal(size=(5, 64))   # a 5-d subspace of R^64
>>> out = intrinsic_dimension(x)
>>> 4.25 < out["twonn"] < 5.75, out["n_used"]
(True, 2000)
"""

from __future__ import annotations

import numpy as np

from .errors import UserError

MAX_POINTS = 5000  # distinct rows used at most (seeded subsample)
GRIDE_N1 = 4  # GRIDE: ratio of the 8th to the 4th neighbour distance
MLE_NEIGHBOURS = 20  # Levina-Bickel: neighbours per point
ESTIMATORS = ("twonn", "gride", "mle")
DEFAULT_ESTIMATORS = ("twonn", "gride")


def distinct_rows(x) -> tuple[np.ndarray, int]:
    """The distinct rows of ``x`` [N, D] as float64 (sorted), and how many duplicates were dropped.

    Rows are compared exactly (bit for bit after the float64 conversion).
    """
    from .geometry import _float64_rows

    z = _float64_rows(x, "intrinsic dimension", 0)
    unique = np.unique(z, axis=0)
    return unique, int(z.shape[0] - unique.shape[0])


def sample_rows(z: np.ndarray, max_points: int, seed: int) -> np.ndarray:
    """At most ``max_points`` rows of ``z``, drawn without replacement (seeded), in input order."""
    if z.shape[0] <= max_points:
        return z
    picked = np.random.default_rng(seed).choice(z.shape[0], size=max_points, replace=False)
    return z[np.sort(picked)]


def _estimate(name: str, z: np.ndarray) -> dict:
    """One estimator on distinct rows ``z``: ``{name: dimension}`` (+ ``gride_error``)."""
    import skdim

    if name == "twonn":
        return {"twonn": float(skdim.id.TwoNN(discard_fraction=0.1).fit(z).dimension_)}
    if name == "gride":
        fit = skdim.id.GRIDE(n1=GRIDE_N1).fit(z)
        return {"gride": float(fit.dimension_), "gride_error": float(fit.error_)}
    fit = skdim.id.MLE().fit(z, n_neighbors=MLE_NEIGHBOURS, comb="mle")
    return {"mle": float(fit.dimension_)}


def intrinsic_dimension(
    x, estimators=DEFAULT_ESTIMATORS, max_points: int = MAX_POINTS, seed: int = 0
) -> dict:
    """Intrinsic dimension of the rows of ``x`` [N, D] by each estimator in ``estimators``.

    Duplicates are removed first (``distinct_rows``), then at most ``max_points`` distinct rows
    are drawn (``sample_rows``, seeded). See the module docstring for the estimators.

    Parameters
    ----------
    x : numpy array or torch tensor [N, D] (e.g. one layer's token states)
    estimators : names from ``ESTIMATORS``
    max_points : the most distinct rows to use
    seed : seed of the subsample

    Returns
    -------
    dict: one float per estimator (``twonn``, ``gride`` with ``gride_error``, ``mle``),
    ``n_input``, ``n_duplicates`` (rows dropped as exact copies), ``n_used``, ``sample`` (a
    sentence naming the sample).
    """
    unknown = [e for e in estimators if e not in ESTIMATORS]
    if unknown or not estimators:
        raise UserError(f"unknown intrinsic-dimension estimator(s) {unknown}; choose from {ESTIMATORS}")
    if max_points < 3:
        raise UserError(f"max_points must be at least 3, got {max_points}")
    distinct, n_duplicates = distinct_rows(x)
    n_input = distinct.shape[0] + n_duplicates
    needs = {"twonn": 3, "gride": 2 * GRIDE_N1 + 1, "mle": MLE_NEIGHBOURS + 1}  # farthest neighbour + 1
    minimum = max(needs[name] for name in estimators)
    if distinct.shape[0] < minimum:
        raise UserError(
            f"intrinsic dimension needs at least {minimum} distinct rows, got {distinct.shape[0]} "
            f"({n_duplicates} duplicates dropped): give more tokens"
        )
    z = sample_rows(distinct, max_points, seed)
    out: dict = {}
    for name in estimators:
        out.update(_estimate(name, z))
    out.update(
        n_input=int(n_input),
        n_duplicates=n_duplicates,
        n_used=int(z.shape[0]),
        sample=(
            f"{z.shape[0]} of {distinct.shape[0]} distinct rows (seed {seed}; "
            f"{n_duplicates} exact duplicates of {n_input} rows dropped first)"
        ),
    )
    return out
