"""The files every nitp package shares: run directories, checkpoints and result records.

The contracts are documented in ``docs/contracts.md``. Everything here is light (no torch
import at module level) so that CLIs stay instant.

Run directory::

    RUN/config.yaml                       fully resolved training config
    RUN/metrics.jsonl                     one JSON object per logged step
    RUN/checkpoints/step_000500/          Hugging Face model folder (+ nitp_head.safetensors,
                                          trainer_state/)
    RUN/checkpoints/latest                text file naming the newest complete checkpoint

Result record (JSON, one per evaluation)::

    {"schema": "nitp.record/1", "kind": "bench" | "mteb" | "geom" | ...,
     "created": ISO time, "model": {...checkpoint_info...}, "settings": {...},
     "versions": {...}, "scores": {...}}
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import functools
import hashlib
import json
import os
import re
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterator

RECORD_SCHEMA = "nitp.record/1"
CHECKPOINT_RE = re.compile(r"^step_(\d+)$")


class UserError(Exception):
    """Bad input from the user: printed as one line, no traceback, non-zero exit."""


# ----------------------------------------------------------------------------- atomic writes
_UMASK = os.umask(0o022)
os.umask(_UMASK)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` so that readers see the old file or the whole new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(o: Any) -> Any:
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "item"):  # numpy / torch scalars
        return o.item()
    if hasattr(o, "tolist"):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


# ----------------------------------------------------------------------------- checkpoints
def is_model_dir(path: Path) -> bool:
    return (path / "config.json").is_file()


def checkpoint_step(path: Path) -> int | None:
    m = CHECKPOINT_RE.match(Path(path).name)
    return int(m.group(1)) if m else None


def list_checkpoints(run_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints of a run, oldest first (temporary ``.tmp`` folders are skipped)."""
    ckdir = Path(run_dir) / "checkpoints"
    if not ckdir.is_dir():
        return []
    found = [p for p in ckdir.iterdir() if p.is_dir() and checkpoint_step(p) is not None and is_model_dir(p)]
    return sorted(found, key=checkpoint_step)


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A checkpoint folder, a run directory (its latest checkpoint) or a plain HF model folder.

    Raises ``UserError`` naming the path when it is none of those.
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise UserError(f"{path}: no such file or directory (give a checkpoint, a run directory or a Hugging Face model folder)")
    if is_model_dir(p):
        return p
    latest = p / "checkpoints" / "latest"
    if latest.is_file():
        target = p / "checkpoints" / latest.read_text().strip()
        if is_model_dir(target):
            return target
    ckpts = list_checkpoints(p)
    if ckpts:
        return ckpts[-1]
    if (p / "config.yaml").is_file():
        raise UserError(f"{path}: run directory has no complete checkpoint yet (train longer or check RUN/checkpoints/)")
    raise UserError(f"{path}: not a model folder (no config.json) nor a run directory (no checkpoints/)")


def run_dir_of(ckpt: Path) -> Path | None:
    """The run directory a checkpoint belongs to, or None for a plain model folder."""
    ckpt = Path(ckpt).resolve()
    if ckpt.parent.name == "checkpoints" and (ckpt.parent.parent / "config.yaml").is_file():
        return ckpt.parent.parent
    return None


def weights_hash(ckpt: str | os.PathLike) -> str:
    """sha256 over the model's weight files (names + bytes), the checkpoint's identity.

    Two checkpoints with different weights never share a hash; the same weights copied to
    another folder keep theirs. Cached by (path, size, mtime) within a process.
    """
    ckpt = Path(ckpt)
    files = sorted(
        f for f in ckpt.iterdir()
        if f.is_file() and (f.suffix in {".safetensors", ".bin", ".pt"}) and not f.name.startswith("nitp_head")
    )
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


def read_run_config(run_dir: str | os.PathLike) -> dict:
    import yaml

    with open(Path(run_dir) / "config.yaml") as f:
        return yaml.safe_load(f) or {}


def checkpoint_info(path: str | os.PathLike) -> dict:
    """Identity of a model for result records: path, run, step, objective, tokens, hash."""
    ckpt = resolve_checkpoint(path)
    run = run_dir_of(ckpt)
    info: dict[str, Any] = {
        "path": str(ckpt.resolve()),
        "run": str(run) if run else None,
        "name": (run.name if run else ckpt.name),
        "step": checkpoint_step(ckpt),
        "objective": None,
        "preset": None,
        "tokens_seen": None,
        "hash": weights_hash(ckpt),
    }
    meta = ckpt / "nitp_meta.json"
    if meta.is_file():
        m = json.loads(meta.read_text())
        for k in ("step", "objective", "preset", "tokens_seen"):
            if m.get(k) is not None:
                info[k] = m[k]
    elif run is not None:
        cfg = read_run_config(run)
        info["objective"] = cfg.get("objective")
        info["preset"] = (cfg.get("model") or {}).get("preset")
    return info


# ----------------------------------------------------------------------------- records
def library_versions(*names: str) -> dict[str, str]:
    from importlib import metadata

    out = {"python": sys.version.split()[0]}
    for name in ("nitp", "torch", "transformers", *names):
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[name] = metadata.version(name)
    return out


def make_record(kind: str, model: dict, settings: dict, scores: dict, versions: dict | None = None) -> dict:
    return {
        "schema": RECORD_SCHEMA,
        "kind": kind,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "model": model,
        "settings": settings,
        "versions": versions or library_versions(),
        "scores": scores,
    }


def default_record_path(model: dict, kind: str, tag: str) -> Path:
    """Where a record goes without ``--out``: inside the run for run checkpoints.

    ``RUN/results/<kind>/<checkpoint>-<tag>.json`` for a checkpoint of a run, else
    ``./results/<kind>/<model name>-<hash8>-<tag>.json``. ``tag`` names the settings
    (e.g. the suite), so different settings never overwrite each other.
    """
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", tag)
    if model.get("run"):
        return Path(model["run"]) / "results" / kind / f"{Path(model['path']).name}-{safe}.json"
    return Path("results") / kind / f"{model['name']}-{model['hash'][:8]}-{safe}.json"


def write_record(path: str | os.PathLike, record: dict) -> Path:
    if record.get("schema") != RECORD_SCHEMA or "kind" not in record:
        raise ValueError("not a nitp result record (use make_record)")
    return atomic_write_json(path, record)


def read_record(path: str | os.PathLike) -> dict:
    p = Path(path)
    try:
        rec = json.loads(p.read_text())
    except FileNotFoundError:
        raise UserError(f"{path}: no such result record") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not valid JSON ({e.__class__.__name__}); re-run the command that wrote it") from None
    if not isinstance(rec, dict) or rec.get("schema") != RECORD_SCHEMA:
        raise UserError(f"{path}: not a nitp result record (missing schema {RECORD_SCHEMA!r})")
    return rec


# ----------------------------------------------------------------------------- CLI errors
@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turn ``UserError`` (and a few obvious input errors) into one line on stderr + exit 2."""
    try:
        yield
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    except OSError as e:  # a failed read or write (permissions, disk full, a file where a folder should be)
        where = e.filename or "a file"
        print(f"error: cannot access {where}: {e.strerror or e}; check the path, its permissions and free space", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        raise SystemExit(130) from None


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
