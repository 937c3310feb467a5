"""Tiny NTP / NITP / MoE runs through the real trainer and CLI."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors import safe_open

from nitp.io import read_jsonl
from nitp.runs import resolve_checkpoint
from tests.helpers import builtin_prepared_dir, make_tiny_run, tiny_cli_args

pytestmark = pytest.mark.slow  # trains models (the rule: tests/conftest.py)


def _cli_run(run_dir: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable,
        "-m",
        "nitp_train",
        "run",
        *tiny_cli_args(),
        "--run-dir",
        str(run_dir),
        "--steps",
        "6",
        "--set",
        f"data.prepared_dir={builtin_prepared_dir()}",
        "--set",
        "checkpoint.every=6",
    ]
    return subprocess.run(cmd + list(args), capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def cli_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    runs = {}
    for objective in ("ntp", "nitp"):
        proc = _cli_run(root / objective, "--objective", objective)
        assert proc.returncode == 0, proc.stderr
        runs[objective] = root / objective
    return runs


def _keys(ckpt: Path) -> set[str]:
    with safe_open(ckpt / "model.safetensors", "pt") as f:
        return set(f.keys())


def test_ntp_and_nitp_checkpoints_load_with_identical_keys(cli_runs):
    from transformers import AutoModelForCausalLM

    ck = {o: resolve_checkpoint(r) for o, r in cli_runs.items()}
    assert _keys(ck["ntp"]) == _keys(ck["nitp"])
    assert not any("head" in k and "lm_head" not in k for k in _keys(ck["nitp"]))
    assert (ck["nitp"] / "nitp_head.safetensors").is_file()
    assert not (ck["ntp"] / "nitp_head.safetensors").exists()
    with safe_open(ck["nitp"] / "nitp_head.safetensors", "pt") as f:
        assert sorted(f.keys()) == ["down.weight", "gate.weight", "up.weight"]
        assert f.get_tensor("gate.weight").shape == (4 * 128, 128)
    for c in ck.values():
        model = AutoModelForCausalLM.from_pretrained(c)
        assert type(model).__name__ == "Qwen2ForCausalLM"
        assert json.loads((c / "nitp_meta.json").read_text())["step"] == 6


def test_metrics_hold_the_objective_terms(cli_runs):
    ntp = read_jsonl(cli_runs["ntp"] / "metrics.jsonl")
    nitp = read_jsonl(cli_runs["nitp"] / "metrics.jsonl")
    assert [r["step"] for r in nitp if "loss_total" in r] == [2, 4, 6]
    assert all("loss_nitp" in r for r in nitp if "loss_total" in r)
    assert not any("loss_nitp" in r for r in ntp)
    for r in nitp:
        if "loss_total" in r:  # total = ntp + lambda (1.0) * nitp
            assert r["loss_total"] == pytest.approx(r["loss_ntp"] + r["loss_nitp"], rel=1e-5)
    assert any("val_loss" in r and "val_ppl" in r for r in nitp)
    geom = [r for r in nitp if "erank" in r]
    assert geom and all(1.0 <= r["erank"] <= 128 and -1 <= r["mean_cos"] <= 1 for r in geom)
    # same seed and data: the NTP term starts from the same value in both runs
    assert ntp[0]["loss_ntp"] == pytest.approx(nitp[0]["loss_ntp"], rel=0.05)


def test_moe_preset_trains_and_logs_aux_loss(tmp_path):
    run = make_tiny_run(tmp_path / "moe", objective="nitp", preset="tiny-moe", steps=4)
    rows = [r for r in read_jsonl(run / "metrics.jsonl") if "loss_total" in r]
    assert rows and all(r["aux_loss"] > 0 for r in rows)
    cfg = json.loads((resolve_checkpoint(run) / "config.json").read_text())
    assert cfg["model_type"] == "qwen2_moe" and cfg["mlp_only_layers"] == [0]


def test_ablation_switches_change_the_objective(tmp_path):
    """Each paper ablation is a config switch that the trainer honours."""
    from nitp_train.config import load_config
    from nitp_train.loss import NITPObjective
    from nitp_train.models import build_model

    cfg = load_config(
        "configs/ablations/projector-linear.yaml", [f"data.prepared_dir={builtin_prepared_dir()}"]
    )
    obj = NITPObjective(build_model(cfg["model"]), cfg["objective"], cfg["nitp"])
    assert type(obj.head).__name__ == "Linear"
    cfg = load_config("configs/ablations/baseline-cosreg.yaml")
    assert cfg["objective"] == "ntp" and cfg["cos_reg"]["weight"] > 0
    run = make_tiny_run(
        tmp_path / "late", steps=4, extra=["nitp.start_step=2", "log.every=1", "log.geom_every=0"]
    )
    rows = [r for r in read_jsonl(run / "metrics.jsonl") if "loss_total" in r]
    assert rows[0]["loss_total"] == pytest.approx(
        rows[0]["loss_ntp"], rel=1e-6
    )  # step 1 < start_step: lambda off
    assert rows[-1]["loss_total"] == pytest.approx(rows[-1]["loss_ntp"] + rows[-1]["loss_nitp"], rel=1e-5)


def test_every_config_in_configs_resolves():
    from nitp_train.config import load_config

    files = sorted(
        f for f in Path("configs").rglob("*.yaml") if "studies" not in f.parts
    )  # study files: nitp-study
    assert len(files) >= 10
    for f in files:
        load_config(f)


@pytest.mark.slow
def test_projector_is_neither_decayed_nor_stepped_before_nitp_starts(tmp_path):
    """nitp.start_step: until then the projector keeps its initial weights bit for bit."""
    import torch
    from safetensors.torch import load_file

    from nitp_train.loss import NITPObjective
    from nitp_train.models import build_model
    from nitp_train.trainer import train
    from tests.helpers import tiny_config

    def head_after(start_step):
        extra = [
            f"nitp.start_step={start_step}",
            "train.weight_decay=0.5",
            "log.geom_every=0",
            "log.eval_every=0",
        ]
        cfg = tiny_config(steps=3, extra=extra)
        run = train(cfg, tmp_path / f"start-{start_step}", log=lambda *_: None)
        torch.manual_seed(cfg["seed"])
        initial = NITPObjective(build_model(cfg["model"], seed=cfg["seed"]), "nitp", cfg["nitp"]).head
        return initial.state_dict(), load_file(resolve_checkpoint(run) / "nitp_head.safetensors")

    initial, held = head_after(start_step=5)
    assert all(torch.equal(initial[k], held[k]) for k in initial)
    initial, moved = head_after(start_step=1)  # control: once NITP is on, the projector trains
    assert not any(torch.equal(initial[k], moved[k]) for k in initial)
