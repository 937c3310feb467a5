"""FSDP2 checkpoints are sharded (torch.distributed.checkpoint), resume bit for bit, and reshard.

Two gloo processes under torchrun on CPU: each rank writes its own shards into the checkpoint's
``trainer_state/distributed/``; the checkpoint folder stays a consolidated Hugging Face model; a
run stopped at step 2 and resumed equals an uninterrupted one bit for bit; and the same
2-process checkpoint resumes in a single process (world size 1).
"""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from nitp.io import read_jsonl
from nitp.runs import COMPLETE_MARKER, list_checkpoints
from tests.helpers import builtin_prepared_dir, tiny_cli_args


def _run(run_dir: Path, steps: int, nproc: int = 2, resume: bool = False) -> None:
    launcher = (
        [shutil.which("torchrun", path=str(Path(sys.executable).parent)), "--nproc_per_node", str(nproc)]
        if nproc > 1
        else [sys.executable]
    )
    cmd = [
        *launcher,
        "-m",
        "nitp_train",
        "run",
        *tiny_cli_args(),
        "--run-dir",
        str(run_dir),
        "--steps",
        str(steps),
        "--set",
        f"data.prepared_dir={builtin_prepared_dir()}",
        "--set",
        "checkpoint.every=2",
        "--set",
        "log.geom_every=0",
        "--set",
        "train.parallel=fsdp",
        *(["--resume"] if resume else []),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]


def _weights(ckpt: Path) -> dict:
    head = {f"head.{k}": v for k, v in load_file(ckpt / "nitp_head.safetensors").items()}
    return {**load_file(ckpt / "model.safetensors"), **head}


def _sharded_state_at_world_1(ckpt: Path):
    """A fresh single-process objective + AdamW with the 2-process shards loaded into it."""
    from transformers import AutoModelForCausalLM

    from nitp_train.config import load_config
    from nitp_train.loss import NITPObjective
    from nitp_train.parallel import load_sharded
    from nitp_train.trainer import _make_optimizer

    cfg = load_config(str(ckpt.parent.parent / "config.yaml"), [])
    model = AutoModelForCausalLM.from_pretrained(ckpt, dtype=torch.float32)
    torch.nn.init.zeros_(model.get_input_embeddings().weight)  # must come back from the shards
    objective = NITPObjective(model, cfg["objective"], cfg["nitp"])
    optimizer = _make_optimizer(objective, cfg["train"])
    load_sharded(objective, optimizer, ckpt / "trainer_state" / "distributed")
    return objective, optimizer


@pytest.mark.slow
def test_fsdp_sharded_checkpoints_resume_bitwise_and_reshard(tmp_path):
    full, cut = tmp_path / "full", tmp_path / "cut"
    _run(full, steps=4)
    _run(cut, steps=2)
    one = tmp_path / "one"
    shutil.copytree(cut, one)

    # layout: shards of both ranks, no gathered optimizer, a complete HF folder
    ck2 = list_checkpoints(cut)[-1]
    shards = ck2 / "trainer_state" / "distributed"
    assert (shards / ".metadata").is_file() and len(list(shards.glob("*.distcp"))) == 2
    assert not (ck2 / "trainer_state" / "optimizer.pt").exists()
    assert (ck2 / COMPLETE_MARKER).is_file()
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(ck2)

    # world size 1 reads the 2-rank shards back whole: weights equal the export, Adam state complete
    objective, optimizer = _sharded_state_at_world_1(ck2)
    exported = _weights(ck2)
    for name, p in objective.named_parameters():
        key = name[len("model.") :] if name.startswith("model.") else name
        if key in exported:
            assert torch.equal(p.detach(), exported[key]), name
    for group in optimizer.param_groups:
        for p in group["params"]:
            st = optimizer.state[p]
            assert int(st["step"]) == 2 and st["exp_avg"].shape == p.shape
            half = p.shape[0] // 2  # FSDP2 shards dim 0: rank 1's rows are the second half
            assert st["exp_avg_sq"][half:].abs().sum() > 0 and st["exp_avg_sq"][:half].abs().sum() > 0

    # stopped at 2 and resumed with 2 processes == uninterrupted, bit for bit
    _run(cut, steps=4, resume=True)
    a, b = _weights(list_checkpoints(full)[-1]), _weights(list_checkpoints(cut)[-1])
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    # the 2-process checkpoint resumes in one process
    _run(one, steps=4, nproc=1, resume=True)
    rows = read_jsonl(one / "metrics.jsonl")
    assert rows[-1]["step"] == 4 and all(torch.isfinite(torch.tensor(r["loss_total"])) for r in rows)
    assert list_checkpoints(one)[-1].name == "step_000004"
