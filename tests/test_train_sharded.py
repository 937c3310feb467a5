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


def _run(run_dir: Path, steps: int, nproc: int = 2, resume: bool = False, sets: tuple = ()) -> None:
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
        *[arg for kv in sets for arg in ("--set", kv)],
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

    # bf16 parameters (FSDP2 MixedPrecisionPolicy) with 2 processes: trains, exports float32 weights
    bf16 = tmp_path / "bf16"
    _run(bf16, steps=2, sets=("train.param_dtype=bf16",))
    rows = read_jsonl(bf16 / "metrics.jsonl")
    assert rows[-1]["step"] == 2 and all(torch.isfinite(torch.tensor(r["loss_total"])) for r in rows)
    assert {v.dtype for v in _weights(list_checkpoints(bf16)[-1]).values()} == {torch.float32}


# ----------------------------------------------------------------------------- nothing is unpickled
def _tiny_objective_and_adamw():
    from nitp_train.loss import NITPObjective
    from nitp_train.models import build_model, resolve_preset

    objective = NITPObjective(build_model(resolve_preset("tiny-dense"), seed=0), "ntp", {})
    optimizer = torch.optim.AdamW(objective.parameters(), lr=1e-3)
    objective(torch.randint(0, 100, (1, 16)))["loss_total"].backward()
    optimizer.step()
    return objective, optimizer


class _Payload:
    """Unpickling this touches ``marker``: the proof that a file was unpickled."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def test_sharded_metadata_is_json_and_round_trips_weights_and_adam_state(tmp_path):
    import json

    from nitp_train.parallel import load_sharded, save_sharded

    objective, optimizer = _tiny_objective_and_adamw()
    saved = {k: v.clone() for k, v in objective.state_dict().items()}
    save_sharded(objective, optimizer, tmp_path / "dcp")
    meta = json.loads((tmp_path / "dcp" / ".metadata").read_text())  # JSON, not a pickle
    kinds = {v["kind"] for v in meta["state_dict_metadata"].values()}
    assert kinds == {"tensor", "bytes"}  # the optimizer's hyper-parameters are byte items
    with torch.no_grad():
        for p in objective.parameters():
            p.add_(1.0)
    optimizer.param_groups[0]["lr"] = 0.5
    optimizer.state[next(iter(objective.parameters()))]["exp_avg"].zero_()
    load_sharded(objective, optimizer, tmp_path / "dcp")
    assert all(torch.equal(saved[k], v) for k, v in objective.state_dict().items())
    assert optimizer.param_groups[0]["lr"] == 1e-3
    assert optimizer.state[next(iter(objective.parameters()))]["exp_avg"].abs().sum() > 0


def test_a_pickled_metadata_file_is_refused_in_one_line_and_never_run(tmp_path):
    import pickle

    from nitp.errors import UserError
    from nitp_train.parallel import load_sharded, save_sharded

    objective, optimizer = _tiny_objective_and_adamw()
    save_sharded(objective, optimizer, tmp_path / "dcp")
    marker = tmp_path / "PWNED"
    (tmp_path / "dcp" / ".metadata").write_bytes(pickle.dumps(_Payload(marker)))
    with pytest.raises(UserError) as err:
        load_sharded(objective, optimizer, tmp_path / "dcp")
    assert len(str(err.value).splitlines()) == 1 and ".metadata" in str(err.value)
    assert not marker.exists()


def test_a_pickled_byte_item_is_refused_in_one_line_and_never_run(tmp_path):
    from nitp.errors import UserError
    from nitp_train.dcp_json import load_state, save_state

    marker = tmp_path / "PWNED"
    save_state({"evil": _Payload(marker), "w": torch.ones(2)}, tmp_path / "dcp")
    with pytest.raises(UserError) as err:
        load_state({"evil": None, "w": torch.zeros(2)}, tmp_path / "dcp")
    assert len(str(err.value).splitlines()) == 1 and "evil" in str(err.value)
    assert not marker.exists()


# ----------------------------------------------------------------------------- train.param_dtype
def test_param_dtype_bf16_computes_in_bf16_and_keeps_float32_master_state(tmp_path):
    import torch.distributed as dist

    from nitp_train.parallel import mixed_precision_policy, shard

    assert mixed_precision_policy("fp32") is None
    policy = mixed_precision_policy("bf16")
    assert (policy.param_dtype, policy.reduce_dtype) == (torch.bfloat16, torch.float32)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/pg", rank=0, world_size=1)
    try:
        objective, _ = _tiny_objective_and_adamw()
        objective.zero_grad(set_to_none=True)
        shard(objective, "bf16")
        block = objective.model.model.layers[0]
        seen = []
        block.mlp.down_proj.register_forward_pre_hook(lambda m, _i: seen.append(m.weight.dtype))
        optimizer = torch.optim.AdamW(objective.parameters(), lr=1e-3)
        objective(torch.randint(0, 100, (2, 16)))["loss_total"].backward()
        optimizer.step()
        assert seen == [torch.bfloat16]  # the gathered parameters the matmuls use
        assert {p.dtype for p in objective.parameters()} == {torch.float32}  # the sharded master copy
        assert {p.grad.dtype for p in objective.parameters() if p.grad is not None} == {torch.float32}
        assert {s["exp_avg"].dtype for s in optimizer.state.values()} == {torch.float32}
    finally:
        dist.destroy_process_group()


def test_param_dtype_bf16_outside_fsdp_is_a_one_line_error():
    from nitp.errors import UserError
    from nitp_train.config_model import DEFAULTS, Train
    from nitp_train.parallel import Dist
    from nitp_train.trainer import _check_param_dtype

    train = DEFAULTS["train"]
    assert train["param_dtype"] == "fp32"
    for d, mode in ((Dist(), "fsdp"), (Dist(world=2), "ddp"), (Dist(), "ddp")):
        with pytest.raises(UserError, match="train.param_dtype=bf16 needs train.parallel=fsdp") as err:
            _check_param_dtype(Train(**{**train, "param_dtype": "bf16", "parallel": mode}), d)
        assert "\n" not in str(err.value)
    _check_param_dtype(Train(**{**train, "param_dtype": "bf16", "parallel": "fsdp"}), Dist(world=2))
    _check_param_dtype(Train(**{**train, "param_dtype": "fp32", "parallel": "ddp"}), Dist())
