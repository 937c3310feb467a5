"""Paired statistics in `nitp-report compare`: per-item bench results pair by doc_id, every Δ
shows the numbers of an independent scipy call, bold only where significant after Holm, a
verdict per table, a statistics CSV and a forest plot; and real records keep their items."""

from __future__ import annotations

import csv
import io

import numpy as np
import pytest
from scipy import stats as sps

from nitp.records import make_record, write_record
from reports import paired as P
from reports import tables as T
from reports.compare import compare
from reports.grouping import arrange, settings_groups
from reports.inputs import load_inputs
from tests.test_report_data import model_info, write_run


def item_record(run, step, objective, per_task: dict[str, np.ndarray], *, out=None, doc_ids=None):
    """A bench record whose tasks hold per-item 0/1 scores (``items``), as nitp-eval bench writes."""
    tasks = {}
    for name, x in per_task.items():
        ids = list(range(len(x))) if doc_ids is None else doc_ids
        tasks[name] = {
            "metric": "acc",
            "value": float(np.mean(x)),
            "stderr": float(np.std(x, ddof=1) / np.sqrt(len(x))),
            "n": len(x),
            "shots": 0,
            "version": "1.0",
            "lm_eval_task": name,
            "items": {name: {"doc_id": ids, "acc": [int(v) for v in x]}},
        }
    average = float(np.mean([t["value"] for t in tasks.values()]))
    settings = {"suite": "offline", "tasks": sorted(per_task), "limit": None, "seed": 0}
    rec = make_record(
        "bench", model_info(run, step, objective), settings, {"tasks": tasks, "average": average}
    )
    path = out or run / "results" / "bench" / f"step_{step:06d}-offline.json"
    return write_record(path, rec)


def scores(seed: int, n: int, p: float) -> np.ndarray:
    return (np.random.default_rng(seed).random(n) < p).astype(int)


@pytest.fixture()
def two_runs(tmp_path):
    ntp = write_run(tmp_path, "tiny-ntp", "ntp", steps=100)
    nitp = write_run(tmp_path, "tiny-nitp", "nitp", steps=100)
    return ntp, nitp


def bench_table(runs):
    study = load_inputs(list(runs))
    layout = arrange(study)
    (table,) = T.bench_tables(layout, settings_groups(study.models, "bench"))
    return table


def delta_row(table):
    return next(r for r in table.rows if r.kind == "delta")


def test_task_delta_equals_independent_scipy_calls(two_runs):
    ntp, nitp = two_runs
    a = scores(1, 300, 0.40)
    b = a.copy()
    flip = np.random.default_rng(2).choice(300, 60, replace=False)
    b[flip[:45]] = 1  # mostly a's wrong answers turned right
    b[flip[45:]] = 0
    item_record(ntp, 100, "ntp", {"analogies": a})
    item_record(nitp, 100, "nitp", {"analogies": b})
    table = bench_table(two_runs)
    test = delta_row(table).tests[0]
    c = test.result
    n01, n10 = int(np.sum((a == 0) & (b == 1))), int(np.sum((a == 1) & (b == 0)))
    assert (c.n01, c.n10, c.n) == (n01, n10, 300)
    assert c.p_value == pytest.approx(sps.binomtest(n01, n01 + n10, 0.5).pvalue, rel=1e-12)
    boot = sps.bootstrap(
        (a.astype(float), b.astype(float)),
        lambda x, y, axis=-1: np.mean(y, axis=axis) - np.mean(x, axis=axis),
        paired=True,
        vectorized=True,
        n_resamples=10_000,
        method="BCa",
        rng=np.random.default_rng(0),
    )
    # the same paired BCa bootstrap through scipy directly: equal up to Monte Carlo (one item)
    assert (c.ci_low, c.ci_high) == pytest.approx(tuple(boot.confidence_interval), abs=1.01 / 300)
    assert c.ci_low > 0  # 45 wins against 15 losses: the interval excludes 0
    assert c.delta == pytest.approx(b.mean() - a.mean())
    md = table.to_markdown()
    shown = f"+{100 * c.delta:.2f} [{100 * c.ci_low:+.2f}, {100 * c.ci_high:+.2f}]"
    assert shown in md and "n=300" in md


def test_bold_only_when_the_interval_excludes_zero(two_runs, tmp_path):
    ntp, nitp = two_runs
    a = scores(3, 400, 0.3)
    better = np.where(scores(4, 400, 0.5) == 1, 1, a)  # about 35 points better
    item_record(ntp, 100, "ntp", {"analogies": a, "sentiment": a})
    item_record(nitp, 100, "nitp", {"analogies": better, "sentiment": a})  # sentiment: identical
    table = bench_table(two_runs)
    md = table.to_markdown()
    row = delta_row(table)
    assert row.tests[0].significant and not row.tests[1].significant
    assert row.bold == [True, False, True]  # analogies, not sentiment; Avg. (half of +35) also
    (nitp_row,) = [r for r in table.rows if r.label.startswith("NITP")]
    assert nitp_row.bold[0] and not nitp_row.bold[1]  # the better model's value beside it
    assert "**" not in next(line for line in md.splitlines() if line.startswith("| NTP"))
    sentiment_cell = md.split("| *Δ (NITP − NTP)* |")[1].split("|")[1]
    # identical answers: flagged, not printed as a zero-width interval "[+0.00, +0.00]"
    assert "**" not in sentiment_cell and "[identical answers on all 400 items]" in sentiment_cell
    assert "[+0.00, +0.00]" not in sentiment_cell


@pytest.mark.slow  # seconds: out of the fast subset
def test_holm_is_applied_within_the_table(two_runs):
    ntp, nitp = two_runs
    base = {t: scores(10 + i, 200, 0.5) for i, t in enumerate(["t1", "t2", "t3"])}
    new = {}
    for i, (t, x) in enumerate(base.items()):
        y = x.copy()
        wrong = np.flatnonzero(x == 0)[: [12, 3, 0][i]]
        y[wrong] = 1
        new[t] = y
    item_record(ntp, 100, "ntp", base)
    item_record(nitp, 100, "nitp", new)
    table = bench_table(two_runs)
    tests = delta_row(table).tests
    raw = [tests[j].result.p_value for j in range(4)]
    from statsmodels.stats.multitest import multipletests

    assert [tests[j].result.p_holm for j in range(4)] == pytest.approx(
        list(multipletests(raw, method="holm")[1])
    )
    assert tests[0].result.p_value < 0.05  # 12 wins, 0 losses: p = 2 / 2^12
    assert "p_Holm" in table.to_markdown() and "Holm-adjusted over the 4 tests" in " ".join(table.notes)


def test_verdict_line_and_stats_csv(two_runs):
    ntp, nitp = two_runs
    a = scores(5, 150, 0.5)
    item_record(ntp, 100, "ntp", {"analogies": a})
    b = a.copy()
    b[np.flatnonzero(a == 0)[:1]] = 1
    item_record(nitp, 100, "nitp", {"analogies": b})
    table = bench_table(two_runs)
    (line,) = table.verdicts
    assert line.startswith("NITP − NTP on the average of 1 benchmarks: +0.67 [")
    assert "no detectable difference at n = 150 items." in line
    # the unit of replication and what one seed pair cannot claim
    assert line.endswith("not whether the objectives do (that needs several seeds of each).")
    assert line in table.to_markdown()
    rows = list(csv.DictReader(io.StringIO(table.to_stats_csv())))
    assert list(rows[0]) == [
        "row",
        "column",
        "delta",
        "ci_low",
        "ci_high",
        "p",
        "p_holm",
        "n",
        "units",
        "test",
        "significant",
        "note",
    ]
    first = rows[0]
    assert first["column"] == "analogies" and first["test"] == "mcnemar-exact" and first["n"] == "150"
    assert float(first["delta"]) == pytest.approx(100 / 150) and float(first["p"]) == pytest.approx(1.0)
    assert float(first["ci_low"]) <= 0 < float(first["ci_high"]) and first["significant"] == "false"


def test_old_records_show_na_and_say_why(two_runs):
    from tests.test_report_data import bench_record

    ntp, nitp = two_runs
    bench_record(model_info(ntp, 100, "ntp"), {"arc_challenge": 0.25})
    bench_record(model_info(nitp, 100), {"arc_challenge": 0.35})
    table = bench_table(two_runs)
    md = table.to_markdown()
    assert "| *Δ (NITP − NTP)* | +10.00 [n/a] | +10.00 [n/a] |" in md
    assert not any("**" in line for line in md.splitlines() if line.startswith("|"))  # no emphasis
    assert any(n.startswith("n/a (ARC-C): no per-item results") for n in table.notes)


def test_items_pair_by_doc_id_not_by_position(two_runs):
    ntp, nitp = two_runs
    a = scores(6, 50, 0.5)
    item_record(ntp, 100, "ntp", {"analogies": a})
    order = list(range(50))[::-1]  # the same documents, listed in another order
    item_record(nitp, 100, "nitp", {"analogies": a[order]}, doc_ids=order)
    c = delta_row(bench_table(two_runs)).tests[0].result
    assert (c.n01, c.n10, c.delta) == (0, 0, 0.0)


def test_mteb_sign_test_and_group_interval(tmp_path):
    from reports import stats

    deltas = [0.02, 0.01, -0.005, 0.03, 0.015, 0.02]
    a = {"scores": {"tasks": {f"t{i}": {"main_score": 0.5, "group": "STS"} for i in range(6)}}}
    b = {
        "scores": {"tasks": {f"t{i}": {"main_score": 0.5 + d, "group": "STS"} for i, d in enumerate(deltas)}}
    }
    groups, sign = P.mteb_groups(a, b, ["STS"])
    assert (sign.wins, sign.losses) == (5, 1) and sign.p_value == pytest.approx(sps.binomtest(5, 6).pvalue)
    ref = stats.group_mean_interval(deltas)
    assert groups["STS"].result.ci_low == pytest.approx(ref.ci_low) and groups[
        "Overall"
    ].result.delta == pytest.approx(np.mean(deltas))


@pytest.mark.slow  # lm-eval / subprocess heavy: keeps the fast subset under a minute
def test_compare_writes_stats_csv_forest_plot_and_seed_table(tmp_path):
    runs = []
    for seed in (0, 1, 2):
        ntp = write_run(tmp_path, f"ntp-s{seed}", "ntp", steps=100, seed=seed)
        nitp = write_run(tmp_path, f"nitp-s{seed}", "nitp", steps=100, seed=seed)
        a = scores(20 + seed, 200, 0.4)
        b = np.where(scores(30 + seed, 200, 0.3) == 1, 1, a)
        item_record(ntp, 100, "ntp", {"analogies": a})
        item_record(nitp, 100, "nitp", {"analogies": b})
        runs += [ntp, nitp]
    report = compare(runs, tmp_path / "out")
    text = report.read_text()
    out = tmp_path / "out"
    assert (out / "tables" / "bench.stats.csv").is_file()
    assert (out / "figures" / "forest-bench.png").stat().st_size > 0 and (
        out / "figures" / "forest-bench.pdf"
    ).is_file()
    seeds = (out / "tables" / "bench-seeds.csv").read_text().splitlines()
    assert seeds[0] == "metric,mean,sd,95% CI low,95% CI high,p,p_Holm,seeds"
    study = load_inputs(runs)
    values = {m.config["seed"]: 100 * m.records[0]["scores"]["average"] for m in study.models}
    ntp_avg = [values_of(study, "ntp", s) for s in (0, 1, 2)]
    nitp_avg = [values_of(study, "nitp", s) for s in (0, 1, 2)]
    ttest = sps.ttest_rel(nitp_avg, ntp_avg)
    delta_line = next(x for x in seeds if x.startswith("Avg.: Δ"))
    assert float(delta_line.split(",")[5]) == pytest.approx(ttest.pvalue, abs=1e-6)
    assert float(delta_line.split(",")[1]) == pytest.approx(np.mean(np.subtract(nitp_avg, ntp_avg)), rel=1e-5)
    assert "paired by seed" in text and values


def values_of(study, role, seed):
    m = next(m for m in study.models if m.role == role and m.config["seed"] == seed)
    return 100 * m.records[0]["scores"]["average"]


def test_real_bench_records_keep_items_that_pair(tiny_checkpoint, tiny_ntp_run, tmp_path):
    """Two real tiny checkpoints through `nitp-eval bench --suite offline --limit 20`."""
    from typer.testing import CliRunner

    from nitp.records import read_record
    from nitp.runs import resolve_checkpoint
    from nitp_eval.cli import app

    paths = []
    for name, ckpt in (("nitp", tiny_checkpoint), ("ntp", resolve_checkpoint(tiny_ntp_run))):
        out = tmp_path / f"{name}.json"
        res = CliRunner().invoke(
            app, ["bench", str(ckpt), "--suite", "offline", "--limit", "20", "--out", str(out)]
        )
        assert res.exit_code == 0, res.output
        paths.append(out)
    a, b = (read_record(p) for p in paths)
    for task, score in a["scores"]["tasks"].items():
        (leaf,) = score["items"]
        items = score["items"][leaf]
        assert len(items["doc_id"]) == 20 == len(items[score["metric"]])
        assert np.mean(items[score["metric"]]) == pytest.approx(score["value"])  # lm-eval's own mean
        test = P.bench_task(b, a, task)
        assert test.result is not None and test.result.n == 20, test.reason
    assert P.bench_average(b, a).result.n == 20 * len(a["scores"]["tasks"])
