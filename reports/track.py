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

import contextlib
import json
import shutil
from pathlib import Path

from nitp.errors import UserError
from nitp.io import hidden_name, read_jsonl
from nitp.runs import read_run_config

from .outdir import RUN_MARKERS


def parse_trackers(text: str) -> list[str]:
    """``"tensorboard,trackio"`` -> ``["tensorboard", "trackio"]``, each checked (``UserError``)."""
    from nitp_train.trackers import TRACKERS, require

    names = [t.strip() for t in text.split(",") if t.strip()]
    if not names:
        raise UserError(f"--to is empty; give any of {', '.join(TRACKERS)}, comma-separated")
    for name in names:
        require(name, where="--to")
    return names


def check_replay_folder(run_dir: Path, out: Path, name: str) -> None:
    """Refuse an ``out`` whose tracker files belong to someone else: the run itself, another run
    directory or anything inside one, or a folder holding the replay of another run (a replay
    deletes ``OUT/tensorboard`` and rewrites ``OUT/trackers.json``)."""
    run, target = run_dir.resolve(), out.resolve()
    if target == run:
        raise UserError(
            f"--out {out}: choose a folder other than the run itself (its live trackers live there)"
        )
    # the nearest run directory at or above the target
    owner = next((f for f in [target, *target.parents] if any((f / m).exists() for m in RUN_MARKERS)), None)
    if owner is not None and owner != run:
        raise UserError(
            f"--out {out}: is inside another run directory ({owner}); a replay would replace its tracker "
            f"files. Give a folder of its own (default: {run_dir / 'replay'})"
        )
    from nitp_train.trackers import STATE_FILE

    state = out / STATE_FILE
    if state.is_file():
        try:
            previous = json.loads(state.read_text()).get("run_name")
        except (ValueError, AttributeError):
            previous = None
        if previous != name:
            raise UserError(
                f"--out {out}: holds the tracker state of {previous or 'another run'!s}, not of {name}; "
                "give a new folder"
            )
    elif (out / "tensorboard").exists():
        raise UserError(
            f"--out {out}: holds a tensorboard/ folder that is not a replay of {name}; give a new folder"
        )


def replay(run_dir, trackers: list[str], out=None) -> Path:
    """Send every line of ``RUN/metrics.jsonl`` to new runs of ``trackers`` stored in ``out``."""
    from nitp_train.trackers import Trackers

    run_dir = Path(run_dir)
    metrics = run_dir / "metrics.jsonl"
    if not metrics.is_file():
        raise UserError(f"{run_dir}: no metrics.jsonl (not a run directory of nitp-train)")
    cfg = read_run_config(run_dir)
    out = Path(out) if out is not None else run_dir / "replay"
    name = cfg.get("run_name") or run_dir.name
    check_replay_folder(run_dir, out, name)
    with _replaced_on_success(out):
        sink = Trackers(out, trackers, name, cfg)
        try:
            for row in read_jsonl(metrics):
                sink.log(row)
        finally:
            sink.close()
    return out


@contextlib.contextmanager
def _replaced_on_success(out: Path):
    """A replay of this run replaces the last one, or, failing (a full disk), leaves ``out`` as it
    was: the old TensorBoard folder waits aside until the new one is complete, and whatever the
    failed replay created is removed."""
    old, aside = out / "tensorboard", out / hidden_name("tensorboard", ".previous")
    shutil.rmtree(aside, ignore_errors=True)
    if old.exists():
        old.rename(aside)
    existed = out.exists()
    before = set(out.iterdir()) if existed else set()
    try:
        yield
    except BaseException:
        for p in set(out.iterdir()) - before if out.exists() else ():
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
        if aside.exists():
            aside.rename(old)
        elif not existed:
            shutil.rmtree(out, ignore_errors=True)
        raise
    shutil.rmtree(aside, ignore_errors=True)
