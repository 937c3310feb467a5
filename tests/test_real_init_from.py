"""Continued pre-training (``model.init_from``) and ``nitp-train export``, on a tiny real checkpoint."""

from __future__ import annotations

import pytest
import torch

from nitp.errors import UserError
from nitp.layers import default_target_layer


def _cfg(source, *extra):
    from nitp_train.config import load_config

    return load_config(None, [f"model.init_from={source}", "train.steps=50", *extra])


def test_init_from_keeps_the_source_model(tiny_checkpoint):
    from nitp.loading import load_config as model_config

    cfg = _cfg(tiny_checkpoint)
    src = model_config(tiny_checkpoint)
    model = cfg["model"]
    assert model["preset"] == "init_from" and model["init_from"] == str(tiny_checkpoint)
    assert (model["num_hidden_layers"], model["hidden_size"]) == (src.num_hidden_layers, src.hidden_size)
    assert cfg["nitp"]["target_layer"] == default_target_layer(src.num_hidden_layers)
    assert cfg["data"]["tokenizer"] == str(tiny_checkpoint)  # data tokenized with the model's tokenizer
    # continued-pre-training schedule: short warm-up, constant, linear decay; lr 1e-4
    assert (cfg["train"]["warmup_steps"], cfg["train"]["decay_type"], cfg["train"]["lr"]) == (
        1,
        "linear",
        1e-4,
    )


def test_init_from_settings_win(tiny_run):
    cfg = _cfg(tiny_run, "nitp.target_layer=1", "train.warmup_steps=7", "train.lr=3e-4")
    assert (cfg["nitp"]["target_layer"], cfg["train"]["warmup_steps"], cfg["train"]["lr"]) == (1, 7, 3e-4)


@pytest.mark.parametrize(
    "extra, expected",
    [
        (("model.hidden_size=64",), "model.hidden_size: cannot be combined with model.init_from"),
        (("nitp.target_layer=99",), "nitp.target_layer"),
    ],
)
def test_init_from_bad_settings(tiny_checkpoint, extra, expected):
    with pytest.raises(UserError, match=expected):
        _cfg(tiny_checkpoint, *extra)


def test_init_from_missing_path(tmp_path):
    with pytest.raises(UserError, match="no such file or directory"):
        _cfg(tmp_path / "nope")


def test_two_step_nitp_run_starts_from_the_source_weights(tiny_checkpoint, tmp_path):
    from pydoc_data.topics import topics

    from safetensors.torch import load_file

    from nitp.runs import resolve_checkpoint
    from nitp_train.trainer import train

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(list(topics.values())[:40]))  # real English prose, always present
    cfg = _cfg(
        tiny_checkpoint,
        "objective=nitp",
        "train.steps=2",
        "checkpoint.every=2",
        "data.seq_len=64",
        "train.batch_size=4",
        "train.threads=1",
        f"data.corpus={corpus}",
    )
    run = train(cfg, tmp_path / "cpt", log=lambda *_: None)
    before = load_file(tiny_checkpoint / "model.safetensors")
    after = load_file(resolve_checkpoint(run) / "model.safetensors")
    key = "model.embed_tokens.weight"
    diff = (after[key] - before[key]).abs().max()
    assert 0 < float(diff) < 0.05  # moved a little from the source, not re-initialised
    assert resolve_checkpoint(run).joinpath("nitp_head.safetensors").is_file()


def test_export_refuses_a_non_gguf(tmp_path, monkeypatch, capsys):
    from nitp_train.cli import main
    from tests.helpers import run_main

    (tmp_path / "model.bin").write_bytes(b"x")
    code, _, err = run_main(
        main, "nitp-train", ["export", tmp_path / "model.bin", "--out", tmp_path / "o"], monkeypatch, capsys
    )
    assert code == 2 and "not a .gguf file" in err and not (tmp_path / "o").exists()
    assert torch.__version__  # torch imported lazily by the command, present for the run above
