"""Measuring checkpoints with nitp-geom: one streamed pass per checkpoint, its record, trajectories.

``measure`` streams a checkpoint's hidden states over a fixed corpus sample into the per-layer
statistics of :mod:`analysis.layers`; ``geom_record`` wraps it in the one record cache
(``nitp.records.RecordCache``: same weights + same settings are never measured twice) and writes a
``kind: "geom"`` record; ``trajectory`` does that for every checkpoint of a run (a killed
trajectory resumes from the checkpoints already measured).

Example
-------
>>> from analysis.measure import geom_record
>>> from analysis.settings import GeomSettings
>>> rec = geom_record("runs/tiny-nitp", GeomSettings(n_tokens=20_000))    # doctest: +SKIP
>>> rec["scores"]["paper_measures"]                                       # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import dataclasses
import warnings
from pathlib import Path

import numpy as np

from nitp import metrics_registry as registry
from nitp.cachekey import cache_key, device_kind
from nitp.errors import UserError
from nitp.geometry import sample_pairs
from nitp.loading import check_model_files
from nitp.records import (
    RecordCache,
    check_output,
    default_record_path,
    library_versions,
    make_record,
    model_identity,
    write_record,
)
from nitp.runs import checkpoint_info, resolve_checkpoint

from .depth import DEPTH_VERSION, DepthMeasures
from .layers import (
    PAIRS_ACROSS,
    PAPER_MEASURES,
    GeometryWarning,
    LayerStatistics,
    _num,
    paper_depth_rule,
    record_definitions,
    summary_metrics,
)
from .settings import GeomSettings


def measure(
    checkpoint, settings: GeomSettings = GeomSettings(), *, reference=None, progress: bool = True
) -> tuple[dict, dict, dict]:
    """Stream the statistics of one checkpoint; returns ``(model_info, settings, scores)``.

    ``settings``: the sample, layers and statistics (:class:`~analysis.settings.GeomSettings`);
    ``reference``: another checkpoint with the same tokenizer (adds ``cka_vs_reference``). The
    depth measures of :mod:`analysis.depth` come in the same pass."""
    from nitp.runs import run_dir_of

    from . import hidden

    s = settings
    loaded = hidden.load_model(checkpoint, device=s.device, dtype=s.dtype, lm_head=s.lens)
    layer_list = hidden.resolve_layers(s.layers, loaded.n_layers, where=str(loaded.path))
    refs = []
    if reference is not None:
        ref = hidden.load_model(reference, device=loaded.device, dtype=loaded.dtype)
        if ref.tokenizer.get_vocab() != loaded.tokenizer.get_vocab():
            raise UserError(
                f"--reference {reference}: its tokenizer differs from {loaded.path}'s, so the token sets differ; "
                "compare checkpoints of the same run or family"
            )
        refs.append(ref)
    seq_len = hidden.default_seq_len(loaded, s.seq_len)
    sample = hidden.corpus_sample(loaded.tokenizer, s.corpus, s.n_tokens, seq_len, s.seed, s.heldout_fraction)
    reported = sample.lengths - int(s.exclude_first)
    n_reported = int(reported.sum())
    if n_reported <= loaded.hidden_size:
        warnings.warn(
            f"{loaded.path.name}: {n_reported:,} tokens for hidden size {loaded.hidden_size}: the covariance has rank "
            f"at most {max(n_reported - 1, 0)}, so effective ranks are capped by the number of tokens; ask for more --tokens",
            GeometryWarning,
            stacklevel=2,
        )
    doc_of_token = np.repeat(np.asarray(sample.documents, dtype=np.int64), reported)
    pairs_possible = s.n_pairs and len(np.unique(doc_of_token)) >= 2  # the paper's: from different documents
    pair_sample = sample_pairs(n_reported, s.n_pairs, doc_of_token, s.seed) if pairs_possible else None
    stats = LayerStatistics(
        layer_list, s.exclude_first, s.ridge, pair_sample, where=str(loaded.path), documents=sample.documents
    )
    depth = DepthMeasures(
        stats.layers,
        n_reported,
        s.id_tokens,
        s.entropy_sequences,
        s.exclude_first,
        loaded.final_norm,
        loaded.lm_head,
        s.seed,
    )
    n_batches = len(hidden.batch_plan(sample, s.batch_size))
    with _progress(progress, f"{loaded.path.parent.name}/{loaded.path.name}", n_batches) as advance:
        for batch, ref_batches in hidden.iter_hidden_states(loaded, sample, stats.layers, s.batch_size, refs):
            ref_states = ref_batches[0].states if ref_batches else None
            stats.update(batch.states, batch.mask, batch.seq_ids, batch.heldout, ref_states)
            depth.update(batch.states, batch.mask, batch_input_ids(sample, batch))
            advance()
    rows = [
        stats.layer_result(k, spectrum=s.spectrum)
        | depth.layer_result(k, stats.acc[k].moments(s.exclude_first).eigenvalues())
        | {"name": loaded.layer_name(k)}
        for k in stats.layers
    ]
    last = next(r for r in rows if r["layer"] == -1)
    summary = summary_metrics(last) | {
        "anisotropy_sampled": _num(stats.anisotropy_sampled()),
        "n_pairs_sampled": s.n_pairs if pair_sample is not None else 0,
        "n_tokens": last["n_tokens"],
        "n_sequences": len(sample.sequences),
        "n_documents": len(set(sample.documents)),
        "hidden_size": loaded.hidden_size,
        "n_layers": loaded.n_layers,
        "has_final_norm": loaded.has_final_norm,
    }
    reported_rows = [r for r in rows if r["layer"] in layer_list]
    run = run_dir_of(Path(loaded.path))  # the NITP target layer its run was trained with, if any
    trained = run_target_layer(run) if run is not None else None
    rule = paper_depth_rule([r for r in reported_rows if r["layer"] >= 0], loaded.n_layers, trained)
    scores = {
        "summary": summary,
        "layers": reported_rows,
        "paper_depth_rule_layer": rule["layer"],
        "paper_depth_rule": rule,
        "paper_measures": PAPER_MEASURES,
        "definitions": record_definitions(),
    }
    own = {k: getattr(s, k) for k in ("exclude_first", "ridge", "heldout_fraction", "n_pairs")}
    reference_info = checkpoint_info(refs[0].path) if refs else None
    own.update(pairs_across=PAIRS_ACROSS, reference=reference_info, depth=depth.settings())
    recorded = sample_settings(s, loaded, sample, layer_list, **own)
    return checkpoint_info(loaded.path), recorded, scores


def sample_settings(s, loaded, sample, layers: list[int], **fields) -> dict:
    """A record's ``settings``: those of ``s`` as run (the model's device and dtype, the sample's
    ``seq_len``, the resolved ``layers``), then ``fields`` and the sample's description."""
    out = {k: getattr(s, k) for k in ("corpus", "n_tokens", "seed", "batch_size")}
    run = {"layers": layers, "seq_len": sample.seq_len, "device": loaded.device, "dtype": loaded.dtype}
    return {**out, **run, **fields, "sample": sample.describe()}


def batch_input_ids(sample, batch):
    """The ``input_ids`` [B, T] of a batch, rebuilt from the sample (padding where ``mask`` is False)."""
    from .hidden import padded

    seqs = [sample.sequences[int(i)] for i in batch.seq_ids]
    return padded(seqs, 0, batch.mask.device)[0]


@contextlib.contextmanager
def _progress(enabled: bool, label: str, total: int):
    """A rich progress bar on stderr; yields its ``advance()`` (a no-op when disabled)."""
    if not enabled:
        yield lambda: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(f"geometry {label}", total=total)
        yield lambda: bar.advance(task)


def record_tag(settings) -> str:
    """The settings part of a record's default file name (a dtype other than float32 included,
    so a bfloat16 record never replaces the float32 one)."""
    corpus_name = Path(settings.corpus).name  # "builtin" stays itself
    if corpus_name == "val_documents.jsonl" or corpus_name.startswith("nitp-val-"):
        corpus_name = "heldout"  # --corpus auto: the run's held-out documents (hidden.resolve_corpus)
    names = ["last" if int(k) == -1 else str(k) for k in settings.layers or ()]
    layer_part = "all" if settings.layers is None else "layers_" + "_".join(names)
    precision = f"-{settings.dtype}" if settings.dtype not in (None, "float32") else ""
    first = "-nofirst" if settings.exclude_first else ""
    return f"{corpus_name}-{settings.n_tokens}-{layer_part}{first}-seed{settings.seed}{precision}"


def geom_record(
    checkpoint,
    settings: GeomSettings = GeomSettings(),
    *,
    reference=None,
    out=None,
    redo: bool = False,
    progress: bool = True,
    write: bool = True,
) -> dict:
    """Measure a checkpoint and write its ``kind: "geom"`` record (docs/contracts.md).

    Parameters
    ----------
    checkpoint : checkpoint folder, run directory (its latest checkpoint) or HF model folder.
    settings : corpus, tokens, layers, device, dtype, ... (:class:`~analysis.settings.GeomSettings`);
        every field is part of the cache key.
    reference : another checkpoint with the same tokenizer: adds ``cka_vs_reference``.
    out : record path; default ``nitp.records.default_record_path(model, "geom", tag)``.
    redo : recompute even when an equal record (same weights, same settings) exists.
    write : write the record file (False: only the record cache).

    Returns
    -------
    The record (a dict); ``record["_path"]`` (not stored) is where it was written.

    Example
    -------
    >>> geom_record("runs/tiny-nitp", GeomSettings(n_tokens=4096, layers=[-1]))  # doctest: +SKIP
    """
    ckpt = resolve_checkpoint(checkpoint)
    settings = checked_settings(settings, (ckpt, reference), out if write else None)
    # code versions: records of older measuring code are measured again
    versions = {"pairs_across": PAIRS_ACROSS, "depth_version": DEPTH_VERSION, **spectral_version()}
    wanted = geom_cache_key(settings, checkpoint=ckpt, reference=reference, **versions)

    def compute() -> tuple[dict, dict]:
        return measure(ckpt, settings, reference=reference, progress=progress)[1:]

    return cached_record("layers", ckpt, out, record_tag(settings), wanted, compute, redo=redo, write=write)


def checked_settings(settings, models, out):
    """``settings`` resolved (device, dtype) after the checks that fail before any work: an
    unwritable ``out``, then each model's config, tokenizer, weights and memory."""
    check_output(out)
    settings = settings.resolved()
    for model in models:
        if model is not None:
            check_model_files(model, device=settings.device, dtype=settings.dtype)
    return settings


def cached_record(section: str, model, out, tag: str, wanted: dict, compute, *, redo: bool, write=True):
    """The ``kind: "geom"`` record of ``compute() -> (settings, scores)`` for ``model`` from the one
    record cache (``nitp.records.RecordCache``): same model key + same settings (``wanted``) are
    never measured twice. Written (``write``) to ``out``, else ``default_record_path(model, "geom",
    tag)``, unless that file holds this very record already; ``record["_path"]`` is that path."""
    info = model_identity(resolve_checkpoint(model))
    path = Path(out) if out else default_record_path(info, "geom", tag)
    if write:
        check_output(path)

    def make() -> dict:
        return make_record("geom", info, *compute(), library_versions())

    record, cached = RecordCache("geom", info["key"]).find_or_compute(section, wanted, make, redo=redo)
    if cached:  # measured on a folder with the same weights, config and tokenizer: name this one
        record["model"] = info
    if write and not (cached and path.is_file() and _names_model(path, info, record)):
        write_record(path, record)
    record["_path"] = str(path)
    return record


# the spectral metrics of the records cached before the metric registry (their cache key names none)
FIRST_SPECTRUM = (
    "effective_rank_covariance",
    "effective_rank_singular",
    "participation_ratio",
    "stable_rank",
    "top_eigenvalue_share",
)


def spectral_version() -> dict:
    """The cache key's part for the registry's spectral metrics: nothing for the first five (so
    records cached before the registry are still served), their names for any other set, so a
    record cached without a metric registered since is measured again."""
    spectral = registry.names(group="spectrum")
    return {} if spectral == FIRST_SPECTRUM else {"spectral_metrics": list(spectral)}


# the record functions' arguments besides the models and the settings: none changes a result
# (tests hold every other argument of geom_record, compare_record and diff_erank_record to that)
NOT_KEYED = ("out", "redo", "progress", "write")
MODEL_INPUTS = ("checkpoint", "reference", "model_a", "model_b")  # keyed by their model key


def geom_cache_key(settings, **inputs) -> dict:
    """The record cache's key of a ``nitp-geom`` computation (``nitp.cachekey.cache_key``):
    every field of ``settings`` (``dataclasses.asdict``: a new field is keyed by itself), the
    device by its kind and the layers sorted, the corpus by its contents; ``inputs`` adds the
    models (:data:`MODEL_INPUTS`, by their model key) and code versions."""
    fields = dataclasses.asdict(settings)
    fields["device"] = device_kind(settings.device)
    fields["layers"] = None if settings.layers is None else sorted(settings.layers)
    return cache_key(
        {**fields, **inputs},
        files=("corpus",),
        models=tuple(k for k in MODEL_INPUTS if k in inputs),
    )


def _names_model(path: Path, info: dict, record: dict) -> bool:
    """The record at ``path`` is this very record of this folder (else it is rewritten): same
    model path and key, same settings and the same creation (a record of other settings at the
    same default path, e.g. another dtype, is replaced)."""
    from nitp.records import read_record

    try:
        old = read_record(path)
    except UserError:
        return False
    model, same = old.get("model", {}), ("created", "settings")
    mine = (info["path"], info["key"], *(record.get(k) for k in same))
    return (model.get("path"), model.get("key"), *(old.get(k) for k in same)) == mine


def geom_records(
    checkpoints: list, settings: GeomSettings = GeomSettings(), *, out=None, **options
) -> list[dict]:
    """``geom_record`` for several checkpoints; ``out`` is then a folder (one file each);
    ``options``: ``geom_record``'s (``reference``, ``redo``, ``progress``, ``write``)."""

    def target(ck) -> Path | None:
        if out is None or (len(checkpoints) == 1 and str(out).endswith(".json")):
            return None if out is None else Path(out)
        info = checkpoint_info(ck)
        return Path(out) / f"{info['name']}-{Path(info['path']).name}-{info['hash'][:8]}.json"

    return [geom_record(ck, settings, out=target(ck), **options) for ck in checkpoints]


def trajectory(
    run_dir, settings: GeomSettings = GeomSettings(), *, stability: bool = True, **options
) -> list[dict]:
    """A record for every checkpoint of a run, oldest first (``options``: ``geom_record``'s).

    With ``stability``, each checkpoint after the first is measured against the previous one as
    reference (``cka_vs_reference`` = linear CKA between consecutive checkpoints).
    """
    from nitp.runs import list_checkpoints

    run = Path(run_dir)
    if not (run / "checkpoints").is_dir():
        raise UserError(
            f"{run_dir}: not a run directory (no checkpoints/ folder); trajectory needs the output folder of nitp-train"
        )
    ckpts = list_checkpoints(run)
    if not ckpts:
        raise UserError(f"{run_dir}: run directory has no complete checkpoint yet")
    for ck in ckpts:  # a checkpoint without its tokenizer (or with broken files) fails before any work
        check_model_files(ck)
    previous = [None, *ckpts[:-1]] if stability else [None] * len(ckpts)
    return [geom_record(ck, settings, reference=prev, **options) for ck, prev in zip(ckpts, previous)]


def run_target_layer(run_dir) -> int | None:
    """The NITP target layer a run was trained with (config.yaml), if any."""
    import yaml

    from nitp.runs import read_run_config

    path = Path(run_dir) / "config.yaml"
    try:
        cfg = read_run_config(run_dir)
    except (OSError, ValueError, yaml.YAMLError):
        return None
    if not isinstance(cfg, dict) or cfg.get("objective") != "nitp":
        return None
    k = (cfg.get("nitp") or {}).get("target_layer") if isinstance(cfg.get("nitp"), dict) else None
    if k is not None and (isinstance(k, bool) or not isinstance(k, int)):
        raise UserError(
            f"{path}: nitp.target_layer={k!r} is not a layer number (the trainer writes the resolved "
            "number); restore the run's config.yaml"
        )
    return k
