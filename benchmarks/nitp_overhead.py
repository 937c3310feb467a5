"""NITP's training overhead, measured side by side with NTP in one process.

Builds the same preset twice (NTP and NITP objectives, same initial weights), then alternates
training steps (forward + backward + AdamW) between them so that machine noise hits both alike,
and prints:

- step-time ratio NITP / NTP (median over steps),
- peak-memory ratio (GPU: max allocated; CPU: bytes saved for backward, i.e. activation memory),
- the FLOPs-predicted ratio 1 + (72 d^2 + 18 d) / (training FLOPs per token),
- measured overhead / predicted overhead (target: at most 1.25),
- on GPU, tokens/s and MFU of each.

Examples::

    python benchmarks/nitp_overhead.py                                   # tiny-dense on CPU
    python benchmarks/nitp_overhead.py --preset dense-0.5b --device cuda --dtype bf16 --compile --seq-len 2048 --batch-size 8
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import torch

from nitp_train.config import load_config
from nitp_train.flops import nitp_flops_per_token, training_flops_per_token
from nitp_train.loss import NITPObjective
from nitp_train.metrics import peak_flops
from nitp_train.models import build_model
from nitp_train.trainer import _make_optimizer


def make_objective(cfg: dict, objective: str, device: torch.device, compile_: bool):
    model = build_model(cfg["model"], seed=0)
    obj = NITPObjective(model, objective, cfg["nitp"]).to(device)
    opt = _make_optimizer(obj, cfg["train"])
    return (torch.compile(obj) if compile_ else obj), obj, opt


@contextlib.contextmanager
def saved_bytes(counter: list[int]):
    """Count the bytes autograd saves for backward (activation memory) during the block."""

    def pack(t):
        counter[0] += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        yield


def step(fwd, opt, x, amp) -> None:
    with amp:
        loss = fwd(x)["loss_total"]
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="tiny-dense")
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--steps", type=int, default=20, help="timed steps per objective")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    ap.add_argument("--compile", action="store_true")
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="CPU threads (1: CPU time per step is then robust to other load)",
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    device = torch.device(args.device)
    cfg = load_config(None, [f"model.preset={args.preset}", f"data.seq_len={args.seq_len}", "train.lr=1e-4"])
    amp = (
        torch.autocast(device.type, dtype=torch.bfloat16)
        if args.dtype == "bf16"
        else contextlib.nullcontext()
    )
    runs = {o: make_objective(cfg, o, device, args.compile) for o in ("ntp", "nitp")}
    vocab = cfg["model"]["vocab_size"]
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, vocab, (args.batch_size, args.seq_len), generator=gen).to(device)

    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    times = {o: [] for o in runs}
    cpu_times = {o: [] for o in runs}  # process CPU time: less sensitive to other processes' load
    for i in range(args.warmup + args.steps):
        for o, (fwd, _, opt) in runs.items() if i % 2 == 0 else reversed(list(runs.items())):
            sync()
            t, c = time.perf_counter(), time.process_time()
            step(fwd, opt, x, amp)
            sync()
            if i >= args.warmup:
                times[o].append(time.perf_counter() - t)
                cpu_times[o].append(time.process_time() - c)

    memory = {}
    for o, (fwd, _, opt) in runs.items():
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
            step(fwd, opt, x, amp)
            memory[o] = torch.cuda.max_memory_allocated()
        else:
            counter = [0]
            with saved_bytes(counter):
                with amp:
                    loss = runs[o][1](x)["loss_total"]
            loss.backward()
            opt.zero_grad(set_to_none=True)
            memory[o] = counter[0]

    model_cfg = runs["ntp"][1].model.config
    base = training_flops_per_token(model_cfg, args.seq_len)
    predicted = 1 + nitp_flops_per_token(model_cfg.hidden_size) / base
    med = {o: statistics.median(t) for o, t in times.items()}
    ratio = med["nitp"] / med["ntp"]
    tokens = args.batch_size * args.seq_len
    print(
        f"preset {args.preset}  device {device}  dtype {args.dtype}  compile {args.compile}  "
        f"batch {args.batch_size}x{args.seq_len}  timed steps {args.steps} each (alternating)"
    )
    for o in runs:
        line = f"  {o:4s}  median step {med[o] * 1e3:8.1f} ms  {tokens / med[o]:10,.0f} tokens/s  memory {memory[o] / 2**20:8.1f} MiB"
        peak = peak_flops(device)
        if peak:
            per_tok = base + (nitp_flops_per_token(model_cfg.hidden_size) if o == "nitp" else 0)
            line += f"  MFU {per_tok * tokens / med[o] / peak:.1%}"
        print(line)
    print(f"step-time ratio NITP/NTP     {ratio:.4f}")
    if device.type == "cpu":
        cpu_ratio = statistics.median(cpu_times["nitp"]) / statistics.median(cpu_times["ntp"])
        print(f"CPU-time ratio NITP/NTP      {cpu_ratio:.4f}   (process CPU time per step, median)")
    print(
        f"peak-memory ratio NITP/NTP   {memory['nitp'] / memory['ntp']:.4f}"
        + ("" if device.type == "cuda" else "   (CPU: activation bytes saved for backward)")
    )
    print(f"FLOPs-predicted ratio        {predicted:.4f}")
    verdict = (ratio - 1) / (predicted - 1)
    print(
        f"measured / predicted overhead {verdict:.2f}  (target <= 1.25: {'met' if verdict <= 1.25 else 'NOT met'})"
    )


if __name__ == "__main__":
    main()
