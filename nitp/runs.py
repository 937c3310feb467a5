"""Run directories and checkpoints: naming, discovery, completeness and identity.

Run directory (written by ``nitp-train``; see docs/contracts.md)::

    RUN/config.yaml                       fully resolved training config
    RUN/metrics.jsonl                     one JSON object per logged step
    RUN/checkpoints/step_000500/          Hugging Face model folder (+ nitp_head.safetensors,
                                          trainer_state/, COMPLETE written last)
    RUN/checkpoints/latest                text file naming the newest complete checkpoint

A checkpoint of a run counts only when its ``COMPLETE`` marker exists; folders being written
(``.step_N.tmp``) or deleted (``.step_N.del``) are hidden names and never listed.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any, Iterator

from .errors import UserError

CHECKPOINT_RE = re.compile(r"^step_(\d+)$")
COMPLETE_MARKER = "COMPLETE"
WEIGHT_SUFFIXES = {".safetensors", ".bin", ".pt", ".gguf"}


def checkpoint_name(step: int) -> str:
    """``step_000500``: the folder name of checkpoint ``step`` (sorts by step up to 1e6 - 1)."""
    return f"step_{step:06d}"


def checkpoint_step(path: str | os.PathLike) -> int | None:
    m = CHECKPOINT_RE.match(Path(path).name)
    return int(m.group(1)) if m else None


def checkpoints_dir(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / "checkpoints"


def is_model_dir(path: Path) -> bool:
    return (Path(path) / "config.json").is_file()


def is_gguf_file(path: Path) -> bool:
    return Path(path).suffix.lower() == ".gguf" and Path(path).is_file()


def is_complete(ckpt: Path) -> bool:
    """A run's checkpoint is complete when its marker exists (written last, before the rename)."""
    return is_model_dir(ckpt) and (Path(ckpt) / COMPLETE_MARKER).is_file()


def list_checkpoints(run_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    ckdir = checkpoints_dir(run_dir)
    if not ckdir.is_dir():
        return []
    found = [p for p in ckdir.iterdir() if p.is_dir() and checkpoint_step(p) is not None and is_complete(p)]
    return sorted(found, key=checkpoint_step)


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A checkpoint folder, a run directory (its latest checkpoint), a plain HF model folder
    or a ``.gguf`` file (returned as is; ``nitp.loading`` reads it).

    Raises ``UserError`` naming the path when it is none of those, or when it is a run's
    checkpoint that was never completed.
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise UserError(
            f"{path}: no such file or directory (give a checkpoint, a run directory, "
            "a Hugging Face model folder or a .gguf file)"
        )
    if is_gguf_file(p):
        return p
    if is_model_dir(p):
        if checkpoint_step(p) is not None and p.parent.name == "checkpoints" and not is_complete(p):
            raise UserError(
                f"{path}: incomplete checkpoint (no {COMPLETE_MARKER} marker; it was interrupted); "
                "use another checkpoint or the run directory"
            )
        return p
    target = _latest_named(p)
    if target is not None and is_complete(target):
        return target
    ckpts = list_checkpoints(p)
    if ckpts:
        return ckpts[-1]
    if (p / "config.yaml").is_file():
        raise UserError(
            f"{path}: run directory has no complete checkpoint yet (train longer or check RUN/checkpoints/)"
        )
    raise UserError(f"{path}: not a model folder (no config.json) nor a run directory (no checkpoints/)")


def _latest_named(run_dir: Path) -> Path | None:
    """The checkpoint ``RUN/checkpoints/latest`` names, when it names one (``step_N``) readably; a
    damaged pointer (other bytes, ``../x``) counts as absent: the newest complete one is used."""
    latest = checkpoints_dir(run_dir) / "latest"
    try:
        name = latest.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return checkpoints_dir(run_dir) / name if CHECKPOINT_RE.match(name) else None


def run_dir_of(ckpt: Path) -> Path | None:
    """The run directory a checkpoint belongs to, or None for a plain model folder."""
    ckpt = Path(ckpt).resolve()
    if ckpt.parent.name == "checkpoints" and (ckpt.parent.parent / "config.yaml").is_file():
        return ckpt.parent.parent
    return None


def read_run_config(run_dir: str | os.PathLike) -> dict:
    import yaml

    with open(Path(run_dir) / "config.yaml") as f:
        return yaml.safe_load(f) or {}


def weight_files(ckpt: Path) -> list[Path]:
    """The model's weight files (the projector ``nitp_head*`` excluded); a .gguf file is its own."""
    ckpt = Path(ckpt)
    if ckpt.is_file():
        return [ckpt]
    return sorted(
        f
        for f in ckpt.iterdir()
        if f.is_file() and f.suffix in WEIGHT_SUFFIXES and not f.name.startswith("nitp_head")
    )


def weights_hash(ckpt: str | os.PathLike) -> str:
    """sha256 over the model's weight files (names + bytes): the checkpoint's identity.

    Two checkpoints with different weights never share a hash; the same weights copied to
    another folder keep theirs. Cached by (path, size, mtime) within a process.
    """
    files = weight_files(Path(ckpt))
    if not files:
        raise UserError(f"{ckpt}: no weight files (*.safetensors / *.bin) in the model folder")
    key = tuple((str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns) for f in files)
    return _hash_files(key)


@functools.lru_cache(maxsize=64)
def _hash_files(key: tuple) -> str:
    h = hashlib.sha256()
    for name, _, _ in key:
        h.update(Path(name).name.encode())
        with open(name, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                h.update(block)
    return h.hexdigest()


def checkpoint_info(path: str | os.PathLike) -> dict:
    """Identity of a model for result records: path, run, step, objective, tokens, hash."""
    ckpt = resolve_checkpoint(path)
    run = run_dir_of(ckpt)
    info: dict[str, Any] = {
        "path": str(ckpt.resolve()),
        "run": str(run) if run else None,
        "name": (run.name if run else (ckpt.stem if ckpt.is_file() else ckpt.name)),
        "step": checkpoint_step(ckpt),
        "objective": None,
        "preset": None,
        "tokens_seen": None,
        "hash": weights_hash(ckpt),
    }
    meta = ckpt / "nitp_meta.json"
    if meta.is_file():
        m = read_meta(meta)
        for k in ("step", "objective", "preset", "tokens_seen"):
            if m.get(k) is not None:
                info[k] = m[k]
    elif run is not None:
        cfg = read_run_config(run)
        info["objective"] = cfg.get("objective")
        info["preset"] = (cfg.get("model") or {}).get("preset")
    return info


META_TYPES = {"step": int, "tokens_seen": int, "objective": str, "preset": str}


def read_meta(path: Path) -> dict:
    """A checkpoint's ``nitp_meta.json``, its values checked (``UserError`` naming the file and
    the key: a hand-edited ``"step": "x"`` must not reach a record or a table)."""
    fix = "restore it from the run or delete it (it only names the step, objective and tokens)"
    try:
        meta = json.loads(Path(path).read_bytes())
    except (ValueError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not valid JSON ({type(e).__name__}); {fix}") from None
    if not isinstance(meta, dict):
        raise UserError(f"{path}: expected a JSON object; {fix}")
    for key, kind in META_TYPES.items():
        value = meta.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, kind)):
            raise UserError(
                f"{path}: {key}={value!r} is not {'a whole number' if kind is int else 'a text'}; {fix}"
            )
    return meta


# ----------------------------------------------------------------------------- run lock
def lock_path(run_dir: str | os.PathLike) -> Path:
    """``PARENT/.RUN.lock`` beside the run directory's *resolved* path, so it can be held before
    the run exists and every name of one folder (a symlink, ``..``, a symlinked parent) takes
    the same lock. A long RUN name is shortened (``nitp.io.hidden_name``): never past NAME_MAX."""
    from .io import hidden_name

    given = run_dir
    try:
        run_dir = Path(run_dir).expanduser().resolve()
    except (RuntimeError, OSError) as e:  # a symlink loop (RuntimeError before Python 3.13)
        raise UserError(f"{given}: cannot be resolved ({e}); give a real folder") from None
    return run_dir.parent / hidden_name(run_dir.name, ".lock")


@contextlib.contextmanager
def run_lock(run_dir: str | os.PathLike, what: str = "nitp-train") -> Iterator[Path]:
    """Hold the run directory exclusively for the block: a second holder is refused in one line.

    The lock is ``fcntl.flock`` on :func:`lock_path` (taken without waiting); the file names its
    holder (pid, host, start time) and is removed when the block ends. A killed holder's lock
    is released by the kernel with its process, and the next start takes it over. Parent
    folders it had to create are removed again when they are still empty.

    >>> with run_lock("runs/tiny"):                                         # doctest: +SKIP
    ...     train(cfg, "runs/tiny")
    """
    # not filelock: it keeps the lock file after release (a run must leave none) and cannot name the holder
    path = lock_path(run_dir)
    made = _missing_parents(path.parent)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = _acquire(path, run_dir, what)
    folder_fd = None
    try:
        folder_fd = _lock_folder(run_dir, path)
        yield path
    finally:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # while still held: a waiter that locked the old file retries
        os.close(fd)
        if folder_fd is not None:
            os.close(folder_fd)
        for folder in made:
            with contextlib.suppress(OSError):
                folder.rmdir()


def _lock_folder(run_dir, path: Path) -> int | None:
    """``flock`` on an existing run folder itself: a second path to the same folder (a bind mount,
    a hard-linked parent) has another lock file beside it but the same folder inode."""
    import fcntl

    try:
        fd = os.open(run_dir, os.O_RDONLY | os.O_DIRECTORY)
    except (FileNotFoundError, NotADirectoryError):
        return None  # a new run: its folder does not exist yet
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise UserError(
            f"{run_dir}: in use by another process through another path to the same folder (a bind "
            "mount?); wait for it to finish or choose another --run-dir"
        ) from None
    return fd


def _acquire(path: Path, run_dir, what: str) -> int:
    """Lock ``path`` (retrying when the file was replaced while we waited); write the holder."""
    import datetime
    import fcntl
    import socket

    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 512, 0).decode("utf-8", "replace").strip() or "another process"
            os.close(fd)
            raise UserError(
                f"{run_dir}: in use by {holder}; wait for it to finish or choose another --run-dir"
            ) from None
        with contextlib.suppress(FileNotFoundError):
            if os.fstat(fd).st_ino == os.stat(path).st_ino:
                break
        os.close(fd)  # the holder removed the file as we locked it: take the new one
    started = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{what} pid {os.getpid()} on {socket.gethostname()} since {started}\n".encode(), 0)
    return fd


def _missing_parents(folder: Path) -> list[Path]:
    """The folders of ``folder``'s path that do not exist yet, deepest first."""
    missing = []
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    return missing
