"""The trainer's step overhead: ``nitp-train``'s step vs a bare nanoGPT-style loop, side by side.

Both sides train the same model (``build_model``, same seed), on the same batches (``TokenShards``
of one prepared corpus), with the same AdamW groups and settings, gradient clip and warmup-stable-
decay schedule:

- trainer: the state ``nitp_train.trainer`` builds for a run (``_build_state``), stepped by the
  trainer's own ``_train_step`` + ``_after_step`` (loss sums, NaN flag, projector hold, progress,
  the checks of ``_after_step``); logging, geometry, validation, probe and checkpoint intervals
  never fire unless ``--log-every`` asks for train lines;
- bare: ``loss.backward(); clip; opt.step(); sched.step(); opt.zero_grad()``. NTP's loss is the
  plain ``F.cross_entropy`` of the model's logits; NITP's is ``NITPObjective`` called directly
  (the loss itself is not overhead).

Blocks of ``--block`` steps alternate between the two (order flipped every round), so machine
noise hits both alike; printed: median block time of each, and trainer / bare (goal <= 1.05).

Examples::

    python benchmarks/step_overhead.py                        # tiny-dense on CPU, NTP and NITP
    python benchmarks/step_overhead.py --device cuda --dtype bf16 --preset dense-0.5b --seq-len 2048 --batch-size 8
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from nitp_train import parallel
from nitp_train.config import load_config
from nitp_train.loss import NITPObjective
from nitp_train.models import build_model
from nitp_train.trainer import _after_step, _build_state, _make_optimizer, _make_scheduler, _train_step

NEVER = 10**9  # an interval that never fires within the benchmark


def config(args, objective: str, prepared: Path) -> dict:
    """The run's config: the benchmark's shape, intervals that don't fire, one micro-batch."""
    sets = [
        f"objective={objective}",
        f"model.preset={args.preset}",
        f"data.seq_len={args.seq_len}",
        f"data.prepared_dir={prepared}",
        f"train.batch_size={args.batch_size}",
        "train.grad_accum=1",
        "train.global_batch=null",
        "nitp.start_step=0",  # the bare loop has no projector hold
        f"train.steps={NEVER}",
        "train.tokens=null",
        f"train.device={args.device}",
        f"train.dtype={args.dtype}",
        f"train.compile={str(args.compile).lower()}",
        f"log.every={args.log_every or NEVER}",
        "log.geom_every=0",
        "log.eval_every=0",
        "log.probe_every=0",
        f"checkpoint.every={NEVER}",
        "eval.every=0",
    ]
    if args.threads:
        sets.append(f"train.threads={args.threads}")
    return load_config(None, sets)


class Bare:
    """A nanoGPT-style loop over the trainer's model, data, optimizer settings and schedule."""

    def __init__(self, cfg: dict, shards, device: torch.device, amp, compile_: bool):
        torch.manual_seed(cfg["seed"])
        model = build_model(cfg["model"], seed=cfg["seed"])
        self.nitp = cfg["objective"] == "nitp"
        tc = cfg["train"]
        if self.nitp:  # the trainer's loss, called directly: the loss itself is not overhead
            cos = cfg["cos_reg"]
            model = NITPObjective(
                model, "nitp", cfg["nitp"], cos["weight"], cos["kind"], loss_impl=tc["loss_impl"]
            )
        self.module = model.to(device)
        self.forward = torch.compile(self.module) if compile_ else self.module
        self.opt = _make_optimizer(self.module, tc)
        self.sched = _make_scheduler(self.opt, tc)
        self.clip, self.lam, self.device, self.amp = tc["grad_clip"], cfg["nitp"]["lambda"], device, amp
        seq, bsz, seed = cfg["data"]["seq_len"], tc["batch_size"], cfg["seed"]
        self.batches = (
            shards.document_batches(seq, bsz, seed) if self.nitp else shards.batches(seq, bsz, seed)
        )

    def step(self) -> None:
        batch = next(self.batches)
        x = torch.from_numpy(batch[1]).to(self.device, non_blocking=True)
        with self.amp:
            if self.nitp:
                docs = torch.from_numpy(batch[2]).to(self.device, non_blocking=True)
                loss = self.forward(x, nitp_weight=self.lam, document_ids=docs)["loss_total"]
            else:
                logits = self.forward(x).logits
                loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), x[:, 1:].flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.module.parameters(), self.clip)
        self.opt.step()
        self.sched.step()
        self.opt.zero_grad(set_to_none=True)


def trainer_step(st) -> None:
    want_geom, grad_norm = _train_step(st)
    _after_step(st, want_geom, grad_norm)


def timed(fn, n: int, sync) -> tuple[float, float]:
    """Wall and process CPU seconds of ``n`` calls of ``fn``."""
    sync()
    t, c = time.perf_counter(), time.process_time()
    for _ in range(n):
        fn()
    sync()
    return time.perf_counter() - t, time.process_time() - c


def compare(args, objective: str, prepared: Path, work: Path) -> dict:
    """Median block times of the trainer and the bare loop for one objective."""
    cfg = config(args, objective, prepared)
    d = parallel.setup(cfg["train"]["device"])
    st = _build_state(cfg, work / f"run-{objective}", False, d, log=lambda *a, **k: None)
    bare = Bare(st.cfg.model_dump(by_alias=True), st.shards, d.device, st.amp, args.compile)
    sides = {"trainer": lambda: trainer_step(st), "bare": bare.step}
    sync = torch.cuda.synchronize if d.device.type == "cuda" else (lambda: None)
    wall, cpu = {s: [] for s in sides}, {s: [] for s in sides}
    try:
        for r in range(args.warmup + args.rounds):
            for name, fn in sides.items() if r % 2 == 0 else reversed(list(sides.items())):
                w, c = timed(fn, args.block, sync)
                if r >= args.warmup:
                    wall[name].append(w)
                    cpu[name].append(c)
    finally:
        st.mlog.close()
    med = {s: statistics.median(wall[s]) / args.block for s in sides}
    med_cpu = {s: statistics.median(cpu[s]) / args.block for s in sides}
    return {"wall": med, "cpu": med_cpu, "tokens": args.batch_size * args.seq_len}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="tiny-dense")
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--objectives", default="ntp,nitp")
    ap.add_argument("--block", type=int, default=5, help="steps per timed block")
    ap.add_argument("--rounds", type=int, default=6, help="timed rounds (one block of each side per round)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--threads", type=int, default=1, help="CPU threads (1: robust to other load)")
    ap.add_argument("--log-every", type=int, default=0, help="trainer train lines every N steps (0: none)")
    ap.add_argument("--prepared-dir", type=Path, help="a prepared corpus (default: prepare the built-in one)")
    args = ap.parse_args()

    print(
        f"preset {args.preset}  device {args.device}  dtype {args.dtype}  compile {args.compile}  "
        f"batch {args.batch_size}x{args.seq_len}  {args.rounds} rounds x {args.block} steps each side "
        f"(alternating)  threads {args.threads}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        prepared = args.prepared_dir or work / "data"
        for objective in args.objectives.split(","):
            res = compare(args, objective, prepared, work)
            wall, cpu = res["wall"], res["cpu"]
            ratio = wall["trainer"] / wall["bare"]
            for side in ("trainer", "bare"):
                print(
                    f"  {objective:4s} {side:7s}  median step {wall[side] * 1e3:8.1f} ms  "
                    f"{res['tokens'] / wall[side]:10,.0f} tokens/s"
                )
            line = f"  {objective:4s} trainer / bare  {ratio:.4f}  (goal <= 1.05: {'met' if ratio <= 1.05 else 'NOT met'})"
            if args.device == "cpu":
                line += f"   CPU time {cpu['trainer'] / cpu['bare']:.4f}"
            print(line)


if __name__ == "__main__":
    main()
