"""`nitp-report` on the command line: compare, --label, phases, one-line errors, light imports;
and `compare` on run directories made by the real trainer (the conftest fixtures)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from reports.cli import app
from tests.test_report_data import bench_record, model_info, write_run


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "reports.cli", *args], capture_output=True, text=True, timeout=300
    )


@pytest.mark.slow
def test_compare_with_labels(tmp_path):
    ntp = write_run(tmp_path, "tiny-ntp", "ntp", steps=100)
    nitp = write_run(tmp_path, "tiny-nitp", "nitp", steps=100)
    bench_record(model_info(ntp, 100, "ntp"), {"arc_challenge": 0.25})
    bench_record(model_info(nitp, 100), {"arc_challenge": 0.30})
    result = CliRunner().invoke(
        app,
        ["compare", str(ntp), str(nitp), "--out", str(tmp_path / "out"), "--label", "tiny-nitp=NITP (k=1)"],
    )
    assert result.exit_code == 0, result.output
    assert result.stdout.strip().endswith("report.md")
    table = (tmp_path / "out" / "tables" / "bench.md").read_text()
    # records without per-item results: the Δ has no interval and nothing is bold
    assert "| NITP (k=1) | 30.00 | 30.00 |" in table and "| NTP tiny-dense @100 | 25.00 | 25.00 |" in table
    assert "+5.00 [n/a]" in table


@pytest.mark.slow
def test_errors_are_one_line_with_nonzero_exit(tmp_path):
    (tmp_path / "bad.json").write_text("{")
    for args, message in [
        (["compare", "--out", str(tmp_path / "o")], "error: no inputs"),
        (["compare", str(tmp_path / "bad.json"), "--out", str(tmp_path / "o")], "not valid JSON"),
        (["compare", str(tmp_path / "bad.json"), "--out", str(tmp_path / "bad.json")], "not a directory"),
        (["compare", str(tmp_path), "--out", str(tmp_path / "o"), "--label", "x"], "NAME=NEW_LABEL"),
    ]:
        res = run_cli(*args)
        assert res.returncode == 2, (args, res.stderr)
        assert len(res.stderr.strip().splitlines()) == 1 and message in res.stderr, res.stderr
        assert "Traceback" not in res.stderr
    assert not (tmp_path / "o").exists()  # nothing half-written


def test_phases_command(tmp_path):
    nitp = write_run(tmp_path, "tiny-nitp", "nitp", steps=600)
    res = CliRunner().invoke(app, ["phases", str(nitp)])
    assert res.exit_code == 0 and "phase I ends at step" in res.stdout and "hump peak" in res.stdout
    res = run_cli("phases", str(write_run(tmp_path, "tiny-ntp", "ntp", steps=50)))
    assert res.returncode == 2 and "no loss_nitp" in res.stderr


def test_cli_import_is_light():
    code = "import reports.cli, sys; print(sorted(m for m in ('torch', 'matplotlib', 'transformers', 'pandas') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert json.loads(out.replace("'", '"')) == []


def test_compare_on_runs_made_by_the_trainer(tiny_run, tiny_ntp_run, tmp_path):
    """The real run-directory layout (config.yaml, metrics.jsonl, checkpoints/) reads as is."""
    path = CliRunner().invoke(
        app, ["compare", str(tiny_ntp_run), str(tiny_run), "--out", str(tmp_path / "r")]
    )
    assert path.exit_code == 0, path.output
    text = (tmp_path / "r" / "report.md").read_text()
    assert "NTP baseline" in text and "NITP reference" in text
    lm = (tmp_path / "r" / "tables" / "lm.csv").read_text().splitlines()
    assert len(lm) == 4 and lm[-1].startswith("Δ (NITP − NTP)")  # NTP, NITP, delta
    nitp_metrics = [json.loads(x) for x in (tiny_run / "metrics.jsonl").read_text().splitlines() if x.strip()]
    if any("loss_nitp" in m for m in nitp_metrics):
        assert list((tmp_path / "r" / "figures").glob("nitp_loss-*.png"))
