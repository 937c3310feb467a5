"""Streaming data preparation: throughput vs `tokenizers`' own encode_batch, and peak memory vs corpus size.

Builds two JSON-lines corpora in a scratch folder (never in the repository) by repeating the
documents of ``prose-v1.jsonl.xz`` (the shared pre-training prose), trains one byte-level BPE on
a sample, then prints, side by side from one run:

- throughput: ``nitp_train.data.prepare`` (read, split, tokenize in worker processes, write
  shards + document index) over the small corpus vs ``tokenizers.Tokenizer.encode_batch`` (its
  Rust thread pool, texts already in memory, nothing written) over the same documents;
- memory: peak proportional set size (PSS) of ``prepare`` (the process and its workers, summed,
  sampled every 50 ms) on the big corpus vs the small one.

Targets (issue 14): throughput ratio >= 0.8; big/small memory <= 1.5 and big < 2 GB.

    python benchmarks/prepare_throughput.py [--small-mb 60 --big-mb 600 --workers N --scratch DIR]
"""

from __future__ import annotations

import argparse
import json
import lzma
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# the shared corpus sits in ../shared beside the checkout (or one level further up for worktrees)
PROSE = next(
    (p for p in (r / "shared" / "corpora" / "prose-v1.jsonl.xz" for r in ROOT.parents) if p.is_file()),
    ROOT.parent / "shared" / "corpora" / "prose-v1.jsonl.xz",
)


def make_corpus(path: Path, megabytes: int, source: Path) -> Path:
    """``megabytes`` of JSON lines: the source's documents, repeated in order as often as needed."""
    if path.is_file() and path.stat().st_size >= megabytes << 20:
        return path
    target, written = megabytes << 20, 0
    with open(path, "w", encoding="utf-8") as out:
        while written < target:
            with lzma.open(source, "rt", encoding="utf-8") as f:
                for line in f:
                    out.write(line)
                    written += len(line.encode("utf-8"))
                    if written >= target:
                        break
    return path


def make_tokenizer(corpus: Path, out: Path, vocab: int = 32768) -> Path:
    if (out / "tokenizer.json").is_file():
        return out
    sys.path.insert(0, str(ROOT))
    from nitp_train.corpus import iter_documents
    from nitp_train.data import train_tokenizer

    def sample():
        seen = 0
        for doc in iter_documents(str(corpus)):
            yield doc
            seen += len(doc)
            if seen > 20 << 20:
                return

    train_tokenizer(sample(), vocab).save_pretrained(out)
    return out


REFERENCE = """
import json, sys, time
from tokenizers import Tokenizer
tok = Tokenizer.from_file(sys.argv[1] + "/tokenizer.json")
docs = [json.loads(line)["text"] for line in open(sys.argv[2], encoding="utf-8")]
t0 = time.perf_counter()
n = 0
for i in range(0, len(docs), 256):
    n += sum(len(e.ids) for e in tok.encode_batch(docs[i : i + 256], add_special_tokens=False))
print(json.dumps({"seconds": time.perf_counter() - t0, "tokens": n}))
"""

PREPARE = """
import json, sys, time
from nitp_train.data import prepare
cfg = {"corpus": sys.argv[2], "tokenizer": sys.argv[1], "val_fraction": 0.01, "seed": 0, "seq_len": 8,
       "workers": None if sys.argv[4] == "auto" else int(sys.argv[4])}
t0 = time.perf_counter()
out = prepare(cfg, sys.argv[3], log=lambda *_: None)
meta = json.load(open(f"{out}/meta.json"))
print(json.dumps({"seconds": time.perf_counter() - t0, "tokens": meta["n_train"] + meta["n_val"]}))
"""


def tree_pss(pid: int) -> int:
    """Proportional set size (bytes) of ``pid`` and all its descendants, from /proc.

    PSS, not RSS: forked workers share the parent's pages, and summing RSS would count them
    once per process."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        todo += children.get(p, [])
        try:
            for line in Path(f"/proc/{p}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1]) * 1024
                    break
        except OSError:
            continue
    return total


def run_measured(code: str, args: list[str], env: dict) -> tuple[dict, int]:
    """Run ``code`` in a fresh Python; returns its JSON line and the peak RSS of its process tree."""
    proc = subprocess.Popen(
        [sys.executable, "-c", code, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    peak = 0
    while proc.poll() is None:
        peak = max(peak, tree_pss(proc.pid))
        time.sleep(0.05)
    out, err = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"benchmark step failed:\n{err}")
    return json.loads(out.strip().splitlines()[-1]), peak


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small-mb", type=int, default=60)
    ap.add_argument("--big-mb", type=int, default=600)
    ap.add_argument(
        "--workers", default="auto", help="prepare's data.workers (auto = one per core, at most 8)"
    )
    ap.add_argument("--scratch", type=Path, default=Path("/tmp/nitp-prepare-bench"))
    ap.add_argument("--source", type=Path, default=PROSE)
    ap.add_argument("--rounds", type=int, default=3, help="alternating throughput rounds")
    args = ap.parse_args()
    args.scratch.mkdir(parents=True, exist_ok=True)
    small = make_corpus(args.scratch / f"corpus-{args.small_mb}mb.jsonl", args.small_mb, args.source)
    big = make_corpus(args.scratch / f"corpus-{args.big_mb}mb.jsonl", args.big_mb, args.source)
    tok = make_tokenizer(small, args.scratch / "tokenizer")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}

    prep_env = {**env, "TOKENIZERS_PARALLELISM": "false"}

    def prepared(name: str, corpus: Path) -> tuple[dict, int]:
        out = args.scratch / f"prepared-{name}"
        subprocess.run(["rm", "-rf", str(out)], check=True)
        try:
            return run_measured(PREPARE, [str(tok), str(corpus), str(out), args.workers], prep_env)
        finally:
            subprocess.run(["rm", "-rf", str(out)], check=True)

    # alternate the two sides so that a change in the machine's load hits both; keep each one's best
    refs, smalls = [], []
    for _ in range(args.rounds):
        refs.append(
            run_measured(REFERENCE, [str(tok), str(small)], {**env, "TOKENIZERS_PARALLELISM": "true"})
        )
        smalls.append(prepared("small", small))
    ref = min((r for r, _ in refs), key=lambda r: r["seconds"])
    small_res = min((r for r, _ in smalls), key=lambda r: r["seconds"])
    small_peak = max(p for _, p in smalls)
    big_res, big_peak = prepared("big", big)
    assert small_res["tokens"] >= ref["tokens"], (small_res, ref)  # + one EOS per document
    rounds = ", ".join(f"{r['seconds'] / s['seconds']:.2f}" for (r, _), (s, _) in zip(refs, smalls))

    mb = small.stat().st_size / 1e6
    print(f"cores: {os.cpu_count()}, prepare workers: {args.workers}, tokenizer: BPE 32,768")
    print(f"{'':34}{'seconds':>9}{'MB/s':>8}{'tokens':>14}")
    print(
        f"{'tokenizers encode_batch (' + str(args.small_mb) + ' MB)':34}{ref['seconds']:9.1f}{mb / ref['seconds']:8.2f}{ref['tokens']:14,}"
    )
    print(
        f"{'nitp prepare (' + str(args.small_mb) + ' MB)':34}{small_res['seconds']:9.1f}"
        f"{mb / small_res['seconds']:8.2f}{small_res['tokens']:14,}"
    )
    print(
        f"throughput ratio prepare / encode_batch (best of {args.rounds} each): "
        f"{ref['seconds'] / small_res['seconds']:.2f} (target >= 0.8); per round: {rounds}"
    )
    print(
        f"peak memory: {args.small_mb} MB corpus {small_peak / 2**20:.0f} MiB, {args.big_mb} MB corpus "
        f"{big_peak / 2**20:.0f} MiB, ratio {big_peak / small_peak:.2f} (target <= 1.5, big < 2048 MiB); "
        f"big: {big_res['seconds']:.0f} s, {big_res['tokens']:,} tokens"
    )


if __name__ == "__main__":
    main()
