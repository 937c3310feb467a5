"""Tables from small runs and records: the right numbers, the right bold cells, "—" for missing,
settings never merged, ablations found, valid Markdown / LaTeX / CSV."""

from __future__ import annotations

import csv
import io
import json
import re
import shutil
import subprocess
import sys

import pytest

from nitp.errors import UserError
from reports import tables as T
from reports.formats import Table
from reports.grouping import arrange, settings_groups
from reports.inputs import load_inputs, parse_labels
from tests.test_report_data import SUMMARY_NITP, SUMMARY_NTP, bench_record, model_info, write_run, write_study


@pytest.fixture(scope="module")
def study_runs(tmp_path_factory):
    return write_study(tmp_path_factory.mktemp("study"))


@pytest.fixture(scope="module")
def layout_and_groups(study_runs):
    study = load_inputs(list(study_runs.values()))
    layout = arrange(study)
    groups = {k: settings_groups(study.models, k) for k in ("bench", "mteb", "geom")}
    return study, layout, groups


def rows(table: Table) -> dict[str, list]:
    return {r.label: r.values for r in table.rows}


def bold(table: Table) -> dict[str, list[str]]:
    table.mark_best()
    return {r.label: [c for c, b in zip(table.columns, r.bold) if b] for r in table.rows}


# ----------------------------------------------------------------------------- who is who
def test_baseline_reference_and_ablations_are_found(layout_and_groups):
    _, layout, _ = layout_and_groups
    (block,) = layout.blocks
    assert block.baseline.name == "tiny-ntp" and block.reference.name == "tiny-nitp"
    assert {k: [m.name for m in v] for k, v in block.ablations.items()} == {
        "nitp.target_layer": ["tiny-nitp-k2"],
        "nitp.shift": ["tiny-nitp-shift0"],
        "cos_reg.weight": ["tiny-ntp-cosreg"],
    }
    assert [m.name for m in block.others] == ["tiny-nitp-two-knobs"]
    assert any("tiny-nitp-two-knobs" in n and "more than one knob" in n for n in layout.notes)


def test_same_run_name_in_two_places_gets_distinct_labels(tmp_path):
    a = write_run(tmp_path / "a", "tiny-ntp", "ntp", steps=50)
    b = write_run(tmp_path / "b", "tiny-ntp", "ntp", steps=50)
    labels = [m.label for m in load_inputs([a, b]).models]
    assert len(set(labels)) == 2 and str(a) in labels[0] and str(b) in labels[1]


def test_labels_come_from_the_config_and_can_be_renamed(study_runs):
    study = load_inputs([study_runs["ntp"], study_runs["cosreg"]])
    assert [m.label for m in study.models] == ["NTP tiny-dense @600", "NTP+cos-reg tiny-dense @600"]
    renamed = load_inputs(
        [study_runs["ntp"], study_runs["nitp"]],
        parse_labels(["tiny-nitp=NITP k=1", "NTP tiny-dense @600=base"]),
    )
    assert [m.label for m in renamed.models] == ["base", "NITP k=1"]


# ----------------------------------------------------------------------------- benchmarks
def test_bench_table_numbers_bold_delta_and_missing(layout_and_groups):
    _, layout, groups = layout_and_groups
    zero_shot = next(g for g in groups["bench"] if g.settings["num_fewshot"]["gsm8k"] == 0)
    table = next(t for t in T.bench_tables(layout, groups["bench"]) if "num_fewshot=0" in t.title)
    assert table.columns == ["ARC-C", "CSQA", "GSM8k", "analogies_mc", "Avg."]
    got = rows(table)
    ntp, nitp = got["NTP tiny-dense @600"], got["NITP tiny-dense @600 (tiny-nitp)"]
    assert ntp == pytest.approx([29.0, 32.0, 1.0, 26.0, 22.11])  # Avg. is the record's, not the mean (22.0)
    assert nitp[2] is None and nitp[4] == pytest.approx(30.30)  # the failed task is missing, never 0
    delta = got["Δ (NITP − NTP)"]
    assert delta[0] == pytest.approx(2.0) and delta[2] is None and delta[4] == pytest.approx(8.19)
    # records without per-item results: every Δ shows "[n/a]", nothing is bold, the notes say why
    md = table.to_markdown()
    assert not any(any(r.bold) for r in table.rows)
    assert "| NITP tiny-dense @600 (tiny-nitp) | 31.00 | 32.00 | — | 28.00 | 30.30 |" in md
    assert "| *Δ (NITP − NTP)* | +2.00 [n/a] | +0.00 [n/a] | — | +2.00 [n/a] | +8.19 [n/a] |" in md
    assert "n/a (ARC-C, CSQA, analogies_mc): no per-item results" in md
    assert "n/a (Avg.): the averages are over different tasks (gsm8k in one record only)" in md
    assert "NITP − NTP on the average of 4 benchmarks: +8.19 [n/a]: no interval" in md
    # the old emphasis, on request: best value per column
    marks = bold(table)
    assert marks["NTP tiny-dense @600"] == ["CSQA"]  # the tie: both bold
    assert marks["NITP tiny-dense @600 (tiny-nitp)"] == ["ARC-C", "CSQA", "analogies_mc", "Avg."]
    assert "ARC-C acc_norm, 0-shot" in md
    # only the main models: ablation variants have their own tables
    assert not any("k2" in label or "shift0" in label for label in got)
    assert zero_shot.latest(layout.blocks[0].baseline)["model"]["step"] == 600


def test_different_settings_are_never_merged(layout_and_groups):
    _, layout, groups = layout_and_groups
    assert len(groups["bench"]) == 2
    tables = T.bench_tables(layout, groups["bench"])
    five = next(t for t in tables if "num_fewshot=5" in t.title)
    assert list(rows(five)) == ["NTP tiny-dense @600"] and rows(five)["NTP tiny-dense @600"][
        -1
    ] == pytest.approx(50.0)
    zero = next(t for t in tables if "num_fewshot=0" in t.title)
    assert all(v != pytest.approx(50.0) for r in zero.rows for v in r.values if isinstance(v, float))


def test_earlier_checkpoint_rows_say_their_step(tmp_path):
    run = write_run(tmp_path, "r", "ntp", steps=600)
    bench_record(model_info(run, 200, "ntp"), {"arc_challenge": 0.3})
    study = load_inputs([run])
    layout = arrange(study)
    (table,) = T.bench_tables(layout, settings_groups(study.models, "bench"))
    assert table.rows[0].label == "NTP tiny-dense @600 (step 200)" and "earlier checkpoint" in " ".join(
        table.notes
    )


# ----------------------------------------------------------------------------- MTEB
def test_mteb_groups_overall_delta_and_wins(layout_and_groups):
    _, layout, groups = layout_and_groups
    (table,) = T.mteb_tables(layout, groups["mteb"])
    assert table.columns == ["Classification (2)", "STS (3)", "Overall (5)"]
    got = rows(table)
    assert got["NTP tiny-dense @600"] == pytest.approx([42.5, 100 * (0.31 + 0.12 + 0.40) / 3, 33.6])
    assert got["Δ (NITP − NTP)"] == pytest.approx([2.0, 1.0, 1.4])
    assert "NITP wins 4 of 5 tasks (losses: SimLex999 −1.00)." in table.notes
    (per_task,) = T.mteb_task_tables(layout, groups["mteb"])
    assert rows(per_task)["SimLex999 (STS)"] == pytest.approx([12.0, 11.0, -1.0])
    assert "| SimLex999 (STS) | 12.00 | 11.00 | -1.00 [n/a] |" in per_task.to_markdown()
    assert "| WordSim353 (STS) | 31.00 | 33.00 | +2.00 [n/a] |" in per_task.to_markdown()
    # groups of fewer than 5 tasks: no interval; Overall (5 tasks): bootstrap over tasks + sign test
    delta = next(r for r in table.rows if r.kind == "delta")
    assert delta.tests[0].result is None and delta.tests[2].result.n == 5
    (verdict,) = table.verdicts
    assert (
        verdict.startswith("NITP − NTP on MTEB overall: +1.40 [") and "NITP better on 4 of 5 tasks" in verdict
    )


# ----------------------------------------------------------------------------- LM, geometry
def test_language_modelling_from_the_last_validation_line(layout_and_groups):
    _, layout, _ = layout_and_groups
    got = rows(T.lm_table(layout))
    assert got["NTP tiny-dense @600"][2] == pytest.approx(5.01) and got["NTP tiny-dense @600"][0] == 600
    assert got["Δ (NITP − NTP)"][:2] == [None, None] and got["Δ (NITP − NTP)"][2] == pytest.approx(-0.01)
    assert bold(T.lm_table(layout))["NITP tiny-dense @600 (tiny-nitp)"] == ["val CE (nats/token)", "val ppl"]


def test_geometry_summary_and_per_layer_tables(layout_and_groups):
    _, layout, groups = layout_and_groups
    summary, *per_layer = T.geometry_tables(layout, groups["geom"])
    got = rows(summary)
    assert got["NTP tiny-dense @600"][1:] == pytest.approx([SUMMARY_NTP[k] for k, *_ in T.GEOM_COLUMNS])
    assert got["NITP tiny-dense @600 (tiny-nitp)"][1:] == pytest.approx(
        [SUMMARY_NITP[k] for k, *_ in T.GEOM_COLUMNS]
    )
    # higher effective rank and lower anisotropy are the better ones
    assert bold(summary)["NITP tiny-dense @600 (tiny-nitp)"] == summary.columns[1:]
    assert "covariance" in summary.columns[1] and "singular" in summary.columns[2]
    nitp_layers = next(t for t in per_layer if "tiny-nitp" in t.title)
    labels = [r.label for r in nitp_layers.rows]
    assert labels == ["0", "1 (NITP target, paper depth rule)", "2", "3", "4", "last"]
    assert nitp_layers.columns[:4] == [
        "erank (cov)",
        "erank (sv)",
        "aniso (across docs)",
        "aniso (across seqs)",
    ]
    assert "across documents (paper's)" in summary.columns[3] and "all pairs" in summary.columns[5]
    assert rows(nitp_layers)["last"][nitp_layers.columns.index("ridge R² (held-out)")] is None


# ----------------------------------------------------------------------------- ablations, cost
def test_one_ablation_table_per_knob(layout_and_groups):
    _, layout, groups = layout_and_groups
    tables = {t.name: t for t in T.ablation_tables(layout, groups["bench"], groups["mteb"])}
    assert set(tables) == {"ablation-target-layer", "ablation-shift", "ablation-cos-reg"}
    layer = tables["ablation-target-layer"]
    assert [r.label for r in layer.rows] == [
        "NTP (baseline)",
        "NITP, target layer = 1 (reference)",
        "NITP, target layer = 2",
    ]
    got = rows(layer)
    avg = layer.columns.index("Avg.")
    assert got["NITP, target layer = 2"][avg] == pytest.approx(100 * (0.30 + 0.31 + 0.02 + 0.25) / 4)
    assert got["NITP, target layer = 2"][-1] == pytest.approx(22.0 - 22.11)  # Δ Avg. vs NTP
    assert got["NTP (baseline)"][layer.columns.index("final NITP loss")] is None
    cos = tables["ablation-cos-reg"]
    assert [r.label for r in cos.rows] == ["NTP (baseline)", "NTP + cos-reg, weight = 0.1", "NITP"]


def test_cost_table_parameters_and_flops(layout_and_groups, monkeypatch, tmp_path):
    from nitp_train.models import count_parameters_from_spec

    _, layout, _ = layout_and_groups
    table = T.cost_table(layout, [])
    (row,) = table.rows
    spec, _ = T.model_spec(layout.blocks[0].reference)
    params = count_parameters_from_spec(spec)
    assert row.values[2] == pytest.approx(params["total"] / 1e6) and row.values[4] == pytest.approx(
        12 * 128 * 128 / 1e6
    )
    assert row.values[8] == pytest.approx(1000 / 980, rel=0.02)  # NTP / NITP median tokens per second
    assert row.values[9] is None  # no benchmark record given
    try:
        from nitp_train.flops import nitp_flops_per_token, training_flops_per_token
    except ImportError:
        pass
    else:
        from nitp_train.models import make_config

        assert row.values[5] == pytest.approx(training_flops_per_token(make_config(spec), 64))
        assert row.values[7] == pytest.approx(100 * nitp_flops_per_token(128) / row.values[5])
    # a side-by-side benchmark's record fills the last column (and is no model of its own)
    from nitp.records import make_record, write_record

    speed = make_record(
        "speed",
        {"name": "nitp_overhead", "preset": "tiny-dense"},
        {"preset": "tiny-dense", "seq_len": 256, "device": "cpu"},
        {"step_time_ratio": 1.031},
    )
    path = write_record(tmp_path / "speed.json", speed)
    study = load_inputs([layout.blocks[0].baseline.run_dir, layout.blocks[0].reference.run_dir, path])
    assert len(study.models) == 2 and len(study.speed) == 1
    assert T.cost_table(arrange(study), study.speed).rows[0].values[9] == pytest.approx(1.031)
    monkeypatch.setitem(sys.modules, "nitp_train.flops", None)  # as if not installed
    (row,) = T.cost_table(layout, []).rows
    assert row.values[5:8] == [None, None, None]


# ----------------------------------------------------------------------------- formats
def small_table() -> Table:
    t = Table("t", "Scores & more_stuff (%)", ["a_b", "c"], higher_is_better=[True, False])
    x, y = t.add("NTP", [1.0, 0.5]), t.add("NITP #2", [3.0, None])
    t.add_delta("Δ (NITP − NTP)", y, x)
    t.notes.append("50% of 100$")
    return t


def test_markdown_latex_csv_are_valid():
    t = small_table()
    md = t.to_markdown().splitlines()
    assert md[2] == "| model | a_b | c |" and md[3] == "|:---|---:|---:|"
    assert md[5] == "| NITP #2 | **3.00** | — |" and md[6] == "| *Δ (NITP − NTP)* | +2.00 | — |"
    tex = t.to_latex()
    body = tex[tex.index("\\toprule") : tex.index("\\bottomrule")]
    for line in body.splitlines():
        if line.endswith("\\\\"):
            assert len(re.findall(r"(?<!\\)&", line)) == len(t.columns)  # every row has every cell
    assert (
        "\\caption{Scores \\& more\\_stuff (\\%)}" in tex and "NITP \\#2 & \\textbf{3.00} & --- \\\\" in tex
    )
    assert "$\\Delta$" in tex and "50\\% of 100\\$" in tex
    assert tex.count("\\begin{") == tex.count("\\end{") and "\\toprule" in tex and "\\midrule" in tex
    parsed = list(csv.reader(io.StringIO(t.to_csv())))
    assert parsed == [
        ["model", "a_b", "c"],
        ["NTP", "1.0", "0.5"],
        ["NITP #2", "3.0", ""],
        ["Δ (NITP − NTP)", "2.0", ""],
    ]


@pytest.mark.skipif(shutil.which("pdflatex") is None, reason="pdflatex not installed")
def test_latex_compiles(layout_and_groups, tmp_path):
    _, layout, groups = layout_and_groups
    tables = [
        small_table(),
        *T.bench_tables(layout, groups["bench"]),
        *T.ablation_tables(layout, groups["bench"], groups["mteb"]),
    ]
    doc = [
        "\\documentclass{article}",
        "\\usepackage{booktabs,graphicx}",
        "\\usepackage[T1]{fontenc}",
        "\\usepackage[utf8]{inputenc}",
        "\\begin{document}",
        *[t.to_latex() for t in tables],
        "\\end{document}",
    ]
    (tmp_path / "t.tex").write_text("\n".join(doc))
    res = subprocess.run(
        ["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "t.tex"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stdout[-2000:]
    assert "Overfull \\hbox" not in res.stdout  # wide tables are scaled to fit


# ----------------------------------------------------------------------------- bad input
def test_bad_inputs_are_one_line_user_errors(tmp_path, study_runs):
    (tmp_path / "broken.json").write_text("{not json")
    (tmp_path / "other.json").write_text(json.dumps({"hello": 1}))
    (tmp_path / "empty").mkdir()
    cases = {
        (): "no inputs",
        (tmp_path / "missing",): "no such file or directory",
        (tmp_path / "broken.json",): "not valid JSON",
        (tmp_path / "other.json",): "not a nitp result record",
        (tmp_path / "empty",): "neither a run directory",
    }
    for inputs, message in cases.items():
        with pytest.raises(UserError, match=message) as err:
            load_inputs(list(inputs))
        assert "\n" not in str(err.value)
    with pytest.raises(UserError, match="no model of that name"):
        load_inputs([study_runs["ntp"]], {"nope": "x"})
    with pytest.raises(UserError, match="share the label"):
        load_inputs([study_runs["ntp"], study_runs["nitp"]], {"tiny-nitp": "NTP tiny-dense @600"})
    with pytest.raises(UserError, match="NAME=NEW_LABEL"):
        parse_labels(["no-equals-sign"])


def test_knobs_and_their_defaults_come_from_the_config_model():
    from reports.grouping import KNOB_DEFAULTS, KNOBS

    # the names, values and order of the tables before they were read from nitp_train.config_model
    assert list(KNOBS.items()) == [
        ("nitp.target_layer", "target layer"),
        ("nitp.shift", "temporal shift"),
        ("nitp.loss", "NITP loss"),
        ("nitp.stop_grad", "stop-gradient"),
        ("nitp.projector", "projector"),
        ("nitp.start_step", "start step"),
        ("nitp.lambda", "λ"),
        ("cos_reg.weight", "cosine regulariser weight"),
    ]
    assert list(KNOB_DEFAULTS.items()) == [
        ("nitp.shift", 1),
        ("nitp.loss", "cosine"),
        ("nitp.stop_grad", True),
        ("nitp.projector", "swiglu"),
        ("nitp.start_step", 0),
        ("cos_reg.weight", 0.0),
    ]
    assert all(type(v) is type(w) for v, w in zip(KNOB_DEFAULTS.values(), (1, "", True, "", 0, 0.0)))
