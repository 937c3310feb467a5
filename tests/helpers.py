"""Builders of small real artefacts for tests (shared by every test module)."""

from __future__ import annotations

import os
from pathlib import Path

DATA_CACHE = Path(
    os.environ.get("NITP_TEST_CACHE", Path(__file__).resolve().parent.parent / ".cache" / "test-data")
)


def builtin_prepared_dir(seq_len: int = 64) -> Path:
    """The built-in corpus tokenized once per machine (vocabulary 4096), reused by tests."""
    from nitp_train.data import prepare

    cfg = {"corpus": "builtin", "vocab_size": 4096, "val_fraction": 0.05, "seed": 0, "seq_len": seq_len}
    return prepare(cfg, DATA_CACHE / "builtin-4096", log=lambda *_: None)


TINY_SETTINGS = [
    "data.seq_len=64",
    "train.batch_size=8",
    "train.warmup_steps=2",
    "train.threads=1",
    "log.every=2",
    "log.geom_every=4",
    "log.eval_every=4",
    "log.eval_batches=2",
]


def tiny_cli_args() -> list[str]:
    """``--set`` arguments of TINY_SETTINGS and the shared prepared corpus, for CLI subprocesses."""
    sets = [*TINY_SETTINGS, f"data.prepared_dir={builtin_prepared_dir()}"]
    return [a for s in sets for a in ("--set", s)]


def tiny_config(
    objective: str = "nitp", preset: str = "tiny-dense", steps: int = 8, extra: list[str] | None = None
) -> dict:
    """Resolved config of a tiny, fast run on the shared prepared built-in corpus."""
    from nitp_train.config import load_config

    overrides = [
        f"objective={objective}",
        f"model.preset={preset}",
        f"train.steps={steps}",
        f"checkpoint.every={steps}",
        f"data.prepared_dir={builtin_prepared_dir()}",
        *TINY_SETTINGS,
        *(extra or []),
    ]
    return load_config(None, overrides)


def make_tiny_run(
    run_dir: Path,
    objective: str = "nitp",
    preset: str = "tiny-dense",
    steps: int = 8,
    extra: list[str] | None = None,
) -> Path:
    """A real run directory made by the trainer: a few steps of a tiny model."""
    from nitp_train.trainer import train

    return train(tiny_config(objective, preset, steps, extra), run_dir, log=lambda *_: None)


def run_main(main, prog: str, args, monkeypatch, capsys) -> tuple[int, str, str]:
    """Run a console script's real ``main()`` in this process: (exit code, stdout, stderr)."""
    import sys

    monkeypatch.setattr(sys, "argv", [prog, *map(str, args)])
    try:
        main()
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


def hidden_encoder():
    """The module ``nitp_eval.mteb.hidden_encoder``, imported when a test runs, not when pytest
    collects: it imports mteb (seconds), which the fast subset does not need."""
    import nitp_eval.mteb.hidden_encoder as module

    return module
