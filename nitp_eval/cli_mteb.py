"""`nitp-eval mteb`: frozen hidden states as sentence embeddings, scored by mteb.

Only parses arguments; the work is ``nitp_eval.embed.run_mteb`` (see docs/mteb.md).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import List

import typer


def mteb_command(
    checkpoints: List[Path] = typer.Argument(
        ...,
        help="Checkpoint folders, run directories (latest checkpoint) or Hugging Face model folders.",
        show_default=False,
    ),
    suite: str | None = typer.Option(
        None, "--suite", help="paper (the paper's 25 English tasks) | offline (shipped data; default)."
    ),
    tasks: List[str] | None = typer.Option(
        None, "--tasks", help="mteb task names instead of a suite (repeat or comma-separate)."
    ),
    pooling: str = typer.Option(
        "mean", "--pooling", help="mean | last | eos: how token states become one vector."
    ),
    layer: int = typer.Option(
        -1,
        "--layer",
        help="-1 = last hidden state (after the final norm), 0 = embeddings, k = output of block k.",
    ),
    out: Path | None = typer.Option(
        None, "--out", help="Record file (.json, one checkpoint) or directory. Default: RUN/results/mteb/."
    ),
    data_dir: Path | None = typer.Option(
        None,
        "--data-dir",
        help="Local mirror of the tasks' datasets (hub layout, see `nitp-eval mirror export`); implies HF_HUB_OFFLINE.",
    ),
    redo: bool = typer.Option(
        False, "--redo", help="Recompute what the record and mteb's cache already hold."
    ),
    device: str | None = typer.Option(
        None, "--device", help="cpu | cuda | cuda:N (default: cuda when available)."
    ),
    batch_size: int = typer.Option(32, "--batch-size", help="Texts per forward pass."),
) -> None:
    """Score checkpoints' frozen, mean-pooled, L2-normalised hidden states on MTEB tasks.

    Example: nitp-eval mteb runs/ntp runs/nitp --suite offline
    """
    from nitp.loading import model_folder
    from nitp.runs import is_gguf_file

    from .embed import format_table, missing_tasks, run_mteb

    checkpoints = [model_folder(c) if is_gguf_file(c) else c for c in checkpoints]  # .gguf -> HF folder
    names = [n.strip() for item in (tasks or []) for n in item.split(",") if n.strip()] or None
    records = run_mteb(
        checkpoints,
        suite=suite,
        tasks=names,
        pooling=pooling,
        layer=layer,
        out=out,
        data_dir=data_dir,
        redo=redo,
        device=device,
        batch_size=batch_size,
    )
    print(format_table(records))
    missing = sorted({t for r in records for t in missing_tasks(r)})
    if missing:
        print(
            f"error: {len(missing)} task(s) not scored: {', '.join(missing)} (see the messages above)",
            file=sys.stderr,
        )
        raise typer.Exit(1)
