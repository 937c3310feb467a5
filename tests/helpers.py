"""Builders of small real artefacts for tests (shared by every test module)."""

from __future__ import annotations

import os
from pathlib import Path

import yaml

DATA_CACHE = Path(os.environ.get("NITP_TEST_CACHE", Path(__file__).resolve().parent.parent / ".cache" / "test-data"))


def builtin_prepared_dir(seq_len: int = 64) -> Path:
    """The built-in corpus tokenized once per machine (vocabulary 4096), reused by tests."""
    from nitp_train.data import prepare

    cfg = {"corpus": "builtin", "vocab_size": 4096, "val_fraction": 0.05, "seed": 0, "seq_len": seq_len}
    return prepare(cfg, DATA_CACHE / "builtin-4096", log=lambda *_: None)


def make_tiny_run(run_dir: Path, objective: str = "nitp", preset: str = "tiny-dense", steps: int = 0) -> Path:
    """A run directory with one checkpoint of a tiny model (random init until the trainer lands)."""
    import torch

    from nitp_train.artifacts import atomic_write_json, atomic_write_text
    from nitp_train.data import TokenShards
    from nitp_train.models import build_model, resolve_preset

    prepared = builtin_prepared_dir()
    spec = resolve_preset(preset)
    model = build_model(spec, seed=0)
    tok = TokenShards(prepared).tokenizer()
    model.config.bos_token_id, model.config.eos_token_id, model.config.pad_token_id = tok.bos_token_id, tok.eos_token_id, tok.pad_token_id
    ck = run_dir / "checkpoints" / f"step_{steps:06d}"
    ck.mkdir(parents=True)
    model.save_pretrained(ck)
    tok.save_pretrained(ck)
    atomic_write_json(ck / "nitp_meta.json", {"step": steps, "tokens_seen": 0, "objective": objective, "preset": preset})
    atomic_write_text(run_dir / "checkpoints" / "latest", ck.name)
    cfg = {"run_name": run_dir.name, "objective": objective, "model": {"preset": preset}, "data": {"corpus": "builtin", "prepared_dir": str(prepared)}}
    (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg))
    (run_dir / "metrics.jsonl").write_text("")
    del torch
    return run_dir
