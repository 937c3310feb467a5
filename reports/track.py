"""`nitp-report track RUN --to tensorboard`: replay a run's ``metrics.jsonl`` into experiment trackers.

``metrics.jsonl`` is the source of truth; this sends every line of it, under the names the trainer
uses live (``nitp_train.trackers.tracker_name``), to fresh tracker runs whose stores and state
(``trackers.json``) live in ``out`` (default ``RUN/replay/``), so a replay never mixes with the
run's own live tracker runs.

Example
-------
>>> replay("runs/tiny-nitp", ["tensorboard"])                    # doctest: +SKIP
PosixPath('runs/tiny-nitp/replay')   # tensorboard --logdir runs/tiny-nitp/replay/tensorboard
"""

from __future__ import annotations

import shutil
from pathlib import Path

from nitp.errors import UserError
from nitp.io import read_jsonl
from nitp.runs import read_run_config


def parse_trackers(text: str) -> list[str]:
    """``"tensorboard,trackio"`` -> ``["tensorboard", "trackio"]``, each checked (``UserError``)."""
    from nitp_train.trackers import require

    names = [t.strip() for t in text.split(",") if t.strip()]
    if not names:
        raise UserError("--to is empty; give tensorboard, trackio, wandb and/or mlflow, comma-separated")
    for name in names:
        require(name, where="--to")
    return names


def replay(run_dir, trackers: list[str], out=None) -> Path:
    """Send every line of ``RUN/metrics.jsonl`` to new runs of ``trackers`` stored in ``out``."""
    from nitp_train.trackers import Trackers

    run_dir = Path(run_dir)
    metrics = run_dir / "metrics.jsonl"
    if not metrics.is_file():
        raise UserError(f"{run_dir}: no metrics.jsonl (not a run directory of nitp-train)")
    cfg = read_run_config(run_dir)
    out = Path(out) if out is not None else run_dir / "replay"
    if out.resolve() == run_dir.resolve():
        raise UserError(
            f"--out {out}: choose a folder other than the run itself (its live trackers live there)"
        )
    shutil.rmtree(out / "tensorboard", ignore_errors=True)  # a replay replaces an earlier one
    name = cfg.get("run_name") or run_dir.name
    sink = Trackers(out, trackers, name, cfg)
    try:
        for row in read_jsonl(metrics):
            sink.log(row)
    finally:
        sink.close()
    return out
