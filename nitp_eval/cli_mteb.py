"""`nitp-eval mteb`: frozen hidden states as sentence embeddings, scored by mteb.

Only parses arguments; the work is ``nitp_eval.mteb.run.run_mteb`` (see docs/mteb.md).
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import List

import typer

from nitp.errors import UserError
from nitp.records import check_output

from .mteb.settings import MtebSettings  # no mteb import: --help stays instant


def mteb_command(
    checkpoints: List[Path] = typer.Argument(
        ...,
        help="Checkpoint folders, run directories (latest checkpoint), Hugging Face model folders or .gguf files.",
        show_default=False,
    ),
    suite: str | None = typer.Option(
        MtebSettings.suite,
        "--suite",
        help="paper (the paper's 25 English tasks) | offline (shipped data; default).",
    ),
    tasks: List[str] | None = typer.Option(
        None, "--tasks", help="mteb task names instead of a suite (repeat or comma-separate)."
    ),
    pooling: str = typer.Option(
        MtebSettings.pooling, "--pooling", help="mean | last | eos: how token states become one vector."
    ),
    layer: int | None = typer.Option(
        MtebSettings.layer,
        "--layer",
        help="-1 = last hidden state (after the final norm; default), 0 = embeddings, k = output of block k.",
        show_default=False,
    ),
    layers: str | None = typer.Option(
        MtebSettings.layers,
        "--layers",
        help="Layer sweep instead of --layer: all | 0,3,-1. One forward pass per batch, one record per layer.",
    ),
    figure: Path | None = typer.Option(
        None, "--figure", help="With --layers: score-by-depth figure, written as PATH.png and PATH.pdf."
    ),
    out: Path | None = typer.Option(
        None, "--out", help="Record file (.json, one checkpoint) or directory. Default: RUN/results/mteb/."
    ),
    data_dir: Path | None = typer.Option(
        MtebSettings.data_dir,
        "--data-dir",
        help="Local mirror of the tasks' datasets (hub layout, see `nitp-eval mirror export`); implies HF_HUB_OFFLINE.",
    ),
    redo: bool = typer.Option(
        False, "--redo", help="Recompute what the record and mteb's cache already hold."
    ),
    device: str | None = typer.Option(
        MtebSettings.device, "--device", help="cpu | cuda | cuda:N (default: cuda when available)."
    ),
    batch_size: int = typer.Option(
        MtebSettings.batch_size, "--batch-size", help="At most this many texts per forward pass."
    ),
    batch_tokens: int = typer.Option(
        MtebSettings.batch_tokens,
        "--batch-tokens",
        help="At most this many padded tokens per forward pass (bounds memory).",
    ),
    max_length: int = typer.Option(
        MtebSettings.max_length,
        "--max-length",
        help="Token limit per text (MTEB's usual; also capped by the model's own).",
    ),
    save_encoder: Path | None = typer.Option(
        None,
        "--save-encoder",
        help="Also save the SentenceTransformer to DIR (DIR/<name>-<hash8> for several checkpoints).",
    ),
) -> None:
    """Score checkpoints' frozen, mean-pooled, L2-normalised hidden states on MTEB tasks.

    Example: nitp-eval mteb runs/ntp runs/nitp --suite offline
    Layer sweep: nitp-eval mteb runs/nitp --layers all --figure figures/mteb-layers
    """
    from .mteb.results import missing_tasks
    from .mteb.run import run_mteb
    from .mteb.table import format_layer_table, format_table

    if figure is not None:
        if layers is None:
            raise UserError("--figure draws a layer sweep: use it with --layers (e.g. --layers all)")
        check_output(figure, "--figure")
    options = locals()  # the MtebSettings fields that are options of the same name
    options["tasks"] = [n.strip() for item in (tasks or []) for n in item.split(",") if n.strip()] or None
    settings = MtebSettings(
        **{f.name: options[f.name] for f in dataclasses.fields(MtebSettings) if f.name in options}
    )
    records = run_mteb(checkpoints, settings, out=out, redo=redo, save_encoder=save_encoder)
    print(format_table(records) if layers is None else format_layer_table(records))
    if figure is not None:
        from .mteb.figure import plot_layer_sweep

        png, pdf = plot_layer_sweep(records, figure)
        print(f"figure: {png} and {pdf}", file=sys.stderr)
    missing = sorted({t for r in records for t in missing_tasks(r)})
    if missing:
        print(
            f"error: {len(missing)} task(s) not scored: {', '.join(missing)} (see the messages above)",
            file=sys.stderr,
        )
        raise typer.Exit(1)
