"""reports.stats: every statistic against an independent computation written here, plus the
behaviour a verdict depends on (no effect, a large effect, the ~2.8-point resolution of McNemar
on 2,000 items) and bad input."""

from __future__ import annotations

import doctest
import itertools
import json
import math

import numpy as np
import pytest
from scipy import stats as sps

from nitp.errors import UserError
from reports import stats
from reports.stats import (
    Comparison,
    GroupMean,
    SeedComparison,
    format_delta,
    format_p,
    group_mean_interval,
    holm,
    mcnemar_exact,
    mean_interval,
    paired_bootstrap_interval,
    paired_by_seed,
    paired_difference,
    paired_permutation_p,
    seed_summary,
    sign_test,
    verdict,
    with_holm,
)


def discordant_items(n: int, n01: int, n10: int) -> tuple[np.ndarray, np.ndarray]:
    """0/1 answers of a and b on ``n`` items: ``n01`` items only b gets right, ``n10`` only a,
    the rest split evenly between both right and both wrong (deterministic order)."""
    concordant = n - n01 - n10
    both_right, both_wrong = concordant // 2, concordant - concordant // 2
    a = np.array([0] * n01 + [1] * n10 + [1] * both_right + [0] * both_wrong)
    b = np.array([1] * n01 + [0] * n10 + [1] * both_right + [0] * both_wrong)
    order = np.random.default_rng(7).permutation(n)
    return a[order], b[order]


def binomial_two_sided(k: int, n: int) -> float:
    """Exact two-sided binomial p (success 1/2): the outcomes no more likely than k, by math.comb."""
    if n == 0:
        return 1.0
    observed = math.comb(n, k)
    return min(1.0, sum(math.comb(n, j) for j in range(n + 1) if math.comb(n, j) <= observed) / 2**n)


# ------------------------------------------------------------------ against independent references


@pytest.mark.parametrize("n01,n10", [(13, 5), (5, 13), (0, 6), (7, 7), (40, 25), (0, 0), (1, 0)])
def test_mcnemar_exact_p_is_the_binomial_tail_sum(n01, n10):
    a, b = discordant_items(100, n01, n10)
    got01, got10, p = mcnemar_exact(a, b)
    assert (got01, got10) == (n01, n10)
    assert p == pytest.approx(binomial_two_sided(n01, n01 + n10), rel=1e-9)


def test_paired_bootstrap_percentile_interval_is_plain_numpy_resampling():
    rng = np.random.default_rng(3)
    a = rng.random(40)
    b = a + rng.normal(0.05, 0.2, 40)
    low, high, method = paired_bootstrap_interval(a, b, method="percentile", n_resamples=2000, seed=11)
    draws = np.random.default_rng(11).integers(0, 40, (2000, 40))  # scipy's draws: one (B, n) block
    deltas = b[draws].mean(axis=1) - a[draws].mean(axis=1)
    assert method == "percentile"
    assert (low, high) == pytest.approx(tuple(np.quantile(deltas, [0.025, 0.975])), abs=1e-12)


def test_paired_bootstrap_bca_interval_is_scipys_paired_bootstrap():
    rng = np.random.default_rng(4)
    a = rng.exponential(1.0, 60)  # skewed: BCa differs from percentile
    b = a + rng.exponential(0.3, 60)
    low, high, method = paired_bootstrap_interval(a, b, n_resamples=3000, seed=5)
    ref = sps.bootstrap(
        (a, b),
        lambda x, y, axis: np.mean(y, axis=axis) - np.mean(x, axis=axis),
        paired=True,
        vectorized=True,
        n_resamples=3000,
        method="BCa",
        rng=np.random.default_rng(5),
    ).confidence_interval
    assert method == "BCa"
    assert (low, high) == pytest.approx((ref.low, ref.high), rel=1e-9)
    percentile = paired_bootstrap_interval(a, b, n_resamples=3000, seed=5, method="percentile")
    assert (low, high) != pytest.approx(percentile[:2], rel=1e-6)


def test_bca_falls_back_to_percentile_where_scipy_cannot_compute_it():
    a, b = np.zeros(200), np.array([1.0] + [0.0] * 199)
    with pytest.warns(Warning):  # scipy's own BCa gives NaN here (degenerate resamples)
        ref = sps.bootstrap((b,), np.mean, n_resamples=2, method="BCa", rng=np.random.default_rng(1))
    assert np.isnan(ref.confidence_interval.low)
    got = paired_bootstrap_interval(a, b, n_resamples=2, seed=1)
    assert got == paired_bootstrap_interval(a, b, n_resamples=2, seed=1, method="percentile")
    assert got[2] == "percentile"


def test_paired_permutation_p_is_the_full_enumeration_of_sign_flips():
    rng = np.random.default_rng(8)
    a = rng.random(10)
    b = a + rng.normal(0.3, 0.4, 10)
    d = b - a
    observed = abs(d.mean())
    flips = np.array(list(itertools.product([1.0, -1.0], repeat=10)))  # all 2^10
    as_extreme = np.abs((flips * d).mean(axis=1)) >= observed - 1e-12
    assert paired_permutation_p(a, b) == pytest.approx(as_extreme.mean(), abs=1e-12)
    assert 0.0 < as_extreme.mean() < 0.2  # a real test: neither trivially 0 nor 1


def test_random_permutation_p_is_close_to_the_t_test_on_many_items():
    rng = np.random.default_rng(9)
    a = rng.normal(0, 1, 300)
    b = a + rng.normal(0.1, 1, 300)
    p_t = 2 * sps.t.sf(abs(np.mean(b - a)) / (np.std(b - a, ddof=1) / math.sqrt(300)), 299)
    assert paired_permutation_p(a, b, n_resamples=20_000) == pytest.approx(p_t, abs=0.01)


def test_mean_interval_is_the_textbook_student_t_interval():
    x = np.array([5.31, 5.28, 5.35, 5.30, 5.41, 5.26, 5.33])
    n, mean, sd = len(x), sum(x) / len(x), math.sqrt(sum((v - sum(x) / len(x)) ** 2 for v in x) / 6)
    half = sps.t.ppf(0.95, n - 1) * sd / math.sqrt(n)  # 90 % interval
    s = mean_interval(x, confidence=0.90)
    assert (s.n, s.mean, s.sd) == (n, pytest.approx(mean), pytest.approx(sd))
    assert (s.ci_low, s.ci_high) == pytest.approx((mean - half, mean + half), rel=1e-12)


def test_seed_summary_of_one_seed_has_no_interval_and_constant_seeds_a_point():
    assert seed_summary({0: 0.4}).ci_low is None and seed_summary([0.4]).sd is None
    s = seed_summary({0: 0.4, 1: 0.4, 2: 0.4})
    assert (s.sd, s.ci_low, s.ci_high) == (0.0, 0.4, 0.4)


def test_paired_by_seed_is_the_textbook_paired_t_test():
    a = {0: 0.410, 1: 0.425, 2: 0.418, 3: 0.430}
    b = {"0": 0.421, "1": 0.428, "2": 0.431, "3": 0.429, "4": 0.5}  # seed 4 has no pair
    d = [0.421 - 0.410, 0.428 - 0.425, 0.431 - 0.418, 0.429 - 0.430]
    mean, sd = sum(d) / 4, math.sqrt(sum((v - sum(d) / 4) ** 2 for v in d) / 3)
    t = mean / (sd / 2)
    half = sps.t.ppf(0.975, 3) * sd / 2
    c = paired_by_seed(a, b)
    assert c.seeds == ("0", "1", "2", "3") and c.unpaired == ("4",)
    assert c.delta == pytest.approx(mean)
    assert c.p_value == pytest.approx(2 * sps.t.sf(abs(t), 3), rel=1e-9)
    assert (c.ci_low, c.ci_high) == pytest.approx((mean - half, mean + half), rel=1e-9)
    assert (c.wins, c.losses, c.ties) == (3, 1, 0)


def test_sign_test_is_the_binomial_enumeration():
    deltas = [0.01] * 23 + [-0.02] * 2 + [0.0]  # the paper's "NITP wins 23 of 25", plus a tie
    s = sign_test(deltas)
    assert (s.wins, s.losses, s.ties, s.n) == (23, 2, 1, 25)
    tail = sum(math.comb(25, k) for k in range(3)) / 2**25
    assert s.p_value == pytest.approx(2 * tail, rel=1e-9)
    assert sign_test({"A": 0.001, "B": -0.001}, tie=0.005).ties == 2
    assert sign_test([0.0, 0.0]).p_value == 1.0


@pytest.mark.slow  # seconds: out of the fast subset
def test_holm_is_the_step_down_by_hand():
    # sorted: 0.005 x 4 = 0.02; 0.01 x 3 = 0.03; 0.03 x 2 = 0.06; 0.04 x 1 = 0.04 -> max(0.06, 0.04)
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])  # 2 x 0.5 = 1; then max(1, 0.9)
    assert holm([0.2, 0.9]) == pytest.approx([0.4, 0.9])
    assert holm([]) == []


def test_with_holm_adds_adjusted_p_and_significance():
    strong = paired_difference(*discordant_items(400, 40, 5))
    weak = paired_difference(*discordant_items(400, 24, 12))  # p ~ 0.065 alone
    same = paired_difference(*discordant_items(400, 0, 0))
    adjusted = with_holm([weak, strong, same])
    assert [c.p_holm for c in adjusted] == pytest.approx(holm([weak.p_value, strong.p_value, 1.0]))
    assert [c.significant_holm for c in adjusted] == [False, True, False]
    assert adjusted[1].p_value == strong.p_value  # the raw p is kept


def test_group_mean_interval_is_scipys_one_sample_bootstrap():
    d = np.array([0.012, -0.004, 0.020, 0.007, 0.015, -0.010, 0.009, 0.003])
    g = group_mean_interval(d, seed=2)
    ref = sps.bootstrap((d,), np.mean, n_resamples=10_000, method="BCa", rng=np.random.default_rng(2))
    assert g.delta == pytest.approx(d.mean())
    assert (g.ci_low, g.ci_high) == pytest.approx(tuple(ref.confidence_interval), rel=1e-9)
    assert group_mean_interval({"STS12": 0.01}).ci_low is None
    assert group_mean_interval([0.01, 0.01]).interval == "exact"


# ---------------------------------------------------------------------------------- behaviour


@pytest.mark.parametrize("kind", ["auto", "continuous"])
def test_identical_inputs_show_no_difference(kind):
    a = np.random.default_rng(1).integers(0, 2, 500)
    c = paired_difference(a, a.copy(), kind=kind)
    assert c.delta == 0 and c.p_value == 1.0
    assert c.ci_low <= 0 <= c.ci_high and not c.significant
    assert c.test == ("mcnemar-exact" if kind == "auto" else "paired-permutation")


def test_a_large_real_effect_is_significant():
    a = np.array([0, 1] * 1000)
    b = a.copy()
    b[np.flatnonzero(a == 0)[:600]] = 1  # 30 % of 2,000 items flipped to right
    c = paired_difference(a, b)
    assert (c.n01, c.n10) == (600, 0)
    assert c.significant and c.p_value < 1e-6 and c.ci_low > 0.25


def test_mcnemar_on_2000_items_with_20_percent_discordance_resolves_about_3_points():
    plus3 = paired_difference(*discordant_items(2000, 230, 170))  # +60 items = +3 points
    plus1 = paired_difference(*discordant_items(2000, 210, 190))  # +20 items = +1 point
    assert plus3.delta == pytest.approx(0.03) and plus1.delta == pytest.approx(0.01)
    assert plus3.p_value < 0.05 and plus3.significant
    assert plus1.p_value > 0.05 and not plus1.significant
    assert "NITP better" in verdict("NITP - NTP on the suite", plus3)
    assert "no detectable difference at n = 2,000 items" in verdict("NITP - NTP on the suite", plus1)


def test_continuous_scores_use_the_permutation_test():
    rng = np.random.default_rng(5)
    a = rng.random(200)
    c = paired_difference(a, a + 0.05 + rng.normal(0, 0.1, 200))
    assert c.test == "paired-permutation" and c.n01 is None
    assert c.significant and c.p_value < 0.001


def test_results_round_trip_through_json():
    c = paired_difference(*discordant_items(300, 30, 10))
    assert Comparison.from_dict(json.loads(json.dumps(c.to_dict()))) == c
    assert c.to_dict()["significant"] is True
    s = paired_by_seed({0: 1.0, 1: 2.0, 2: 3.5}, {0: 1.5, 1: 2.1, 2: 3.9})
    assert SeedComparison.from_dict(json.loads(json.dumps(s.to_dict()))) == s


def test_docstring_examples_run():
    assert doctest.testmod(stats).failed == 0


# ---------------------------------------------------------------------------------- sentences


def test_format_p_and_format_delta():
    assert [format_p(p) for p in (0.6149, 0.061, 0.0031, 0.0004, 1.0)] == [
        "p = 0.61",
        "p = 0.06",
        "p = 0.003",
        "p < 0.001",
        "p = 1",
    ]
    assert format_delta(GroupMean(5, 0.004, -0.011, 0.019, 0.95, "BCa")) == "+0.4 [-1.1, +1.9]"
    assert format_delta(GroupMean(5, -0.0004, -0.02, 0.019, 0.95, "BCa")) == "0.0 [-2.0, +1.9]"
    assert (
        format_delta(GroupMean(5, 0.25, 0.1, 0.4, 0.95, "BCa"), scale=1, digits=2) == "+0.25 [+0.10, +0.40]"
    )


def comparison(delta, low, high, p, **kw):
    return Comparison(2345, 0.5, 0.5 + delta, delta, low, high, 0.95, p, "mcnemar-exact", "BCa", **kw)


def test_verdict_sentences():
    label = "NITP - NTP on the mission suite"
    assert verdict(label, comparison(0.004, -0.011, 0.019, 0.6)) == (
        "NITP - NTP on the mission suite: +0.4 [-1.1, +1.9], p = 0.60: "
        "no detectable difference at n = 2,345 items"
    )
    assert verdict(label, comparison(0.03, 0.01, 0.05, 0.003), n_items=2000) == (
        "NITP - NTP on the mission suite: +3.0 [+1.0, +5.0]: NITP better (p = 0.003, McNemar exact, n = 2,000 items)"
    )
    assert ": NTP better (" in verdict(label, comparison(-0.03, -0.05, -0.01, 0.003))
    lower_ce = verdict(
        "NITP - NTP on validation CE", comparison(-0.2, -0.3, -0.1, 0.001), scale=1, unit="nats"
    )
    assert "-0.2 [-0.3, -0.1] nats" in lower_ce and ": NTP better (" in lower_ce
    assert ": NITP better (" in verdict(
        "NITP - NTP on validation CE", comparison(-0.2, -0.3, -0.1, 0.001), higher_is_better=False
    )
    assert "borderline" in verdict(label, comparison(0.02, 0.001, 0.04, 0.07))
    holm_line = verdict(label, comparison(0.03, 0.01, 0.05, 0.003, p_holm=0.09))
    assert "p_Holm = 0.09" in holm_line and "borderline" in holm_line
    assert verdict(label, comparison(0.03, 0.01, 0.05, 0.003), names=("base", "new")).count("new better") == 1


# ---------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "call,message",
    [
        (lambda: paired_difference([0, 1] * 5, [0, 1] * 6), "a has 10 items, b has 12"),
        (lambda: paired_difference([0.0, float("nan"), 1.0], [0, 1, 1]), "a has 1 NaN"),
        (lambda: paired_difference([1], [0]), "at least 2 items"),
        (lambda: paired_difference([[0, 1]], [[1, 1]]), "1-D"),
        (lambda: paired_difference(["x", "y"], [1, 0]), "list of numbers"),
        (lambda: paired_difference([0.5, 1], [1, 0], kind="binary"), "kind='continuous'"),
        (lambda: paired_difference([0, 1], [1, 0], kind="exact"), "kind must be"),
        (lambda: paired_difference([0, 1], [1, 0], confidence=95), "confidence"),
        (lambda: paired_difference([0.1, 1], [1, 0], n_resamples=0), "n_resamples"),
        (lambda: paired_by_seed({0: 0.4, 1: 0.5}, {1: 0.6, 2: 0.4}), "at least 2 seeds"),
        (lambda: paired_by_seed([0.4, 0.5], [0.6, 0.4]), "map seed"),
        (lambda: mean_interval([]), "empty"),
        (lambda: holm([0.2, 1.5]), "between 0 and 1"),
    ],
)
def test_bad_input_is_one_line_user_error(call, message):
    with pytest.raises(UserError) as err:
        call()
    assert message in str(err.value) and "\n" not in str(err.value)
