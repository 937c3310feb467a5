"""Peak memory of the next-token loss, plain vs chunked (``train.loss_chunk``), side by side in one run.

The part measured is what ``train.loss_chunk`` changes: LM head + cross-entropy, forward and
backward, on final hidden states ``[B, T, d]`` with a ``[V, d]`` head (dense-0.5b: d = 896 and the
Qwen2 vocabulary V = 151,936). Each mode runs in its own fresh child process; on CPU the number
is the growth of the process's peak resident memory (``ru_maxrss``) over the loss call, on GPU
``torch.cuda.max_memory_allocated`` above what was allocated before it. Both include the
head's weight gradient ([V, d] float32), which the two modes share. Prints one table and the
ratio chunked / plain (target: at most 0.5).

Examples::

    python benchmarks/loss_memory.py                      # CPU, V=151936, T=2048, B=1, chunk 256
    python benchmarks/loss_memory.py --device cuda --dtype bf16 --seq-len 8192
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys

V_QWEN2, D_05B = 151_936, 896


def measure(mode: str, args) -> int:
    """Peak bytes over one loss forward + backward in this process (``mode``: plain | chunked)."""
    import contextlib

    import torch
    import torch.nn.functional as F

    from nitp_train.loss import chunked_next_token_ce

    torch.manual_seed(0)
    dev = torch.device(args.device)
    head = torch.nn.Linear(args.hidden, args.vocab, bias=False, device=dev)
    h = torch.randn(args.batch, args.seq_len, args.hidden, device=dev, requires_grad=True)
    labels = torch.randint(0, args.vocab, (args.batch, args.seq_len), device=dev)
    amp = torch.autocast(dev.type, dtype=torch.bfloat16) if args.dtype == "bf16" else contextlib.nullcontext()
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    with amp:
        if mode == "plain":
            logits = head(h).float()
            loss = F.cross_entropy(logits.reshape(-1, args.vocab), labels.reshape(-1))
        else:
            loss = chunked_next_token_ce(h, head, labels, args.chunk)
    loss.backward()
    if dev.type == "cuda":
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - before
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--vocab", type=int, default=V_QWEN2)
    p.add_argument("--hidden", type=int, default=D_05B)
    p.add_argument("--seq-len", type=int, default=2048)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--chunk", type=int, default=256)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--child", choices=["plain", "chunked"], help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse(argv)
    if args.child:
        print(json.dumps({"peak_bytes": measure(args.child, args)}))
        return {}
    argv = list(sys.argv[1:] if argv is None else argv)
    peaks = {}
    for mode in ("plain", "chunked"):  # a fresh process each: peak RSS never goes down
        out = subprocess.run(
            [sys.executable, __file__, *argv, "--child", mode], capture_output=True, text=True, check=True
        )
        peaks[mode] = json.loads(out.stdout.strip().splitlines()[-1])["peak_bytes"]
    ratio = peaks["chunked"] / peaks["plain"]
    print(
        f"loss memory  V={args.vocab:,} d={args.hidden} B={args.batch} T={args.seq_len} "
        f"chunk={args.chunk} device={args.device} dtype={args.dtype}"
    )
    print(f"{'mode':<10}{'peak MiB':>12}")
    for mode, b in peaks.items():
        print(f"{mode:<10}{b / 2**20:>12,.0f}")
    print(f"ratio chunked / plain = {ratio:.3f}  (target <= 0.5: {'met' if ratio <= 0.5 else 'NOT met'})")
    return {**peaks, "ratio": ratio}


if __name__ == "__main__":
    main()
