"""NITP-loss phase detection on synthetic curves with known phases, and on curves without any."""

from __future__ import annotations

import numpy as np
import pytest

from reports.phases import detect_phases, log_window_mean, run_phases, running_median

STEPS = np.arange(1, 3001)


def three_phase(steps, hump_at=600.0, low=0.02, hump=0.23, width=0.8):
    """Drop from 1 to ``low`` within a few dozen steps, hump of ``hump`` at ``hump_at``, decline."""
    s = np.asarray(steps, dtype=float)
    return low + (1 - low) * np.exp(-s / 8) + hump * np.exp(-(((np.log(s) - np.log(hump_at)) / width) ** 2))


def true_minimum(steps, curve):
    """Where the noiseless curve is lowest before its hump (the known phase I end)."""
    before = steps < 300
    return steps[before][np.argmin(curve[before])]


@pytest.mark.parametrize("noise", [0.0, 0.005, 0.02])
def test_paper_shaped_curve_has_three_phases_where_they_are(noise):
    clean = three_phase(STEPS)
    rng = np.random.default_rng(1)
    p = detect_phases(STEPS, clean + rng.normal(0, noise, len(STEPS)))
    assert p.found
    assert 0.5 * true_minimum(STEPS, clean) <= p.initial_min.step <= 2 * true_minimum(STEPS, clean)
    assert 400 <= p.hump_peak.step <= 900  # the hump was put at 600
    assert p.hump_peak.value == pytest.approx(clean[STEPS > 300].max(), abs=0.01 + 2 * noise)
    assert p.converged is not None and p.converged.step > p.hump_peak.step
    assert p.converged.value < p.hump_peak.value


def test_hump_position_follows_the_curve():
    """Moving the hump moves the detected peak (no hard-wired step)."""
    peaks = [detect_phases(STEPS, three_phase(STEPS, hump_at=h)).hump_peak.step for h in (150, 600, 1500)]
    assert peaks[0] < peaks[1] < peaks[2]
    assert all(0.7 * h <= p <= 1.3 * h for p, h in zip(peaks, (150, 600, 1500)))


def test_sparse_logging_and_a_tiny_run_still_find_the_phases():
    rng = np.random.default_rng(2)
    every10 = STEPS[::10]
    assert detect_phases(every10, three_phase(every10) + rng.normal(0, 0.01, len(every10))).found
    tiny = np.arange(0, 301, 5)  # a 300-step CPU run logged every 5 steps, hump near step 100
    assert detect_phases(
        tiny, three_phase(np.maximum(tiny, 1), hump_at=100, width=0.6) + rng.normal(0, 0.01, len(tiny))
    ).found


def test_a_run_still_in_phase_two_has_a_minimum_and_no_peak():
    short = STEPS[:300]
    p = detect_phases(short, three_phase(short) + np.random.default_rng(3).normal(0, 0.005, 300))
    assert p.initial_min is not None and p.hump_peak is None and p.converged is None
    assert "rising" in p.describe()


def test_a_sharp_minimum_logged_every_ten_steps_keeps_its_depth():
    """A CPU run's shape: 0.69 at step 10, ~0.06 at steps 20-40, then a slow rise to ~0.42."""
    steps = np.arange(10, 601, 10)
    rise = 0.42 - 0.3 * np.exp(-(steps - 40) / 80)
    values = np.where(steps <= 40, [0.69, 0.066, 0.055, 0.077] + [0] * (len(steps) - 4), rise)
    values = values + np.random.default_rng(6).normal(0, 0.004, len(steps))
    p = detect_phases(steps, values)
    assert p.hump_peak is None and 20 <= p.initial_min.step <= 40 and p.initial_min.value < 0.1


NO_PHASES = {
    "flat": lambda rng, s: 0.3 + rng.normal(0, 0.02, len(s)),
    "monotone power law": lambda rng, s: 2 / np.sqrt(s) + rng.normal(0, 0.02, len(s)),
    "exponential decay": lambda rng, s: np.exp(-s / 30) + 0.1 + rng.normal(0, 0.05, len(s)),
    "heavy-tailed noise": lambda rng, s: 0.3 + 0.05 * rng.standard_t(2, len(s)),
    "loss spikes": lambda rng, s: 0.3 + rng.normal(0, 0.01, len(s)) + (rng.random(len(s)) < 0.01) * 0.5,
    "very noisy decline": lambda rng, s: 2 / np.sqrt(s) + 0.2 * rng.standard_t(2, len(s)),
}


@pytest.mark.parametrize("kind", list(NO_PHASES))
def test_no_false_phases(kind):
    for seed in range(15):
        p = detect_phases(STEPS, NO_PHASES[kind](np.random.default_rng(seed), STEPS))
        assert (p.initial_min, p.hump_peak, p.converged) == (None, None, None), (kind, seed, p)
        assert "no NITP-loss phases" in p.describe()


def test_constant_and_too_short_curves_have_no_phases():
    assert not detect_phases(STEPS, np.full(len(STEPS), 0.25)).initial_min
    assert not detect_phases([1, 2, 3], [1.0, 0.1, 0.5]).initial_min
    assert not detect_phases([], []).initial_min


def test_invariant_to_scale_offset_order_and_bad_values():
    curve = three_phase(STEPS) + np.random.default_rng(4).normal(0, 0.005, len(STEPS))
    ref = detect_phases(STEPS, curve)
    scaled = detect_phases(STEPS, 100 * curve + 7)
    assert (scaled.initial_min.step, scaled.hump_peak.step) == (ref.initial_min.step, ref.hump_peak.step)
    order = np.random.default_rng(5).permutation(len(STEPS))
    shuffled = detect_phases(STEPS[order], curve[order])
    assert shuffled.hump_peak == ref.hump_peak
    holes = curve.copy()
    holes[::97] = np.nan
    assert detect_phases(STEPS, holes).hump_peak.step == pytest.approx(ref.hump_peak.step, rel=0.1)


def test_convergence_does_not_depend_on_how_long_the_run_is():
    """The settle level is fixed by the minimum and the hump, not by the last logged value."""
    curve = three_phase(STEPS)
    found = [detect_phases(STEPS[:n], curve[:n]).converged for n in (2400, 3000)]
    assert found[0] is not None and found[0] == found[1]
    assert found[0].value <= 0.02 + 0.2 * 0.23 + 0.01  # min + settle x (peak - min)


def test_phases_start_at_the_first_nitp_step():
    """With nitp.start_step, the flat loss of the untrained projector before it is not analysed."""
    start = 1000
    steps = np.arange(10, 4001, 10)
    after = three_phase(np.maximum(steps - start, 1))
    values = np.where(steps <= start, 0.9 + 0.05 * np.sin(steps / 37.0), after)
    values = values + np.random.default_rng(7).normal(0, 0.003, len(steps))
    metrics = [{"step": int(s), "loss_nitp": float(v)} for s, v in zip(steps, values)]
    p = run_phases(metrics, {"nitp": {"start_step": start}})
    assert p.found and p.initial_min.step > start
    assert start + 400 <= p.hump_peak.step <= start + 900  # the hump was put 600 steps after the start
    assert detect_phases(steps - start, values, start_step=0).hump_peak is not None  # same curve, shifted
    assert run_phases(metrics, {"nitp": {"start_step": 0}}).initial_min is None  # the old reading: no phase I


def test_smoothing_helpers():
    steps = np.arange(1, 1001, dtype=float)
    values = np.sin(steps / 50)
    smoothed, counts = log_window_mean(steps, values)
    assert list(counts[:3]) == [1, 1, 1]  # the early drop is not smeared
    assert counts[500] > counts[50] > counts[5]  # wider windows later in training
    assert np.allclose(log_window_mean(steps, np.full(1000, 3.0))[0], 3.0)
    spiky = np.zeros(50)
    spiky[20] = 10.0
    assert running_median(spiky).max() == 0.0  # an isolated spike is removed
    assert running_median(spiky, 3).max() == 0.0
    step = np.r_[np.zeros(25), np.ones(25)]
    assert np.array_equal(running_median(step), step)  # an edge stays where it is
