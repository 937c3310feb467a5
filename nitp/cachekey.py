"""The one cache-key builder: every input that changes a cached result, files by their contents.

A cached result (``nitp.records.RecordCache``: a geometry record, a benchmark's score, an MTEB
task's score) may be served only for the very inputs it was computed from. :func:`cache_key`
builds the settings the cache digests from *every* argument of the computation (files by their
contents, beside the name the user gave; models by their ``model_identity`` key; the library
versions). Callers pass all their arguments and name the few that cannot change the result
(``progress``, ``out``, ``redo``): a new argument is part of the key unless it is named as
irrelevant.

Example
-------
>>> key = cache_key({"corpus": "c.txt", "dtype": "float32", "progress": True},
...                 files=("corpus",), ignore=("progress",))            # doctest: +SKIP
>>> key["corpus"]                                                       # doctest: +SKIP
{'value': 'c.txt', 'sha256': '9f86d0...'}
"""

from __future__ import annotations

import functools
import hashlib
import os
from pathlib import Path
from typing import Any, Iterable

from .errors import UserError


def content_digest(path: str | os.PathLike) -> str:
    """sha256 of a file's bytes, or of a folder's files (relative name, size, sha256 of each,
    in name order; hidden files included: anything a reader might read counts).

    ``UserError`` naming ``path`` when it cannot be read.
    """
    p = Path(path).expanduser()
    try:
        if p.is_dir():
            h = hashlib.sha256(b"folder\0")
            for f in sorted(q for q in p.rglob("*") if q.is_file()):
                rel = f.relative_to(p).as_posix().encode("utf-8", "surrogateescape")
                h.update(rel + b"\0" + str(f.stat().st_size).encode() + b"\0" + file_digest(f).encode())
            return h.hexdigest()
        return file_digest(p)
    except OSError as e:
        raise UserError(
            f"{path}: cannot be read ({e.strerror or e}); check the path and its permissions"
        ) from None


def file_digest(path: str | os.PathLike) -> str:
    """sha256 of one file's bytes; within a process, remembered per (path, inode, size, mtime)."""
    st = os.stat(path)
    return _file_digest(str(Path(path).resolve()), st.st_ino, st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=4096)
def _file_digest(path: str, _ino: int, _size: int, _mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def input_identity(value: Any) -> Any:
    """A file input (a corpus, a data folder) as the cache sees it: ``{"value", "sha256"}`` when
    it names an existing file or folder, else the value itself (``builtin``, a hub dataset name,
    None)."""
    if value is None or not isinstance(value, (str, os.PathLike)):
        return value
    p = Path(value).expanduser()
    if not p.exists():
        return str(value)
    return {"value": str(value), "sha256": content_digest(p)}


def device_kind(device: str | None) -> str | None:
    """``cuda:1`` -> ``cuda``: the kind of device changes numbers, its index does not."""
    return None if device is None else str(device).split(":", 1)[0]


def cache_key(
    arguments: dict,
    *,
    files: Iterable[str] = (),
    models: Iterable[str] = (),
    ignore: Iterable[str] = (),
    versions: bool = True,
) -> dict:
    """The settings a cached result is keyed on: every item of ``arguments`` but ``ignore``.

    Parameters
    ----------
    arguments : every argument of the computation (already normalised: the dtype and device
        picked, the layers parsed), e.g. ``dict(locals())`` at a function's top
    files : the arguments that name files or folders: keyed by contents (:func:`input_identity`)
    models : the arguments that name models: keyed by ``model_identity(...)["key"]`` (None stays)
    ignore : the arguments that cannot change the result (progress bars, output paths, redo)
    versions : add the versions of nitp, torch and transformers under ``"versions"``

    Returns
    -------
    A JSON-able dict in the arguments' order (``nitp.records.settings_digest`` sorts it).
    """
    from .records import library_versions, model_identity

    files, models, ignore = set(files), set(models), set(ignore)
    unknown = (files | models | ignore) - set(arguments)
    if unknown:  # a typo here would silently drop an input from the key
        raise ValueError(f"cache_key: not among the arguments: {', '.join(sorted(unknown))}")
    key: dict[str, Any] = {}
    for name, value in arguments.items():
        if name in ignore:
            continue
        if name in files:
            key[name] = input_identity(value)
        elif name in models:
            key[name] = None if value is None else model_identity(value)["key"]
        else:
            key[name] = value
    if versions:
        key["versions"] = {k: v for k, v in library_versions().items() if k != "python"}
    return key
