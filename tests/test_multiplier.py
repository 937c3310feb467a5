"""The compute multiplier (reports/multiplier.py): fit, bootstrap interval, per-size ratios,
verdict, figure and report, on synthetic ladders with a known k and on real tiny runs."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import yaml

from nitp.errors import UserError
from reports import multiplier as M


def _ladder(k, seeds=3, sizes=4, noise=0.01, point_noise=0.003, rng=0, overhead=0.05):
    """Runs of a Chinchilla-style law L(N, D) = E + A N^-a + B (k D)^-b (k = 1 for NTP).

    NITP sees k times the data per token, so at equal backbone compute C = 6 N D its curve of
    each size is NTP's shifted by k in C, and so is its frontier: the true multiplier is k.
    Noise: one offset per run (the seed) plus one per validation point.
    """
    gen = np.random.default_rng(rng)
    runs = []
    for i in range(sizes):
        n = 1_000_000 * 2**i
        fpt = 6.0 * n
        tokens = np.unique(np.geomspace(40 * n / 200, 40 * n, 10).astype(int))
        for obj, kk in (("ntp", 1.0), ("nitp", k)):
            for s in range(seeds):
                offset = gen.normal(0, noise)
                loss = 1.8 + 400.0 * n**-0.34 + 410.0 * (kk * tokens) ** -0.28 + offset
                loss = loss + gen.normal(0, point_noise, len(tokens))
                extra = overhead * fpt
                points = [
                    M.Point(j + 1, int(t), t * (fpt + (extra if obj == "nitp" else 0)), t * fpt, float(v))
                    for j, (t, v) in enumerate(zip(tokens, loss))
                ]
                runs.append(M.LadderRun(f"{obj}-{i}-s{s}", obj, s, f"s{i}", n, fpt, extra, points))
    return runs


def _run(objective, size, params, compute, loss, seed=0, overhead=0.1):
    points = [
        M.Point(j + 1, int(c), float(c), float(c), float(v)) for j, (c, v) in enumerate(zip(compute, loss))
    ]
    return M.LadderRun(f"{objective}-{size}-{seed}", objective, seed, size, params, 1.0, overhead, points)


# ----------------------------------------------------------------------------- the fit
def test_fit_recovers_the_law_from_exact_points():
    c = np.geomspace(1e12, 1e17, 12)
    truth = dict(E=2.1, A=900.0, alpha=0.21)
    runs = [
        _run("ntp", "a", 10, c, M.law(c, **truth)),
        _run("nitp", "a", 10, c, M.law(c, **truth, k=1.3)),
    ]
    fit, front = M.fit_frontier(runs)
    assert len(front["ntp"]["loss"]) == len(front["nitp"]["loss"]) == 12  # every point is Pareto here
    assert fit.k == pytest.approx(1.3, rel=1e-5)
    assert (fit.E, fit.A, fit.alpha) == pytest.approx((2.1, 900.0, 0.21), rel=1e-4)


def test_fit_agrees_with_an_independent_curve_fit():
    from scipy.optimize import curve_fit

    runs = _ladder(1.2, seeds=2, noise=0.02, point_noise=0.01, rng=5)
    fit, front = M.fit_frontier(runs)
    c = np.concatenate([front["ntp"]["compute"], front["nitp"]["compute"]])
    loss = np.concatenate([front["ntp"]["loss"], front["nitp"]["loss"]])
    g = np.concatenate([np.zeros(len(front["ntp"]["loss"])), np.ones(len(front["nitp"]["loss"]))])

    def log_law(xg, e, log_a, alpha, log_k):  # another parametrisation: log A at C = 1e14
        x, gg = xg
        return np.log(e + np.exp(log_a - alpha * (x + gg * log_k - math.log(1e14))))

    p, _ = curve_fit(log_law, (np.log(c), g), np.log(loss), p0=[1.0, 0.0, 0.3, 0.0], maxfev=20000)
    e, log_a, alpha, log_k = p
    assert math.exp(log_k) == pytest.approx(fit.k, rel=1e-3)
    assert (e, alpha) == pytest.approx((fit.E, fit.alpha), rel=1e-3)
    assert math.exp(log_a) * 1e14**alpha == pytest.approx(fit.A, rel=1e-2)


def test_pareto_frontier_keeps_points_no_other_point_beats():
    c = np.array([1.0, 2.0, 2.0, 3.0, 4.0, 5.0])
    loss = np.array([5.0, 4.0, 4.5, 4.2, 3.0, 3.0])
    assert M.pareto_frontier(c, loss).tolist() == [True, True, False, False, True, False]


@pytest.mark.parametrize("k, verdict", [(1.0, "no"), (1.3, "yes")])
def test_known_multiplier_is_inside_the_bootstrap_interval(k, verdict):
    result = M.fit_multiplier(_ladder(k), n_resamples=200, seed=1)
    assert result.k.low < k < result.k.high
    assert result.k.high - result.k.low < 0.1  # an interval that says something
    assert result.resample_unit == M.SEEDS_UNIT
    assert {v.verdict for v in result.verdicts} == {verdict}  # overhead 5 %: 1.0 < 1.05 < 1.3
    assert result.verdict.startswith(f"pays for itself at s3 (overhead 5.0%): {verdict};")
    band = result.curves["nitp"]
    assert all(lo <= f <= hi for lo, f, hi in zip(band["low"], band["fit"], band["high"]))


def test_one_seed_per_size_resamples_runs_and_one_run_gives_no_interval():
    result = M.fit_multiplier(_ladder(1.2, seeds=1), n_resamples=50)
    assert result.resample_unit == "runs within each objective"
    assert math.isfinite(result.k.low)
    single = [r for r in _ladder(1.2, seeds=1, sizes=2) if r.size == "s1"]
    alone = M.fit_multiplier(single, n_resamples=50)
    assert math.isnan(alone.k.low) and alone.verdicts[0].verdict == M.UNDETERMINED
    assert any("no bootstrap interval" in n for n in alone.notes)
    assert any("one size only" in n for n in alone.notes)


def test_the_multiplier_needs_both_objectives_and_a_known_method():
    with pytest.raises(UserError, match="no NITP run"):
        M.fit_multiplier([r for r in _ladder(1.0, seeds=1) if r.objective == "ntp"], n_resamples=0)
    with pytest.raises(UserError, match="bootstrap method 'BCa': use percentile or basic"):
        M.fit_multiplier(_ladder(1.0, seeds=1, sizes=1), method="BCa")


# ----------------------------------------------------------------------------- ratios, trend, verdict
@pytest.mark.parametrize("k, via", [(1.25, "NITP curve"), (0.8, "NTP curve")])
def test_ratio_per_size_equals_the_known_ratio(k, via):
    """Curves linear in log C (so log-C interpolation is exact); NITP's is NTP's shifted by k."""
    runs = []
    for i, n in enumerate((1e6, 4e6, 1.6e7)):
        c = np.geomspace(1e12, 1e14, 9) * n / 1e6
        runs.append(_run("ntp", f"s{i}", int(n), c, 20.0 - np.log(c) / 4 - i))
        runs.append(_run("nitp", f"s{i}", int(n), c, 20.0 - np.log(k * c) / 4 - i, overhead=0.1))
    ratios = M.size_ratios(runs)
    assert [r.size for r in ratios] == ["s0", "s1", "s2"]
    for r in ratios:
        assert (r.ratio, r.via, r.bound) == (pytest.approx(k, rel=1e-9), via, "")
        assert r.net_ratio == pytest.approx(k / 1.1, rel=1e-9)


def test_ratio_is_a_bound_when_the_curves_never_cross():
    c = np.geomspace(1e12, 1e13, 5)
    runs = [_run("ntp", "a", 10, c, 10 - np.log10(c) / 10), _run("nitp", "a", 10, c, 5 - np.log10(c) / 10)]
    (r,) = M.size_ratios(runs)
    assert (r.bound, r.via) == ("lower", "NITP curve")
    assert r.ratio == pytest.approx(10.0)  # NTP's last compute over NITP's first: NITP needed less
    assert "> 10.000" in M.ratio_table(M.fit_multiplier(runs, n_resamples=0)).to_markdown()


def test_trend_of_the_ratio_with_size():
    params = np.array([1e6, 2e6, 4e6, 8e6, 1.6e7])
    noise = np.array([1.01, 0.99, 1.0, 1.02, 0.98])
    ratios = [
        M.SizeRatio(f"s{i}", int(p), 0.1, 3.0, 2.9, float(r), float(r / 1.1), "NTP curve")
        for i, (p, r) in enumerate(zip(params, (params / 1e6) ** 0.1 * noise))
    ]
    trend = M.ratio_trend(ratios)
    assert trend.n == 5 and trend.low < 0.1 < trend.high and trend.low > 0
    assert "the ratio grows with size" in trend.text()
    assert M.ratio_trend(ratios[:2]) is None
    bounded = [dataclass_replace(r, bound="lower") for r in ratios[:3]] + ratios[3:]
    assert M.ratio_trend(bounded) is None  # only exact ratios enter the regression


def dataclass_replace(obj, **changes):
    import dataclasses

    return dataclasses.replace(obj, **changes)


@pytest.mark.parametrize(
    "low, high, overhead, verdict",
    [
        (1.20, 1.40, 0.137, "yes"),
        (0.90, 1.10, 0.137, "no"),
        (1.05, 1.20, 0.137, "undetermined at this n"),
        (1.021, 1.05, 0.02, "yes"),
        (0.95, 1.019, 0.02, "no"),
        (math.nan, math.nan, 0.02, "undetermined at this n"),
    ],
)
def test_pays_for_itself(low, high, overhead, verdict):
    assert M.pays_for_itself(low, high, overhead) == verdict


# ----------------------------------------------------------------------------- result, figure, tables
def test_result_round_trips_through_strict_json_and_renders():
    result = M.fit_multiplier(_ladder(1.3, seeds=2, sizes=3), n_resamples=50)
    text = json.dumps(result.to_dict(), allow_nan=False)
    back = M.MultiplierResult.from_dict(json.loads(text))
    assert M.render_markdown(back) == M.render_markdown(result)
    md = M.render_markdown(result)
    assert md.count("| nitp-") == 6 and "| k_NITP |" in md and "Trend:" in md
    alone = M.fit_multiplier(_ladder(1.3, seeds=1, sizes=1), n_resamples=0)
    assert json.loads(json.dumps(alone.to_dict(), allow_nan=False))["k"]["low"] is None


@pytest.mark.slow  # renders PNG and PDF
def test_figure_text_fits_and_files_are_written(tmp_path):
    from tests.test_report_figures import text_problems

    for result in (
        M.fit_multiplier(_ladder(1.1, seeds=2, noise=0.08, point_noise=0.02, rng=3), n_resamples=100),
        M.fit_multiplier(_ladder(1.1, seeds=1, sizes=1), n_resamples=0),  # no band
    ):
        fig = M.draw_multiplier(result)
        assert text_problems(fig) == []
        ax = fig.axes[0]
        assert ax.get_xscale() == "log" and len(ax.collections) == (6 if result.curves["nitp"]["low"] else 4)
    paths = M.plot_multiplier(result, tmp_path / "multiplier")
    assert [p.suffix for p in paths] == [".png", ".pdf"] and all(p.stat().st_size > 10_000 for p in paths)


# ----------------------------------------------------------------------------- run directories
def test_reader_rejects_what_is_not_a_ladder(tmp_path):
    with pytest.raises(UserError, match="no run directories"):
        M.read_ladder([])
    with pytest.raises(UserError, match="no such directory"):
        M.read_ladder([tmp_path / "absent"])
    with pytest.raises(UserError, match="not a run directory"):
        M.read_ladder([tmp_path])
    (tmp_path / "config.yaml").write_text("objective: ntp\n")
    with pytest.raises(UserError, match="no metrics.jsonl"):
        M.read_ladder([tmp_path])
    (tmp_path / "metrics.jsonl").write_text("")
    with pytest.raises(UserError, match="no complete checkpoint"):
        M.read_ladder([tmp_path])
    (tmp_path / "config.yaml").write_text("objective: mlm\n")
    with pytest.raises(UserError, match="objective 'mlm'"):
        M.read_ladder([tmp_path])


@pytest.mark.slow  # trains two tiny models (the session fixtures)
def test_reader_counts_compute_as_the_trainer_does(tiny_run, tiny_ntp_run):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from nitp.io import read_jsonl
    from nitp.runs import read_run_config, resolve_checkpoint
    from nitp_train.flops import nitp_flops_per_token, training_flops_per_token
    from nitp_train.models import count_parameters
    from nitp_train.trainer import _flops_per_token

    runs = {r.objective: r for r in M.read_ladder([tiny_ntp_run, tiny_run])}
    ckpt = resolve_checkpoint(tiny_run)
    config = AutoConfig.from_pretrained(ckpt)
    backbone = training_flops_per_token(config, 64)
    model = AutoModelForCausalLM.from_pretrained(ckpt, dtype=torch.float32)
    for obj, run_dir in (("nitp", tiny_run), ("ntp", tiny_ntp_run)):
        run = runs[obj]
        per_token = backbone + (nitp_flops_per_token(config.hidden_size) if obj == "nitp" else 0.0)
        assert run.flops_per_token == per_token == _flops_per_token(read_run_config(run_dir), model)
        assert run.params == count_parameters(model)["total"]
        vals = [r for r in read_jsonl(run_dir / "metrics.jsonl") if "val_loss" in r]
        assert [(p.step, p.tokens, p.loss) for p in run.points] == [
            (r["step"], r["tokens"], r["val_loss"]) for r in vals
        ]
        assert [p.compute for p in run.points] == [r["tokens"] * per_token for r in vals]
        assert [p.backbone_compute for p in run.points] == [r["tokens"] * backbone for r in vals]
        assert run.size == "d128-L4" and run.overhead == pytest.approx(nitp_flops_per_token(128) / backbone)


@pytest.mark.slow  # trains two tiny models (the session fixtures)
def test_report_of_real_runs_and_its_bad_inputs(tiny_run, tiny_ntp_run, tmp_path):
    out = tmp_path / "report"
    md = M.multiplier_report([tiny_ntp_run, tiny_run], out, n_resamples=20).read_text()
    assert sorted(p.name for p in out.iterdir()) == [
        "multiplier.json",
        "multiplier.md",
        "multiplier.pdf",
        "multiplier.png",
        "multiplier_ladder.csv",
    ]
    assert "undetermined at this n" in md and "no bootstrap interval" in md
    assert json.loads((out / "multiplier.json").read_text())["runs"][0]["size"] == "d128-L4"

    twin = tmp_path / "twin"
    shutil.copytree(tiny_ntp_run, twin)
    with pytest.raises(UserError, match="same objective, size and seed"):
        M.read_ladder([tiny_ntp_run, twin])
    with pytest.raises(UserError, match="given twice"):
        M.read_ladder([tiny_ntp_run, tiny_ntp_run])
    cfg = (twin / "config.yaml").read_text()
    other = yaml.safe_load(cfg)  # a data key that leaves the compute alone (seq_len would change FLOPs)
    other["data"]["text_field"] = "body"
    (twin / "config.yaml").write_text(yaml.safe_dump(other))
    with pytest.raises(UserError, match=r"validated on other data .*data.text_field 'body' vs 'text'"):
        M.read_ladder([tiny_ntp_run, twin])
    (twin / "config.yaml").write_text(cfg)
    with open(twin / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"step": 9, "tokens": 4608, "flops_per_token": 1.0}) + "\n")
    with pytest.raises(UserError, match="logs flops_per_token 1 but nitp_train.flops gives"):
        M.read_ladder([twin])
    before = sorted(p.name for p in out.iterdir())
    with pytest.raises(UserError, match="--confidence"):
        M.multiplier_report([tiny_ntp_run, tiny_run], out, confidence=95)
    assert sorted(p.name for p in out.iterdir()) == before


@pytest.mark.slow  # seconds (trains a tiny run): out of the fast subset
def test_log_spaced_validation_gives_a_ladder_points_even_on_log_compute(tmp_path):
    """``log.eval_points``: val_loss at steps spread evenly on a log scale (beside eval_every), so
    a short run of a ladder still gives its early (compute, loss) points."""
    from nitp.io import read_jsonl
    from nitp_train.trainer import log_spaced_steps, validation_due
    from tests.helpers import make_tiny_run

    assert sorted(log_spaced_steps(1000, 4)) == [1, 10, 100, 1000]
    assert sorted(log_spaced_steps(8, 20)) == list(range(1, 9))  # more points than steps: every step
    assert log_spaced_steps(8, 0) == set() and not validation_due(3, 8, 0, 0)
    assert validation_due(8, 8, 0, 3) and validation_due(6, 8, 3, 0) and not validation_due(5, 8, 3, 2)
    run = make_tiny_run(
        tmp_path / "run", "ntp", steps=16, extra=["log.eval_every=0", "log.eval_points=5", "log.geom_every=0"]
    )
    validated = [r["step"] for r in read_jsonl(run / "metrics.jsonl") if "val_loss" in r]
    assert validated == [1, 2, 4, 8, 16]
