"""Result records (one JSON file per evaluation) and the one find-or-compute record cache.

Record::

    {"schema": "nitp.record/1", "kind": "bench" | "mteb" | "geom" | ...,
     "created": ISO time, "model": {...runs.checkpoint_info...}, "settings": {...},
     "versions": {...}, "scores": {...}}

The cache stores one JSON value per *unit* of work (a benchmark, an MTEB task, a layer) under
``cache_dir()/<kind>/<model key>/<unit>-<settings digest>.json``, so a killed evaluation
resumes from its finished units and two models never share a result. The model key
(:func:`model_identity`) covers the weights *and* the files beside them that change scores
(config.json, generation_config.json, the tokenizer files): the same weights with another
tokenizer or config are another model.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import os
import re
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable

from .errors import UserError
from .io import atomic_write_json, json_default
from .runs import checkpoint_info, resolve_checkpoint

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


def check_output(path: str | os.PathLike | None, option: str = "--out", folder: bool = False) -> None:
    """Fail before any work when ``path`` cannot be written later.

    ``path`` is a file to write (``folder=False``) or a folder to create or fill (``folder=True``).
    Checked: it is not the wrong kind of thing (a folder where a file goes, a file where a folder
    goes), no parent is a file, and the nearest existing folder accepts a new file (a probe file
    is created and removed: this also catches read-only mounts and root-owned folders).
    ``UserError`` naming ``option`` and the path; None is accepted (no output asked for).

    >>> check_output("results/x.json")                                      # doctest: +SKIP
    """
    if path is None:
        return
    p = Path(path).expanduser()
    if p.is_dir() and not folder:
        raise UserError(f"{option} {path}: is a folder; give a file name (e.g. {p / 'record.json'})")
    if p.exists() and not p.is_dir() and folder:
        raise UserError(f"{option} {path}: is a file; give a folder")
    existing = p if p.is_dir() else p.parent
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"{option} {path}: {existing} is a file, so nothing can be created under it")
    try:
        fd, probe = tempfile.mkstemp(dir=existing, prefix=".nitp-probe-")
    except OSError as e:
        raise UserError(
            f"{option} {path}: cannot write in {existing} ({e.strerror or e}); choose a writable place"
        ) from None
    os.close(fd)
    os.unlink(probe)


def read_record(path: str | os.PathLike) -> dict:
    try:
        rec = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise UserError(f"{path}: no such result record") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(
            f"{path}: not valid JSON ({e.__class__.__name__}); re-run the command that wrote it"
        ) from None
    if not isinstance(rec, dict) or rec.get("schema") != RECORD_SCHEMA:
        raise UserError(f"{path}: not a nitp result record (missing schema {RECORD_SCHEMA!r})")
    return rec


# files beside the weights that never change a score: training metadata, provenance, the marker
IGNORED_MODEL_FILES = {"nitp_meta.json", "nitp_source.txt", "COMPLETE", "README.md", "trainer_state.json"}
MODEL_FILE_SUFFIXES = {".json", ".txt", ".model", ".jinja", ".tiktoken", ".py"}


def model_files_hash(folder: str | os.PathLike) -> str:
    """sha256 over the small files beside the weights that change scores (names + bytes).

    That is config.json, generation_config.json, every tokenizer file (tokenizer.json,
    tokenizer_config.json, vocab / merges, special tokens, chat template) and sentence-transformers
    settings; the weight files, the projector and :data:`IGNORED_MODEL_FILES` are left out.
    A ``.gguf`` file carries its config and tokenizer inside its weights: the hash of nothing.
    """
    h = hashlib.sha256()
    root = Path(folder)
    files = sorted(root.rglob("*")) if root.is_dir() else []
    for f in files:
        rel = f.relative_to(root)
        if (
            f.is_file()
            and f.suffix in MODEL_FILE_SUFFIXES
            and f.name not in IGNORED_MODEL_FILES
            and not any(part.startswith(".") or part == "trainer_state" for part in rel.parts)
        ):
            h.update(rel.as_posix().encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()


def model_identity(path: str | os.PathLike) -> dict:
    """What a record says about a model, and the key its cached results live under.

    ``runs.checkpoint_info`` of the folder asked for (its path, run, step, objective, weights
    ``hash``), plus ``files_hash`` (:func:`model_files_hash`) and
    ``key = sha256(weights hash + files hash)``: the one model key of the record cache (bench,
    mteb, geom) and of mteb's result cache (its revision).

    >>> model_identity("runs/tiny/checkpoints/step_000008")["key"][:8]      # doctest: +SKIP
    '3f09c2aa'
    """
    info = checkpoint_info(path)
    info["files_hash"] = model_files_hash(resolve_checkpoint(path))
    info["key"] = hashlib.sha256(f"{info['hash']}:{info['files_hash']}".encode()).hexdigest()
    return info


def settings_digest(settings: dict) -> str:
    """A short, order-independent digest of a JSON-able settings dict."""
    blob = json.dumps(settings, sort_keys=True, default=json_default)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


class RecordCache:
    """Find-or-compute of one unit of work (a task, a layer), keyed by model key + settings.

    ``model_hash`` is ``model_identity(path)["key"]`` (weights, config and tokenizer files);
    ``settings`` come from ``nitp.cachekey.cache_key`` (every input, files by contents). An entry
    is served only when its stored settings equal the asked ones, not merely their digest.

    >>> cache = RecordCache("bench", model_identity(ckpt)["key"])         # doctest: +SKIP
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
        # the whole key, not only its digest (as it reads back from JSON: tuples as lists, paths as text)
        if entry.get("settings") != json.loads(json.dumps(settings, default=json_default)):
            return None
        return entry.get("value")

    def put(self, unit: str, settings: dict, value: Any) -> Path:
        entry = dict(kind=self.kind, unit=unit, model_hash=self.model_hash, settings=settings, value=value)
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
