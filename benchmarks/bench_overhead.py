"""Overhead of `nitp-eval bench` over plain `lm_eval` on the same task and checkpoint.

Both commands run as fresh processes, side by side and in alternating order, ``--repeats`` times;
each wall time covers everything a user waits for (imports, task indexing, model load,
evaluation, writing results). Printed: every pair of times, then
``ratio = nitp-eval / lm_eval`` of the fastest runs (the least disturbed by other load on the
machine) and of the medians (target: at most 1.03), plus a check that both report the same score.

Usage::

    python benchmarks/bench_overhead.py RUN_OR_CHECKPOINT [--task sentiment] [--limit N] [--repeats 3]

The default task is from the offline suite (no network needed): plain lm_eval gets the same
generated task files through ``--include_path``. With the hub, any benchmark name works
(``--task arc_challenge``).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGET = 1.03


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", help="checkpoint folder or run directory")
    p.add_argument("--task", default="sentiment", help="benchmark name (default: offline 'sentiment')")
    p.add_argument("--limit", type=int, default=None, help="documents per (sub)task (default: all)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default=None)
    p.add_argument("--batch-size", default=None)
    args = p.parse_args()

    from nitp.runs import resolve_checkpoint
    from nitp_eval.bench.plan import shots_for
    from nitp_eval.bench.settings import BenchSettings
    from nitp_eval.data.offline_bench import prepare_offline_tasks
    from nitp_eval.tasks import friendly, passthrough

    ckpt = resolve_checkpoint(args.checkpoint)
    b = friendly(args.task) or passthrough(args.task)
    settings = BenchSettings(device=args.device, batch_size=args.batch_size, backend="hf").resolved()
    device, batch_size = settings.device, settings.batch_size
    shots = shots_for(b, None)
    work = Path(tempfile.mkdtemp(prefix="nitp-bench-overhead-"))
    env = dict(os.environ, NITP_CACHE_DIR=str(work / "cache"))
    limit = ["--limit", str(args.limit)] if args.limit else []
    nitp_cmd = [
        "nitp-eval",
        "bench",
        str(ckpt),
        "--tasks",
        b.name,
        "--redo",
        "--out",
        str(work / "nitp.json"),
        "--device",
        device,
        "--batch-size",
        str(batch_size),
        "--backend",
        "hf",
        *limit,
    ]
    lm_cmd = [
        "lm_eval",
        "run",
        "--model",
        "hf",
        "--model_args",
        f"pretrained={ckpt},dtype=auto",
        "--tasks",
        b.lm_eval_task,
        "--device",
        device,
        "--batch_size",
        str(batch_size),
        "--output_path",
        str(work / "lm_eval"),
        *limit,
    ]
    if shots is not None:
        lm_cmd += ["--num_fewshot", str(shots)]
    if b.offline:
        # the same generated task files nitp-eval uses (prepared once here, outside the timings)
        lm_cmd += ["--include_path", str(prepare_offline_tasks(work / "cache" / "offline-tasks"))]
    elif b.lm_eval_task.startswith("nitp_"):
        from nitp_eval.tasks import TASKS_DIR

        lm_cmd += ["--include_path", str(TASKS_DIR)]

    print(
        f"task {b.name} (lm-eval {b.lm_eval_task}, shots {shots}), checkpoint {ckpt}, device {device}, batch {batch_size}"
    )
    print("  nitp-eval: " + " ".join(nitp_cmd))
    print("  lm_eval:   " + " ".join(lm_cmd))
    run(nitp_cmd, env)  # warm-up: file-system caches, datasets' arrow cache, offline task files
    times = {"nitp-eval": [], "lm_eval": []}
    for i in range(args.repeats):
        order = [("nitp-eval", nitp_cmd), ("lm_eval", lm_cmd)]
        for name, cmd in order if i % 2 == 0 else order[::-1]:
            times[name].append(run(cmd, env))
        print(
            f"  repeat {i + 1}: nitp-eval {times['nitp-eval'][-1]:7.2f} s   lm_eval {times['lm_eval'][-1]:7.2f} s"
        )
    for label, stat in (("fastest", min), ("median", statistics.median)):
        ours_s, lm_eval_s = stat(times["nitp-eval"]), stat(times["lm_eval"])
        ratio = ours_s / lm_eval_s
        print(
            f"{label:8s} nitp-eval {ours_s:7.2f} s   lm_eval {lm_eval_s:7.2f} s   ratio {ratio:.3f} "
            f"(target <= {TARGET}) -> {'OK' if ratio <= TARGET else 'ABOVE TARGET'}"
        )
    ours = json.loads((work / "nitp.json").read_text())["scores"]["tasks"][b.name]
    theirs = json.loads(
        Path(
            sorted(glob.glob(str(work / "lm_eval" / "**" / "results_*.json"), recursive=True))[-1]
        ).read_text()
    )
    key = f"{ours['metric']},{ours.get('filter', 'none')}"
    same = theirs["results"][b.lm_eval_task][key] == ours["value"]
    print(f"same score: {same} ({key} = {ours['value']:.4f})")


def run(cmd: list[str], env: dict) -> float:
    t0 = time.perf_counter()
    done = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    elapsed = time.perf_counter() - t0
    if done.returncode != 0:
        sys.exit(f"failed ({done.returncode}): {' '.join(cmd)}\n{done.stderr[-2000:]}")
    return elapsed


if __name__ == "__main__":
    main()
