"""The one metric registry: each geometry metric's name, definition, headers, direction and views.

A :class:`Metric` row holds all that the tools need to know about one metric (its fields: see
the class). Tables (``nitp-geom``, ``nitp-report``), the report's depth section, in-training
logging and the trackers read these rows; none of them restates a metric's name, header or
decimals.

A **spectral** metric is a function of the covariance eigenvalues ``lambda`` (float64, clipped
at 0, descending). Adding one takes its function and one row here: ``nitp.geometry.
spectrum_metrics`` computes every spectral row from one eigendecomposition per layer, so the
metric lands in every geom record (per layer and the summary), in the tables of its views, and,
with ``logged_as``, in ``metrics.jsonl``, the progress line and the trackers.

Views (where a metric shows, in registry order unless :data:`VIEW_ORDER` fixes the first columns):

=================  ==============================================================
view               table
=================  ==============================================================
geom_rank          ``nitp-geom rank``
geom_anisotropy    ``nitp-geom anisotropy``
geom_layers        ``nitp-geom layers`` of one checkpoint
geom_side_by_side  ``nitp-geom layers`` of several checkpoints
geom_trajectory    ``nitp-geom trajectory``
report_summary     ``nitp-report``: geometry of the last hidden state (``summary_header``)
report_layers      ``nitp-report``: per-layer statistics (``header``)
report_depth       ``nitp-report``: the "where they differ" depth profiles (``label``)
=================  ==============================================================

Example
-------
>>> [m.name for m in metrics(group="spectrum")][:2]
['effective_rank_covariance', 'effective_rank_singular']
>>> trace = Metric("covariance_trace", "sum lambda", "trace", "spectrum", of_spectrum=np.sum)
>>> with registered(trace):
...     "covariance_trace" in [m.name for m in metrics(group="spectrum")]
True
>>> find("covariance_trace") is None
True
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

GROUPS = ("spectrum", "massive dims", "anisotropy", "norms", "NITP target", "depth")
VIEWS = (
    "geom_rank",
    "geom_anisotropy",
    "geom_layers",
    "geom_side_by_side",
    "geom_trajectory",
    "report_summary",
    "report_layers",
    "report_depth",
)


# ----------------------------------------------------------------------------- spectral functions
def entropy_rank(weights: np.ndarray) -> float:
    """``exp(-sum_i p_i log p_i)`` with ``p = weights / sum(weights)`` (0 log 0 = 0; 0 for no weight).

    >>> round(entropy_rank(np.ones(8)), 12)
    8.0
    """
    total = float(weights.sum())
    if total <= 0:
        return 0.0
    p = weights[weights > 0] / total
    return float(math.exp(-float(np.sum(p * np.log(p)))))


def erank_singular(lam: np.ndarray) -> float:
    """Roy & Vetterli's effective rank: ``entropy_rank(sigma)``, ``sigma ~ sqrt(lambda)``."""
    return entropy_rank(np.sqrt(lam))


def participation_ratio(lam: np.ndarray) -> float:
    """``(sum lambda)^2 / sum lambda^2`` (0 without variance)."""
    total = float(lam.sum())
    return total**2 / float(np.sum(lam**2)) if total > 0 else 0.0


def stable_rank(lam: np.ndarray) -> float:
    """``sum lambda / lambda_max`` (0 without variance)."""
    total = float(lam.sum())
    return total / float(lam.max()) if total > 0 else 0.0


def top_eigenvalue_share(lam: np.ndarray) -> float:
    """``lambda_max / sum lambda`` (0 without variance)."""
    total = float(lam.sum())
    return float(lam.max()) / total if total > 0 else 0.0


def _across_sequences(x, groups) -> float:
    """Exact mean cosine over pairs from different groups of rows ``x`` (nan without such pairs)."""
    from .streaming import UnitSums

    return UnitSums().update(x, groups).anisotropy_across()


# ----------------------------------------------------------------------------- rows
@dataclass(frozen=True)
class Metric:
    """One metric (see the module docstring).

    name : the record field (per-layer rows of geom records and their ``summary``).
    definition : one line, stored in every geom record's ``scores.definitions``.
    short : the ``nitp-geom`` column header.
    group : one of :data:`GROUPS`.
    views : the tables that show it (:data:`VIEWS`).
    header : the ``nitp-report`` per-layer column (default: the name with spaces).
    summary_header : the ``nitp-report`` summary column (default: ``header``).
    label : the long name: the report depth section's title and axis (default: ``header``).
    higher_is_better : True / False where higher / lower is the healthier value; None: neither.
        The report's summary table marks the better value of a pair by it.
    decimals : digits after the point where a table uses the metric's own precision.
    of_spectrum : spectral metrics: ``f(lambda) -> float`` of the covariance eigenvalues.
    of_rows : others logged in training: ``f(x [N, d], sequence ids [N]) -> float`` (nan: undefined).
    logged_as : the ``metrics.jsonl`` key when the trainer logs it on its geometry sample.
    eval_as : the tracker name ``eval/geom/<eval_as>`` of the ``eval.geom`` evaluator.
    """

    name: str
    definition: str
    short: str
    group: str
    views: tuple[str, ...] = ()
    header: str | None = None
    summary_header: str | None = None
    label: str | None = None
    higher_is_better: bool | None = None
    decimals: int = 4
    of_spectrum: Callable[[np.ndarray], float] | None = None
    of_rows: Callable[..., float] | None = None
    logged_as: str | None = None
    eval_as: str | None = None

    def __post_init__(self):
        header = self.header or self.name.replace("_", " ")
        object.__setattr__(self, "header", header)
        object.__setattr__(self, "summary_header", self.summary_header or header)
        object.__setattr__(self, "label", self.label or header)
        if self.group not in GROUPS:
            raise ValueError(f"metric {self.name}: group {self.group!r} is not one of {GROUPS}")
        unknown = set(self.views) - set(VIEWS)
        if unknown:
            raise ValueError(f"metric {self.name}: unknown views {sorted(unknown)}; choose from {VIEWS}")
        if (self.group == "spectrum") != (self.of_spectrum is not None):
            raise ValueError(f"metric {self.name}: a spectral metric (and only one) needs of_spectrum")
        if self.logged_as and self.of_spectrum is None and self.of_rows is None:
            raise ValueError(f"metric {self.name}: logged_as needs of_spectrum or of_rows")


# The rows, in registry order: per metric a line of fields under the header's names, separated
# by "|" (empty: the field's default; better: higher / lower / empty for neither), and the next
# line, indented, its definition. Spectral rows and rows logged in training take their function
# from _FUNCTIONS.
_TABLE = """
name | short | group | views | better | decimals | header | summary_header | label | logged_as | eval_as
effective_rank_covariance | erank_cov | spectrum | geom_rank geom_layers geom_side_by_side geom_trajectory report_summary report_layers report_depth | higher | 2 | erank (cov) | erank (covariance) | effective rank (covariance) | erank | erank
    exp(entropy of p = lambda / sum lambda), lambda = eigenvalues of the centred covariance (the NITP paper's measure)
effective_rank_covariance_without_massive_dims | erank_cov_wo_massive | massive dims | geom_layers | higher | 2
    effective_rank_covariance of the covariance with the rows and columns of massive_dims removed (the rank of the remaining dimensions)
massive_dims | massive_dims | massive dims | geom_layers |  | 0
    dimensions holding >= 5% of the total variance each (at most 8), largest first: the massive-activation channels that can dominate the covariance
massive_dims_variance_share | massive_var_share | massive dims | geom_layers
    share of the total variance (trace of the covariance) held by massive_dims
effective_rank_singular | erank_sv | spectrum | geom_rank geom_layers geom_trajectory report_summary report_layers | higher | 2 | erank (sv) | erank (singular values)
    exp(entropy of p = sigma / sum sigma), sigma = singular values of the centred data (Roy & Vetterli 2007); never smaller than the covariance one
participation_ratio | PR | spectrum | geom_rank | higher | 2
    (sum lambda)^2 / sum lambda^2
stable_rank | stable_rank | spectrum | geom_rank | higher | 2
    sum lambda / lambda_max (centred data)
top_eigenvalue_share | top_share | spectrum | geom_rank | lower
    lambda_max / sum lambda
anisotropy_across_documents | aniso_across_docs | anisotropy | geom_anisotropy geom_layers geom_side_by_side geom_trajectory report_summary report_layers | lower |  | aniso (across docs) | anisotropy across documents (paper's)
    exact mean cosine over pairs of tokens from different source documents (the paper's anisotropy: pairs 'across different sentences')
anisotropy_sampled | aniso_sampled_docs | anisotropy | geom_anisotropy geom_trajectory | lower
    the paper's estimator of anisotropy_across_documents: mean cosine of randomly drawn pairs from different documents (seeded)
anisotropy_within_documents | aniso_within_docs | anisotropy | geom_anisotropy
    exact mean cosine over pairs i != j from the same source document
anisotropy_across_sequences | aniso_across_seqs | anisotropy | geom_anisotropy geom_trajectory report_summary report_layers | lower |  | aniso (across seqs) | anisotropy across sequences (chunks) |  | mean_cos
    exact mean cosine over pairs from different sequences (model inputs: chunks of at most seq_len tokens; two chunks of one document count as different)
anisotropy_within_sequences | aniso_within_seqs | anisotropy | geom_anisotropy
    exact mean cosine over pairs i != j of the same sequence (chunk)
anisotropy | aniso_all_pairs | anisotropy | geom_anisotropy geom_layers geom_trajectory report_summary report_layers | lower |  | aniso (all pairs) | anisotropy (all pairs) |  |  | anisotropy
    exact mean cosine over all token pairs i != j
temporal_self_similarity | temporal_cos | NITP target | geom_layers report_layers |  |  | cos(h_k[t], h_k[t+1])
    mean cos(h_k[t], h_k[t+1])
cos_last_to_next | cos_last_next | NITP target | geom_layers report_layers |  |  | cos(h_last[t], h_k[t+1])
    mean cos(h_last[t], h_k[t+1]) before any projector
ridge_r2 | ridge_R2 | NITP target | geom_layers geom_side_by_side report_layers |  |  | ridge R² (held-out)
    held-out variance-weighted R^2 of a ridge map h_last[t] -> h_k[t+1]
ridge_cos | ridge_cos | NITP target | geom_layers report_layers |  |  | ridge cos (held-out)
    held-out mean cos(ridge prediction, h_k[t+1])
cka_vs_reference | CKA_ref | NITP target | geom_layers report_layers |  |  | CKA vs reference
    linear CKA of the layer between this checkpoint and the reference, same tokens
mean_norm | mean_norm | norms | geom_anisotropy geom_layers report_layers |  | 2
    mean L2 norm of the token vectors
max_norm | max_norm | norms | geom_anisotropy |  | 2
    largest L2 norm of a token vector
massive_activation_share | massive | norms | geom_anisotropy
    share of tokens with a coordinate |x| > max(100, 1000 * median |x|) (Sun et al. 2024)
intrinsic_dimension_twonn | ID_twonn | depth | geom_layers report_layers report_depth |  | 2 | ID (TwoNN) |  | intrinsic dimension (TwoNN) |  | intrinsic_dim
    TwoNN intrinsic dimension (Facco et al. 2017; scikit-dimension) of a seeded sample of token states (id_n_used rows, duplicates dropped)
intrinsic_dimension_gride | ID_gride | depth | geom_layers report_layers report_depth |  | 2 | ID (GRIDE) |  | intrinsic dimension (GRIDE)
    GRIDE intrinsic dimension (Denti et al. 2022, n1 = 4; scikit-dimension) of the same sample
alpha_req | alpha_ReQ | depth | geom_layers report_layers report_depth |  | 3 | alpha-ReQ |  | alpha-ReQ (spectrum decay)
    alpha-ReQ (Agrawal et al. 2022): minus the slope of log lambda_k vs log k over ranks alpha_req_fit_range of the covariance spectrum, 1/k-weighted
prompt_entropy | prompt_H | depth | geom_layers report_layers report_depth |  |  |  |  | prompt entropy (normalised)
    mean over sampled sequences of the normalised von Neumann entropy of the token Gram matrix of one sequence (Skean et al. 2025), in [0, 1]
dataset_entropy | dataset_H | depth | geom_layers report_layers report_depth |  |  |  |  | dataset entropy (normalised)
    normalised von Neumann entropy of the Gram matrix of mean-pooled sequence vectors (Skean et al. 2025), in [0, 1]
curvature | curvature | depth | geom_layers report_layers report_depth |  |  |  |  | curvature (radians)
    mean angle (radians) between successive token-difference vectors of a sequence, averaged over sequences (Hosseini & Fedorenko 2023)
logit_lens_ce | lens_CE | depth | geom_layers report_layers report_depth |  |  | logit-lens CE |  | logit-lens CE (nats/token)
    next-token cross-entropy (nats) of the layer through the final norm and the LM head (logit lens, nostalgebraist 2020)
"""
_FUNCTIONS = {  # of_spectrum of the spectral rows, of_rows of the others logged in training
    "effective_rank_covariance": entropy_rank,
    "effective_rank_singular": erank_singular,
    "participation_ratio": participation_ratio,
    "stable_rank": stable_rank,
    "top_eigenvalue_share": top_eigenvalue_share,
    "anisotropy_across_sequences": _across_sequences,
}


def _rows(table: str) -> list[Metric]:
    """The :class:`Metric` rows of ``table`` (the format of :data:`_TABLE`)."""
    header, *lines = [line.strip() for line in table.strip().splitlines()]
    rows = []
    for fields, definition in zip(lines[::2], lines[1::2]):
        row = {k.strip(): v.strip() for k, v in zip(header.split("|"), fields.split("|")) if v.strip()}
        row["views"] = tuple(row.get("views", "").split())
        row["higher_is_better"] = {"higher": True, "lower": False}.get(row.pop("better", ""))
        row["decimals"] = int(row.get("decimals", 4))
        if row["name"] in _FUNCTIONS:
            row["of_spectrum" if row["group"] == "spectrum" else "of_rows"] = _FUNCTIONS[row["name"]]
        rows.append(Metric(definition=definition, **row))
    return rows


_ROWS: list[Metric] = _rows(_TABLE)

# Views whose first columns keep the order they had before the registry (it differs from the
# registry's); their other metrics follow in registry order.
VIEW_ORDER = {
    "geom_layers": (
        "effective_rank_covariance",
        "effective_rank_covariance_without_massive_dims",
        "massive_dims",
        "massive_dims_variance_share",
        "effective_rank_singular",
        "anisotropy",
        "anisotropy_across_documents",
        "mean_norm",
    ),
    "geom_trajectory": (
        "effective_rank_covariance",
        "effective_rank_singular",
        "anisotropy",
        "anisotropy_across_documents",
        "anisotropy_across_sequences",
        "anisotropy_sampled",
    ),
}


# ----------------------------------------------------------------------------- reading
def metrics(*, group: str | None = None, view: str | None = None) -> tuple[Metric, ...]:
    """The registered metrics, in registry order (a view's: :data:`VIEW_ORDER` first)."""
    rows = [m for m in _ROWS if (group is None or m.group == group) and (view is None or view in m.views)]
    if view is not None:
        first = {name: i for i, name in enumerate(VIEW_ORDER.get(view, ()))}
        rows.sort(key=lambda m: first.get(m.name, len(first)))  # stable: the rest keep registry order
    return tuple(rows)


def names(*, group: str | None = None, view: str | None = None) -> tuple[str, ...]:
    """The record field names of :func:`metrics`."""
    return tuple(m.name for m in metrics(group=group, view=view))


def find(name: str) -> Metric | None:
    """The row of record field ``name``, or None when it is no registered metric."""
    return next((m for m in _ROWS if m.name == name), None)


def definitions() -> dict[str, str]:
    """``{name: definition}`` of every metric, in registry order (a record's ``scores.definitions``)."""
    return {m.name: m.definition for m in _ROWS}


def logged() -> tuple[Metric, ...]:
    """The metrics the trainer logs on its geometry samples (``logged_as`` set), in registry order."""
    return tuple(m for m in _ROWS if m.logged_as)


# ----------------------------------------------------------------------------- registering
def register(metric: Metric) -> Metric:
    """Add ``metric`` at the end of the registry; ``ValueError`` when a name is taken."""
    for m in _ROWS:
        if m.name == metric.name:
            raise ValueError(f"metric {metric.name} is already registered")
        for key in ("logged_as", "eval_as"):
            mine = getattr(metric, key)
            if mine and mine == getattr(m, key):
                raise ValueError(f"metric {metric.name}: {key}={mine!r} is already {m.name}'s")
    _ROWS.append(metric)
    return metric


def unregister(name: str) -> None:
    """Remove the metric called ``name`` (``KeyError`` when none is)."""
    row = find(name)
    if row is None:
        raise KeyError(f"no metric {name} is registered")
    _ROWS.remove(row)


@contextlib.contextmanager
def registered(metric: Metric) -> Iterator[Metric]:
    """``register(metric)`` for the block, removed afterwards (tests, one-off measurements)."""
    register(metric)
    try:
        yield metric
    finally:
        unregister(metric.name)


# ----------------------------------------------------------------------------- docs
def markdown_table() -> str:
    """The metric table of docs/geometry.md (``make docs`` writes it there; a test compares)."""
    better = {True: "higher", False: "lower", None: ""}
    lines = [
        "| name | group | `nitp-geom` column | report per-layer column | healthier | logged in training | definition |",
        "|---|---|---|---|---|---|---|",
    ]
    for m in _ROWS:
        training = ", ".join(
            [f"`{m.logged_as}`"] * bool(m.logged_as) + [f"`eval/geom/{m.eval_as}`"] * bool(m.eval_as)
        )
        definition = m.definition.replace("|", "\\|")
        report = m.header if "report_layers" in m.views else ""
        lines.append(
            f"| `{m.name}` | {m.group} | `{m.short}` | {report} | {better[m.higher_is_better]} "
            f"| {training} | {definition} |"
        )
    return "\n".join(lines) + "\n"
