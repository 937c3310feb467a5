"""Depth profiles beyond the anchors: intrinsic dimension, spectrum shape, information flow, logit lens.

Per measured layer k, beside the statistics of :mod:`analysis.layers` (docs/geometry.md):

* ``intrinsic_dimension_twonn`` / ``intrinsic_dimension_gride`` — ``nitp.intrinsic`` on a seeded
  sample of at most ``id_tokens`` reported token states (the same token positions at every layer;
  exact duplicates dropped first; ``id_n_used`` says how many rows the estimators saw). O(n^2 d).
* ``alpha_req`` — power-law exponent of the covariance eigenspectrum, fitted over ranks
  ``nitp.geometry.ALPHA_REQ_FIT_RANGE`` (6..100, cut at the last positive eigenvalue;
  ``alpha_req_fit_range`` stores the ranks used), from the streamed covariance. Free.
* ``prompt_entropy`` — mean over the first ``entropy_sequences`` sequences of the normalised
  matrix entropy of each sequence's token Gram matrix (Skean et al. 2025). O(T^2 d) a sequence.
* ``dataset_entropy`` — the same entropy on one mean-pooled vector per sequence (every sequence
  of the sample; the representation MTEB scores). One [n_seq, d] matrix a layer.
* ``curvature`` — mean over every sequence of the mean angle (radians) between successive
  token-difference vectors. O(T d) a sequence, streamed.
* ``logit_lens_ce`` — next-token cross-entropy (nats) of the layer read through the final norm
  and the LM head (``nitp.geometry.logit_lens_ce``: chunked over the vocabulary), streamed over
  every real token; None for models without an LM head (encoders).

``exclude_first`` leaves position 0 out of the intrinsic-dimension sample, the entropies and the
curvature (the logit lens keeps every position: each predicts the next token).

Example
-------
>>> from analysis.measure import geom_record
>>> from analysis.settings import GeomSettings
>>> rec = geom_record("runs/tiny-nitp", GeomSettings(n_tokens=4096))        # doctest: +SKIP
>>> [r["logit_lens_ce"] for r in rec["scores"]["layers"]]                   # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field

import numpy as np

from nitp.errors import UserError
from nitp.geometry import ALPHA_REQ_FIT_RANGE, alpha_req, curvature, dataset_entropy, prompt_entropy
from nitp.streaming import MeanValue

from .layers import _num
from .settings import GeomSettings

DEPTH_VERSION = 1  # part of the record settings: records made before these measures are redone


@dataclass
class DepthAccumulators:
    """What one layer streams for the depth measures."""

    id_rows: list = field(default_factory=list)  # float64 [n_i, d] pieces of the ID sample
    prompt: MeanValue = field(default_factory=MeanValue)
    curv: MeanValue = field(default_factory=MeanValue)
    pooled: list = field(default_factory=list)  # one float64 [d] vector per sequence
    lens_nll: float = 0.0
    lens_tokens: int = 0


class DepthMeasures:
    """Streams the depth measures (module docstring) over the batches of ``analysis.hidden``.

    Parameters
    ----------
    layers : layers measured (same numbering as ``LayerStatistics``)
    n_reported : reported tokens in the whole sample (the ID sample is drawn from them)
    id_tokens : token states per layer for the intrinsic dimension (0 = skip it)
    entropy_sequences : sequences used for the prompt entropy (0 = skip it)
    exclude_first : leave position 0 out (see the module docstring)
    final_norm, lm_head : the model's final norm module and LM head (None: no logit lens)
    seed : seed of the ID token sample
    """

    def __init__(
        self,
        layers: list[int],
        n_reported: int,
        id_tokens: int = GeomSettings.id_tokens,
        entropy_sequences: int = GeomSettings.entropy_sequences,
        exclude_first: bool = False,
        final_norm=None,
        lm_head=None,
        seed: int = 0,
    ):
        self.layers = list(layers)
        self.exclude_first = exclude_first
        self.final_norm, self.lm_head = final_norm, lm_head
        self.id_tokens, self.entropy_sequences, self.seed = id_tokens, entropy_sequences, seed
        n_id = min(id_tokens, n_reported)
        self.id_index = np.sort(np.random.default_rng(seed).choice(n_reported, n_id, replace=False))
        self.acc = {k: DepthAccumulators() for k in self.layers}
        self.n_stream = 0
        self.n_sequences = 0

    def update(self, states: dict, mask, input_ids) -> None:
        """Add one batch: ``states[k]`` [B, T, d], ``mask`` [B, T] bool, ``input_ids`` [B, T]."""
        import torch

        mask = mask.to(torch.bool)
        keep = mask.clone()
        if self.exclude_first:
            keep[:, 0] = False
        lo = self.n_stream
        self.n_stream += int(keep.sum())
        pick = self.id_index[(self.id_index >= lo) & (self.id_index < self.n_stream)] - lo
        labels = input_ids.masked_fill(~mask, -100)
        lengths = mask.sum(1).tolist()
        for k, a in self.acc.items():
            h = states[k]
            if pick.size:
                rows = h[keep][torch.from_numpy(pick).to(h.device)]
                a.id_rows.append(rows.to(torch.float64).cpu().numpy())
            self._sequences(a, h, lengths)
            if self.lm_head is not None:
                self._lens(a, h, k, labels)
        self.n_sequences += len(lengths)

    def _sequences(self, a: DepthAccumulators, h, lengths: list[int]) -> None:
        """Per-sequence measures: pooled vector, curvature, prompt entropy (first sequences)."""
        import torch

        first = 1 if self.exclude_first else 0
        for b, n in enumerate(lengths):
            x = h[b, first:n].to(torch.float64)
            if x.shape[0] == 0:
                continue
            a.pooled.append(x.mean(0).cpu().numpy())
            if x.shape[0] >= 3:
                _add_defined(a.curv, curvature, x)
            if self.n_sequences + b < self.entropy_sequences and x.shape[0] >= 2:
                _add_defined(a.prompt, prompt_entropy, x)

    def _lens(self, a: DepthAccumulators, h, k: int, labels) -> None:
        from nitp.geometry import logit_lens_ce

        norm = None if k == -1 else self.final_norm
        bias = getattr(self.lm_head, "bias", None)
        out = logit_lens_ce(h, norm, self.lm_head.weight, labels, lm_head_bias=bias)
        a.lens_nll += out["nll_sum"]
        a.lens_tokens += out["n_tokens"]

    def layer_result(self, k: int, eigenvalues=None) -> dict:
        """The depth columns of layer k (``eigenvalues``: its covariance spectrum, for alpha-ReQ)."""
        a = self.acc[k]
        pooled = _or_nan(dataset_entropy, np.stack(a.pooled)) if len(a.pooled) >= 2 else None
        return {
            **self._intrinsic(a),
            **_alpha(eigenvalues),
            "prompt_entropy": _num(a.prompt.mean()),
            "prompt_entropy_sequences": a.prompt.count,
            "dataset_entropy": _num(pooled),
            "dataset_entropy_sequences": len(a.pooled),
            "curvature": _num(a.curv.mean()),
            "logit_lens_ce": a.lens_nll / a.lens_tokens if a.lens_tokens else None,
            "logit_lens_tokens": a.lens_tokens,
        }

    def _intrinsic(self, a: DepthAccumulators) -> dict:
        from nitp.intrinsic import intrinsic_dimension

        empty = {"intrinsic_dimension_twonn": None, "intrinsic_dimension_gride": None, "id_n_used": 0}
        if not a.id_rows:
            return empty
        rows = np.concatenate(a.id_rows)
        try:
            got = intrinsic_dimension(rows, max_points=max(3, self.id_tokens), seed=self.seed)
        except UserError:  # too few distinct rows (e.g. a tiny sample): no estimate
            return {**empty, "id_n_used": int(rows.shape[0])}
        return {
            "intrinsic_dimension_twonn": _num(got["twonn"]),
            "intrinsic_dimension_gride": _num(got["gride"]),
            "id_n_used": got["n_used"],
            "id_n_duplicates": got["n_duplicates"],
        }

    def settings(self) -> dict:
        """What a record stores of these measures' sampling."""
        return {
            "version": DEPTH_VERSION,
            "id_tokens": self.id_tokens,
            "id_tokens_drawn": int(self.id_index.size),
            "entropy_sequences": self.entropy_sequences,
            "alpha_req_fit_range": list(ALPHA_REQ_FIT_RANGE),
            "logit_lens": self.lm_head is not None,
        }


def _alpha(eigenvalues) -> dict:
    with contextlib.suppress(UserError):  # too few positive eigenvalues in the fit range
        if eigenvalues is not None:
            fit = alpha_req(eigenvalues)
            return {"alpha_req": _num(fit["alpha"]), "alpha_req_fit_range": list(fit["fit_range"])}
    return {"alpha_req": None, "alpha_req_fit_range": None}


def _or_nan(fn, x) -> float:
    try:
        return float(fn(x))
    except UserError:  # a degenerate input (all rows zero or identical): undefined, not 0
        return math.nan


def _add_defined(values: MeanValue, fn, x) -> None:
    """Add ``fn(x)`` to a running mean unless it is undefined (NaN): a mean of the defined values."""
    if not math.isnan(v := _or_nan(fn, x)):
        values.update([v])
