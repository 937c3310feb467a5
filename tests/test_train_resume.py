"""A run killed with SIGKILL at an arbitrary moment and resumed ends bit-for-bit equal."""

import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from nitp.io import read_jsonl
from nitp.runs import list_checkpoints
from tests.helpers import builtin_prepared_dir, tiny_cli_args

pytestmark = pytest.mark.slow  # trains models (the rule: tests/conftest.py)

STEPS = 24


def _cmd(run_dir):
    cmd = [
        sys.executable,
        "-m",
        "nitp_train",
        "run",
        *tiny_cli_args(),
        "--run-dir",
        str(run_dir),
        "--steps",
        str(STEPS),
        "--set",
        f"data.prepared_dir={builtin_prepared_dir()}",
        "--set",
        "checkpoint.every=4",
        "--set",
        "log.geom_every=0",
    ]
    return cmd


def _final_weights(run_dir):
    ck = list_checkpoints(run_dir)[-1]
    return ck, {
        **load_file(ck / "model.safetensors"),
        **{f"head.{k}": v for k, v in load_file(ck / "nitp_head.safetensors").items()},
    }


def test_kill_and_resume_is_bit_for_bit(tmp_path):
    """Killed three times at random moments (writes, rotation and steps alike), resumed each time."""
    ref_dir, cut_dir = tmp_path / "ref", tmp_path / "cut"
    subprocess.run(_cmd(ref_dir), check=True, capture_output=True, timeout=300)

    rng = random.Random(os.getpid())
    kills = []
    for attempt in range(3):
        seen = len(list_checkpoints(cut_dir))
        cmd = _cmd(cut_dir) + (["--resume"] if attempt else [])
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 240
        while len(list_checkpoints(cut_dir)) <= seen and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)  # wait for a new checkpoint
        time.sleep(rng.uniform(0.0, 1.0))  # then kill at an arbitrary moment
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills.append([c.name for c in list_checkpoints(cut_dir)][-1:])
        for ck in list_checkpoints(cut_dir):  # every listed checkpoint is complete
            assert (ck / "model.safetensors").is_file() and (ck / "trainer_state" / "state.json").is_file()
    assert kills[0] and kills[0][-1] != f"step_{STEPS:06d}", "run finished before it was killed"

    resumed = subprocess.run(_cmd(cut_dir) + ["--resume"], capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    ck_ref, w_ref = _final_weights(ref_dir)
    ck_cut, w_cut = _final_weights(cut_dir)
    assert ck_ref.name == ck_cut.name == f"step_{STEPS:06d}"
    assert w_ref.keys() == w_cut.keys()
    for k in w_ref:
        assert torch.equal(w_ref[k], w_cut[k]), k
    # the metrics log has each step once, as the uninterrupted run's
    ref_rows, cut_rows = read_jsonl(ref_dir / "metrics.jsonl"), read_jsonl(cut_dir / "metrics.jsonl")
    assert [r["step"] for r in cut_rows] == [r["step"] for r in ref_rows]
    assert [r["loss_total"] for r in cut_rows] == [r["loss_total"] for r in ref_rows]


# Kill the trainer in the middle of checkpoint rotation: the oldest checkpoint has been renamed to
# ``.step_N.del`` and half of its files are gone when SIGKILL arrives (fault injected from outside the
# project's code, by wrapping shutil.rmtree in the trainer's process).
KILL_DURING_ROTATION = """
import os, pathlib, shutil, signal, sys
import nitp_train.checkpoint as checkpoint
real_rmtree = shutil.rmtree
def rmtree_then_die(path, *args, **kwargs):
    path = pathlib.Path(path)
    if path.name.endswith('.del') and path.exists():
        files = sorted(p for p in path.rglob('*') if p.is_file())
        for f in files[: len(files) // 2]:
            f.unlink()
        os.kill(os.getpid(), signal.SIGKILL)
    return real_rmtree(path, *args, **kwargs)
checkpoint.shutil.rmtree = rmtree_then_die
sys.argv = ['nitp-train', *sys.argv[1:]]
from nitp_train.cli import main
main()
"""


def test_kill_during_checkpoint_rotation_leaves_only_complete_checkpoints(tmp_path):
    from transformers import AutoModelForCausalLM

    ref_dir, cut_dir = tmp_path / "ref", tmp_path / "cut"
    rotation = ["--set", "checkpoint.keep_last=2"]
    subprocess.run(_cmd(ref_dir) + rotation, check=True, capture_output=True, timeout=300)
    args = _cmd(cut_dir)[3:] + rotation  # drop `python -m nitp_train`
    killed = subprocess.run(
        [sys.executable, "-c", KILL_DURING_ROTATION, *args], capture_output=True, timeout=300
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    ckdir = cut_dir / "checkpoints"
    assert list(ckdir.glob(".step_*.del")), "the kill did not land inside a rotation"
    # readers see only complete checkpoints, each loadable
    for ck in list_checkpoints(cut_dir):
        AutoModelForCausalLM.from_pretrained(ck)

    resumed = subprocess.run(
        _cmd(cut_dir) + rotation + ["--resume"], capture_output=True, text=True, timeout=300
    )
    assert resumed.returncode == 0, resumed.stderr
    assert not list(ckdir.glob(".step_*")), "leftovers of the killed rotation were not cleaned"
    assert [c.name for c in list_checkpoints(cut_dir)] == [c.name for c in list_checkpoints(ref_dir)]
    ck_ref, w_ref = _final_weights(ref_dir)
    ck_cut, w_cut = _final_weights(cut_dir)
    assert ck_ref.name == ck_cut.name == f"step_{STEPS:06d}"
    for k in w_ref:
        assert torch.equal(w_ref[k], w_cut[k]), k
