"""``nitp-geom compare``: layer-by-layer similarity maps of two models (or one with itself).

One pass over a fixed corpus sample runs both models on the same tokens; for every pair
(layer i of A, layer j of B) a ``nitp.streaming.HSICMoments`` accumulates the cross sums
(float64, memory flat in the number of tokens: one [d_A, d_B] matrix per pair). From them:

* ``cka`` — linear CKA ``||X^T Y||_F^2 / (||X^T X||_F ||Y^T Y||_F)`` (centred; biased HSIC);
* ``cka_debiased`` — the same with the unbiased HSIC (Song et al. 2012; Kornblith et al. 2019),
  near 0 for unrelated representations even when tokens are not >> width;
* ``procrustes`` — squared orthogonal Procrustes distance ``2 - 2 ||X^T Y||_*`` of the centred,
  unit-Frobenius representations, in [0, 2] (Ding et al. 2021).

``a_vs_b`` is the cross map; ``a_vs_a`` and ``b_vs_b`` each model against itself (symmetric;
diagonal 1 / 1 / 0): the block structure. ``compare A`` alone gives ``a_vs_a`` only. Cost per
token: ``2 d_A d_B`` flops per layer pair (so ``(L+2)^2`` pairs for all layers), memory
``8 d_A d_B`` bytes per pair; ``--layers`` picks fewer.

Example
-------
>>> from analysis.settings import CompareSettings
>>> from analysis.similarity import compare_record
>>> rec = compare_record("runs/smol-ntp", "runs/smol-nitp", CompareSettings(n_tokens=4096))  # doctest: +SKIP
>>> rec["scores"]["similarity"]["a_vs_b"]["cka_debiased"][0][0]              # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np

from nitp.errors import UserError
from nitp.loading import available_memory
from nitp.records import model_identity
from nitp.runs import checkpoint_info, resolve_checkpoint

from .measure import _progress, cached_record, checked_settings, geom_cache_key, record_tag, sample_settings
from .settings import CompareSettings

MAPS = ("a_vs_b", "a_vs_a", "b_vs_b")
MEASURES = ("cka", "cka_debiased", "procrustes")
MEMORY_SHARE = 0.5  # the pair states may take at most this share of the available memory


class SimilarityStreams:
    """The ``HSICMoments`` of every layer pair of A x B (and of A x A, B x B) over batches.

    ``layers_a``, ``layers_b``: the layers of each model; ``b_layers=None`` compares A with itself.
    A model against itself keeps the diagonal and the upper triangle only (the rest is their
    transpose).
    """

    def __init__(self, layers_a: list[int], layers_b: list[int] | None, self_maps: bool = True):
        from nitp.streaming import HSICMoments

        self.self_maps = self_maps or layers_b is None
        sizes = [len(layers) for layers in (layers_a, layers_b) if layers is not None]
        self.diagonal = [[HSICMoments() for _ in range(n)] for n in sizes]  # per model: (h_i, h_i)
        self.cross = [[HSICMoments() for _ in layers_b] for _ in layers_a] if layers_b is not None else None
        self.upper = [
            {(i, j): HSICMoments() for i in range(n) for j in range(i + 1, n)}
            for n in sizes
            if self.self_maps
        ]

    def update(self, rows_a: list, rows_b: list | None) -> None:
        """Add one batch: ``rows_a[i]`` [N, d_A] of layer i of A, ``rows_b[j]`` the same tokens in B."""
        models = [rows for rows in (rows_a, rows_b) if rows is not None]
        for diagonal, rows in zip(self.diagonal, models):
            for s, x in zip(diagonal, rows):
                s.update(x, x)
        for upper, rows in zip(self.upper, models):
            for (i, j), s in upper.items():
                s.update(rows[i], rows[j])
        for i, x in enumerate(rows_a if rows_b is not None else ()):
            for j, y in enumerate(rows_b):
                self.cross[i][j].update(x, y)

    def maps(self) -> dict:
        """``{map name: {measure: nested list}}`` (``nitp.streaming.similarity_map_from_moments``)."""
        from nitp.streaming import similarity_map_from_moments

        out = {}
        if self.cross is not None:
            out["a_vs_b"] = similarity_map_from_moments(*self.diagonal, self.cross)
        for name, diagonal, upper in zip(("a_vs_a", "b_vs_b"), self.diagonal, self.upper):
            out[name] = similarity_map_from_moments(diagonal, diagonal, _square(diagonal, upper))
        return {name: {m: _json_matrix(v) for m, v in maps.items()} for name, maps in out.items()}


def _square(diagonal: list, upper: dict) -> list:
    """The full symmetric grid of pair states from the diagonal and the upper triangle."""
    n = len(diagonal)
    return [
        [diagonal[i] if i == j else upper[i, j] if i < j else upper[j, i].transposed() for j in range(n)]
        for i in range(n)
    ]


def _json_matrix(a: np.ndarray) -> list:
    return [[None if not np.isfinite(v) else float(v) for v in row] for row in np.asarray(a)]


def compare(
    model_a, model_b=None, settings: CompareSettings = CompareSettings(), *, progress: bool = True
) -> tuple[dict, dict]:
    """Stream the similarity maps of A x B (and A x A, B x B); returns ``(settings, scores)``.

    Parameters
    ----------
    model_a, model_b : checkpoints, run directories, HF folders or GGUF files (same tokenizer);
        ``model_b=None`` compares A with itself
    settings : the sample and run (:class:`~analysis.settings.CompareSettings`); its ``layers``
        (None for all: 0..L and -1) apply to both models (each checked)
    """
    from .hidden import corpus_sample, default_seq_len, load_model, resolve_layers

    s = settings
    a = load_model(model_a, device=s.device, dtype=s.dtype)
    b = load_model(model_b, device=a.device, dtype=a.dtype) if model_b is not None else None
    if b is not None and b.tokenizer.get_vocab() != a.tokenizer.get_vocab():
        raise UserError(
            f"{model_b}: its tokenizer differs from {a.path}'s, so the token sets differ; "
            "compare models of one family (the same tokenizer)"
        )
    layers_a = resolve_layers(s.layers, a.n_layers, where=str(a.path))
    layers_b = resolve_layers(s.layers, b.n_layers, where=str(b.path)) if b is not None else None
    _check_memory(a, b, layers_a, layers_b, s.self_maps)
    sample = corpus_sample(a.tokenizer, s.corpus, s.n_tokens, default_seq_len(a, s.seq_len), s.seed, 0.0)
    streams = SimilarityStreams(layers_a, layers_b, s.self_maps)
    n_batches = -(-len(sample.sequences) // s.batch_size)
    with _progress(progress, f"compare {a.path.name}", n_batches) as advance:
        for rows_a, rows_b in _paired_rows(a, b, layers_a, layers_b, sample, s.batch_size, s.exclude_first):
            streams.update(rows_a, rows_b)
            advance()
    scores = {
        "similarity": {
            "layers_a": layers_a,
            "layers_b": layers_b if b is not None else layers_a,
            "names_a": [a.layer_name(k) for k in layers_a],
            "names_b": [b.layer_name(k) for k in layers_b] if b is not None else None,
            "n_tokens": int(streams.diagonal[0][0].count),
            "model_b": checkpoint_info(b.path) if b is not None else None,
            **streams.maps(),
        },
        "definitions": {
            "cka": "linear CKA, biased HSIC (Kornblith et al. 2019)",
            "cka_debiased": "linear CKA with the unbiased HSIC (Song et al. 2012); ~0 for unrelated representations",
            "procrustes": "squared orthogonal Procrustes distance 2 - 2 ||X^T Y||_* of centred unit-Frobenius X, Y, in [0, 2]",
        },
    }
    recorded = sample_settings(
        s, a, sample, layers_a, exclude_first=s.exclude_first, self_maps=streams.self_maps
    )
    return recorded, scores


def _check_memory(a, b, layers_a, layers_b, self_maps: bool) -> None:
    """``UserError`` when the float64 pair states, ``8 (d_i d_j + 2 (d_i + d_j))`` bytes per
    accumulated pair, need more than :data:`MEMORY_SHARE` of the memory available."""
    sides = [(m.hidden_size, len(layers)) for m, layers in ((a, layers_a), (b, layers_b)) if m is not None]
    pairs = [(d, d, n * (n + 1) // 2) for d, n in sides] if self_maps or b is None else []
    if b is not None:
        pairs.append((a.hidden_size, b.hidden_size, len(layers_a) * len(layers_b)))
    need = sum(8 * n * (x * y + 2 * (x + y)) for x, y, n in pairs)
    free = available_memory("cpu" if not str(a.device).startswith("cuda") else a.device)
    if free is not None and need > MEMORY_SHARE * free:
        raise UserError(
            f"compare: the layer-pair states need {need / 2**30:.1f} GiB, more than half of the "
            f"{free / 2**30:.1f} GiB available; give fewer --layers (e.g. every third layer) or --no-self"
        )


def _paired_rows(a, b, layers_a, layers_b, sample, batch_size: int, exclude_first: bool):
    """Per batch: ``([rows of layer i of A], [rows of layer j of B] or None)``, real tokens only."""
    import torch

    from .hidden import LayerCapture, check_finite, padded

    def real_rows(cap, ids, attn, keep) -> list:
        device = cap.loaded.device
        states = cap.run(ids.to(device), attn.to(device))
        rows = [states[k][keep.to(device)] for k in cap.layers]
        for k, r in zip(cap.layers, rows):
            check_finite(r, str(cap.loaded.path), k)
        return rows

    with contextlib.ExitStack() as stack:
        models = [(a, layers_a)] + ([(b, layers_b)] if b is not None else [])
        caps = [stack.enter_context(LayerCapture(m, layers)) for m, layers in models]
        for lo in range(0, len(sample.sequences), batch_size):
            ids, attn = padded(sample.sequences[lo : lo + batch_size], a.tokenizer.pad_token_id, a.device)
            keep = attn.bool()
            if exclude_first:
                keep[:, 0] = False
            rows = [real_rows(cap, ids, attn, keep) for cap in caps] + [None]  # B's: None for A alone
            if rows[0][0].shape[0]:
                yield rows[0], rows[1]
            del ids, attn, keep
            torch.cuda.empty_cache() if torch.cuda.is_available() else None


def compare_record(
    model_a,
    model_b=None,
    settings: CompareSettings = CompareSettings(),
    *,
    out=None,
    redo: bool = False,
    progress: bool = True,
) -> dict:
    """``compare`` wrapped in the record cache: a ``kind: "geom"`` record with a ``similarity``
    section, cached under A's model key with B's key in the settings (same weights of both and
    same settings are never measured twice). ``record["_path"]`` is where it was written."""
    settings = checked_settings(settings, (model_a, model_b), out)
    info_b = model_identity(resolve_checkpoint(model_b)) if model_b is not None else None
    # the settings part of the default file name names B and its weights
    other = (
        "self" if info_b is None else f"vs-{info_b['name']}-{Path(info_b['path']).name}-{info_b['hash'][:8]}"
    )
    tag = f"compare-{other}-{record_tag(settings)}"
    wanted = geom_cache_key(settings, model_a=model_a, model_b=model_b)

    def compute() -> tuple[dict, dict]:
        recorded, scores = compare(model_a, model_b, settings, progress=progress)
        return {**recorded, "model_b": info_b}, scores

    return cached_record("compare", model_a, out, tag, wanted, compute, redo=redo)


# ----------------------------------------------------------------------------- table and figure
def _sides(sim: dict, name: str) -> tuple[list[int], list[int]]:
    """The layers of a map's rows and of its columns."""
    left = sim["layers_b"] if name == "b_vs_b" else sim["layers_a"]
    return left, sim["layers_a"] if name == "a_vs_a" else sim["layers_b"]


def similarity_rows(record: dict) -> list[dict]:
    """CSV form: one row per (map, layer of A-side, layer of B-side) with the three measures."""
    sim = record["scores"]["similarity"]
    rows = []
    for name in (n for n in MAPS if n in sim):
        left, right = _sides(sim, name)
        for i, li in enumerate(left):
            for j, lj in enumerate(right):
                values = {meas: sim[name][meas][i][j] for meas in MEASURES}
                rows.append({"map": name, "layer_row": li, "layer_col": lj, **values})
    return rows


def matrix_rows(record: dict, name: str, measure: str = "cka_debiased") -> list[dict]:
    """Table form: one row per layer of the row model, one column per layer of the column model."""
    sim = record["scores"]["similarity"]
    left, right = _sides(sim, name)
    m = sim[name][measure]
    return [{"layer": li, **{f"L{lj}": m[i][j] for j, lj in enumerate(right)}} for i, li in enumerate(left)]


def diagonal_rows(record: dict) -> list[dict]:
    """Layer k of A against layer k of B: the three measures (the per-depth summary of a_vs_b)."""
    sim = record["scores"]["similarity"]
    m = sim.get("a_vs_b") or sim["a_vs_a"]
    index_b = {k: j for j, k in enumerate(sim["layers_b"])}
    return [
        {"layer": k, **{meas: m[meas][i][index_b[k]] for meas in MEASURES}}
        for i, k in enumerate(sim["layers_a"])
        if k in index_b
    ]


def map_titles(labels) -> dict[str, str]:
    """Each map's name in titles (rows x columns), from the two models' labels."""
    a, b = labels
    return {"a_vs_b": f"{a} (rows) x {b}", "a_vs_a": f"{a} x itself", "b_vs_b": f"{b} x itself"}


def plot_similarity(record: dict, path, labels: tuple[str, str]) -> list[Path]:
    """Heatmaps of debiased CKA (and Procrustes for A x B) of the record's maps; PNG and PDF.

    ``path`` names the figure; its stem gets both ``.png`` and ``.pdf``. Returns the files.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from nitp.io import atomic_write_bytes

    sim = record["scores"]["similarity"]
    titles = map_titles(labels)
    # (title, matrix, row layers, column layers, colormap, vmax): A x B's Procrustes after its CKA
    panels = [
        (f"debiased CKA: {titles[n]}", sim[n]["cka_debiased"], *_sides(sim, n), "viridis", 1.0)
        for n in MAPS
        if n in sim
    ]
    if "a_vs_b" in sim:
        procrustes = f"Procrustes d^2: {labels[0]} x {labels[1]}"
        panels.insert(1, (procrustes, sim["a_vs_b"]["procrustes"], *_sides(sim, "a_vs_b"), "magma_r", 2.0))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 4.2), squeeze=False)
    for ax, (title, matrix, rows, cols, cmap, vmax) in zip(axes[0], panels, strict=True):
        img = ax.imshow(np.array(matrix, dtype=float), origin="lower", cmap=cmap, vmin=0.0, vmax=vmax)
        ax.set_title(title, fontsize=9)
        for axis, layers in ((ax.xaxis, cols), (ax.yaxis, rows)):
            step = max(1, len(layers) // 8)
            axis.set_ticks(range(0, len(layers), step), [str(k) for k in layers[::step]], fontsize=7)
            axis.set_label_text("layer", fontsize=8)
        fig.colorbar(img, ax=ax, fraction=0.046, pad=0.04)
    fig.suptitle(f"layer similarity on {sim['n_tokens']:,} tokens", fontsize=10)
    fig.tight_layout()
    stem = Path(path).with_suffix("")
    written = []
    for ext in ("png", "pdf"):
        buf = io.BytesIO()
        fig.savefig(buf, dpi=130, format=ext)
        written.append(atomic_write_bytes(stem.with_name(f"{stem.name}.{ext}"), buf.getvalue()))
    plt.close(fig)
    return written
