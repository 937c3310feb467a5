"""Per-layer geometry and NITP target statistics, accumulated in float64 (measured by analysis.measure).

For every measured layer k (0 = embeddings, k = block k, -1 = last hidden state):

* geometry — both effective ranks, participation ratio, stable rank, top-eigenvalue share,
  exact anisotropy (all pairs; across / within documents; across / within sequences), mean /
  max norm, share of massive activations; each with and without the first position of every
  sequence. The paper's anisotropy ("pairs across different sentences") is
  ``anisotropy_across_documents``: a *sequence* is one model input, a chunk of at most
  ``seq_len`` tokens cut from a document, so two chunks of one long document are "across
  sequences" but not "across documents";
* NITP target statistics (k >= 0; the source is the last hidden state h_last):
  - ``cos_last_to_next``: raw mean cos(h_last[t], h_k[t+1]) — the NITP loss 1 - cos before
    any projector is trained;
  - ``ridge_r2`` / ``ridge_cos``: linear predictability of h_k[t+1] from h_last[t]: a ridge map
    fitted on the streamed cross-covariances of the fit sequences, scored on held-out documents
    (variance-weighted R^2 and mean cosine of the prediction) — a cheap proxy of the loss NITP
    could reach with that target (the real projector is a SwiGLU MLP);
  - ``temporal_self_similarity``: mean cos(h_k[t], h_k[t+1]) — how trivial predicting the next
    position is (high = the target barely changes from token to token);
  - ``cka_vs_reference``: linear CKA of layer k between this checkpoint and a reference one on
    the same tokens (stability over training).

Pairs (t, t+1) are taken inside a sequence, both real tokens; with ``exclude_first`` the pair
starting at position 0 is left out too. Memory is independent of the number of tokens: the
largest state is one [d, d] float64 matrix per statistic and layer. A record of them:
``analysis.measure.geom_record`` (its module docstring has the example).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from nitp import metrics_registry as registry
from nitp.geometry import spectrum_metrics
from nitp.layers import TARGET_DEPTH, default_target_layer
from nitp.streaming import (
    CrossMoments,
    MeanTrace,
    MeanValue,
    Moments,
    NormStats,
    RidgeSolver,
    UnitSums,
    linear_cka,
)

TRIVIAL_TEMPORAL = 0.9  # normalised temporal excess above which a target is near-trivial
MIN_ERANK = 2.0  # below this a target layer has collapsed

# terms every geom record defines besides its metrics (nitp.metrics_registry defines those)
TERMS = {
    "last_hidden_state": "decoders: final-norm output (fed to the LM head); encoders: output of the last block",
}
SUMMARY_GROUPS = ("spectrum", "anisotropy", "norms")  # registry groups a record's summary repeats


def summary_metrics(row: dict) -> dict:
    """The metrics of a layer's row that a record's ``summary`` repeats (the last hidden state's):
    those of the registry groups :data:`SUMMARY_GROUPS`, in the row's order."""
    return {k: v for k, v in row.items() if (m := registry.find(k)) is not None and m.group in SUMMARY_GROUPS}


def record_definitions() -> dict[str, str]:
    """A geom record's ``scores.definitions``: every registered metric's, then :data:`TERMS`."""
    return {**registry.definitions(), **TERMS}


# which stored number is the paper's measure (saved in every record's scores)
PAIRS_ACROSS = "documents"  # what the sampled estimator's pairs are drawn across (a record setting)
PAPER_MEASURES = {"anisotropy": "anisotropy_across_documents", "effective_rank": "effective_rank_covariance"}


class GeometryWarning(UserWarning):
    """A result that is valid but limited (e.g. fewer tokens than dimensions)."""


# ----------------------------------------------------------------------------- accumulators
class SpanningGroupSums:
    """``sum_g ||s_g||^2`` and ``sum_g n_g^2`` of unit vectors grouped by an id whose rows may span
    several batches (a document cut into sequences that land in consecutive batches).

    ``UnitSums`` needs every group complete within one update; here each group's partial sum
    stays open until a batch arrives whose last group differs, then it is folded into the two
    scalars. Rows of a group must be contiguous in the stream (the corpus sample keeps each
    document's chunks together), so at most one group is open between batches: memory O(d).
    Combined with the all-pairs sum ``s`` and count N of ``UnitSums``::

        across = (||s||^2 - sum_g ||s_g||^2) / (N^2 - sum_g n_g^2)
        within = (sum_g ||s_g||^2 - N) / (sum_g n_g^2 - N)
    """

    def __init__(self):
        self.open: dict[int, list] = {}  # id -> [sum float64 [d], count]
        self.closed: set[int] = set()
        self.group_sq = 0.0
        self.group_n_sq = 0

    def add_units(self, u, groups) -> None:
        """Add unit rows ``u`` [n, d] with their group ids [n] (int64 tensor, same device)."""
        import torch

        if u.shape[0] == 0:
            return
        ids, inverse = torch.unique(groups, return_inverse=True)
        sums = torch.zeros(len(ids), u.shape[1], dtype=u.dtype, device=u.device).index_add_(0, inverse, u)
        sizes = torch.bincount(inverse, minlength=len(ids)).tolist()
        for gid, vec, n in zip(ids.tolist(), sums, sizes):
            if gid in self.closed:
                raise ValueError(f"group {gid} continues after it was closed: its rows must be contiguous")
            part = self.open.setdefault(gid, [torch.zeros_like(vec), 0])
            part[0] += vec
            part[1] += n
        still_open = int(groups[-1])
        for gid in [g for g in self.open if g != still_open]:
            self._fold(gid)

    def _fold(self, gid: int) -> None:
        vec, n = self.open.pop(gid)
        self.group_sq += float(vec @ vec)
        self.group_n_sq += n * n
        self.closed.add(gid)

    def finish(self) -> SpanningGroupSums:
        """Close every open group (call before reading; adding after it raises for those groups)."""
        for gid in list(self.open):
            self._fold(gid)
        return self

    def across(self, units: UnitSums) -> float:
        """Exact mean cosine over pairs from different groups (nan without such pairs)."""
        self.finish()
        pairs = units.count**2 - self.group_n_sq
        if units.total is None or pairs <= 0:
            return math.nan
        return (float(units.total @ units.total) - self.group_sq) / pairs

    def within(self, units: UnitSums) -> float:
        """Exact mean cosine over pairs i != j of the same group (nan without such pairs)."""
        self.finish()
        pairs = self.group_n_sq - units.count
        if pairs <= 0:
            return math.nan
        return (self.group_sq - units.count) / pairs


@dataclass
class LayerAccumulators:
    """Everything streamed for one layer."""

    moments_first: Moments = field(default_factory=Moments)  # first position of each sequence
    moments_rest: Moments = field(default_factory=Moments)  # all other positions
    units_all: UnitSums = field(default_factory=UnitSums)
    units_rest: UnitSums = field(default_factory=UnitSums)
    docs_all: SpanningGroupSums = field(default_factory=SpanningGroupSums)  # the same rows, by document
    docs_rest: SpanningGroupSums = field(default_factory=SpanningGroupSums)
    norms_first: NormStats = field(default_factory=NormStats)
    norms_rest: NormStats = field(default_factory=NormStats)
    temporal: MeanValue = field(default_factory=MeanValue)
    raw_cos: MeanValue = field(default_factory=MeanValue)
    fit_cross: CrossMoments = field(default_factory=CrossMoments)  # (h_last[t], h_k[t+1]) on fit pairs
    score_target: MeanTrace = field(default_factory=MeanTrace)  # h_k[t+1] on held-out pairs
    score_sse: float = 0.0
    score_cos: MeanValue = field(default_factory=MeanValue)
    ridge: dict | None = None  # RidgeSolver.solve output
    ref_moments: Moments = field(default_factory=Moments)
    ref_cross: CrossMoments = field(default_factory=CrossMoments)

    def moments(self, exclude_first: bool) -> Moments:
        return self.moments_rest if exclude_first else self.moments_rest.copy().merge(self.moments_first)

    def norms(self, exclude_first: bool) -> NormStats:
        return (
            self.norms_rest if exclude_first else NormStats().merge(self.norms_rest).merge(self.norms_first)
        )


class _Rows:
    """One layer of one batch as float64 rows of the real tokens (row-major: sequence, position):
    ``x`` [n, d], their ``norms`` [n], ``units`` [n, d] (zero rows stay zero) and ``finite`` (no
    NaN / inf anywhere: a non-finite coordinate makes its row's norm non-finite)."""

    def __init__(self, h, mask):
        import torch

        self.x = h[mask].to(torch.float64)
        self.norms = torch.linalg.vector_norm(self.x, dim=1)
        self.finite = bool(torch.isfinite(self.norms.sum()))
        self.units = self.x / self.norms.clamp_min(1e-300)[:, None]


class LayerStatistics:
    """Streams every per-layer statistic over batches of hidden states (see module docstring).

    Parameters
    ----------
    layers : layers to measure (-1 is always measured: it is the NITP source and the summary).
    exclude_first : leave the first position of each sequence out of the reported metrics
        (both variants of the geometry metrics are kept anyway).
    ridge : fixed ridge strength (relative to ``trace(S_aa) / d``) or None to choose it by GCV
        (see ``streaming.RidgeSolver``).
    pair_sample : ``(i, j)`` index arrays of the paper's sampled estimator on the last hidden
        state (indices into the stream of reported tokens), or None.
    documents : source document of every sequence of the sample (indexed by ``seq_ids``), or
        None to treat each sequence as its own document.
    """

    def __init__(
        self,
        layers: list[int],
        exclude_first: bool = False,
        ridge: float | None = None,
        pair_sample=None,
        where: str = "model",
        documents=None,
    ):
        self.layers = sorted(set(layers) | {-1}, key=lambda k: (k == -1, k))
        self.documents = None if documents is None else np.asarray(documents, dtype=np.int64)
        self.exclude_first = exclude_first
        self.ridge_strength = ridge
        self.where = where
        self.acc = {k: LayerAccumulators() for k in self.layers}
        self.fit_source = Moments()  # h_last[t] over fit pairs (shared by every layer)
        self.ridge_solved = False
        self.n_stream = 0  # reported last-layer tokens streamed so far
        self.pairs = pair_sample
        self.pair_rows: dict[int, Any] = {}
        if pair_sample is not None:
            self._needed = np.unique(np.concatenate(pair_sample))

    # -- batches ------------------------------------------------------------------------------
    def update(self, states: dict, mask, seq_ids, heldout: bool, ref_states: dict | None = None) -> None:
        """Add one batch: ``states[k]`` [B, T, d], ``mask`` [B, T] bool, ``seq_ids`` [B]."""
        import torch

        from .hidden import check_finite

        mask = mask.to(torch.bool)
        pos = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
        is_first = (pos == 0)[mask]  # per real token
        rest = ~is_first
        groups = seq_ids.to(mask.device)[:, None].expand_as(mask)[mask]
        doc_of_seq = (
            seq_ids if self.documents is None else torch.from_numpy(self.documents[seq_ids.cpu().numpy()])
        )
        docs = doc_of_seq.to(mask.device)[:, None].expand_as(mask)[mask]
        # pair (t, t+1): both real (then they are rows r and r+1), t reported
        nxt_real = torch.zeros_like(mask)
        nxt_real[:, :-1] = mask[:, 1:]
        chosen = rest if self.exclude_first else torch.ones_like(rest)
        src_idx = torch.nonzero(nxt_real[mask] & chosen).squeeze(1)
        if heldout and not self.ridge_solved:
            self._solve_ridge()
        last = _Rows(states[-1], mask)
        src = last.x[src_idx]
        if not heldout and last.finite:
            self.fit_source.update(src)
        for k in self.layers:  # ascending, -1 last: an error names the first broken layer
            r = last if k == -1 else _Rows(states[k], mask)
            if not r.finite:
                check_finite(r.x, self.where, k)  # raises, naming the first broken layer
            a = self.acc[k]
            a.moments_first.update(r.x[is_first])
            a.moments_rest.update(r.x[rest])
            a.norms_first.add(r.x[is_first], r.norms[is_first])
            a.norms_rest.add(r.x[rest], r.norms[rest])
            nonzero = r.norms > 0
            every = slice(None) if bool(nonzero.all()) else nonzero  # the usual case: no gather needed
            for sel, units, by_doc in (
                (every, a.units_all, a.docs_all),
                (rest & nonzero, a.units_rest, a.docs_rest),
            ):
                units.add_units(r.units[sel], groups[sel])
                by_doc.add_units(r.units[sel], docs[sel])
            # cosines of consecutive rows, then keep the rows that are a pair (t, t+1) of one sequence
            a.temporal.update((r.units[:-1] * r.units[1:]).sum(1)[src_idx])
            if k != -1:
                a.raw_cos.update((last.units[:-1] * r.units[1:]).sum(1)[src_idx])
                nxt = r.x[src_idx + 1]
                if heldout:
                    self._score(a, src, nxt)
                else:
                    a.fit_cross.update(src, nxt)
            if ref_states is not None and k in ref_states:
                ref_x = ref_states[k][mask].to(torch.float64)[chosen]
                a.ref_moments.update(ref_x)
                a.ref_cross.update(r.x[chosen], ref_x)
        if self.pairs is not None:
            self._keep_pair_rows(last.x[chosen])

    def _keep_pair_rows(self, rows) -> None:
        import torch

        lo, hi = self.n_stream, self.n_stream + rows.shape[0]
        idx = self._needed[(self._needed >= lo) & (self._needed < hi)]
        if idx.size:
            picked = rows[torch.from_numpy(idx - lo).to(rows.device)].cpu()
            self.pair_rows.update(zip(idx.tolist(), picked))
        self.n_stream = hi

    def _solve_ridge(self) -> None:
        """Fit every layer's ridge map, from the streamed fit-pair moments (one eigh shared)."""
        self.ridge_solved = True
        if self.fit_source.count < 3:
            return
        solver = RidgeSolver(self.fit_source)
        for k in self.layers:
            a = self.acc[k]
            if k != -1 and a.fit_cross.count:
                a.ridge = solver.solve(a.fit_cross, a.fit_cross.trace_b, self.ridge_strength)

    def _score(self, a: LayerAccumulators, src, target) -> None:
        import torch

        if a.ridge is None or src.shape[0] == 0:
            return
        pred = torch.addmm(a.ridge["mean_b"], src - a.ridge["mean_a"], a.ridge["W"])
        a.score_sse += float(torch.linalg.vector_norm(target - pred) ** 2)
        a.score_target.update(target)
        norms = torch.linalg.vector_norm(pred, dim=1) * torch.linalg.vector_norm(target, dim=1)
        a.score_cos.update((pred * target).sum(1) / norms.clamp_min(1e-300))

    # -- results ------------------------------------------------------------------------------
    def layer_result(self, k: int, spectrum: bool = False) -> dict:
        a = self.acc[k]
        blocks = {
            label: _core_metrics(a, excl, spectrum and excl == self.exclude_first)
            for label, excl in (("with_first_position", False), ("without_first_position", True))
        }
        out = {
            "layer": k,
            **blocks["without_first_position" if self.exclude_first else "with_first_position"],
        }
        out["first_position_mean_norm"] = (
            a.norms_first.metrics()["mean_norm"] if a.norms_first.count else None
        )
        out["temporal_self_similarity"] = _num(a.temporal.mean())
        if k != -1:
            out["cos_last_to_next"] = _num(a.raw_cos.mean())
            r2 = None
            if a.ridge is not None and a.score_target.count >= 2 and a.score_target.trace > 0:
                r2 = 1.0 - a.score_sse / a.score_target.trace
            out["ridge_r2"] = _num(r2)
            out["ridge_cos"] = _num(a.score_cos.mean()) if a.ridge is not None else None
            out["ridge_strength"] = a.ridge["ridge"] if a.ridge is not None else None
            out["ridge_fit_pairs"] = a.fit_cross.count
            out["ridge_heldout_pairs"] = a.score_target.count
        if a.ref_cross.count:
            out["cka_vs_reference"] = _num(
                linear_cka(a.moments(self.exclude_first), a.ref_moments, a.ref_cross)
            )
        out.update(blocks)
        return out

    def anisotropy_sampled(self) -> float | None:
        import torch

        if self.pairs is None or not self.pair_rows:
            return None
        a, b = (torch.stack([self.pair_rows[int(v)] for v in side]) for side in self.pairs)
        return float(torch.nn.functional.cosine_similarity(a, b, dim=1, eps=1e-300).mean())


def _num(v) -> float | None:
    """JSON-safe number: NaN (undefined, e.g. no pairs) becomes None, never a silent average."""
    if v is None:
        return None
    v = float(v)
    return None if math.isnan(v) else v


def _core_metrics(a: LayerAccumulators, exclude_first: bool, spectrum: bool) -> dict:
    """The geometry of one layer's token states, with or without each sequence's first position."""
    moments, norms = a.moments(exclude_first), a.norms(exclude_first)
    units, docs = (a.units_rest, a.docs_rest) if exclude_first else (a.units_all, a.docs_all)
    if moments.count >= 2:
        spec = spectrum_metrics(moments.eigenvalues(), include_spectrum=spectrum)
    else:
        spec = dict.fromkeys(registry.names(group="spectrum"))
    return {
        "n_tokens": moments.count,
        **spec,
        "anisotropy": _num(units.anisotropy()),
        "anisotropy_across_documents": _num(docs.across(units)),
        "anisotropy_within_documents": _num(docs.within(units)),
        "anisotropy_within_sequences": _num(units.anisotropy_within()),
        "anisotropy_across_sequences": _num(units.anisotropy_across()),
        **{k: _num(v) for k, v in norms.metrics().items()},
        **massive_dims_metrics(moments),
    }


MASSIVE_DIM_SHARE = 0.05  # a dimension holding this share of the variance or more dominates the spectrum
MAX_MASSIVE_DIMS = 8
MASSIVE_DIMS_NUMBERS = ("massive_dims_variance_share", "effective_rank_covariance_without_massive_dims")


def massive_dims_metrics(moments: Moments) -> dict:
    """Dimensions that dominate the covariance, their variance share, and the rank without them.

    With ``C`` the centred covariance [d, d] and ``v_j = C_jj`` the per-dimension variances,
    a dimension j is *massive* when ``v_j / trace(C) >= 0.05`` (at most 8, largest first).
    ``effective_rank_covariance_without_massive_dims`` is the covariance effective rank of
    ``C`` with those rows and columns deleted. A few such dimensions (Sun et al. 2024's massive
    activations) can make the covariance rank ~1 although the other d - m dimensions are spread.

    Example: SmolLM2-135M's deep blocks, where the plain covariance rank is ~1.1.
    """
    import torch

    cov = moments.m2 / moments.count if moments.count >= 2 else None
    total = float(cov.diagonal().sum()) if cov is not None else 0.0
    if total <= 0:
        return {"massive_dims": [], **dict.fromkeys(MASSIVE_DIMS_NUMBERS)}
    var = cov.diagonal()
    share = var / total
    order = torch.argsort(share, descending=True)[:MAX_MASSIVE_DIMS]
    dims = [int(j) for j in order if float(share[j]) >= MASSIVE_DIM_SHARE]
    keep = torch.ones(var.shape[0], dtype=torch.bool, device=var.device)
    keep[dims] = False
    rest = cov[keep][:, keep]
    eig = np.sort(np.linalg.eigvalsh(rest.cpu().numpy()))[::-1]
    return {
        "massive_dims": dims,
        "massive_dims_variance_share": float(share[dims].sum()) if dims else 0.0,
        "effective_rank_covariance_without_massive_dims": _num(
            spectrum_metrics(eig)["effective_rank_covariance"]
        ),
    }


# ----------------------------------------------------------------------------- paper depth rule
def paper_depth_rule(rows: list[dict], n_layers: int, trained_target: int | None = None) -> dict:
    """The paper's depth rule for the NITP target layer, with what this checkpoint's statistics say of it.

    The rule is ``nitp.layers.default_target_layer(L) = max(1, round(0.21 L))``: the paper's best
    targets sit at ~21 % of the depth (4/17, 5/24, 6/28, 3/16; embeddings, middle and deep layers
    were worse). It is a prior from the paper's ablations, **not** chosen from the statistics
    measured here (nothing has validated those statistics against downstream gains), so it is
    the same for NTP and NITP checkpoints of one depth. The measured layer's statistics are
    attached as notes: collapsed (``effective_rank_covariance < 2``) or near-trivial to predict
    (normalised temporal excess ``(tss - a) / (1 - a) >= 0.9``, tss = temporal self-similarity,
    a = anisotropy across documents: adjacent tokens nearly identical beyond the common direction,
    the failure of the paper's same-position ablation).

    Returns
    -------
    dict with ``layer`` (the rule's layer), ``rule`` (the formula), ``trained_target`` (the
    layer a NITP run was trained with, else None), ``notes`` (list of str) and ``reason`` (one
    line saying all of it).

    Example
    -------
    >>> paper_depth_rule([], 24)["layer"]
    5
    """
    layer = default_target_layer(n_layers)
    rule = f"round({TARGET_DEPTH} x {n_layers}) = {layer}, the paper's depth rule (best targets 4/17, 5/24, 6/28, 3/16)"
    row = next((r for r in rows if r["layer"] == layer), None)
    notes = [] if row is None else _layer_warnings(row)
    if row is None:
        notes.append(f"layer {layer} was not measured (add it to --layers for its statistics)")
    elif not notes:
        notes.append(
            f"layer {layer} is neither collapsed nor near-trivial here (effective rank {row['effective_rank_covariance']:.1f}"
            + (f", held-out ridge R^2 {row['ridge_r2']:.3f}" if row.get("ridge_r2") is not None else "")
            + ")"
        )
    trained = [] if trained_target is None else [f"this run was trained with target layer {trained_target}"]
    reason = "; ".join([rule + ", not chosen from these statistics"] + trained + notes)
    return {"layer": layer, "rule": rule, "trained_target": trained_target, "notes": notes, "reason": reason}


def _layer_warnings(r: dict) -> list[str]:
    """Why a layer would make a poor NITP target on this checkpoint: collapsed or near-trivial."""
    out = []
    er = r.get("effective_rank_covariance")
    if er is None or er < MIN_ERANK:
        out.append(
            f"layer {r['layer']} looks collapsed (effective rank {er if er is None else round(er, 2)} < {MIN_ERANK})"
        )
    tss = r.get("temporal_self_similarity")
    an = r.get("anisotropy_across_documents", r.get("anisotropy_across_sequences"))
    if tss is not None and an is not None and an < 1:
        excess = (tss - an) / (1 - an)
        if excess >= TRIVIAL_TEMPORAL:
            out.append(
                f"layer {r['layer']} looks near-trivial (normalised temporal excess {excess:.2f} >= {TRIVIAL_TEMPORAL})"
            )
    return out


# ----------------------------------------------------------------------------- driver
