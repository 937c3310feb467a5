"""`nitp-study`: run a study (a grid of training runs, one evaluation plan, one report), resumably.

nitp-study quickstart --out runs/qs                      # a shipped study (configs/studies/)
nitp-study my-study.yaml --dry-run                      # every cell with its plan line
nitp-study my-study.yaml --cell nitp-s1                 # one cell (a job-array task)
nitp-study my-study.yaml --retrain-changed              # after editing set:/axes:, retrain what changed
nitp-study my-study.yaml --emit slurm --gpus-per-node 8 # OUT/study.sbatch: a SLURM array of torchrun jobs
torchrun --nproc_per_node 8 -m reports.study_cli my-study.yaml --cell nitp-s1
"""

from __future__ import annotations

from pathlib import Path

import typer

from nitp.errors import UserError, user_errors

app = typer.Typer(
    help="Run a study: the cells of a grid (objective x seed x ablation x any config key), scored and reported.",
    pretty_exceptions_enable=False,
    add_completion=False,
)
EMITS = ("slurm", "commands")


@app.command()
def study(
    study_file: str = typer.Argument(
        ...,
        metavar="STUDY",
        help="A study YAML, or a shipped study: quickstart, ablations-small-dense, gpu-single.",
    ),
    out: Path | None = typer.Option(
        None, "--out", "-o", help="Study folder (default: runs/NAME, NAME = the study's name)."
    ),
    cell: str | None = typer.Option(None, "--cell", help="Train and evaluate only this cell (no report)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="List every cell with its plan line; run nothing."),
    emit: str | None = typer.Option(
        None,
        "--emit",
        help="slurm: write OUT/study.sbatch (an array of torchrun jobs); commands: OUT/commands.txt.",
    ),
    retrain_changed: bool = typer.Option(
        False,
        "--retrain-changed",
        help="Delete and train again the cells whose run was trained with another config (the study "
        "file changed); without it such cells are refused.",
    ),
    nodes: int = typer.Option(1, "--nodes", help="Nodes per cell (--emit slurm)."),
    gpus_per_node: int = typer.Option(8, "--gpus-per-node", help="GPUs per node (--emit slurm)."),
) -> None:
    """Train every cell, evaluate it, write OUT/report/ and OUT/study.json; a rerun resumes."""
    from reports.study import emit_commands, emit_slurm, load_study, run_study

    spec = load_study(study_file)
    out = out or Path("runs") / spec.name
    if emit is not None:
        if emit not in EMITS:
            raise UserError(f"--emit {emit}: use {' or '.join(EMITS)}")
        if emit == "slurm":
            typer.echo(str(emit_slurm(spec, out, nodes=nodes, gpus_per_node=gpus_per_node)))
        else:
            typer.echo(emit_commands(spec, out).read_text(), nl=False)
        return
    # --dry-run's plan goes to stdout; a run's progress to stderr
    log = typer.echo if dry_run else (lambda m: typer.echo(m, err=True))
    result = run_study(spec, out, cell=cell, dry_run=dry_run, log=log, retrain_changed=retrain_changed)
    if result is not None:
        typer.echo(str(result))


def main() -> None:
    with user_errors():
        app()


if __name__ == "__main__":
    main()
