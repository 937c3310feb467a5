"""Measuring checkpoints with nitp-geom: one streamed pass per checkpoint, its record, trajectories.

``measure`` streams a checkpoint's hidden states over a fixed corpus sample into the per-layer
statistics of :mod:`analysis.layers`; ``geom_record`` wraps it in the one record cache
(``nitp.records.RecordCache``: same weights + same settings are never measured twice) and writes a
``kind: "geom"`` record; ``trajectory`` does that for every checkpoint of a run (a killed
trajectory resumes from the checkpoints already measured).

Example
-------
>>> from analysis.measure import geom_record
>>> rec = geom_record("runs/tiny-nitp", n_tokens=20_000)                  # doctest: +SKIP
>>> rec["scores"]["paper_measures"]                                       # doctest: +SKIP
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

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
from nitp.runtime import pick_device, pick_dtype

from .depth import (
    DEFAULT_ENTROPY_SEQUENCES,
    DEFAULT_ID_TOKENS,
    DEPTH_DEFINITIONS,
    DEPTH_VERSION,
    DepthMeasures,
)
from .layers import (
    CORE_KEYS,
    DEFAULT_PAIRS,
    DEFAULT_RIDGE,
    DEFAULT_TOKENS,
    DEFINITIONS,
    PAIRS_ACROSS,
    PAPER_MEASURES,
    GeometryWarning,
    LayerStatistics,
    _num,
    paper_depth_rule,
)


def measure(
    checkpoint,
    *,
    corpus: str = "builtin",
    n_tokens: int = DEFAULT_TOKENS,
    layers=None,
    exclude_first: bool = False,
    seed: int = 0,
    device: str | None = None,
    dtype: str | None = None,
    batch_size: int = 8,
    seq_len: int | None = None,
    reference=None,
    ridge: float | None = DEFAULT_RIDGE,
    heldout_fraction: float = 0.2,
    n_pairs: int = DEFAULT_PAIRS,
    spectrum: bool = False,
    progress: bool = True,
    id_tokens: int = DEFAULT_ID_TOKENS,
    entropy_sequences: int = DEFAULT_ENTROPY_SEQUENCES,
    lens: bool = True,
) -> tuple[dict, dict, dict]:
    """Stream the statistics of one checkpoint; returns ``(model_info, settings, scores)``.

    The depth measures of :mod:`analysis.depth` come in the same pass: intrinsic dimension on
    ``id_tokens`` sampled token states, prompt entropy on the first ``entropy_sequences``
    sequences, dataset entropy, curvature, alpha-ReQ and (``lens``) the logit-lens CE."""
    from .hidden import (
        batch_plan,
        corpus_sample,
        default_seq_len,
        iter_hidden_states,
        load_model,
        resolve_layers,
    )

    check_sizes(batch_size=batch_size, n_tokens=n_tokens, seq_len=seq_len, n_pairs=n_pairs)
    check_counts(id_tokens=id_tokens, entropy_sequences=entropy_sequences)
    loaded = load_model(checkpoint, device=device, dtype=dtype, lm_head=lens)
    layer_list = resolve_layers(layers, loaded.n_layers, where=str(loaded.path))
    refs = []
    if reference is not None:
        ref = load_model(reference, device=loaded.device, dtype=loaded.dtype)
        if ref.tokenizer.get_vocab() != loaded.tokenizer.get_vocab():
            raise UserError(
                f"--reference {reference}: its tokenizer differs from {loaded.path}'s, so the token sets differ; "
                "compare checkpoints of the same run or family"
            )
        refs.append(ref)
    sample = corpus_sample(
        loaded.tokenizer, corpus, n_tokens, default_seq_len(loaded, seq_len), seed, heldout_fraction
    )
    lengths = sample.lengths
    reported = lengths - (1 if exclude_first else 0)
    n_reported = int(reported.sum())
    if n_reported <= loaded.hidden_size:
        warnings.warn(
            f"{loaded.path.name}: {n_reported:,} tokens for hidden size {loaded.hidden_size}: the covariance has rank "
            f"at most {max(n_reported - 1, 0)}, so effective ranks are capped by the number of tokens; ask for more --tokens",
            GeometryWarning,
            stacklevel=2,
        )
    pair_sample = None
    doc_of_token = np.repeat(np.asarray(sample.documents, dtype=np.int64), reported)
    if n_pairs and len(np.unique(doc_of_token)) >= 2:  # the paper's pairs: from different documents
        pair_sample = sample_pairs(n_reported, n_pairs, doc_of_token, seed)
    stats = LayerStatistics(
        layer_list, exclude_first, ridge, pair_sample, where=str(loaded.path), documents=sample.documents
    )
    depth = DepthMeasures(
        stats.layers,
        n_reported,
        id_tokens,
        entropy_sequences,
        exclude_first,
        loaded.final_norm,
        loaded.lm_head,
        seed,
    )
    n_batches = len(batch_plan(sample, batch_size))
    with _progress(progress, f"{loaded.path.parent.name}/{loaded.path.name}", n_batches) as advance:
        for batch, ref_batches in iter_hidden_states(loaded, sample, stats.layers, batch_size, refs):
            ref_states = ref_batches[0].states if ref_batches else None
            stats.update(batch.states, batch.mask, batch.seq_ids, batch.heldout, ref_states)
            depth.update(batch.states, batch.mask, batch_input_ids(sample, batch))
            advance()
    rows = []
    for k in stats.layers:
        row = stats.layer_result(k, spectrum=spectrum)
        row.update(depth.layer_result(k, stats.acc[k].moments(exclude_first).eigenvalues()))
        row["name"] = loaded.layer_name(k)
        rows.append(row)
    last = next(r for r in rows if r["layer"] == -1)
    summary = {key: last.get(key) for key in CORE_KEYS}
    summary.update(
        {
            "anisotropy_sampled": _num(stats.anisotropy_sampled()),
            "n_pairs_sampled": n_pairs if pair_sample is not None else 0,
            "n_tokens": last["n_tokens"],
            "n_sequences": len(sample.sequences),
            "n_documents": len(set(sample.documents)),
            "hidden_size": loaded.hidden_size,
            "n_layers": loaded.n_layers,
            "has_final_norm": loaded.has_final_norm,
        }
    )
    reported_rows = [r for r in rows if r["layer"] in layer_list]
    rule = paper_depth_rule(
        [r for r in rows if r["layer"] >= 0 and r["layer"] in layer_list],
        loaded.n_layers,
        _trained_target(loaded.path),
    )
    scores = {
        "summary": summary,
        "layers": reported_rows,
        "paper_depth_rule_layer": rule["layer"],
        "paper_depth_rule": rule,
        "recommended_target_layer": rule["layer"],  # old name of paper_depth_rule_layer, kept for readers
        "paper_measures": PAPER_MEASURES,
        "definitions": {**DEFINITIONS, **DEPTH_DEFINITIONS},
    }
    settings = {
        "corpus": corpus,
        "n_tokens": n_tokens,
        "layers": layer_list,
        "exclude_first": exclude_first,
        "seed": seed,
        "seq_len": sample.seq_len,
        "batch_size": batch_size,
        "ridge": ridge,
        "heldout_fraction": heldout_fraction,
        "n_pairs": n_pairs,
        "pairs_across": PAIRS_ACROSS,
        "device": loaded.device,
        "dtype": loaded.dtype,
        "reference": checkpoint_info(refs[0].path) if refs else None,
        "sample": sample.describe(),
        "depth": depth.settings(),
    }
    return checkpoint_info(loaded.path), settings, scores


def batch_input_ids(sample, batch):
    """The ``input_ids`` [B, T] of a batch, rebuilt from the sample (padding where ``mask`` is False)."""
    from .hidden import padded

    seqs = [sample.sequences[int(i)] for i in batch.seq_ids]
    return padded(seqs, 0, batch.mask.device)[0]


class _progress:
    """A rich progress bar on stderr (a no-op when disabled)."""

    def __init__(self, enabled: bool, label: str, total: int):
        self.enabled, self.label, self.total = enabled, label, total
        self._bar = None

    def __enter__(self):
        if not self.enabled:
            return lambda: None
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self._bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=Console(stderr=True),
            transient=True,
        )
        self._bar.__enter__()
        task = self._bar.add_task(f"geometry {self.label}", total=self.total)
        return lambda: self._bar.advance(task)

    def __exit__(self, *exc):
        if self._bar is not None:
            self._bar.__exit__(*exc)


COMPARED_SETTINGS = (
    "corpus",
    "n_tokens",
    "layers",
    "exclude_first",
    "seed",
    "seq_len",
    "ridge",
    "heldout_fraction",
    "n_pairs",
)


def record_tag(
    corpus: str, n_tokens: int, layers, exclude_first: bool, seed: int, dtype: str | None = None
) -> str:
    """The settings part of a record's default file name (a dtype other than float32 included,
    so a bfloat16 record never replaces the float32 one)."""
    corpus_name = Path(corpus).name if corpus != "builtin" else "builtin"
    if corpus_name == "val_documents.jsonl" or corpus_name.startswith("nitp-val-"):
        corpus_name = (
            "heldout"  # --corpus auto: the run's held-out documents (analysis.hidden.resolve_corpus)
        )
    layer_part = (
        "all" if layers is None else "layers_" + "_".join("last" if int(k) == -1 else str(k) for k in layers)
    )
    precision = f"-{dtype}" if dtype not in (None, "float32") else ""
    return f"{corpus_name}-{n_tokens}-{layer_part}{'-nofirst' if exclude_first else ''}-seed{seed}{precision}"


def geom_record(
    checkpoint,
    *,
    corpus: str = "builtin",
    n_tokens: int = DEFAULT_TOKENS,
    layers=None,
    exclude_first: bool = False,
    seed: int = 0,
    device: str | None = None,
    out=None,
    dtype: str | None = None,
    batch_size: int = 8,
    seq_len: int | None = None,
    reference=None,
    ridge: float | None = DEFAULT_RIDGE,
    heldout_fraction: float = 0.2,
    n_pairs: int = DEFAULT_PAIRS,
    spectrum: bool = False,
    redo: bool = False,
    progress: bool = True,
    write: bool = True,
    id_tokens: int = DEFAULT_ID_TOKENS,
    entropy_sequences: int = DEFAULT_ENTROPY_SEQUENCES,
    lens: bool = True,
) -> dict:
    """Measure a checkpoint and write its ``kind: "geom"`` record (docs/contracts.md).

    Parameters
    ----------
    checkpoint : checkpoint folder, run directory (its latest checkpoint) or HF model folder.
    corpus : "builtin" (English text the gensim wheel ships) or a .txt/.jsonl/.parquet path.
    n_tokens : tokens in the sample (all real tokens, special ones included).
    layers : None for all (0..L and -1) or a list such as ``[0, 4, -1]``.
    exclude_first : report metrics without the first position of each sequence.
    out : record path; default ``nitp.records.default_record_path(model, "geom", tag)``.
    reference : another checkpoint with the same tokenizer: adds ``cka_vs_reference``.
    redo : recompute even when an equal record (same weights, same settings) exists.
    id_tokens, entropy_sequences, lens : the depth measures' samples and the logit lens
        (``analysis.depth``); they are part of the cached settings.

    Returns
    -------
    The record (a dict); ``record["path"]`` is not stored, the file location is returned by
    ``record_path`` of the same arguments.
    """
    arguments = dict(locals())  # every argument: the cache key holds all but NOT_KEYED
    from .hidden import parse_layers

    check_sizes(batch_size=batch_size, n_tokens=n_tokens, seq_len=seq_len, n_pairs=n_pairs)
    check_counts(id_tokens=id_tokens, entropy_sequences=entropy_sequences)
    ckpt = resolve_checkpoint(checkpoint)
    layers = parse_layers(layers)
    if write:
        check_output(out)  # an unwritable --out fails before the measurement
    device = pick_device(device)
    dtype = pick_dtype(device, dtype)
    for model in (ckpt, reference):  # config, tokenizer, weights, memory: before any cache lookup
        if model is not None:
            check_model_files(model, device=device, dtype=dtype)
    info = model_identity(ckpt)  # weights + config + tokenizer: the record cache's model key
    path = (
        Path(out)
        if out
        else default_record_path(
            info, "geom", record_tag(corpus, n_tokens, layers, exclude_first, seed, dtype)
        )
    )
    if write:
        check_output(path)
    wanted = geom_cache_key(
        arguments,
        checkpoint=ckpt,
        device=device_kind(device),
        dtype=dtype,
        layers=sorted(int(k) for k in layers) if layers is not None else None,
        # code versions: records of older measuring code are measured again
        pairs_across=PAIRS_ACROSS,
        depth_version=DEPTH_VERSION,
    )

    def compute() -> dict:
        _, settings, scores = measure(
            ckpt,
            corpus=corpus,
            n_tokens=n_tokens,
            layers=layers,
            exclude_first=exclude_first,
            seed=seed,
            device=device,
            dtype=dtype,
            batch_size=batch_size,
            seq_len=seq_len,
            reference=reference,
            ridge=ridge,
            heldout_fraction=heldout_fraction,
            n_pairs=n_pairs,
            spectrum=spectrum,
            progress=progress,
            id_tokens=id_tokens,
            entropy_sequences=entropy_sequences,
            lens=lens,
        )
        return make_record("geom", info, settings, scores, library_versions())

    # the one record cache (nitp.records): same model key + same settings -> no recomputation
    record, cached = RecordCache("geom", info["key"]).find_or_compute("layers", wanted, compute, redo=redo)
    if cached:  # measured on a folder with the same weights, config and tokenizer: name this one
        record["model"] = info
    if write and not (cached and path.is_file() and _names_model(path, info, record)):
        write_record(path, record)
    record["_path"] = str(path)
    return record


NOT_KEYED = ("out", "redo", "progress", "write")  # arguments that never change a geom result


def geom_cache_key(arguments: dict, **normalised) -> dict:
    """The record cache's key of a ``nitp-geom`` computation (``nitp.cachekey.cache_key``):
    every argument but :data:`NOT_KEYED`, ``normalised`` ones (the dtype and device picked, the
    layers parsed) replacing what the user gave, the corpus by its contents, other models by
    their model key. Used by ``layers`` / ``rank`` / ``anisotropy``, ``compare`` and ``diff-erank``."""
    merged = {**arguments, **normalised}
    return cache_key(
        merged,
        files=("corpus",),
        models=tuple(k for k in ("checkpoint", "reference", "model_a", "model_b") if k in merged),
        ignore=tuple(k for k in NOT_KEYED if k in merged),
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
    model = old.get("model", {})
    return (
        model.get("path") == info["path"]
        and model.get("key") == info["key"]
        and old.get("created") == record.get("created")
        and old.get("settings") == record.get("settings")
    )


def check_sizes(**sizes) -> None:
    """Counts the user gives (``--batch-size``, ``--tokens``, ``--seq-len``, ``--pairs``) are
    positive integers; ``UserError`` naming the option otherwise. None means "the default"."""
    for name, value in sizes.items():
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            option = "--" + {"n_tokens": "tokens", "n_pairs": "pairs"}.get(name, name).replace("_", "-")
            raise UserError(f"{option} {value!r}: must be a whole number of at least 1")


def check_counts(**counts) -> None:
    """Sample sizes that may be 0 (= skip that measure): whole numbers >= 0, else ``UserError``."""
    for name, value in counts.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise UserError(f"--{name.replace('_', '-')} {value!r}: must be a whole number >= 0 (0 skips it)")


def geom_records(checkpoints: list, *, out=None, **kwargs) -> list[dict]:
    """``geom_record`` for several checkpoints; ``out`` is then a folder (one file each)."""
    records = []
    for ck in checkpoints:
        target = None
        if out is not None:
            if len(checkpoints) == 1 and str(out).endswith(".json"):
                target = Path(out)
            else:
                info = checkpoint_info(ck)
                stem = f"{info['name']}-{Path(info['path']).name}-{info['hash'][:8]}"
                target = Path(out) / f"{stem}.json"
        records.append(geom_record(ck, out=target, **kwargs))
    return records


def trajectory(run_dir, *, layers=None, stability: bool = True, **kwargs) -> list[dict]:
    """A record for every checkpoint of a run, oldest first.

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
    records, prev = [], None
    for ck in ckpts:
        records.append(geom_record(ck, layers=layers, reference=prev if stability else None, **kwargs))
        prev = ck
    return records


def _trained_target(checkpoint) -> int | None:
    """The NITP target layer the checkpoint's run was trained with (None for NTP or plain models)."""
    from nitp.runs import run_dir_of

    run = run_dir_of(Path(checkpoint))
    return run_target_layer(run) if run is not None else None


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
