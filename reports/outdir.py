"""One writer for report folders: build the whole folder beside ``--out``, then swap it in.

``staged_report(out)`` yields an empty sibling folder (``.OUT.HOST-PID.report.tmp``); everything
of the report is written there, and only when the block succeeds is it swapped with ``out`` by
renames (``renameat2(RENAME_EXCHANGE)`` where the kernel has it: readers see the old folder or the
new one, never a mix). A failure (a full disk, an interrupt, bad input found late) removes the
staged folder and leaves the previous report exactly as it was.

``out`` is replaced whole, so it must be new, empty, or a folder an earlier report wrote (only
``report.md``, ``tables/``, ``figures/``): a run directory or any other folder with files of its
own is refused in one line before anything is written.

Example
-------
>>> with staged_report("reports/tiny") as tmp:                 # doctest: +SKIP
...     (tmp / "report.md").write_text("...")
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import glob
import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from nitp.errors import UserError
from nitp.io import _owner_tag as _owner
from nitp.io import is_stale_temp

REPORT_ENTRIES = {"report.md", "tables", "figures"}
RUN_MARKERS = ("config.yaml", "metrics.jsonl", "checkpoints")
_NAME_ROOM = 100  # characters of --out's name kept in temporary names (NAME_MAX is 255 bytes)


def _short(name: str) -> str:
    """``name``, or its first characters and a hash when a temporary name would overflow NAME_MAX."""
    if len(name.encode()) <= _NAME_ROOM:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return name.encode()[:_NAME_ROOM].decode("utf-8", "ignore") + "-" + digest


def check_report_folder(out: Path, option: str = "--out") -> None:
    """Refuse an ``out`` that a swap would destroy: a file, a run directory, a folder inside a run
    directory's own files, or a folder holding anything but an earlier report."""
    if out.exists() and not out.is_dir():
        raise UserError(
            f"{option} {out}: exists and is not a directory (give a folder for report.md, tables/, figures/)"
        )
    if any((out / m).exists() for m in RUN_MARKERS):
        raise UserError(
            f"{option} {out}: is a run directory; give a new folder for the report (e.g. {out / 'report'})"
        )
    if out.is_dir():
        foreign = sorted(p.name for p in out.iterdir() if p.name not in REPORT_ENTRIES)
        if foreign:
            shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
            raise UserError(
                f"{option} {out}: holds files that are not part of a report ({shown}); a report replaces "
                "its folder whole, so give a new or empty folder, or the folder of an earlier report"
            )


def _remove_stale(out: Path) -> None:
    """Staged folders of killed earlier reports of ``out`` (their writer is gone)."""
    pattern = f"{glob.escape('.' + _short(out.name))}.*.tmp"
    for tmp in out.parent.glob(pattern):
        if is_stale_temp(tmp):
            shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def staged_report(out: str | os.PathLike, option: str = "--out") -> Iterator[Path]:
    """Yield an empty staging folder; on success it becomes ``out`` (the old one is removed).

    Raises ``UserError`` for an ``out`` that may not be replaced (:func:`check_report_folder`) and
    for a failed write (disk full, permissions), naming ``out`` and saying the old report is kept.
    """
    out = Path(out).expanduser().absolute()
    if out.is_symlink():  # a symlinked --out: the folder it names is replaced, the link stays
        out = out.resolve()
    check_report_folder(out, option)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale(out)
        stage = Path(
            tempfile.mkdtemp(dir=out.parent, prefix=f".{_short(out.name)}.{_owner()}.", suffix=".tmp")
        )
    except OSError as e:
        raise UserError(f"{option} {out}: cannot create the report beside it ({e.strerror or e})") from None
    try:
        os.chmod(stage, 0o777 & ~_umask())
        yield stage
        _swap(stage, out)
    except OSError as e:
        raise UserError(
            f"{option} {out}: cannot write the report ({e.strerror or e}"
            f"{f': {Path(e.filename).name}' if e.filename else ''}); the previous report is left as it was"
        ) from None
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _swap(stage: Path, out: Path) -> None:
    """Put ``stage`` at ``out``: a rename when ``out`` is absent, else an exchange of the two
    folders (atomic with ``renameat2``; otherwise two renames, the old folder restored on failure);
    the old report ends at ``stage``'s name and is removed by the caller."""
    if not out.exists():
        os.rename(stage, out)
        return
    if _exchange(stage, out):
        return
    old = out.parent / f".{_short(out.name)}.{_owner()}.old.tmp"
    shutil.rmtree(old, ignore_errors=True)
    os.rename(out, old)
    try:
        os.rename(stage, out)
    except OSError:
        os.rename(old, out)
        raise
    os.rename(old, stage)  # so the caller's cleanup removes the old report


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically with Linux's ``renameat2(RENAME_EXCHANGE)``; False where the C
    library or file system does not offer it."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(b))
