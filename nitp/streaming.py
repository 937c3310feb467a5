"""Mergeable float64 accumulators: the streaming core of every geometry statistic.

Each accumulator sees rows ``x`` of shape ``[N, d]`` (numpy arrays or torch tensors of any
float dtype, on any device), converts them to float64 a chunk at a time, and keeps only a
fixed-size state: memory is independent of the number of tokens. Two accumulators merge
exactly (``merge``), across batches or across DDP ranks (``all_reduce_``), and a stream of
batches gives the same state as one big batch to float64 rounding (~1e-12 relative).

========================  ===========================================  ==================
accumulator               state                                        gives
========================  ===========================================  ==================
``Moments``               count n, mean [d], centred scatter M2 [d,d]  covariance spectrum
``CrossMoments``          n, means, cross scatter C [da,db], trace_b   ridge maps, CKA
``MeanTrace``             n, mean [d], trace of the centred scatter    R^2 denominators
``UnitSums``              sum of unit vectors (+ per-group folds)      exact anisotropy
``NormStats``             sum / max of norms, log-grid histograms      norms, massive acts
``MeanValue``             sum, count                                   mean cosines
``HSICMoments``           n, means, C, traces, sum ||a||^2 ||b||^2     debiased CKA, Procrustes
========================  ===========================================  ==================

Derived: ``linear_cka``, ``procrustes_distance`` and ``RidgeSolver`` (GCV-chosen ridge maps) from
``Moments`` + ``CrossMoments``; ``cka_from_hsic`` (plain or debiased) and the layer-by-layer
``similarity_map`` of two models (or of one with itself) from ``HSICMoments``.

Merging two moment states (Chan, Golub & LeVeque 1979), with ``delta = mean_b - mean_a``::

    n    = n_a + n_b
    mean = mean_a + delta * n_b / n
    M2   = M2_a + M2_b + outer(delta, delta) * n_a * n_b / n

Inside one chunk the scatter is computed two-pass (subtract the chunk's float64 mean first), so
a large common offset never meets float32 — that is what makes these exact where a float32
``E[x x^T] - mu mu^T`` loses every digit.

Example
-------
>>> import numpy as np
>>> x = np.random.default_rng(0).normal(size=(1000, 8))
>>> a = Moments().update(x[:300]); b = Moments().update(x[300:])
>>> bool(np.allclose(a.merge(b).covariance(), np.cov(x.T, bias=True)))
True
"""

from __future__ import annotations

import contextlib
import math
from typing import Any

CHUNK_ROWS = 8192  # rows converted to float64 at a time (bounds the float64 copy)
HIST_SHIFT = 18  # NormStats bins: float32 bits >> 18 = 32 bins per octave (2.2 %)
N_BINS = 1 << (31 - HIST_SHIFT)


def as_rows(x: Any):
    """A 2-D torch view of ``x`` (numpy arrays are wrapped without copying; CPU)."""
    import numpy as np
    import torch

    t = x.detach() if torch.is_tensor(x) else torch.from_numpy(np.ascontiguousarray(np.asarray(x)))
    if t.ndim != 2:
        raise ValueError(f"expected an [N, d] array of row vectors, got shape {tuple(t.shape)}")
    if not (t.is_floating_point() or t.dtype in (torch.int32, torch.int64)):
        raise ValueError(f"expected a float array, got dtype {t.dtype}")
    return t


def _chunks(t):
    """float64 chunks of at most CHUNK_ROWS rows of a 2-D tensor."""
    import torch

    for start in range(0, t.shape[0], CHUNK_ROWS):
        yield t[start : start + CHUNK_ROWS].to(torch.float64)


def _plus(total, t):
    """``total + t`` on ``total``'s device, a new tensor; ``t`` itself (copied) when ``total`` is None."""
    return t.clone() if total is None else total + t.to(total.device)


def _dist_sum(t, group=None):
    import torch.distributed as dist

    dist.all_reduce(t, op=dist.ReduceOp.SUM, group=group)
    return t


@contextlib.contextmanager
def small_eig_threads(matrix):
    """Run a CPU eigendecomposition of a d x d matrix (d <= 2048) on one thread.

    Multithreaded LAPACK gains little at these sizes, and on a busy machine its spinning
    threads turn a 30 ms ``eigvalsh`` of a 384 x 384 matrix into seconds.
    """
    import torch

    if matrix.device.type != "cpu" or matrix.shape[0] > 2048:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# ----------------------------------------------------------------------------- moments
class _Centred:
    """Count, means and sums of centred rows, merged exactly (``Moments``, ``CrossMoments``,
    ``MeanTrace``, ``HSICMoments``): a merge (``all_reduce_``: across DDP ranks) re-centres every
    state at the pooled means (``_recentre``) and adds them, the rule of the module docstring.

    A subclass names its ``_means`` and ``_sums`` (value before any row) and gives a chunk's
    ``_chunk_sums``; second-order sums re-centre by ``sums + n spread(mean_old - mean_new)``
    (``_spread``: ``outer(delta, delta)`` for a scatter, ``delta . delta`` for its trace).
    """

    _means: tuple[str, ...] = ("mean",)
    _sums: dict[str, Any] = {}

    def __init__(self):
        self.count = 0
        vars(self).update(dict.fromkeys(self._means), **self._sums)  # means: float64 [d], None before a row

    def _state(self) -> list:
        return [getattr(self, k) for k in (*self._means, *self._sums)]

    def _update(self, *arrays):
        rows = [as_rows(x) for x in arrays]
        if rows[0].shape[0] != rows[-1].shape[0]:
            raise ValueError(f"paired rows differ in number: {rows[0].shape[0]} vs {rows[-1].shape[0]}")
        for chunks in zip(*map(_chunks, rows)):
            if chunks[0].shape[0]:
                chunks = [c.to(chunks[0].device) for c in chunks]
                means = [c.mean(0) for c in chunks]
                sums = self._chunk_sums(*(c - m for c, m in zip(chunks, means)))
                self._merge_parts(chunks[0].shape[0], [*means, *sums])
        return self

    def _recentre(self, n, state: list, means: list) -> list:
        """The sums of ``state`` (``n`` rows, centred at its own means) centred at ``means``."""
        spread = self._spread(*(b - a for a, b in zip(means, state)))
        return [s + n * t for s, t in zip(state[len(self._means) :], spread)]

    def _merge_parts(self, n_b: int, state: list) -> None:
        """Add the state (means, then sums) of ``n_b > 0`` rows."""
        if self.count == 0:
            self.count = n_b
            for k, v in zip((*self._means, *self._sums), state):
                setattr(self, k, v.clone() if hasattr(v, "clone") else v)
            return
        mine, n = self._state(), self.count + n_b
        state = [v.to(mine[0].device) if hasattr(v, "to") else v for v in state]
        k = len(self._means)
        if type(self)._recentre is _Centred._recentre:  # sums + n spread(delta): Chan's rule, in place
            deltas = [b - a for a, b in zip(mine[:k], state[:k])]  # sums += theirs + n_a n_b / n spread
            w = self.count * n_b / n
            for name, a, b, t in zip(self._sums, mine[k:], state[k:], self._spread(*deltas)):
                setattr(self, name, a.add_(b).add_(t, alpha=w) if hasattr(a, "add_") else a + b + w * t)
            vars(self).update({m: a + d * (n_b / n) for m, a, d in zip(self._means, mine, deltas)}, count=n)
            return
        means = [a + (b - a) * (n_b / n) for a, b in zip(mine, state[:k])]
        ours, theirs = self._recentre(self.count, mine, means), self._recentre(n_b, state, means)
        for k, a, b in zip(self._sums, ours, theirs):
            setattr(self, k, a + b)
        vars(self).update(zip(self._means, means), count=n)

    def merge(self, other):
        """Add ``other``'s rows to this state (in place); returns self."""
        if other.count:
            self._merge_parts(other.count, other._state())
        return self

    def copy(self):
        return type(self)().merge(self)

    def all_reduce_(self, group=None):
        """Merge the states of all DDP ranks (exact; every rank ends with the total).

        mean = sum_r n_r mean_r / n; every rank's sums recentred at it and summed, e.g.
        M2 = sum_r [M2_r + n_r (mean_r - mean)(mean_r - mean)^T]. Every rank must have seen at
        least one row (the dimension must be known).
        """
        import torch

        mine = self._state()
        n_r = torch.tensor([float(self.count)], dtype=torch.float64, device=mine[0].device)
        n = _dist_sum(n_r.clone(), group)
        means = [_dist_sum(a * n_r, group) / n for a in mine[: len(self._means)]]
        for k, a, s in zip(self._sums, mine[len(self._means) :], self._recentre(n_r, mine, means)):
            total = _dist_sum(s, group)  # a tensor (n_r is one), for a float sum too
            setattr(self, k, total if torch.is_tensor(a) else float(total))
        vars(self).update(zip(self._means, means), count=int(round(float(n))))
        return self


class Moments(_Centred):
    """Count, mean and centred second moment (scatter) of row vectors, float64.

    ``M2 = sum_i (x_i - mean)(x_i - mean)^T``, shape [d, d]; the covariance is ``M2 / n``
    (population normalisation — effective ranks and shares do not depend on it).
    """

    _sums = {"m2": None}  # float64 [d, d]

    def update(self, x) -> Moments:
        return self._update(x)

    def _chunk_sums(self, c):
        return (c.T @ c,)

    def _spread(self, delta):
        return (delta[:, None] * delta[None, :],)

    def covariance(self):
        """The empirical covariance ``M2 / n`` as a float64 numpy array [d, d]."""
        if not self.count:
            raise ValueError("no rows seen")
        return (self.m2 / self.count).cpu().numpy()

    def eigenvalues(self):
        """Eigenvalues of the covariance, float64 numpy, descending, numerically-zero ones set to 0.

        ``eigvalsh`` returns tiny negative (and positive) values for directions without variance;
        everything below ``d * eps * lambda_max`` is rounding noise of the scatter and is set to 0
        (the same tolerance rule as numpy's ``matrix_rank``).
        """
        import numpy as np
        import torch

        if not self.count:
            raise ValueError("no rows seen")
        cov = 0.5 * (self.m2 + self.m2.T) / self.count
        with small_eig_threads(cov):
            lam = torch.linalg.eigvalsh(cov).cpu().numpy()[::-1].copy()
        top = max(float(lam[0]), 0.0)
        lam[lam <= top * lam.size * np.finfo(np.float64).eps] = 0.0
        return lam


class CrossMoments(_Centred):
    """Paired rows ``(a_i, b_i)``: count, both means and the centred cross scatter.

    ``C = sum_i (a_i - mean_a)(b_i - mean_b)^T``, shape [da, db]. Merge rule as ``Moments``
    with ``outer(delta_a, delta_b)``. Also keeps ``trace_b = sum_i ||b_i - mean_b||^2`` (the
    ``MeanTrace`` of b), which a ridge fit of b on a needs for its residuals.
    """

    _means = ("mean_a", "mean_b")
    _sums = {"cross": None, "trace_b": 0.0}

    def update(self, a, b) -> CrossMoments:
        return self._update(a, b)

    def _chunk_sums(self, a, b):
        return a.T @ b, float((b * b).sum())

    def _spread(self, da, db):
        return da[:, None] * db[None, :], float(db @ db)


class MeanTrace(_Centred):
    """Count, mean and the trace of the centred scatter (sum of squared distances to the mean).

    The vector analogue of Welford's variance: ``trace = sum_i ||x_i - mean||^2``.
    """

    _sums = {"trace": 0.0}

    def update(self, x) -> MeanTrace:
        return self._update(x)

    def _chunk_sums(self, c):
        return (float((c * c).sum()),)

    def _spread(self, delta):
        return (float(delta @ delta),)


# ----------------------------------------------------------------------------- anisotropy
def _group_tensor(groups, n: int):
    """Group ids as a CPU int64 tensor [n] (or None)."""
    import torch

    if groups is None:
        return None
    g = torch.as_tensor(groups).detach().cpu().reshape(-1).to(torch.int64)
    if g.shape[0] != n:
        raise ValueError(f"groups has {g.shape[0]} ids for {n} rows")
    return g


def _group_sums(u, inverse, n_groups: int):
    """Per-group sums of the rows of ``u`` [N, d].

    Contiguous groups (each group's rows adjacent, as tokens of a sequence are) take a segment
    sum; otherwise a one-hot matmul when small, else ``index_add_``.
    """
    import torch

    runs, counts = torch.unique_consecutive(inverse, return_counts=True)
    if runs.shape[0] == n_groups:  # contiguous: one run per group
        seg = torch.segment_reduce(u, "sum", lengths=counts.to(u.device), axis=0)
        return torch.zeros_like(seg).index_copy_(0, runs.to(u.device), seg)
    if n_groups * u.shape[0] <= (1 << 22):  # one-hot [G, N] of at most 32 MB: BLAS is much faster
        onehot = torch.zeros(n_groups, u.shape[0], dtype=u.dtype, device=u.device)
        onehot[inverse, torch.arange(u.shape[0], device=u.device)] = 1.0
        return onehot @ u
    return torch.zeros(n_groups, u.shape[1], dtype=u.dtype, device=u.device).index_add_(0, inverse, u)


class UnitSums:
    """Sums of unit vectors: the exact mean pairwise cosine in O(N d), with optional groups.

    With ``u_i = x_i / ||x_i||`` and ``s = sum_i u_i``, ``sum_{i != j} u_i . u_j = ||s||^2 - N``,
    so the mean cosine over all ordered pairs i != j is ``(||s||^2 - N) / (N (N - 1))``.
    With groups g (e.g. sequence ids) and per-group sums ``s_g`` of sizes ``n_g``:

    * across groups: ``(||s||^2 - sum_g ||s_g||^2) / (N^2 - sum_g n_g^2)``
    * within groups: ``(sum_g ||s_g||^2 - N) / (sum_g n_g^2 - N)``

    Per-group sums are folded into the two scalars at the end of each ``update`` call, so memory
    stays O(d): a group must be complete within one call (every sequence lives in one batch);
    a group id seen again in a later call raises ``ValueError``. Zero vectors have no direction
    and are left out (counted in ``n_zero``).
    """

    def __init__(self):
        self.count = 0
        self.n_zero = 0
        self.total = None  # float64 [d]
        self.group_sq = 0.0  # sum_g ||s_g||^2
        self.group_n_sq = 0  # sum_g n_g^2
        self.has_groups = False
        self._seen_groups: set[int] = set()

    def update(self, x, groups=None) -> UnitSums:
        """Add rows ``x`` [N, d] (normalised here) with optional group ids [N]."""
        import torch

        t = as_rows(x)
        g = _group_tensor(groups, t.shape[0])
        units, keep = [], []
        for c in _chunks(t):
            norms = torch.linalg.vector_norm(c, dim=1)
            ok = norms > 0
            units.append(c[ok] / norms[ok, None])
            keep.append(ok.cpu())
        if not units:
            return self
        ok_all = torch.cat(keep)
        self.n_zero += int((~ok_all).sum())
        return self.add_units(torch.cat(units), None if g is None else g[ok_all])

    def add_units(self, u, groups=None) -> UnitSums:
        """Add rows that are already unit vectors (float64 [N, d]); ``groups`` as in ``update``."""
        import torch

        if u.shape[0] == 0:
            return self
        self.count += int(u.shape[0])
        self.total = _plus(self.total, u.sum(0))
        if groups is None:
            return self
        g = _group_tensor(groups, u.shape[0])
        ids, inverse = torch.unique(g, return_inverse=True)
        overlap = self._seen_groups.intersection(ids.tolist())
        if overlap:
            raise ValueError(
                f"group id(s) {sorted(overlap)[:5]} already seen in an earlier update: "
                "each group must be complete within one update call"
            )
        sums = _group_sums(u, inverse.to(u.device), len(ids))
        sizes = torch.bincount(inverse, minlength=len(ids))
        self.has_groups = True
        self.group_sq += float((sums * sums).sum())
        self.group_n_sq += int((sizes**2).sum())
        self._seen_groups.update(ids.tolist())
        return self

    def merge(self, other: UnitSums) -> UnitSums:
        if other.total is None:
            return self
        overlap = self._seen_groups & other._seen_groups
        if overlap:
            raise ValueError(f"cannot merge: group id(s) {sorted(overlap)[:5]} appear in both states")
        self.total = _plus(self.total, other.total)
        self.count += other.count
        self.n_zero += other.n_zero
        self.group_sq += other.group_sq
        self.group_n_sq += other.group_n_sq
        self.has_groups = self.has_groups or other.has_groups
        self._seen_groups |= other._seen_groups
        return self

    def all_reduce_(self, group=None) -> UnitSums:
        """Sum the states of all DDP ranks (group ids must differ between ranks)."""
        import torch

        values = [self.count, self.n_zero, self.group_sq, self.group_n_sq]
        scalars = _dist_sum(torch.tensor(values, dtype=torch.float64, device=self.total.device), group)
        self.total = _dist_sum(self.total.clone(), group)
        self.count, self.n_zero = int(round(float(scalars[0]))), int(round(float(scalars[1])))
        self.group_sq, self.group_n_sq = float(scalars[2]), int(round(float(scalars[3])))
        return self

    def anisotropy(self) -> float:
        """Exact mean cosine over all pairs i != j (nan with fewer than two vectors)."""
        n = self.count
        if n < 2:
            return math.nan
        return (float(self.total @ self.total) - n) / (n * (n - 1))

    def anisotropy_across(self) -> float:
        """Exact mean cosine over pairs from different groups (nan without such pairs)."""
        pairs = self.count**2 - self.group_n_sq
        if not self.has_groups or pairs <= 0:
            return math.nan
        return (float(self.total @ self.total) - self.group_sq) / pairs

    def anisotropy_within(self) -> float:
        """Exact mean cosine over pairs i != j of the same group (nan without such pairs)."""
        pairs = self.group_n_sq - self.count
        if not self.has_groups or pairs <= 0:
            return math.nan
        return (self.group_sq - self.count) / pairs


# ----------------------------------------------------------------------------- norms
def _log_bin(values):
    """Log-scale bin of non-negative values from their float32 bit pattern (exponent + 5 mantissa bits).

    Shifting the IEEE-754 bits right by 18 keeps the 8 exponent bits and the top 5 mantissa bits:
    32 linear sub-bins per octave (each at most 2^(1/32) - 1 = 2.2 % wide in ratio), 8192 bins
    over the whole float32 range, in one pass and without a logarithm. Bin 0 holds zeros.
    """
    import torch

    return values.to(torch.float32).view(torch.int32) >> HIST_SHIFT


class NormStats:
    """Norm statistics of row vectors and the share of tokens carrying a massive activation.

    Massive activations (Sun et al. 2024, "Massive activations in large language models"): a
    token carries one when some coordinate has ``|x_ij| > max(100, 1000 * median |x|)``, the
    median taken over every coordinate of every token of the layer. The median is not
    streamable exactly, so both ``max_j |x_ij|`` per token and all ``|x_ij|`` go into log-scale
    histograms (32 bins per octave, see ``_log_bin``); the criterion is decided at that 2.2 %
    resolution. The in-memory ``geometry.norm_stats`` uses this same accumulator.
    """

    def __init__(self):
        self.count = 0
        self.norm_sum = 0.0
        self.norm_max = 0.0
        self.hist_token_max = None  # int64 [bins]
        self.hist_abs = None  # int64 [bins]

    def update(self, x) -> NormStats:
        import torch

        for c in _chunks(as_rows(x)):
            self.add(c, torch.linalg.vector_norm(c, dim=1))
        return self

    def add(self, rows, norms) -> NormStats:
        """Add float64 rows [N, d] whose L2 norms [N] are already known."""
        import torch

        if rows.shape[0] == 0:
            return self
        absval = rows.abs().to(torch.float32)  # binning at 2.2 % needs no float64
        tok_hist = torch.bincount(_log_bin(absval.amax(1)), minlength=N_BINS)
        abs_hist = torch.bincount(_log_bin(absval).reshape(-1), minlength=N_BINS)
        self.count += int(rows.shape[0])
        self.norm_sum += float(norms.sum())
        self.norm_max = max(self.norm_max, float(norms.max()))
        self.hist_token_max = _plus(self.hist_token_max, tok_hist)
        self.hist_abs = _plus(self.hist_abs, abs_hist)
        return self

    def merge(self, other: NormStats) -> NormStats:
        if other.count:
            self.count += other.count
            self.norm_sum += other.norm_sum
            self.norm_max = max(self.norm_max, other.norm_max)
            self.hist_token_max = _plus(self.hist_token_max, other.hist_token_max)
            self.hist_abs = _plus(self.hist_abs, other.hist_abs)
        return self

    def all_reduce_(self, group=None) -> NormStats:
        import torch
        import torch.distributed as dist

        dev = self.hist_abs.device
        sums = torch.tensor([self.count, self.norm_sum], dtype=torch.float64, device=dev)
        _dist_sum(sums, group)
        mx = torch.tensor([self.norm_max], dtype=torch.float64, device=dev)
        dist.all_reduce(mx, op=dist.ReduceOp.MAX, group=group)
        self.hist_token_max = _dist_sum(self.hist_token_max.clone(), group)
        self.hist_abs = _dist_sum(self.hist_abs.clone(), group)
        self.count, self.norm_sum, self.norm_max = int(round(float(sums[0]))), float(sums[1]), float(mx[0])
        return self

    def median_abs(self) -> float:
        """Median of |x_ij| over all coordinates, at the grid's resolution: the middle of its bin."""
        import torch

        cum = torch.cumsum(self.hist_abs.cpu(), 0)
        index = int(torch.searchsorted(cum, torch.tensor((int(cum[-1]) + 1) // 2)))
        middle = torch.tensor([(index << HIST_SHIFT) | (1 << (HIST_SHIFT - 1))], dtype=torch.int32)
        return float(middle.view(torch.float32)) if index else 0.0  # bin 0: zeros

    def massive_share(self) -> float:
        """Share of tokens whose largest |coordinate| lies in a bin above the bin of the threshold
        ``max(100, 1000 * median |x|)``."""
        import torch

        if not self.count:
            return math.nan
        threshold = max(100.0, 1000.0 * self.median_abs())
        tau_bin = int(_log_bin(torch.tensor([threshold], dtype=torch.float32))[0])
        return float(self.hist_token_max.cpu()[tau_bin + 1 :].sum()) / self.count

    def metrics(self) -> dict:
        if not self.count:
            return {"mean_norm": math.nan, "max_norm": math.nan, "massive_activation_share": math.nan}
        return {
            "mean_norm": self.norm_sum / self.count,
            "max_norm": self.norm_max,
            "massive_activation_share": self.massive_share(),
        }


class MeanValue:
    """A running float64 sum and count (for mean cosines)."""

    def __init__(self):
        self.total = 0.0
        self.count = 0

    def update(self, values) -> MeanValue:
        import torch

        v = torch.as_tensor(values, dtype=torch.float64).detach()
        self.total += float(v.sum())
        self.count += int(v.numel())
        return self

    def merge(self, other: MeanValue) -> MeanValue:
        self.total += other.total
        self.count += other.count
        return self

    def all_reduce_(self, group=None) -> MeanValue:
        import torch
        import torch.distributed as dist

        nccl = dist.get_backend(group) == "nccl"  # NCCL reduces CUDA tensors only
        device = torch.device("cuda", torch.cuda.current_device()) if nccl else torch.device("cpu")
        t = torch.tensor([self.total, float(self.count)], dtype=torch.float64, device=device)
        _dist_sum(t, group)
        self.total, self.count = float(t[0]), int(round(float(t[1])))
        return self

    def mean(self) -> float:
        return self.total / self.count if self.count else math.nan


# ----------------------------------------------------------------------------- derived
def linear_cka(moments_x: Moments, moments_y: Moments, cross_xy: CrossMoments) -> float:
    """Linear CKA (Kornblith et al. 2019) of two representations of the same tokens.

    ``CKA = ||X_c^T Y_c||_F^2 / (||X_c^T X_c||_F ||Y_c^T Y_c||_F)`` with column-centred X, Y
    ([N, dx], [N, dy]); 1 = the same geometry up to rotation and isotropic scaling, 0 = unrelated.
    The biased :func:`cka_from_hsic` (same :func:`_cka`), from the ``Moments`` / ``CrossMoments``
    that nitp-geom streams anyway (``HSICMoments`` adds state only the debiased CKA needs).
    """
    import torch

    # biased HSICs times (n - 1)^2, which cancels in the ratio
    scatters = (cross_xy.cross, moments_x.m2, moments_y.m2)
    return _cka(*(float(torch.linalg.matrix_norm(s) ** 2) for s in scatters))


def _cka(hsic_xy: float, hsic_xx: float, hsic_yy: float) -> float:
    """``HSIC(X, Y) / sqrt(HSIC(X, X) HSIC(Y, Y))``: the one CKA formula of :func:`linear_cka` and
    :func:`cka_from_hsic`; nan when a self-HSIC is not positive."""
    den = hsic_xx * hsic_yy
    return hsic_xy / math.sqrt(den) if den > 0 else math.nan


RIDGE_GRID = tuple(10.0 ** (e / 4) for e in range(-24, 13))  # 1e-6 .. 1e3, 4 per decade


class RidgeSolver:
    """Ridge maps b ~ a from streamed moments, with the ridge strength chosen by GCV.

    One eigendecomposition of the source scatter ``S_aa = V diag(s) V^T`` serves every target.
    For a target with cross scatter ``S_ab`` and ``G = V^T S_ab`` (row norms ``g_i = ||G_i||^2``)::

        W(alpha)   = V diag(1 / (s + alpha)) G                    (intercept: b_hat = mean_b + (a - mean_a) W)
        RSS(alpha) = trace(S_bb) - sum_i g_i (2 / (s_i + alpha) - s_i / (s_i + alpha)^2)
        df(alpha)  = 1 + sum_i s_i / (s_i + alpha)                 (the 1: the fitted intercept)
        GCV(alpha) = (RSS / n) / (1 - df / n)^2                    (Golub, Heath & Wahba 1979)

    ``alpha = r * trace(S_aa) / d`` with ``r`` on ``RIDGE_GRID`` (or fixed ``ridge``), so the
    strength is scale-free. With a fixed ``ridge`` this equals scikit-learn's
    ``Ridge(alpha=alpha, fit_intercept=True)``.
    """

    def __init__(self, moments_a: Moments):
        import torch

        self.n = moments_a.count
        self.mean_a = moments_a.mean
        with small_eig_threads(moments_a.m2):
            s, v = torch.linalg.eigh(0.5 * (moments_a.m2 + moments_a.m2.T))
        self.s, self.v = s.clamp_min(0.0), v
        self.scale = float(self.s.sum()) / self.s.shape[0]

    def solve(
        self, cross_ab: CrossMoments, trace_bb: float | None = None, ridge: float | None = None
    ) -> dict:
        """``{"W", "mean_a", "mean_b", "alpha", "ridge", "gcv"}`` for one target.

        ``ridge=None`` picks the GCV minimiser on ``RIDGE_GRID`` (needs ``trace_bb``, the centred
        trace of the target's scatter over the same pairs).
        """

        g_mat = self.v.T @ cross_ab.cross
        gcv = None
        if ridge is None:
            if trace_bb is None:
                raise ValueError("choosing the ridge strength by GCV needs trace_bb")
            g = (g_mat * g_mat).sum(1)
            scores = []
            for r in RIDGE_GRID:
                alpha = r * self.scale
                inv = 1.0 / (self.s + alpha)
                rss = trace_bb - float((g * (2 * inv - self.s * inv * inv)).sum())
                df = 1.0 + float((self.s * inv).sum())
                scores.append((max(rss, 0.0) / self.n) / (1 - df / self.n) ** 2 if df < self.n else math.inf)
            best = min(range(len(RIDGE_GRID)), key=scores.__getitem__)
            ridge, gcv = RIDGE_GRID[best], scores[best]
        alpha = ridge * self.scale
        w = self.v @ (g_mat / (self.s + alpha)[:, None])
        return dict(W=w, mean_a=cross_ab.mean_a, mean_b=cross_ab.mean_b, alpha=alpha, ridge=ridge, gcv=gcv)


# ----------------------------------------------------------------------------- similarity
class HSICMoments(_Centred):
    """Paired rows ``(a_i, b_i)``: every sum that linear CKA (biased and debiased) and the
    orthogonal Procrustes distance need, in one pass, float64, mergeable.

    With rows centred at the running means, ``a_i = x_i - mean_a`` and ``b_i = y_i - mean_b``:

    ==============  ==========================  =======  =========================================
    state           definition                  shape    used by
    ==============  ==========================  =======  =========================================
    ``cross``       ``sum_i a_i b_i^T``          [da,db]  ``||X_c^T Y_c||_F^2``, Procrustes (nuclear)
    ``trace_a/b``   ``sum_i ||a_i||^2``          scalar   ``tr K``, Frobenius normalisation
    ``quartic``     ``sum_i ||a_i||^2 ||b_i||^2``  scalar   ``sum_i K_ii L_ii`` (debiasing)
    ``sq_a_b``      ``sum_i ||a_i||^2 b_i``      [db]     merge only (re-centring ``quartic``)
    ``sq_b_a``      ``sum_i ||b_i||^2 a_i``      [da]     merge only
    ==============  ==========================  =======  =========================================

    ``quartic`` depends on the means, which are not known until the end of the stream. It is
    still exact in one pass: each chunk is centred at its own mean, and a state centred at
    ``m`` is re-centred at ``m + delta`` (``a' = a - delta_a``, ``b' = b - delta_b``, using
    ``sum_i a_i = sum_i b_i = 0``) by::

        quartic' = quartic - 2 delta_b . sq_a_b - 2 delta_a . sq_b_a + 4 delta_a^T cross delta_b
                   + ||delta_b||^2 trace_a + ||delta_a||^2 trace_b + n ||delta_a||^2 ||delta_b||^2
        sq_a_b'  = sq_a_b - trace_a delta_b - 2 cross^T delta_a - n ||delta_a||^2 delta_b
        sq_b_a'  = sq_b_a - trace_b delta_a - 2 cross delta_b - n ||delta_b||^2 delta_a
        cross'   = cross + n delta_a delta_b^T;   trace_a' = trace_a + n ||delta_a||^2

    Merging two states re-centres both at the pooled mean and adds them (Chan et al. 1979 for
    the second moments; the same idea carried to the fourth-order terms). No raw
    ``E[x x^T]``-style moment is ever formed, so a large common offset costs no digits. The
    state of one layer with itself is ``HSICMoments().update(x, x)`` (``cross`` is then the
    scatter ``M2`` of ``Moments``). Cost per row: ``2 da db`` flops, as ``CrossMoments``.

    Example
    -------
    >>> import numpy as np
    >>> x = np.random.default_rng(0).normal(size=(500, 6))
    >>> s = HSICMoments().update(x[:200], x[:200]).merge(HSICMoments().update(x[200:], x[200:]))
    >>> c = x - x.mean(0)
    >>> bool(np.isclose(s.quartic, ((c * c).sum(1) ** 2).sum()))
    True
    """

    _means = ("mean_a", "mean_b")
    _sums = {"cross": None, "trace_a": 0.0, "trace_b": 0.0, "quartic": 0.0, "sq_a_b": None, "sq_b_a": None}

    def update(self, a, b) -> HSICMoments:
        """Add paired rows ``a`` [N, da] and ``b`` [N, db] (row i of both: the same token)."""
        return self._update(a, b)

    def _chunk_sums(self, a, b):
        ra, rb = (a * a).sum(1), (b * b).sum(1)
        cross = a.T @ b
        with small_eig_threads(cross):  # matrix-vector products: threads only spin here
            sq_a_b, sq_b_a = b.T @ ra, a.T @ rb
        return cross, float(ra.sum()), float(rb.sum()), float(ra @ rb), sq_a_b, sq_b_a

    def _recentre(self, n, state: list, means: list) -> list:
        """The re-centring of the class docstring, from ``state``'s means to ``means``."""
        mean_a, mean_b, cross, ta, tb, quartic, sq_a_b, sq_b_a = state
        da, db = means[0] - mean_a, means[1] - mean_b
        da2, db2 = float(da @ da), float(db @ db)
        with small_eig_threads(cross):  # matrix-vector products: threads only spin here
            quartic = (
                quartic
                - 2 * float(db @ sq_a_b)
                - 2 * float(da @ sq_b_a)
                + 4 * float(da @ (cross @ db))
                + db2 * ta
                + da2 * tb
                + n * da2 * db2
            )
            sq_a_b = sq_a_b - ta * db - 2 * (cross.T @ da) - n * da2 * db
            sq_b_a = sq_b_a - tb * da - 2 * (cross @ db) - n * db2 * da
        return [cross + n * (da[:, None] * db[None, :]), ta + n * da2, tb + n * db2, quartic, sq_a_b, sq_b_a]

    def transposed(self) -> HSICMoments:
        """The state of the pairs ``(b_i, a_i)`` (a view sharing tensors; no arithmetic)."""
        new = HSICMoments()
        new.count, new.mean_a, new.mean_b = self.count, self.mean_b, self.mean_a
        new.cross = None if self.cross is None else self.cross.T
        new.trace_a, new.trace_b, new.quartic = self.trace_b, self.trace_a, self.quartic
        new.sq_a_b, new.sq_b_a = self.sq_b_a, self.sq_a_b
        return new


def linear_hsic(xy: HSICMoments, debiased: bool = False) -> float:
    """Linear-kernel HSIC of two representations of the same n tokens, from ``HSICMoments``.

    With centred X [n, dx], Y [n, dy], ``K = X X^T``, ``L = Y Y^T`` and row norms
    ``r_x = diag K``, ``r_y = diag L``:

    * biased (Gretton et al. 2005): ``tr(K H L H) / (n - 1)^2 = ||X^T Y||_F^2 / (n - 1)^2``;
    * debiased (Song et al. 2012, the unbiased U-statistic; Kornblith et al. 2019's "debiased
      CKA" uses it): with ``K~``, ``L~`` the Gram matrices with zeroed diagonals,
      ``[tr(K~ L~) + 1^T K~ 1 1^T L~ 1 / ((n-1)(n-2)) - 2 / (n-2) 1^T K~ L~ 1] / (n (n-3))``,
      which for centred linear kernels (``K 1 = 0``) is
      ``[||X^T Y||_F^2 - n / (n-2) r_x . r_y + ||X||_F^2 ||Y||_F^2 / ((n-1)(n-2))] / (n (n-3))``.
      It is translation invariant, so it equals the formula on the raw Gram matrices.

    The debiased value needs n >= 4 (nan otherwise) and may be negative.
    """
    import torch

    n = xy.count
    xty = float(torch.linalg.matrix_norm(xy.cross) ** 2) if n else math.nan
    if not debiased:
        return xty / (n - 1) ** 2 if n >= 2 else math.nan
    if n < 4:
        return math.nan
    num = xty - n / (n - 2) * xy.quartic + xy.trace_a * xy.trace_b / ((n - 1) * (n - 2))
    return num / (n * (n - 3))


def cka_from_hsic(xx: HSICMoments, yy: HSICMoments, xy: HSICMoments, debiased: bool = False) -> float:
    """Linear CKA ``HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L))``, biased or debiased.

    ``xx`` = ``HSICMoments().update(x, x)``, ``yy`` likewise, ``xy`` = ``update(x, y)``, all over
    the same tokens. Biased, it equals ``linear_cka`` (1 for ``Y = X R`` with R orthogonal, and
    inflated towards 1 for unrelated representations when n is not >> width); debiased, it uses
    the unbiased HSIC and is near 0 for independent representations at any n. nan when a
    self-HSIC is not positive (a constant representation, or n < 4 for the debiased one).

    Example
    -------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> x, y = rng.normal(size=(40, 100)), rng.normal(size=(40, 100))
    >>> s = [HSICMoments().update(p, q) for p, q in ((x, x), (y, y), (x, y))]
    >>> cka_from_hsic(*s) > 0.5, abs(cka_from_hsic(*s, debiased=True)) < 0.1
    (True, True)
    """
    return _cka(linear_hsic(xy, debiased), linear_hsic(xx, debiased), linear_hsic(yy, debiased))


def _procrustes_from(cross, trace_x: float, trace_y: float) -> float:
    import torch

    if trace_x <= 0 or trace_y <= 0:
        return math.nan
    nuclear = float(torch.linalg.svdvals(cross).sum())
    return max(0.0, 2.0 - 2.0 * nuclear / math.sqrt(trace_x * trace_y))


def procrustes_distance(moments_x: Moments, moments_y: Moments, cross_xy: CrossMoments) -> float:
    """Orthogonal Procrustes distance of two representations of the same tokens.

    With X, Y centred and scaled to unit Frobenius norm (zero-padded to a common width),
    ``d^2 = min_{R orthogonal} ||X R - Y||_F^2 = 2 - 2 ||X^T Y||_*`` (nuclear norm; Schoenemann
    1966; the "Procrustes" of Ding et al. 2021). Returned is ``d^2`` in [0, 2]: 0 = the same up to
    rotation, translation and isotropic scaling. From the streamed cross scatter
    ``C = X_c^T Y_c`` and the traces of both scatters: ``2 - 2 ||C||_* / sqrt(tr M2_x tr M2_y)``.
    Cost: one SVD of the [dx, dy] cross scatter (values only).
    """
    import torch

    return _procrustes_from(
        cross_xy.cross, float(torch.trace(moments_x.m2)), float(torch.trace(moments_y.m2))
    )


SIMILARITY_MEASURES = ("cka", "cka_debiased", "procrustes")


def similarity_map_from_moments(self_a: list, self_b: list, cross: list) -> dict:
    """Layer-by-layer similarity maps of two models from streamed ``HSICMoments``.

    Parameters
    ----------
    self_a : list of HSICMoments, one per layer i of model A (``update(h_i, h_i)``)
    self_b : list of HSICMoments, one per layer j of model B
    cross : list of lists, ``cross[i][j]`` = HSICMoments of ``update(h_i^A, h_j^B)``, same tokens

    Returns
    -------
    dict with ``"cka"``, ``"cka_debiased"`` and ``"procrustes"`` (squared distance), each a
    float64 numpy array [len(self_a), len(self_b)] (row i = layer i of A).
    """
    import numpy as np

    shape = (len(self_a), len(self_b))
    if len(cross) != shape[0] or any(len(row) != shape[1] for row in cross):
        raise ValueError(f"cross must be a {shape[0]} x {shape[1]} nested list of HSICMoments")
    out = {name: np.full(shape, np.nan) for name in SIMILARITY_MEASURES}
    for i, xx in enumerate(self_a):
        for j, yy in enumerate(self_b):
            xy = cross[i][j]
            out["cka"][i, j] = cka_from_hsic(xx, yy, xy)
            out["cka_debiased"][i, j] = cka_from_hsic(xx, yy, xy, debiased=True)
            out["procrustes"][i, j] = _procrustes_from(xy.cross, xx.trace_a, yy.trace_a)
    return out


def similarity_map(states_a: list, states_b: list | None = None) -> dict:
    """Similarity maps (linear CKA, debiased linear CKA, Procrustes) of in-memory layer states.

    ``states_a[i]`` [N, d_i] and ``states_b[j]`` [N, d_j] are hidden states of the same N tokens
    (row t of every array: token t). ``states_b=None`` compares model A with itself (the
    block-structure picture; its diagonal is 1 / 1 / 0). Float64 inside, via the streaming
    accumulators fed one batch. See ``similarity_map_from_moments`` for the output.

    Example
    -------
    >>> import numpy as np
    >>> h = np.random.default_rng(0).normal(size=(200, 8))
    >>> maps = similarity_map([h, h @ np.linalg.qr(np.random.default_rng(1).normal(size=(8, 8)))[0]])
    >>> bool(np.allclose(maps["cka"], 1)), bool(np.allclose(maps["procrustes"], 0, atol=1e-9))
    (True, True)
    """
    same = states_b is None
    states_b = states_a if same else states_b
    counts = {as_rows(s).shape[0] for s in list(states_a) + list(states_b)}
    if len(counts) != 1:
        raise ValueError(f"every layer must hold the same tokens; got row counts {sorted(counts)}")
    self_a = [HSICMoments().update(s, s) for s in states_a]
    self_b = self_a if same else [HSICMoments().update(s, s) for s in states_b]
    cross = [[None] * len(states_b) for _ in states_a]
    for i, a in enumerate(states_a):
        for j, b in enumerate(states_b):
            if not same:
                cross[i][j] = HSICMoments().update(a, b)
            elif j >= i:  # a model against itself: the map is symmetric, compute i <= j once
                cross[i][j] = self_a[i] if i == j else HSICMoments().update(a, b)
                cross[j][i] = cross[i][j].transposed()
    return similarity_map_from_moments(self_a, self_b, cross)
