"""A 2-process DDP run under torchrun (gloo) trains and its ranks agree."""

import json
import shutil
import subprocess
import sys

import pytest

from nitp.io import read_jsonl
from nitp.runs import resolve_checkpoint
from tests.helpers import builtin_prepared_dir, tiny_cli_args

pytestmark = pytest.mark.slow  # trains models (the rule: tests/conftest.py)


@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_two_process_run_under_torchrun(tmp_path, parallel):
    torchrun = shutil.which("torchrun", path=str(__import__("pathlib").Path(sys.executable).parent))
    cmd = [
        torchrun,
        "--nproc_per_node",
        "2",
        "-m",
        "nitp_train",
        "run",
        *tiny_cli_args(),
        "--run-dir",
        str(tmp_path / "run"),
        "--steps",
        "4",
        "--set",
        f"data.prepared_dir={builtin_prepared_dir()}",
        "--set",
        "checkpoint.every=2",
        "--set",
        "log.geom_every=0",
        "--set",
        f"train.parallel={parallel}",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    state = json.loads((resolve_checkpoint(tmp_path / "run") / "trainer_state" / "state.json").read_text())
    assert state["world_size"] == 2
    if parallel == "ddp":
        a, b = state["rank_param_checksums"]
        assert a == b
    rows = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    assert rows[-1]["step"] == 4 and rows[-1]["tokens"] == 4 * 2 * 8 * 64  # steps x ranks x batch x seq
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(resolve_checkpoint(tmp_path / "run"))
