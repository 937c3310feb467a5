"""Atomic writes (readers see the old file or the whole new one) and torn-tolerant JSON lines."""

from __future__ import annotations

import contextlib
import errno
import glob
import hashlib
import json
import os
import re
import shutil
import socket
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

from nitp.errors import raise_if_interrupted

_UMASK = os.umask(0o022)
os.umask(_UMASK)
FOREIGN_TMP_AGE_S = 24 * 3600  # a temporary of another host is stale after this long untouched
LONG_NAME_BYTES = 128  # names longer than this are shortened in hidden temporary / lock names


def _owner_tag() -> str:
    """``HOST-PID``: names every temporary this process writes, so a later start can tell a
    leftover of a dead process from a live writer's file."""
    return f"{socket.gethostname().split('.')[0]}-{os.getpid()}"


def hidden_name(name: str, suffix: str = "") -> str:
    """``.NAME<suffix>``, the hidden name of a temporary or lock beside ``NAME``, always within
    NAME_MAX: a name longer than :data:`LONG_NAME_BYTES` bytes (UTF-8) is cut to 64 bytes plus
    ``~`` and 16 hex digits of its sha256, so every valid file name keeps a valid, unique,
    stable hidden name (``.<255-byte name>.lock`` would be 261 bytes: ENAMETOOLONG).

    >>> hidden_name("latest", ".lock")
    '.latest.lock'
    >>> len(hidden_name("x" * 255, ".lock"))
    87
    """
    raw = name.encode("utf-8", "surrogateescape")
    if len(raw) > LONG_NAME_BYTES:
        head = raw[:64].decode("utf-8", "ignore")  # never half a character
        name = f"{head}~{hashlib.sha256(raw).hexdigest()[:16]}"
    return f".{name}{suffix}"


def pid_alive(pid: int) -> bool:
    """True when a process ``pid`` exists on this host (signal 0 probes without sending)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


_TEMP_RE = re.compile(r"^\.(?P<name>.+?)\.(?P<host>[^.]+)-(?P<pid>\d+)(?:\.[a-z0-9_]+)?\.tmp$")


def is_stale_temp(tmp: Path) -> bool:
    """Whether the temporary ``tmp`` (``.NAME.HOST-PID[.XXXX].tmp``) was left by a dead writer.

    Same host: its process is gone. Another host (a shared disk): untouched for
    ``FOREIGN_TMP_AGE_S``. A ``.tmp`` name without that tag (written by an older version) is
    stale once untouched for ``FOREIGN_TMP_AGE_S`` too.

    >>> is_stale_temp(Path(".latest.nohost-999999999.k2j1.tmp"))   # doctest: +SKIP
    False
    """
    m = _TEMP_RE.match(tmp.name)
    if m and m["host"] == _owner_tag().rpartition("-")[0]:
        return not pid_alive(int(m["pid"]))
    try:
        return time.time() - tmp.lstat().st_mtime > FOREIGN_TMP_AGE_S
    except FileNotFoundError:
        return False


def remove_stale_temps(path: str | os.PathLike) -> list[Path]:
    """Delete the temporaries of ``path`` (``.NAME.*.tmp`` beside it) that dead writers left
    (killed during :func:`atomic_write_bytes` or :func:`atomic_folder`); returns them.

    >>> remove_stale_temps("runs/a/checkpoints/latest")                     # doctest: +SKIP
    [PosixPath('runs/a/checkpoints/.latest.host-4242.k2j1.tmp')]
    """
    path = Path(path)
    pattern = f"{glob.escape(hidden_name(path.name))}.*.tmp"  # no match when the folder is absent
    return _remove([t for t in path.parent.glob(pattern) if is_stale_temp(t)])


def remove_stale_temps_in(folder: str | os.PathLike, everything: bool = False) -> list[Path]:
    """The stale temporaries (``.*.tmp``, see :func:`is_stale_temp`) directly in ``folder``;
    ``everything=True`` removes every ``.*.tmp`` (for a folder its owner holds locked)."""
    return _remove([t for t in Path(folder).glob(".*.tmp") if everything or is_stale_temp(t)])


def _remove(paths: list[Path]) -> list[Path]:
    for p in paths:
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
    return paths


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename.

    The temporary is ``.NAME.HOST-PID.XXXX.tmp`` (a long NAME shortened: :func:`hidden_name`);
    leftovers of killed writers of the same ``path`` are removed first
    (:func:`remove_stale_temps`), so none outlives the next write. An ``OSError`` that names no
    file (a full disk: ENOSPC at write or fsync) is raised again naming ``path``.
    """
    path = Path(path)
    with _naming(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(path)
        prefix = f"{hidden_name(path.name)}.{_owner_tag()}."
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=prefix, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the usual permissions
            raise_if_interrupted()  # a signal a finalizer swallowed: publish nothing after it
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
    return path


@contextlib.contextmanager
def _naming(path: Path) -> Iterator[None]:
    """An ``OSError`` naming no file (ENOSPC, EFBIG, EIO from a write) or only our temporary
    gets ``path``: the file the user asked for, not ``.NAME.HOST-PID.XXXX.tmp``."""
    try:
        yield
    except OSError as e:
        ours = e.filename and Path(os.fsdecode(e.filename)).name.startswith(hidden_name(path.name) + ".")
        if e.filename and not ours:
            raise
        code = e.errno or errno.EIO
        raise OSError(code, e.strerror or os.strerror(code), str(path)) from None


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=json_default) + "\n")


def json_default(o: Any) -> Any:
    """JSON fallback for paths and numpy / torch scalars and arrays."""
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "item"):
        return o.item()
    if hasattr(o, "tolist"):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Read a JSON-lines file, ignoring a torn last line (a run killed mid-write)."""
    rows = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                break
    return rows


def temp_path(path: str | os.PathLike) -> Path:
    """``PARENT/.NAME.HOST-PID.tmp``: this process's temporary beside ``path`` (a stale one is
    removed by :func:`remove_stale_temps`)."""
    path = Path(path)
    return path.parent / f"{hidden_name(path.name)}.{_owner_tag()}.tmp"


def discard_folder(path: str | os.PathLike) -> None:
    """Delete a folder complete-or-absent: renamed to a temporary first (one atomic step: readers
    see the whole folder or none), then removed; a killed deletion leaves only a stale temporary
    that the next write beside it removes."""
    path = Path(path)
    remove_stale_temps(path)
    if not path.exists():
        return
    trash = temp_path(path)
    shutil.rmtree(trash, ignore_errors=True)
    os.replace(path, trash)
    shutil.rmtree(trash, ignore_errors=True)


@contextlib.contextmanager
def atomic_folder(out: str | os.PathLike) -> Iterator[Path]:
    """Build a folder under a temporary name beside ``out``; rename it to ``out`` when the block
    succeeds, leave nothing when it fails. ``out`` must be absent or empty (the caller checks).

    >>> with atomic_folder("export") as tmp:                                # doctest: +SKIP
    ...     model.save_pretrained(tmp)
    """
    out = Path(out)
    tmp = temp_path(out)
    remove_stale_temps(out)  # folders of killed earlier attempts
    shutil.rmtree(tmp, ignore_errors=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        with _naming(out):  # a full disk while the block writes: the error names ``out``
            tmp.mkdir()
            yield tmp
            raise_if_interrupted()
            if out.exists():
                out.rmdir()
            os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
