"""The one metric registry: each geometry metric's name, definition, headers, direction and views.

A :class:`Metric` row holds all that the tools need to know about one metric (its fields: see
the class). Tables (``nitp-geom``, ``nitp-report``), the report's depth section, in-training
logging and the trackers read these rows; none of them restates a metric's name, header or
decimals.

The rows live in ``nitp/metrics.yaml`` beside this module (loaded at import, in its order): one
mapping per metric with the keys of :class:`Metric` (``better: higher | lower`` for
``higher_is_better``), defaults omitted; its header comment lists the keys. To add a metric, add
its mapping there; a spectral one or one logged in training also needs its function in
``_FUNCTIONS`` here under its name.

A **spectral** metric is a function of the covariance eigenvalues ``lambda`` (float64, clipped
at 0, descending). ``nitp.geometry.spectrum_metrics`` computes every spectral row from one
eigendecomposition per layer, so the metric lands in every geom record (per layer and the
summary), in the tables of its views, and, with ``logged_as``, in ``metrics.jsonl``, the
progress line and the trackers.

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
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import yaml

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


_FUNCTIONS = {  # of_spectrum of the spectral rows, of_rows of the others logged in training
    "effective_rank_covariance": entropy_rank,
    "effective_rank_singular": erank_singular,
    "participation_ratio": participation_ratio,
    "stable_rank": stable_rank,
    "top_eigenvalue_share": top_eigenvalue_share,
    "anisotropy_across_sequences": _across_sequences,
}


# The keys of a row of metrics.yaml: Metric's fields, with "better" (higher / lower) for
# higher_is_better and the functions from _FUNCTIONS.
_KEYS = {f.name for f in fields(Metric)} - {"higher_is_better", "of_spectrum", "of_rows"} | {"better"}


def _rows(path: Path) -> list[Metric]:
    """The :class:`Metric` rows of the YAML list at ``path`` (the format of ``nitp/metrics.yaml``)."""
    rows, safe = [], getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml's: ~10x faster at import
    for row in yaml.load(path.read_text(encoding="utf-8"), Loader=safe):
        if unknown := row.keys() - _KEYS:
            raise ValueError(
                f"{path}: metric {row.get('name')}: unknown keys {sorted(unknown)}; use {sorted(_KEYS)}"
            )
        better = row.pop("better", None)
        if better not in ("higher", "lower", None):
            raise ValueError(f"{path}: metric {row['name']}: better is higher or lower, not {better!r}")
        row["higher_is_better"] = None if better is None else better == "higher"
        row["views"] = tuple(row.get("views", ()))
        if row["name"] in _FUNCTIONS:
            row["of_spectrum" if row["group"] == "spectrum" else "of_rows"] = _FUNCTIONS[row["name"]]
        rows.append(Metric(**row))
    return rows


_ROWS: list[Metric] = _rows(Path(__file__).with_name("metrics.yaml"))

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
