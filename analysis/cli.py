"""`nitp-geom`: effective rank, anisotropy and per-layer NITP target statistics of checkpoints.

Commands: ``rank CKPT...``, ``anisotropy CKPT...``, ``layers CKPT...``, ``compare A [B]``,
``diff-erank CKPT``, ``trajectory RUN_DIR``, ``flops PRESET|CONFIG``. Each measurement writes a ``kind: "geom"`` result record (``--out``, else
``RUN/results/geom/`` or ``./results/geom/``) and skips checkpoints already recorded with the same
settings (``--redo`` to recompute). Layer numbering: 0 = embeddings, k = block k, -1 = last
hidden state (final-norm output; the last block's output for encoders).
"""

from __future__ import annotations

import inspect
import sys
import warnings
from pathlib import Path
from typing import List

import typer

from nitp.errors import UserError, user_errors

from .settings import CompareSettings, DiffErankSettings, GeomSettings

app = typer.Typer(
    help="Geometry of hidden states: effective rank, anisotropy, per-layer NITP target statistics, FLOPs.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

FORMATS = ("table", "json", "csv")

ONE_OUT = typer.Option(None, "--out", "-o", help="Record path (.json).")
FORMAT = typer.Option("table", "--format", "-f", help="table, json (the full records) or csv.")


def _shared(
    *,
    corpus: str = typer.Option(
        "auto",
        "--corpus",
        help="auto (the held-out documents of the runs' own data when every model is a run of one "
        "prepared corpus, else builtin), builtin (English text shipped by gensim) or a "
        ".txt/.jsonl/.parquet file or folder.",
    ),
    tokens: int = typer.Option(
        GeomSettings.n_tokens,
        "--tokens",
        "-n",
        help="Tokens in the corpus sample (the same sample for every checkpoint).",
    ),
    batch_size: int = typer.Option(
        GeomSettings.batch_size, "--batch-size", "-b", help="Sequences per forward pass."
    ),
    seq_len: int | None = typer.Option(
        GeomSettings.seq_len, "--seq-len", help="Tokens per sequence [default: 512, capped by the model]."
    ),
    device: str | None = typer.Option(
        GeomSettings.device, "--device", help="cpu, cuda, cuda:1 ... [default: cuda when available]."
    ),
    dtype: str | None = typer.Option(
        GeomSettings.dtype,
        "--dtype",
        help="Model dtype [default: bfloat16 on GPU, float32 on CPU]; statistics are float64.",
    ),
    exclude_first: bool = typer.Option(
        GeomSettings.exclude_first,
        "--exclude-first",
        help="Report metrics without the first position of each sequence (BOS / attention sink).",
    ),
    seed: int = typer.Option(
        GeomSettings.seed, "--seed", help="Seed of the corpus sample and of the sampled-pairs estimator."
    ),
    out: Path | None = typer.Option(
        None, "--out", "-o", help="Record path (.json) for one checkpoint, or a folder for several."
    ),
    fmt: str = FORMAT,
    redo: bool = typer.Option(False, "--redo", help="Recompute even when an equal record exists."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Progress bar on stderr."),
):
    """The options every measuring command takes, in --help order (defaults from the settings
    dataclasses of :mod:`analysis.settings`)."""


SHARED = inspect.signature(_shared, eval_str=True).parameters


def shared_options(*, leave_out: tuple[str, ...] = (), **replaced):
    """Decorator: a command's ``**shared`` becomes the :data:`SHARED` options (``replaced`` ones
    by another option, ``leave_out`` ones dropped), after its own. Typer reads a command's
    options from ``inspect.signature``, so the command gets them by name in ``shared``."""

    def add(command):
        signature = inspect.signature(command, eval_str=True)
        own = [p for p in signature.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
        added = [
            p.replace(default=replaced.get(n, p.default)) for n, p in SHARED.items() if n not in leave_out
        ]
        command.__signature__ = signature.replace(parameters=own + added)
        return command

    return add


def _settings(settings_class, shared: dict, models, **fields):
    """One settings object of the shared options (``--corpus auto`` resolved for ``models``)
    and a command's own ``fields``."""
    from .hidden import resolve_corpus

    sample = ("batch_size", "seq_len", "device", "dtype", "exclude_first", "seed")
    return settings_class(
        corpus=resolve_corpus(shared["corpus"], models, shared["tokens"]),
        n_tokens=shared["tokens"],
        **{name: shared[name] for name in sample if name in shared},
        **fields,
    )


def _run_options(shared: dict) -> dict:
    """The options that never change a result: where the record goes, ``--redo``, the bar."""
    return {name: shared[name] for name in ("out", "redo", "progress") if name in shared}


def _check_format(fmt: str) -> str:
    if fmt not in FORMATS:
        raise UserError(f"--format {fmt}: use one of {', '.join(FORMATS)}")
    return fmt


def _emit(text: str) -> None:
    sys.stdout.write(text if text.endswith("\n") else text + "\n")


# rank / anisotropy / trajectory show the anchors only: skip the costly depth measures (intrinsic
# dimension, logit lens) that `nitp-geom layers` adds (up to ~10x a forward on real models)
ANCHORS_ONLY = {"lens": False, "id_tokens": 0}


def _measure(checkpoints, shared: dict, reference=None, **fields) -> list[dict]:
    from .measure import geom_records

    settings = _settings(GeomSettings, shared, checkpoints, **fields)
    return geom_records(list(checkpoints), settings, reference=reference, **_run_options(shared))


def _layers_arg(layers: str | None, default):
    from .settings import parse_layers

    return default if layers is None else parse_layers(layers)


def _metric_command(name: str, title: str, doc: str, checkpoints_help: str, layers_help: str) -> None:
    """``rank`` / ``anisotropy``: measure (or reuse the records of) each checkpoint and print the
    metrics of :mod:`analysis.tables`' ``<name>_metrics`` at the layers asked for side by side."""

    @app.command(name, help=doc)
    @shared_options()
    def command(
        checkpoints: List[str] = typer.Argument(..., help=checkpoints_help),
        layers: str | None = typer.Option(None, "--layers", "-l", help=layers_help),
        **shared,
    ):
        from . import tables

        fmt = _check_format(shared["fmt"])
        lay = _layers_arg(layers, [-1])
        records = _measure(checkpoints, shared, layers=lay, **ANCHORS_ONLY)
        shown = lay or [r["layer"] for r in records[0]["scores"]["layers"]]
        rows = tables.metric_rows(records, getattr(tables, f"{name}_metrics")(), shown)
        _emit(tables.render(rows, fmt, title, records))


_metric_command(
    "rank",
    "effective rank",
    "Effective rank (covariance: the paper's; singular: Roy & Vetterli), participation ratio, stable rank.",
    "Checkpoints, run directories (latest checkpoint) or HF model folders.",
    "Comma-separated layers or 'all' [default: -1, the last hidden state].",
)
_metric_command(
    "anisotropy",
    "anisotropy (mean cosine)",
    "Exact mean pairwise cosine: across documents (the paper's), within documents, across / within sequences, all pairs; the sampled estimate; norms.",
    "Checkpoints, run directories or HF model folders.",
    "Comma-separated layers or 'all' [default: -1].",
)


@app.command()
@shared_options()
def layers(
    checkpoints: List[str] = typer.Argument(..., help="Checkpoints, run directories or HF model folders."),
    layers_: str | None = typer.Option(
        None, "--layers", "-l", help="Comma-separated layers or 'all' [default: all]."
    ),
    reference: str | None = typer.Option(
        None, "--reference", "-r", help="Checkpoint to compare each layer with (linear CKA); same tokenizer."
    ),
    ridge: float | None = typer.Option(
        GeomSettings.ridge, "--ridge", help="Fixed ridge strength (x trace/d) [default: chosen by GCV]."
    ),
    spectrum: bool = typer.Option(
        GeomSettings.spectrum, "--spectrum", help="Store every layer's covariance eigenvalues in the record."
    ),
    metrics: str | None = typer.Option(None, "--metrics", help="Comma-separated metric names for the table."),
    id_tokens: int = typer.Option(
        GeomSettings.id_tokens,
        "--id-tokens",
        help="Token states per layer (seeded sample, duplicates dropped) for the TwoNN / GRIDE intrinsic dimension; 0 skips it.",
    ),
    entropy_sequences: int = typer.Option(
        GeomSettings.entropy_sequences,
        "--entropy-sequences",
        help="Sequences (the first of the sample) for the prompt entropy; 0 skips it.",
    ),
    lens: bool = typer.Option(
        GeomSettings.lens,
        "--lens/--no-lens",
        help="Logit-lens next-token CE per layer (final norm + LM head, every token).",
    ),
    **shared,
):
    """Per-layer table: geometry + NITP target statistics, and the paper's depth rule for the target layer (round(0.21 L))."""
    from .tables import layer_rows, layer_rows_long, render, unique_labels

    fmt = _check_format(shared["fmt"])
    own = dict(
        ridge=ridge, spectrum=spectrum, id_tokens=id_tokens, entropy_sequences=entropy_sequences, lens=lens
    )
    records = _measure(checkpoints, shared, reference=reference, layers=_layers_arg(layers_, None), **own)
    chosen = tuple(m.strip() for m in metrics.split(",")) if metrics else None
    rows = layer_rows_long(records) if fmt == "csv" else layer_rows(records, chosen)
    _emit(render(rows, fmt, "per-layer statistics", records))
    if fmt == "table":
        for lab, rec in zip(unique_labels(records), records):
            r = rec["scores"].get("paper_depth_rule") or rec["scores"].get("recommendation") or {}
            _emit(f"{lab}: NITP target layer by the paper's depth rule: {r.get('layer')} — {r.get('reason')}")


@app.command()
@shared_options(
    tokens=typer.Option(
        CompareSettings.n_tokens, "--tokens", "-n", help="Tokens in the corpus sample (the same for both)."
    ),
    out=ONE_OUT,
)
def compare(
    model_a: str = typer.Argument(
        ..., help="Checkpoint, run directory, HF folder or GGUF file (rows of the map)."
    ),
    model_b: str | None = typer.Argument(
        None, help="A second model with the same tokenizer (columns) [default: A against itself]."
    ),
    layers_: str | None = typer.Option(
        None, "--layers", "-l", help="Comma-separated layers (both models) or 'all' [default: all]."
    ),
    self_maps: bool = typer.Option(
        CompareSettings.self_maps,
        "--self/--no-self",
        help="With two models, also each model against itself (the block structure).",
    ),
    figure: Path | None = typer.Option(
        None, "--figure", help="Heatmap of the maps: PATH.png and PATH.pdf (matplotlib)."
    ),
    measure: str = typer.Option(
        "cka_debiased", "--measure", help="Map in the text table: cka_debiased, cka or procrustes."
    ),
    **shared,
):
    """Layer i of A x layer j of B: debiased linear CKA, linear CKA, orthogonal Procrustes distance (one pass, same tokens)."""
    from . import similarity
    from .tables import render, unique_labels

    fmt = _check_format(shared["fmt"])
    if measure not in ("cka_debiased", "cka", "procrustes"):
        raise UserError(f"--measure {measure}: use cka_debiased, cka or procrustes")
    if figure is not None:
        from nitp.records import check_output

        check_output(figure, "--figure")
    models = [m for m in (model_a, model_b) if m is not None]
    settings = _settings(
        CompareSettings, shared, models, layers=_layers_arg(layers_, None), self_maps=self_maps
    )
    record = similarity.compare_record(model_a, model_b, settings, **_run_options(shared))
    sim = record["scores"]["similarity"]
    b = record["settings"].get("model_b")
    labels = unique_labels([record, {"model": b}]) if b is not None else unique_labels([record]) * 2
    if figure is not None:
        written = similarity.plot_similarity(record, figure, labels)
        print(f"figure: {', '.join(map(str, written))}", file=sys.stderr)
    if fmt != "table":
        _emit(render(similarity.similarity_rows(record), fmt, None, [record]))
        return
    names = similarity.map_titles(labels)
    for name in (m for m in similarity.MAPS if m in sim):
        _emit(render(similarity.matrix_rows(record, name, measure), "table", f"{measure}: {names[name]}"))
    title = f"same layer, {names['a_vs_b' if 'a_vs_b' in sim else 'a_vs_a']}"
    _emit(render(similarity.diagonal_rows(record), "table", title))
    _emit(f"{sim['n_tokens']:,} tokens; record: {record['_path']}")


@app.command("diff-erank")
@shared_options(
    tokens=typer.Option(DiffErankSettings.n_tokens, "--tokens", "-n", help="Tokens in the corpus sample."),
    out=ONE_OUT,
    leave_out=("exclude_first",),
)
def diff_erank_cmd(
    checkpoint: str = typer.Argument(..., help="Checkpoint, run directory, HF folder or GGUF file."),
    layers_: str | None = typer.Option(
        None, "--layers", "-l", help="Comma-separated layers or 'all' [default: -1, the paper's last layer]."
    ),
    init_seed: int = typer.Option(
        DiffErankSettings.init_seed, "--init-seed", help="Seed of the random initialisation (from_config)."
    ),
    **shared,
):
    """Diff-eRank (Wei et al. 2024): eRank of a random-init copy minus the trained model's. Positive = training LOWERED the rank (the opposite of 'higher rank is better')."""
    from .diffrank import LABEL, diff_erank_record
    from .tables import render, unique_labels

    fmt = _check_format(shared["fmt"])
    layers = _layers_arg(layers_, DiffErankSettings.layers)
    settings = _settings(DiffErankSettings, shared, [checkpoint], layers=layers, init_seed=init_seed)
    record = diff_erank_record(checkpoint, settings, **_run_options(shared))
    rows = record["scores"]["diff_erank"]["layers"]
    _emit(render(rows, fmt, f"Diff-eRank of {unique_labels([record])[0]}", [record]))
    if fmt == "table":
        _emit(LABEL)


@app.command()
@shared_options(leave_out=("out",))
def trajectory(
    run_dir: Path = typer.Argument(
        ..., help="A run directory of nitp-train (every checkpoint, oldest first)."
    ),
    layers_: str | None = typer.Option(
        None, "--layers", "-l", help="Layers [default: -1 and the run's NITP target layer]."
    ),
    stability: bool = typer.Option(
        True, "--stability/--no-stability", help="Linear CKA with the previous checkpoint (runs both models)."
    ),
    **shared,
):
    """Geometry of every checkpoint of a run over training steps (records go to RUN/results/geom/)."""
    from .measure import run_target_layer
    from .measure import trajectory as run_trajectory
    from .tables import render, trajectory_rows

    fmt = _check_format(shared["fmt"])
    target = run_target_layer(run_dir) if (run_dir / "config.yaml").is_file() else None
    lay = _layers_arg(layers_, [-1] + ([target] if target is not None else []))
    settings = _settings(GeomSettings, shared, [run_dir], layers=lay, **ANCHORS_ONLY)
    records = run_trajectory(run_dir, settings, stability=stability, **_run_options(shared))
    shown_target = target if (lay is None or (target is not None and target in lay)) else None
    _emit(render(trajectory_rows(records, shown_target), fmt, f"trajectory of {run_dir}", records))


@app.command()
def flops(
    source: str | None = typer.Argument(
        None,
        help="A preset name (see `nitp-train presets`), a nitp-train YAML config or run directory, or a config.json / model folder [default: the paper's seven sizes].",
    ),
    seq_len: int | None = typer.Option(
        None,
        "--seq-len",
        help="Context for the attention-score term [default: the config's data.seq_len, else 8192 capped by the model].",
    ),
    fmt: str = FORMAT,
):
    """Training FLOPs per token: the paper's closed form beside the exact per-architecture count, and NITP's share."""
    import json

    from nitp_train.flops import default_seq_len, flops_report, load_config_source, paper_sizes_table

    from .tables import flops_rows, render

    _check_format(fmt)
    if seq_len is not None and seq_len < 0:
        raise UserError(f"--seq-len {seq_len}: must be >= 0")
    if source is None:
        seq_len = 8192 if seq_len is None else seq_len
        rows = paper_sizes_table(seq_len)
        title = f"training FLOPs per token of the paper's sizes (exact at seq_len {seq_len})"
        _emit(render(rows, fmt, title) if fmt != "json" else json.dumps(rows, indent=2))
        return
    config, name, config_seq_len = load_config_source(source)
    seq_len = seq_len if seq_len is not None else (config_seq_len or default_seq_len(config))
    report = flops_report(config, seq_len)
    report["source"] = name
    if fmt == "json":
        _emit(json.dumps(report, indent=2))
        return
    title = f"training FLOPs per token: {name} (seq_len {report['seq_len']})"
    _emit(render(flops_rows(report), fmt, title))
    if fmt == "table":
        paper = report["paper_closed_form"]
        _emit(
            f"NITP overhead: {100 * paper['nitp_overhead']:.2f}% by the paper's closed form "
            f"(72 d^2 + 18 d over L (18 d^2 + 18 k d d_e) + 6 V d); {100 * report['nitp_overhead']:.2f}% of the exact count "
            f"({100 * report['nitp_overhead_without_attention_scores']:.2f}% without the attention-score term)"
        )
        _emit("where they differ: " + ("; ".join(report["differences"]) or "nowhere for this config"))


def _one_line_warning(message, category, filename, lineno, file=None, line=None):
    print(f"warning: {message}", file=sys.stderr)


def main() -> None:
    """Console entry point: one-line errors and warnings, no tracebacks for bad input."""
    warnings.showwarning = _one_line_warning
    with user_errors():
        app()


if __name__ == "__main__":
    main()
