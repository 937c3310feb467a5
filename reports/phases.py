"""The three phases of the NITP loss (the paper's Figure 5), found in a logged curve.

The paper describes the unweighted NITP loss ``1 - cos(P(h_t), z_{t+1})`` over training as:

I.   a sharp drop within a few dozen steps (random-init collapse) to a minimum (~0.02);
II.  a rise to a hump (~0.25) during warm-up, as the shallow target layer becomes structured;
III. a long decline after the hump, settling low (~0.025 at 9B by 40k steps).

:func:`detect_phases` finds the end of phase I (the initial minimum), the end of phase II (the
hump's peak) and where phase III settles (convergence) -- and finds *nothing* in a flat,
monotone or merely noisy curve. Method:

1. Remove isolated spikes (running median of 5, of 3 where logging is sparse), then smooth
   with a moving mean whose window is a fixed width in log-step (+-``window`` of the step):
   early steps, where the curve moves fast, are smoothed little.
2. Noise ``sigma`` from the residuals raw - smoothed: the larger of the robust Gaussian scale
   (1.4826 x median |r|) and the 99th percentile of |r| / 2.576, so heavy-tailed noise raises
   the bar instead of passing for a phase.
3. A difference between smoothed points i and j counts only when it exceeds both
   ``z * sigma * sqrt(1/n_i + 1/n_j)`` (n = points averaged) and ``min_prominence`` x the
   curve's range -- so noise never makes a phase, whatever the loss scale.
4. The hump is the point j maximising ``min(s_j - min s[:j], s_j - min s[j:])`` (its
   prominence, ``scipy.signal.peak_prominences``); its rise and fall must both count, the drop
   from the start to the lowest point before it (the initial minimum) must count, and it must
   be wide: above half its height over at least a factor 1.5 in steps (noise bumps are
   narrow). With no hump, a short run still in phase II gives the initial minimum alone: the
   global minimum, with a counting drop before it, a counting, sustained rise to the last
   point after it, and a trough of at least 3 points below half that rise (a dip of one or two
   outliers is no minimum).
5. Convergence (phase III settles) is the first step after the hump from which the smoothed
   curve stays at or below ``min + settle x (peak - min)``, with min the initial minimum and
   peak the hump: a fixed level once the hump is found, so it does not move when the run is
   longer or shorter (a level relative to the last logged value would).

Lines logged up to ``start_step`` (``nitp.start_step`` of the run: NITP off, the projector
untrained) are dropped and the step axis is counted from ``start_step``, so the phases are those of the
NITP loss from the step it was switched on.

Example
-------
>>> steps = np.arange(1, 3001)
>>> loss = 0.02 + 0.98 * np.exp(-steps / 8) + 0.23 * np.exp(-((np.log(steps) - np.log(600)) / 0.8) ** 2)
>>> p = detect_phases(steps, loss)
>>> p.found, 20 < p.initial_min.step < 120, 300 < p.hump_peak.step < 1000
(True, True, True)
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.stats import median_abs_deviation


@dataclass(frozen=True)
class PhasePoint:
    step: float
    value: float  # of the smoothed curve


@dataclass(frozen=True)
class NitpPhases:
    """Phase boundaries (None when not present); ``smoothed`` is the curve they were read on."""

    initial_min: PhasePoint | None
    hump_peak: PhasePoint | None
    converged: PhasePoint | None
    noise: float
    steps: np.ndarray = field(repr=False, compare=False, default_factory=lambda: np.zeros(0))
    smoothed: np.ndarray = field(repr=False, compare=False, default_factory=lambda: np.zeros(0))

    @property
    def found(self) -> bool:
        """True when the drop and the hump (phases I and II) are both there."""
        return self.initial_min is not None and self.hump_peak is not None

    def describe(self) -> str:
        low, hump, end = self.initial_min, self.hump_peak, self.converged
        if low is None:
            return "no NITP-loss phases detected (flat, monotone or noisy curve)"
        first = f"phase I ends at step {low.step:g} (minimum {low.value:.4g})"
        if hump is None:
            return first + "; the loss is rising since (phase II, no hump peak yet)"
        third = (
            f"phase III settles from step {end.step:g} ({end.value:.4g})"
            if end
            else "phase III has not settled yet"
        )
        return f"{first}; phase II ends at the hump peak, step {hump.step:g} ({hump.value:.4g}); {third}"


def log_window_mean(
    steps: np.ndarray, values: np.ndarray, window: float = 0.1, min_half: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Mean of the points whose log(1+step) is within log(1+window) of each point's.

    Returns ``(smoothed, counts)``, both shape [n]. Each window also holds at least
    ``min_half`` neighbours on each side, except near the ends, where it stays symmetric
    (the first point is its own mean) so that the fast early drop is not smeared. O(n)
    through prefix sums.
    """
    x = np.log1p(np.asarray(steps, dtype=np.float64))
    half = np.log1p(window)
    n = len(x)
    idx = np.arange(n)
    room = np.minimum(np.minimum(idx, n - 1 - idx), min_half)  # symmetric at the ends
    lo = np.minimum(np.searchsorted(x, x - half, side="left"), idx - room)
    hi = np.maximum(np.searchsorted(x, x + half, side="right"), idx + room + 1)
    csum = np.concatenate([[0.0], np.cumsum(values)])
    counts = hi - lo
    return (csum[hi] - csum[lo]) / counts, counts


def running_median(values: np.ndarray, width: int = 5) -> np.ndarray:
    """Median of each point and its neighbours (``width`` points, odd; near the ends, the
    symmetric window that fits): removes isolated spikes (a bad batch) while keeping steps
    and edges where they are."""
    from scipy.ndimage import median_filter  # imported here: `nitp-report --help` loads this module

    n, half = len(values), width // 2
    med = median_filter(values, size=width, mode="nearest")  # the interior; ends redone below
    for i in [*range(min(half, n)), *range(max(n - half, 0), n)]:
        r = min(i, n - 1 - i)
        med[i] = np.median(values[i - r : i + r + 1])
    return med


def noise_scale(residuals: np.ndarray) -> float:
    """A standard deviation that also respects heavy tails: the larger of 1.4826 x median |r| (the
    MAD about 0) and the 99th percentile of |r| / 2.576 (equal for Gaussian noise)."""
    core = median_abs_deviation(residuals, center=lambda r, axis: 0.0, scale="normal")
    return max(float(core), float(np.quantile(np.abs(residuals), 0.99)) / 2.576)


def robust_smooth(
    steps: np.ndarray, values: np.ndarray, window: float = 0.1
) -> tuple[np.ndarray, np.ndarray, float]:
    """Despike, smooth in log-step, clip outliers at 3 sigma, despike and smooth again.

    Despiking is a running median of 5 where the log-step window holds at least 5 points and
    of 3 where logging is sparse (a sharp early minimum logged every 10 steps keeps its depth).
    Returns ``(smoothed, independent values per window, sigma)`` with sigma from
    :func:`noise_scale`.
    """
    _, counts = log_window_mean(steps, values, window, min_half=0)

    def despike(v: np.ndarray) -> np.ndarray:
        return np.where(counts >= 5, running_median(v, 5), running_median(v, 3))

    first, _ = log_window_mean(steps, despike(values), window)
    sigma = noise_scale(values - first)
    clipped = np.clip(values, first - 3 * sigma, first + 3 * sigma)
    smoothed, counts = log_window_mean(steps, despike(clipped), window)
    # Neighbouring medians share most of their points: a window holds about counts/5
    # independent values, which is what the significance test must use.
    return smoothed, np.maximum(counts / 5.0, 1.0), sigma


def detect_phases(
    steps,
    values,
    *,
    start_step: int = 0,
    window: float = 0.1,
    z: float = 4.0,
    min_prominence: float = 0.05,
    settle: float = 0.2,
) -> NitpPhases:
    """Find the NITP loss's phase boundaries (see the module doc for the method).

    Parameters
    ----------
    steps, values : array-like, shape [n]
        Training steps and the NITP loss logged at them (any order; non-finite values dropped).
    start_step : int
        The first step with NITP on (the run's ``nitp.start_step``); earlier points are dropped.
    window : float
        Smoothing half-width as a fraction of the step (0.1 = steps within about +-10%).
    z : float
        How many standard errors a rise or fall must exceed.
    min_prominence : float
        The smallest rise or fall that counts, as a fraction of the smoothed curve's range.
    settle : float
        Convergence level: ``min + settle x (peak - min)`` (initial minimum, hump peak).

    Returns
    -------
    NitpPhases
        ``initial_min``, ``hump_peak``, ``converged`` (each a ``PhasePoint`` or None).
    """
    steps, values = np.asarray(steps, dtype=np.float64), np.asarray(values, dtype=np.float64)
    start = max(int(start_step), 0)
    # a line logged at step s holds the loss of update s - 1 (0-based): NITP is on from s = start + 1
    ok = np.isfinite(steps) & np.isfinite(values) & (steps >= 0) & ((steps > start) if start else True)
    order = np.argsort(steps[ok], kind="stable")
    steps, values = steps[ok][order], values[ok][order]
    if len(steps) < 8:
        return NitpPhases(None, None, None, 0.0, steps, values)
    # smoothing windows are fractions of the steps since NITP was switched on
    s, n, sigma = robust_smooth(steps - start, values, window)
    floor = min_prominence * float(s.max() - s.min())

    def counts(i: int, j: int) -> bool:
        """Is s[j] - s[i] (positive) more than noise and more than the prominence floor?"""
        diff = s[j] - s[i]
        return bool(diff > floor and diff > z * sigma * np.sqrt(1.0 / n[i] + 1.0 / n[j]))

    point = lambda i: PhasePoint(float(steps[i]), float(s[i]))  # noqa: E731
    peak, prominence, low, after = _most_prominent_peak(s)
    if (
        prominence > 0
        and counts(low, peak)
        and counts(after, peak)
        and low > 0
        and counts(low, 0)
        and _wide(s, steps, peak, s[peak] - prominence / 2)
    ):
        converged = _converged(s, peak, s[low] + settle * (s[peak] - s[low]), point)
        return NitpPhases(point(low), point(peak), converged, sigma, steps, s)
    low = int(np.argmin(s))
    last = len(s) - 1
    mid = (s[low] + s[last]) / 2
    if (
        0 < low < last
        and counts(low, 0)
        and counts(low, last)
        and _wide(s, steps, last, mid, factor=1.2)
        and np.ptp(_span(s <= mid, low)) + 1 >= 3  # points in the trough: 3 or more, not a dip
    ):
        return NitpPhases(point(low), None, None, sigma, steps, s)
    return NitpPhases(None, None, None, sigma, steps, s)


def _span(mask: np.ndarray, at: int) -> tuple[int, int]:
    """``(first, last)``: the run of True in ``mask`` that holds index ``at`` (a trough, a hump)."""
    left, right = np.flatnonzero(~mask[:at]), np.flatnonzero(~mask[at:])
    return (left[-1] + 1 if len(left) else 0), (at + right[0] - 1 if len(right) else len(mask) - 1)


def _wide(
    s: np.ndarray, steps: np.ndarray, top: int, level: float, factor: float = 1.5, points: int = 8
) -> bool:
    """Does the run of points above ``level`` around ``top`` span ``factor`` x in (1+step) and
    at least ``points`` logged points? A real hump lasts from tens to thousands of steps; a
    noise bump is narrow.
    """
    first, last = _span(s > level, top)  # s[top] is above level at every call
    return bool((1 + steps[last]) / (1 + steps[first]) >= factor and last - first + 1 >= points)


def _most_prominent_peak(s: np.ndarray) -> tuple[int, float, int, int]:
    """``(peak, prominence, left base, right base)`` of the most prominent local maximum of
    ``s`` (the first point of a flat top); ``(0, 0.0, 0, 0)`` when ``s`` has none.

    The prominence is ``min(s_j - min s[:j], s_j - min s[j:])`` at that peak (scipy takes each
    side's minimum only up to a higher point, which gives the same value at the best peak).
    """
    from scipy.signal import find_peaks, peak_prominences

    _, flat = find_peaks(s, plateau_size=1)
    tops = flat["left_edges"]
    if not len(tops):
        return 0, 0.0, 0, 0
    prominences, left_bases, right_bases = peak_prominences(s, tops)
    best = int(np.argmax(prominences))
    return int(tops[best]), float(prominences[best]), int(left_bases[best]), int(right_bases[best])


def _converged(s: np.ndarray, peak: int, level: float, point) -> PhasePoint | None:
    """First point after ``peak`` from which ``s`` stays <= ``level`` (None if the run ends first)."""
    above = np.nonzero(s[peak:] > level)[0]
    first_inside = peak + (int(above[-1]) + 1 if len(above) else 0)
    return point(first_inside) if first_inside < len(s) - 1 else None


def run_phases(metrics: list[dict], config: dict | None) -> NitpPhases:
    """:func:`detect_phases` of a run's logged ``loss_nitp`` (metrics.jsonl lines), from its
    first NITP step (``nitp.start_step`` of its config; 0 when absent or not a number)."""
    rows = [(m["step"], m["loss_nitp"]) for m in metrics if isinstance(m.get("loss_nitp"), (int, float))]
    steps, values = (list(v) for v in zip(*rows)) if rows else ([], [])
    try:
        start = int(((config or {}).get("nitp") or {}).get("start_step") or 0)
    except (TypeError, ValueError):
        start = 0
    return detect_phases(steps, values, start_step=start)
