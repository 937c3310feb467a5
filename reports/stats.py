"""Paired statistics for every delta the toolkit prints: an interval, a test, a p-value and n.

Pure functions over numpy arrays; scipy.stats and statsmodels do the statistics. Each returns a
small frozen dataclass with ``to_dict()`` (JSON for records) and ``from_dict()``.

=====================  ===========================================  ===============================
function               data                                         interval / test
=====================  ===========================================  ===============================
paired_difference      per-item scores of two models, same items    paired bootstrap (BCa) /
                                                                    McNemar exact (0/1 items) or
                                                                    paired permutation (others)
paired_by_seed         one score per seed for each model            Student t / paired t-test
seed_summary           one score per seed                           Student t of the mean
mean_interval          a value per independent unit (e.g. batch)    Student t of the mean
group_mean_interval    one delta per task (an MTEB group)           bootstrap of the mean
sign_test              one delta per task                           two-sided binomial (sign) test
holm, with_holm        p-values of a family of comparisons          Holm step-down adjustment
verdict, format_delta  any of the above                             one line of a table
=====================  ===========================================  ===============================

Deltas are ``b - a`` in the units given (fractions for scores); the sentences show
``scale x delta`` (points = 100 x a fraction by default).

Example
-------
>>> a = np.array([1, 0, 1, 1, 0, 0, 1, 0] * 50)
>>> b = np.array([1, 1, 1, 1, 0, 1, 1, 0] * 50)
>>> c = paired_difference(a, b)
>>> c.test, c.n01, c.n10, round(c.delta, 2), c.significant
('mcnemar-exact', 100, 0, 0.25, True)
>>> verdict("NITP - NTP on the toy suite", c)
'NITP - NTP on the toy suite: +25.0 [+21.0, +29.5]: NITP better (p < 0.001, McNemar exact, n = 400 items)'
"""

from __future__ import annotations

import dataclasses
import math
import re
import warnings
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from nitp.errors import UserError

# Elements per vectorised batch of resamples (2^22 float64 = 32 MiB per array).
BATCH_ELEMENTS = 2**22
# Above this many items the BCa jackknife (n x (n-1) values) costs more than it brings: the
# bootstrap distribution of a mean over that many items is close to normal; percentile is used.
BCA_MAX_N = 5_000
TEST_NAMES = {
    "mcnemar-exact": "McNemar exact",
    "paired-permutation": "paired permutation",
    "paired-t": "paired t-test",
    "bootstrap": "bootstrap interval",
}


class _Record:
    """``to_dict``/``from_dict`` for the result dataclasses (JSON-ready: floats, ints, str, None)."""

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        return {**out, "significant": self.significant} if isinstance(self, _Interval) else out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]):
        names = {f.name for f in dataclasses.fields(cls)}
        fields = {k: (tuple(v) if isinstance(v, list) else v) for k, v in data.items() if k in names}
        return cls(**fields)


class _Interval(_Record):
    """A result with an interval of the delta: ``significant`` = the interval excludes 0."""

    @property
    def significant(self) -> bool:
        return self.ci_low is not None and self.ci_high is not None and (self.ci_low > 0 or self.ci_high < 0)


@dataclass(frozen=True)
class Comparison(_Interval):
    """Two models on the same items: ``delta = mean_b - mean_a`` with its interval and test.

    ``n01``: items a got wrong (0) and b right (1) -- b's wins; ``n10`` the reverse (McNemar only).
    ``interval``: the interval's method actually used ("BCa", "percentile", or "exact" when every
    item has the same difference, so every resample gives the same mean).
    ``significant``: the interval excludes 0. ``p_holm``/``significant_holm``: see :func:`with_holm`.
    """

    n: int
    mean_a: float
    mean_b: float
    delta: float
    ci_low: float
    ci_high: float
    confidence: float
    p_value: float
    test: str
    interval: str
    n01: int | None = None
    n10: int | None = None
    p_holm: float | None = None
    significant_holm: bool | None = None
    sd_diff: float | None = None  # sample sd (ddof = 1) of the per-item differences (for power)
    units = "items"


@dataclass(frozen=True)
class SeedComparison(_Interval):
    """Two models trained with the same seeds: mean of per-seed differences ``b - a``.

    ``wins``/``losses``/``ties``: seeds where b > a, b < a, b == a. ``unpaired``: seeds only one
    side has (left out).
    """

    n: int
    seeds: tuple[str, ...]
    mean_a: float
    mean_b: float
    delta: float
    ci_low: float
    ci_high: float
    confidence: float
    p_value: float
    wins: int
    losses: int
    ties: int
    unpaired: tuple[str, ...] = ()
    test: str = "paired-t"
    p_holm: float | None = None
    significant_holm: bool | None = None
    sd_diff: float | None = None  # sample sd of the per-seed differences (for power)
    units = "seeds"


@dataclass(frozen=True)
class Summary(_Record):
    """Mean, sample standard deviation (ddof = 1) and Student-t interval of the mean.

    With ``n = 1`` the spread and interval are unknown: ``sd``, ``ci_low``, ``ci_high`` are None.
    """

    n: int
    mean: float
    sd: float | None
    ci_low: float | None
    ci_high: float | None
    confidence: float


@dataclass(frozen=True)
class GroupMean(_Interval):
    """Mean of per-task deltas with a bootstrap interval over tasks (None when ``n = 1``)."""

    n: int
    delta: float
    ci_low: float | None
    ci_high: float | None
    confidence: float
    interval: str
    p_value: float | None = None
    test: str = "bootstrap"
    sd_diff: float | None = None  # sample sd of the per-task deltas (for power)
    units = "tasks"


@dataclass(frozen=True)
class SignTest(_Record):
    """Tasks where b beats a (``wins``), a beats b (``losses``), ties (dropped) and the p-value."""

    wins: int
    losses: int
    ties: int
    p_value: float

    @property
    def n(self) -> int:
        return self.wins + self.losses


# ---------------------------------------------------------------------------------- input checks


def _vector(values: Any, name: str) -> np.ndarray:
    """``values`` as a finite 1-D float array, else a one-line UserError naming ``name``."""
    if isinstance(values, Mapping):
        values = list(values.values())
    try:
        x = np.asarray(values, dtype=float)
    except (TypeError, ValueError):
        raise UserError(f"{name} must be a list of numbers; got {type(values).__name__}") from None
    if x.ndim != 1:
        raise UserError(f"{name} must be one number per item (1-D); got shape {x.shape}")
    if bad := int(np.sum(~np.isfinite(x))):
        raise UserError(f"{name} has {bad} NaN or infinite values; drop or rescore those items")
    return x


def _paired_vectors(a: Any, b: Any) -> tuple[np.ndarray, np.ndarray]:
    a, b = _vector(a, "a"), _vector(b, "b")
    if len(a) != len(b):
        raise UserError(
            f"paired scores differ in length: a has {len(a)} items, b has {len(b)}; "
            "pass the per-item scores of the same items in the same order"
        )
    if len(a) < 2:
        raise UserError(f"a paired comparison needs at least 2 items; got {len(a)}")
    return a, b


def _check_confidence(confidence: float) -> float:
    if not 0 < confidence < 1:
        raise UserError(f"confidence must be between 0 and 1 (e.g. 0.95); got {confidence}")
    return float(confidence)


def _check_resamples(n_resamples: int) -> int:
    if isinstance(n_resamples, bool) or int(n_resamples) != n_resamples or n_resamples < 1:
        raise UserError(f"n_resamples must be a positive integer (e.g. 10000); got {n_resamples}")
    return int(n_resamples)


# ---------------------------------------------------------------------------- paired per-item


def _resampling(n_resamples: int, n: int, seed: int) -> dict[str, Any]:
    """scipy's resampling options: vectorised, in batches of at most ``BATCH_ELEMENTS`` values."""
    batch, rng = max(1, min(n_resamples, BATCH_ELEMENTS // n)), np.random.default_rng(seed)
    return {"n_resamples": n_resamples, "batch": batch, "vectorized": True, "rng": rng}


def _bootstrap_mean_ci(x, confidence, n_resamples, seed, method="BCa") -> tuple[float, float, str]:
    """scipy's bootstrap interval of ``mean(x)``; BCa falls back to percentile when it cannot be
    computed (NaN: degenerate bootstrap distribution) or ``len(x) > BCA_MAX_N``."""
    from scipy import stats

    if method == "BCa" and len(x) > BCA_MAX_N:
        method = "percentile"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # BCa's DegenerateDataWarning: handled by the fallback
        options = {"confidence_level": confidence, "method": method, **_resampling(n_resamples, len(x), seed)}
        result = stats.bootstrap((x,), np.mean, **options)
    low, high = (float(v) for v in result.confidence_interval)
    if method == "BCa" and not (math.isfinite(low) and math.isfinite(high)):
        return _bootstrap_mean_ci(x, confidence, n_resamples, seed, "percentile")
    return low, high, method


def paired_bootstrap_interval(
    a: Any, b: Any, *, confidence: float = 0.95, n_resamples: int = 10_000, seed: int = 0, method: str = "BCa"
) -> tuple[float, float, str]:
    """Paired bootstrap interval of ``mean(b) - mean(a)``: items are resampled with their pair.

    Each of ``n_resamples`` resamples draws n item indices ``i`` with replacement and computes
    ``mean(b[i]) - mean(a[i]) = mean(d[i])``, ``d = b - a`` (Efron & Tibshirani 1993). It is
    computed as ``scipy.stats.bootstrap((d,), np.mean)``: the same index draws and interval as
    ``scipy.stats.bootstrap((a, b), mean difference, paired=True)`` at half the work.
    ``method="BCa"`` (bias-corrected and accelerated, their ch. 14) has coverage closer to
    nominal than percentile for small or skewed samples; it falls back to ``"percentile"`` when
    BCa cannot be computed (degenerate bootstrap distribution) and above ``BCA_MAX_N`` items
    (its jackknife is n x (n - 1) and a mean over that many items is close to normal). When
    every item has the same difference the interval is that difference (method ``"exact"``).

    Parameters
    ----------
    a, b : array_like, shape (n,)
        Per-item scores of the same items, n >= 2.

    Returns
    -------
    (low, high, method used)

    Example
    -------
    >>> paired_bootstrap_interval([0.0, 1.0, 1.0, 0.0], [0.0, 1.0, 1.0, 0.0])
    (0.0, 0.0, 'exact')
    """
    a, b = _paired_vectors(a, b)
    if method not in ("BCa", "percentile"):
        raise UserError(f"bootstrap method must be 'BCa' or 'percentile'; got {method!r}")
    d = b - a
    if np.ptp(d) == 0:
        return float(d[0]), float(d[0]), "exact"
    return _bootstrap_mean_ci(d, _check_confidence(confidence), _check_resamples(n_resamples), seed, method)


def mcnemar_exact(a: Any, b: Any) -> tuple[int, int, float]:
    """Exact McNemar test (McNemar 1947) of two models' 0/1 answers on the same items.

    Only discordant items count: ``n01`` (a wrong, b right) and ``n10`` (a right, b wrong).
    Under H0 (same accuracy) each discordant item is b's win with probability 1/2, so
    ``p = binomtest(n01, n01 + n10, 0.5)`` two-sided (exact); p = 1 with no discordant item.

    Parameters
    ----------
    a, b : array_like of 0/1, shape (n,)

    Returns
    -------
    (n01, n10, p)

    Example
    -------
    >>> mcnemar_exact([0, 0, 0, 0, 0, 1], [1, 1, 1, 1, 1, 1])
    (5, 0, 0.0625)
    """
    from scipy import stats

    a, b = _paired_vectors(a, b)
    if not _is_binary(a, b):
        raise UserError("kind='binary' needs 0/1 scores per item; use kind='continuous' for other scores")
    n01 = int(np.sum((a == 0) & (b == 1)))
    n10 = int(np.sum((a == 1) & (b == 0)))
    p = 1.0 if n01 + n10 == 0 else float(stats.binomtest(n01, n01 + n10, 0.5).pvalue)
    return n01, n10, p


def paired_permutation_p(a: Any, b: Any, *, n_resamples: int = 10_000, seed: int = 0) -> float:
    """Two-sided paired permutation test of ``mean(b) - mean(a)``: swap a[i] and b[i] at random.

    Under H0 the two scores of an item are exchangeable, so each difference ``d_i = b_i - a_i``
    keeps or flips its sign with probability 1/2. ``p = 2 min(P(T <= t), P(T >= t))`` over the
    null distribution of ``T = mean(+-d)`` (``scipy.stats.permutation_test(...,
    permutation_type="samples")``): exact over all 2^n flips when ``2^n <= n_resamples``,
    otherwise ``n_resamples`` random flips with p = (count + 1) / (n_resamples + 1).

    Parameters
    ----------
    a, b : array_like, shape (n,)

    Example
    -------
    >>> paired_permutation_p([0.1, 0.2, 0.3], [0.2, 0.3, 0.4])   # 2 of the 8 sign flips are as extreme
    0.25
    """
    from scipy import stats

    a, b = _paired_vectors(a, b)
    resampling = _resampling(_check_resamples(n_resamples), len(a), seed)
    result = stats.permutation_test(
        (a, b),
        lambda x, y, axis=-1: np.mean(y, axis=axis) - np.mean(x, axis=axis),
        permutation_type="samples",
        alternative="two-sided",
        **resampling,
    )
    return float(result.pvalue)


def _is_binary(*arrays: np.ndarray) -> bool:
    return all(np.all((x == 0) | (x == 1)) for x in arrays)


def paired_difference(
    a: Any,
    b: Any,
    *,
    kind: str = "auto",
    confidence: float = 0.95,
    n_resamples: int = 10_000,
    seed: int = 0,
    method: str = "BCa",
) -> Comparison:
    """Compare two models scored on the SAME items: ``delta = mean(b) - mean(a)``.

    The interval is the paired bootstrap (:func:`paired_bootstrap_interval`, BCa). The test is
    the exact McNemar test (:func:`mcnemar_exact`) for 0/1 items (accuracy-type benchmarks;
    ``kind="auto"`` picks it when every score is 0 or 1, ``"binary"`` demands it), otherwise the
    paired permutation test (:func:`paired_permutation_p`; ``kind="continuous"`` forces it).

    Parameters
    ----------
    a, b : array_like, shape (n,)
        Per-item scores, ``a[i]`` and ``b[i]`` of the same item; n >= 2, no NaN (else UserError).
    kind : {"auto", "binary", "continuous"}
        ``"binary"`` with scores other than 0/1: UserError.
    confidence : float
        Level of the interval; ``significant`` means it excludes 0.
    n_resamples, seed : int
        Bootstrap resamples and random permutations; the seed makes results reproducible.
    method : {"BCa", "percentile"}

    Example
    -------
    >>> c = paired_difference([1, 0, 1, 0] * 5, [1, 0, 1, 0] * 5)
    >>> c.delta, c.p_value, c.significant
    (0.0, 1.0, False)
    """
    a, b = _paired_vectors(a, b)
    if kind not in ("auto", "binary", "continuous"):
        raise UserError(f"kind must be 'auto', 'binary' or 'continuous'; got {kind!r}")
    confidence = _check_confidence(confidence)
    low, high, used = paired_bootstrap_interval(
        a, b, confidence=confidence, n_resamples=n_resamples, seed=seed, method=method
    )
    binary = kind == "binary" or (kind == "auto" and _is_binary(a, b))
    if binary:
        n01, n10, p = mcnemar_exact(a, b)
    else:
        n01, n10, p = None, None, paired_permutation_p(a, b, n_resamples=n_resamples, seed=seed)
    test = "mcnemar-exact" if binary else "paired-permutation"
    return Comparison(**_paired(a, b, low, high, confidence, p), test=test, interval=used, n01=n01, n10=n10)


def _paired(x: np.ndarray, y: np.ndarray, low: float, high: float, confidence: float, p: float) -> dict:
    """The fields of a paired result (:class:`Comparison`, :class:`SeedComparison`), ``d = y - x``."""
    d = y - x
    means = {"mean_a": float(np.mean(x)), "mean_b": float(np.mean(y)), "delta": float(np.mean(d))}
    interval = {"ci_low": low, "ci_high": high, "confidence": confidence, "p_value": p}
    return {"n": len(d), **means, **interval, "sd_diff": float(np.std(d, ddof=1))}


# -------------------------------------------------------------------------- seeds and means


def mean_interval(values: Any, confidence: float = 0.95) -> Summary:
    """Mean of independent units (seeds, validation batches) and its Student-t interval.

    ``mean +- t_{(1+c)/2, n-1} * sd / sqrt(n)`` with ``sd`` the sample standard deviation
    (ddof = 1) (``scipy.stats.t.interval``). n = 1: ``sd`` and the interval are None (one unit
    says nothing about spread). All values equal: the interval is ``[mean, mean]``.

    Parameters
    ----------
    values : array_like, shape (n,), or a mapping whose values are used

    Example
    -------
    >>> s = mean_interval([1.0, 2.0, 3.0])
    >>> s.mean, s.sd, round(s.ci_low, 3), round(s.ci_high, 3)
    (2.0, 1.0, -0.484, 4.484)
    """
    from scipy import stats

    x = _vector(values, "values")
    confidence = _check_confidence(confidence)
    if len(x) == 0:
        raise UserError("values is empty; pass at least one value")
    mean = float(np.mean(x))
    if len(x) == 1:
        return Summary(1, mean, None, None, None, confidence)
    if np.ptp(x) == 0:  # exactly: np.std of equal values can be 1e-17
        return Summary(len(x), float(x[0]), 0.0, float(x[0]), float(x[0]), confidence)
    sd = float(np.std(x, ddof=1))
    low, high = stats.t.interval(confidence, len(x) - 1, loc=mean, scale=sd / math.sqrt(len(x)))
    return Summary(len(x), mean, sd, float(low), float(high), confidence)


# One model's score over training seeds (a list, or a mapping seed -> score): the same computation.
seed_summary = mean_interval


def paired_by_seed(
    a_by_seed: Mapping[Any, float], b_by_seed: Mapping[Any, float], confidence: float = 0.95
) -> SeedComparison:
    """Two models trained with the same seeds, paired by seed: ``delta = mean_s (b_s - a_s)``.

    Only seeds both have are paired, at least 2 (else UserError; keys compared as text, so 0 and
    "0" from JSON match).
    Test: paired t-test ``t = mean(d) / (sd(d) / sqrt(n))`` with n - 1 degrees of freedom
    (``scipy.stats.ttest_rel``); interval: its Student-t interval of the mean difference. When
    every seed has the same difference the spread is 0: the interval is that difference and
    p = 1 if it is 0, else 0 (the t-test's limit).

    Parameters
    ----------
    a_by_seed, b_by_seed : mapping seed -> score

    Example
    -------
    >>> c = paired_by_seed({0: 0.40, 1: 0.42, 2: 0.41}, {0: 0.43, 1: 0.44, 2: 0.42})
    >>> round(c.delta, 3), c.wins, c.losses
    (0.02, 3, 0)
    """
    from scipy import stats

    for name, scores in (("a_by_seed", a_by_seed), ("b_by_seed", b_by_seed)):
        if not isinstance(scores, Mapping):
            raise UserError(f"{name} must map seed -> score (e.g. {{0: 0.41, 1: 0.43}})")
    a, b = ({str(k): v for k, v in scores.items()} for scores in (a_by_seed, b_by_seed))
    seeds = tuple(sorted(set(a) & set(b), key=_seed_order))
    unpaired = tuple(sorted(set(a) ^ set(b), key=_seed_order))
    if len(seeds) < 2:
        raise UserError(
            f"paired_by_seed needs at least 2 seeds both models have; common: {list(seeds)}, "
            f"unpaired: {list(unpaired)}; train the missing seeds"
        )
    x = _vector([a[s] for s in seeds], "a_by_seed")
    y = _vector([b[s] for s in seeds], "b_by_seed")
    confidence = _check_confidence(confidence)
    d = y - x
    delta = float(np.mean(d))
    if np.ptp(d) == 0:
        low = high = delta
        p = 1.0 if delta == 0 else 0.0
    else:
        result = stats.ttest_rel(y, x)
        low, high = (float(v) for v in result.confidence_interval(confidence))
        p = float(result.pvalue)
    counts = {"wins": int(np.sum(d > 0)), "losses": int(np.sum(d < 0)), "ties": int(np.sum(d == 0))}
    return SeedComparison(**_paired(x, y, low, high, confidence, p), seeds=seeds, **counts, unpaired=unpaired)


def _seed_order(seed: str) -> tuple[int, Any]:
    return (0, int(seed)) if seed.lstrip("-").isdigit() else (1, seed)


# ---------------------------------------------------------------------------- over tasks


def sign_test(deltas: Any, tie: float = 0.0) -> SignTest:
    """Sign test over tasks: does b beat a on more tasks than chance allows?

    ``wins`` = tasks with delta > tie, ``losses`` = delta < -tie, ties (|delta| <= tie) are
    dropped and counted. Under H0 each non-tied task is a win with probability 1/2:
    ``p = binomtest(wins, wins + losses, 0.5)`` two-sided; p = 1 when every task ties.

    Parameters
    ----------
    deltas : array_like, shape (n_tasks,), or a mapping task -> delta (b - a)

    Example
    -------
    >>> s = sign_test([0.5] * 23 + [-0.2] * 2)     # the paper: NITP wins 23 of 25 MTEB tasks
    >>> s.wins, s.losses, s.p_value < 1e-4
    (23, 2, True)
    """
    from scipy import stats

    d = _vector(deltas, "deltas")
    wins, losses = int(np.sum(d > tie)), int(np.sum(d < -tie))
    ties = len(d) - wins - losses
    p = 1.0 if wins + losses == 0 else float(stats.binomtest(wins, wins + losses, 0.5).pvalue)
    return SignTest(wins, losses, ties, p)


def group_mean_interval(
    per_task_deltas: Any, confidence: float = 0.95, seed: int = 0, n_resamples: int = 10_000
) -> GroupMean:
    """Mean of per-task deltas (an MTEB group average) with a bootstrap interval over tasks.

    Tasks are resampled with replacement (``scipy.stats.bootstrap``, one sample, BCa with the
    percentile fallback of :func:`paired_bootstrap_interval`). The interval is about which
    tasks happened to be in the group; with fewer than ~10 tasks it is too narrow (bootstrap
    coverage falls below nominal), so read it with the sign test. One task: no interval.

    Parameters
    ----------
    per_task_deltas : array_like, shape (n_tasks,), or a mapping task -> delta (b - a)

    Example
    -------
    >>> g = group_mean_interval([0.01, 0.02, 0.015, 0.03, 0.0])
    >>> round(g.delta, 3), g.ci_low < g.delta < g.ci_high
    (0.015, True)
    """
    d = _vector(per_task_deltas, "per_task_deltas")
    confidence = _check_confidence(confidence)
    if len(d) == 0:
        raise UserError("per_task_deltas is empty; pass one delta per task")
    mean = float(np.mean(d))
    if len(d) == 1:
        return GroupMean(1, mean, None, None, confidence, "none")
    if np.ptp(d) == 0:
        return GroupMean(len(d), mean, mean, mean, confidence, "exact", sd_diff=0.0)
    low, high, used = _bootstrap_mean_ci(d, confidence, _check_resamples(n_resamples), seed)
    return GroupMean(len(d), mean, low, high, confidence, used, sd_diff=float(np.std(d, ddof=1)))


# ---------------------------------------------------------------------- multiple comparisons


def holm(p_values: Iterable[float]) -> list[float]:
    """Holm's step-down adjusted p-values (Holm 1979) for a family of m tests.

    Sorted ascending, ``p_(i)`` becomes ``max_{j <= i} min(1, (m - j + 1) p_(j))``
    (``statsmodels.stats.multitest.multipletests(method="holm")``); a test is significant at
    level alpha when its adjusted p < alpha, which controls the family-wise error rate.

    Example
    -------
    >>> [round(p, 3) for p in holm([0.01, 0.04, 0.03])]
    [0.03, 0.06, 0.06]
    """
    p = _vector(list(p_values), "p_values")
    if len(p) == 0:
        return []
    if np.any((p < 0) | (p > 1)):
        raise UserError("p_values must lie between 0 and 1")
    from statsmodels.stats.multitest import multipletests

    return [float(v) for v in multipletests(p, method="holm")[1]]


def with_holm(comparisons: Sequence[Any]) -> list[Any]:
    """The comparisons of one family (one table) with Holm-adjusted ``p_holm`` added.

    ``significant_holm`` = ``p_holm < 1 - confidence``. Works on :class:`Comparison` and
    :class:`SeedComparison` (anything with ``p_value``, ``confidence``, ``p_holm`` fields).

    Example
    -------
    >>> cs = [paired_difference([0, 1] * 20, [1, 1] * 20), paired_difference([0, 1] * 20, [0, 1] * 20)]
    >>> [c.significant_holm for c in with_holm(cs)]
    [True, False]
    """
    adjusted = holm([c.p_value for c in comparisons])
    return [
        dataclasses.replace(c, p_holm=p, significant_holm=p < 1 - c.confidence)
        for c, p in zip(comparisons, adjusted)
    ]


# ------------------------------------------------------------------------------ sentences


def format_p(p: float | None) -> str:
    """A p-value for a sentence: "p = 0.61", "p = 0.003", "p < 0.001" ("p = n/a" for None).

    Example
    -------
    >>> format_p(0.6149), format_p(0.0031), format_p(2e-7), format_p(1.0)
    ('p = 0.61', 'p = 0.003', 'p < 0.001', 'p = 1')
    """
    if p is None:
        return "p = n/a"
    if p < 0.001:
        return "p < 0.001"
    if p >= 1:
        return "p = 1"
    return f"p = {p:.2f}" if p >= 0.0095 else f"p = {p:.3f}"


def _signed(x: float, digits: int) -> str:
    text = f"{x:+.{digits}f}"
    return text[1:] if float(text) == 0 else text  # 0.0, never "-0.0"


def format_delta(c: Any, scale: float = 100, digits: int = 1, unit: str = "") -> str:
    """``scale x delta`` and its interval: "+0.4 [-1.1, +1.9]" (points of a 0..1 score), with
    ``digits`` decimals, followed by ``unit`` when one is given ("-0.2 [-0.3, -0.1] nats").

    Example
    -------
    >>> format_delta(GroupMean(5, 0.004, -0.011, 0.019, 0.95, "BCa"))
    '+0.4 [-1.1, +1.9]'
    """
    text = _signed(scale * c.delta, digits)
    if c.ci_low is None or c.ci_high is None:
        text = f"{text} [no interval, n = {c.n}]"
    else:
        text = f"{text} [{_signed(scale * c.ci_low, digits)}, {_signed(scale * c.ci_high, digits)}]"
    return f"{text} {unit}" if unit else text


_LABEL = re.compile(r"^\s*(?P<b>.+?)\s+[-−–]\s+(?P<a>.+?)(?:\s+on\s+.+)?\s*$")


def verdict(
    label: str,
    c: Any,
    n_items: int | None = None,
    *,
    names: tuple[str, str] | None = None,
    higher_is_better: bool = True,
    units: str | None = None,
    **shown: Any,
) -> str:
    """The one-line conclusion of a comparison, for under a table.

    A difference is claimed only when the test (``p_holm`` if set, else ``p_value``) is below
    ``1 - confidence`` AND the interval excludes 0; when they disagree the line says
    "borderline"; a :class:`GroupMean` (no test) is judged by its interval alone.

    Parameters
    ----------
    label : str
        "B - A on WHAT"; the model names (a, b) are read from it unless ``names`` is given.
    c : Comparison, SeedComparison or GroupMean
    n_items : int, optional
        n shown (default ``c.n``), counted in ``units`` (default: items, seeds or tasks).
    higher_is_better : bool
        False for losses (cross-entropy): a negative delta then means b is better.
    **shown
        ``scale``, ``digits``, ``unit`` of :func:`format_delta`: ``scale x delta`` is shown with
        ``digits`` decimals followed by ``unit``.

    Examples
    --------
    >>> g = GroupMean(7, 0.004, -0.011, 0.019, 0.95, "BCa")
    >>> verdict("NITP - NTP on MTEB STS", g)
    'NITP - NTP on MTEB STS: +0.4 [-1.1, +1.9]: no detectable difference at n = 7 tasks'
    """
    m = _LABEL.match(label)
    a_name, b_name = names or ((m["a"], m["b"]) if m else ("a", "b"))
    n = c.n if n_items is None else n_items
    units = units or getattr(c, "units", "items")
    delta = format_delta(c, **shown)
    holm_adjusted = getattr(c, "p_holm", None) is not None
    p = c.p_holm if holm_adjusted else c.p_value
    p_text = format_p(p).replace("p ", "p_Holm ", 1) if holm_adjusted else format_p(p)
    interval_says = c.significant
    test_says = interval_says if p is None else p < 1 - c.confidence
    head = f"{label}: {delta}" + ("" if p is None else f", {p_text}")
    if not interval_says and not test_says:
        return f"{head}: no detectable difference at n = {n:,} {units}"
    if interval_says != test_says:
        return f"{head}: borderline (the test and the interval disagree) at n = {n:,} {units}"
    winner = b_name if (c.delta > 0) == higher_is_better else a_name
    test = TEST_NAMES.get(c.test, c.test)
    extra = "" if p is None else f"{p_text}, "
    return f"{label}: {delta}: {winner} better ({extra}{test}, n = {n:,} {units})"
