"""The prepared GPU check runs end to end on CPU in its smoke mode and prints its one table."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_gpu_check_smoke_runs_every_section(tmp_path):
    out = tmp_path / "check.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--smoke", "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| NITP / NTP step time" in proc.stdout and "geometry / forward" in proc.stdout
    import json

    res = json.loads(out.read_text())
    assert res["errors"] == {}
    assert res["fsdp_reload_exact"] is True  # sharded save + load on a world-1 group
    assert res["ntp_tokens_per_s"] > 0 and res["nitp_tokens_per_s"] > 0 and res["geom_ratio"] > 0
    assert res["nitp_predicted_ratio"] > 1.0
