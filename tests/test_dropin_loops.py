"""wrap_model inside real training loops: HF Trainer, TRL SFTTrainer, Lightning, the nanoGPT-style
loop (the last two executed from docs/dropin.md), on a tiny model and the built-in corpus."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from tests.helpers import builtin_prepared_dir

DOC = Path(__file__).resolve().parent.parent / "docs" / "dropin.md"


def recipe(name: str) -> str:
    """The ```python block of docs/dropin.md that starts with ``# recipe: <name>``."""
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)
    return next(b for b in blocks if b.startswith(f"# recipe: {name}\n"))


def tiny_model_and_tokenizer():
    from nitp_train.data import TokenShards
    from nitp_train.models import build_model, resolve_preset

    torch.manual_seed(0)
    return build_model(resolve_preset("tiny-dense")), TokenShards(builtin_prepared_dir()).tokenizer()


@pytest.mark.slow
@pytest.mark.parametrize("trainer", ["hf", "sft"])
def test_trainer_run_logs_both_losses_saves_plain_folder_and_resumes(tmp_path, trainer):
    from transformers import AutoModelForCausalLM

    from nitp_train.dropin import wrap_model
    from nitp_train.dropin.demo import run_demo

    model, tok = tiny_model_and_tokenizer()
    plain_keys = set(model.state_dict())
    steps = 20 if trainer == "hf" else 6
    result = run_demo(
        model,
        tok,
        tmp_path,
        steps=steps,
        seq_len=32,
        batch_size=4,
        lr=3e-3,
        trainer=trainer,
        geometry_every=5,
    )
    lines = [h for h in result["log_history"] if "loss" in h]
    assert len(lines) == steps
    for h in lines:
        assert h["loss"] == pytest.approx(h["loss_ntp"] + h["loss_nitp"], rel=2e-3)  # weight 1
        assert 0.0 < h["nitp_grad_share"] < 1.0
    assert lines[-1]["loss_nitp"] < lines[0]["loss_nitp"]  # phase I: the NITP loss drops
    assert {"erank", "anisotropy"} <= set(lines[0]) and "erank" not in lines[1]
    for folder in (result["export"], tmp_path / f"checkpoint-{steps}"):
        assert set(AutoModelForCausalLM.from_pretrained(folder).state_dict()) == plain_keys
        assert (folder / "nitp_head.safetensors").is_file()

    if trainer == "hf":  # the Trainer's resume brings back the LM and (via the callback) the projector
        trained = result["wrapped"]
        fresh_model, _ = tiny_model_and_tokenizer()
        again = wrap_model(fresh_model)
        t = result["trainer"]
        t.model = t.model_wrapped = again
        t.args.max_steps = steps + 1
        from nitp_train.dropin.hf import NITPCallback

        cb = next(c for c in t.callback_handler.callbacks if isinstance(c, NITPCallback))
        t._load_from_checkpoint(str(tmp_path / f"checkpoint-{steps}"))
        t.state.global_step = steps
        cb.on_train_begin(t.args, t.state, t.control, model=again)
        torch.testing.assert_close(again.head.down.weight, trained.head.down.weight)
        torch.testing.assert_close(again.model.model.norm.weight, trained.model.model.norm.weight)


@pytest.mark.slow
def test_lightning_recipe_from_the_doc(tmp_path):
    from torch.utils.data import DataLoader

    model, tok = tiny_model_and_tokenizer()
    ids = torch.from_numpy(builtin_prepared_dir_tokens()[: 8 * 32].astype("int64").reshape(8, 32))
    loader = DataLoader(
        [{"input_ids": r, "attention_mask": torch.ones_like(r), "labels": r} for r in ids], batch_size=4
    )
    scope = {"model": model, "loader": loader, "steps": 3, "out_dir": tmp_path / "lightning"}
    exec(recipe("lightning"), scope)
    assert (tmp_path / "lightning" / "nitp_head.safetensors").is_file()
    assert scope["module"].model.head.down.weight.grad is not None


@pytest.mark.slow
def test_nanogpt_recipe_from_the_doc(tmp_path, capsys):
    model, _ = tiny_model_and_tokenizer()
    scope = {
        "model": model,
        "tokens": builtin_prepared_dir_tokens(),
        "steps": 12,
        "block_size": 32,
        "batch_size": 4,
    }
    scope["out_dir"] = tmp_path / "nanogpt"
    exec(recipe("nanogpt"), scope)
    printed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("step ")]
    nitp = [float(line.split()[-1]) for line in printed]
    assert len(nitp) == 12 and sum(nitp[-3:]) < sum(nitp[:3])  # the NITP loss goes down
    assert (tmp_path / "nanogpt" / "nitp_head.safetensors").is_file()


def builtin_prepared_dir_tokens():
    from nitp_train.data import TokenShards

    return TokenShards(builtin_prepared_dir()).train
