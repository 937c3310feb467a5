"""Result records (one JSON file per evaluation) and the one find-or-compute record cache.

Record::

    {"schema": "nitp.record/1", "kind": "bench" | "mteb" | "geom" | ...,
     "created": ISO time, "model": {...runs.checkpoint_info...}, "settings": {...},
     "versions": {...}, "scores": {...}}

The cache stores one JSON value per *unit* of work (a benchmark, an MTEB task, a layer) under
``cache_dir()/<kind>/<weights hash>/<unit>-<settings digest>.json``, so a killed evaluation
resumes from its finished units and two checkpoints never share a result.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import os
import re
import sys
from pathlib import Path
from typing import Any, Callable

from .errors import UserError
from .io import atomic_write_json, json_default

RECORD_SCHEMA = "nitp.record/1"


def cache_dir() -> Path:
    """Where nitp keeps derived files (offline task data, cached results, converted GGUF models):
    ``$NITP_CACHE_DIR`` or ``~/.cache/nitp``."""
    return Path(os.environ.get("NITP_CACHE_DIR") or Path.home() / ".cache" / "nitp")


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


def safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)


def default_record_path(model: dict, kind: str, tag: str) -> Path:
    """Where a record goes without ``--out``: inside the run for run checkpoints.

    ``RUN/results/<kind>/<checkpoint>-<tag>.json`` for a checkpoint of a run, else
    ``./results/<kind>/<model name>-<hash8>-<tag>.json``. ``tag`` names the settings
    (e.g. the suite), so different settings never overwrite each other.
    """
    safe = safe_name(tag)
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
        raise UserError(
            f"{path}: not valid JSON ({e.__class__.__name__}); re-run the command that wrote it"
        ) from None
    if not isinstance(rec, dict) or rec.get("schema") != RECORD_SCHEMA:
        raise UserError(f"{path}: not a nitp result record (missing schema {RECORD_SCHEMA!r})")
    return rec


def settings_digest(settings: dict) -> str:
    """A short, order-independent digest of a JSON-able settings dict."""
    blob = json.dumps(settings, sort_keys=True, default=json_default)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


class RecordCache:
    """Find-or-compute of one unit of work (a task, a layer), keyed by weights hash + settings.

    >>> cache = RecordCache("bench", model_hash="ab12...")                # doctest: +SKIP
    >>> value, cached = cache.find_or_compute("arc_challenge", {"shots": 25}, run_task)  # doctest: +SKIP
    """

    def __init__(self, kind: str, model_hash: str, root: str | os.PathLike | None = None):
        self.kind = kind
        self.model_hash = model_hash
        self.root = Path(root) if root is not None else cache_dir() / kind / model_hash[:16]

    def path(self, unit: str, settings: dict) -> Path:
        return self.root / f"{safe_name(unit)}-{settings_digest(settings)}.json"

    def get(self, unit: str, settings: dict) -> Any | None:
        """The cached value, or None when absent or unreadable (a torn file is recomputed)."""
        path = self.path(unit, settings)
        try:
            entry = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError, UnicodeDecodeError):
            return None
        if not isinstance(entry, dict) or entry.get("model_hash") != self.model_hash:
            return None
        return entry.get("value")

    def put(self, unit: str, settings: dict, value: Any) -> Path:
        entry = {
            "kind": self.kind,
            "unit": unit,
            "model_hash": self.model_hash,
            "settings": settings,
            "value": value,
        }
        return atomic_write_json(self.path(unit, settings), entry)

    def find_or_compute(
        self, unit: str, settings: dict, compute: Callable[[], Any], redo: bool = False
    ) -> tuple[Any, bool]:
        """``(value, was_cached)``; ``compute()`` runs only when nothing is cached or ``redo``."""
        if not redo:
            value = self.get(unit, settings)
            if value is not None:
                return value, True
        value = compute()
        self.put(unit, settings, value)
        return value, False
