"""What the "where they differ" section reads: per-layer profiles of both objectives, from records.

* **MTEB by depth**: ``mteb`` records of one model that differ only in ``settings.layer``
  (``nitp-eval mteb --layers``) form a sweep; its profile is the overall score (and each group's)
  per layer.
* **Geometry by depth**: the per-layer rows of ``geom`` records (``nitp-geom layers``):
  effective rank, intrinsic dimension, alpha-ReQ, prompt / dataset entropy, curvature,
  logit-lens CE (the ``report_depth`` view of ``nitp.metrics_registry``) — whichever the records hold.
* **Similarity maps**: a geom record's ``scores.similarity`` (``{"layers_a": [...],
  "layers_b": [...], "cka" | "cka_debiased" | "linear_cka": [[...]]}``: CKA of layer i of A with
  layer j of B).

Nothing here computes a statistic: it only arranges what the records hold. Depth positions:
layer k at x = k, the last hidden state (-1, after the final norm) at x = L + 1.

Example
-------
>>> profiles = mteb_depth_profiles(layout.main, groups["mteb"])      # doctest: +SKIP
>>> profiles[0].by_model["run:runs/nitp"].points                     # doctest: +SKIP
{0: 0.31, 2: 0.36, -1: 0.34}
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from nitp import metrics_registry as registry

from .grouping import SettingsGroup
from .inputs import Model

SIMILARITY_KEYS = ("cka_debiased", "cka", "linear_cka")


@dataclass
class Profile:
    """One model's values by layer (layer number -> value) and its number of blocks L."""

    model: Model
    points: dict[int, float]
    num_layers: int

    def position(self, layer: int) -> int:
        return self.num_layers + 1 if layer == -1 else layer


@dataclass
class DepthSet:
    """Profiles of one statistic under one set of settings, one per model."""

    what: str  # "MTEB overall" or a geom statistic's name
    description: str  # the settings they share
    by_model: dict[str, Profile] = field(default_factory=dict)
    groups: dict[str, dict[str, Profile]] = field(default_factory=dict)  # MTEB group -> model -> profile


def _num_layers(rec: dict, layers) -> int:
    """L as the record states it, else the deepest layer it holds."""
    known = rec.get("model", {}).get("num_layers") or rec.get("scores", {}).get("num_layers")
    return known if isinstance(known, int) else max([0, *layers])


def mteb_depth_profiles(models: list[Model], groups: list[SettingsGroup]) -> list[DepthSet]:
    """MTEB sweeps: per-layer mteb records grouped by their other settings; only sweeps where some
    model has at least two layers."""
    sweeps: dict[str, DepthSet] = {}
    for group in groups:
        layer = group.settings.get("layer")
        if not isinstance(layer, int):
            continue
        rest = {k: v for k, v in group.settings.items() if k != "layer"}
        key = json.dumps(rest, sort_keys=True, default=str)
        tasks = rest.get("suite") or f"{len(rest.get('tasks') or [])} tasks"
        depth = sweeps.setdefault(
            key, DepthSet("MTEB overall", f"{tasks}, {rest.get('pooling', 'mean')} pooling")
        )
        for model in models:
            rec = group.latest(model)
            if rec is None or rec["scores"].get("overall") is None:
                continue
            _add_point(depth.by_model, model, layer, rec["scores"]["overall"], rec)
            for g, value in rec["scores"].get("groups", {}).items():
                if value is not None:
                    _add_point(depth.groups.setdefault(g, {}), model, layer, value, rec)
    return [d for d in sweeps.values() if any(len(p.points) >= 2 for p in d.by_model.values())]


def _add_point(profiles: dict[str, Profile], model: Model, layer: int, value: float, rec: dict) -> None:
    profile = profiles.setdefault(model.key, Profile(model, {}, 0))
    profile.points[layer] = float(value)
    profile.num_layers = max(profile.num_layers, _num_layers(rec, profile.points))


def geom_depth_profiles(models: list[Model], groups: list[SettingsGroup]) -> list[DepthSet]:
    """Per-layer geometry statistics present in the geom records (first group holding each)."""
    out = []
    for metric in registry.metrics(view="report_depth"):  # in display order, titled by their labels
        key = metric.name
        for group in groups:
            depth = DepthSet(metric.label, group.description)
            for model in models:
                rec = group.latest(model)
                rows = (rec or {}).get("scores", {}).get("layers") or []
                points = {
                    r["layer"]: float(r[key])
                    for r in rows
                    if isinstance(r.get("layer"), int) and _is_number(r.get(key))
                }
                if points:
                    depth.by_model[model.key] = Profile(model, points, _num_layers(rec, points))
            if any(len(p.points) >= 2 for p in depth.by_model.values()):
                out.append(depth)
                break
    return out


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v == v


@dataclass
class SimilarityMap:
    model: Model
    matrix: list[list[float]]
    rows: list
    cols: list
    what: str  # the key it was read from
    reference: str  # what layer j belongs to


def similarity_maps(models: list[Model], groups: list[SettingsGroup]) -> list[SimilarityMap]:
    """CKA maps (layer i x layer j) of geom records that hold a ``similarity`` section."""
    maps = []
    for model in models:
        for group in groups:
            rec = group.latest(model)
            section = (rec or {}).get("scores", {}).get("similarity")
            found = _similarity_map(model, section) if isinstance(section, dict) else None
            if found is not None:
                maps.append(found)
                break
    return maps


def _similarity_map(model: Model, section: dict) -> SimilarityMap | None:
    """The map of a ``nitp-geom compare`` record (``a_vs_b``, else ``a_vs_a``: a dict of matrices
    beside ``layers_a`` / ``layers_b``), or of a flat section holding a matrix itself."""
    for name in ("a_vs_b", "a_vs_a"):
        if isinstance(section.get(name), dict):
            inner = dict(section[name])
            inner["layers_a"] = section.get("layers_a")
            inner["layers_b"] = section.get("layers_a" if name == "a_vs_a" else "layers_b")
            other = section.get("model_b") if isinstance(section.get("model_b"), dict) else {}
            b_name = other.get("name") or other.get("path") or "model B"
            inner["reference"] = "itself" if name == "a_vs_a" else b_name
            return _similarity_map(model, inner)
    key = next((k for k in SIMILARITY_KEYS if isinstance(section.get(k), list) and section[k]), None)
    if key is None:
        return None
    matrix = section[key]
    if not all(isinstance(row, list) and len(row) == len(matrix[0]) for row in matrix):
        return None
    rows = section.get("layers_a") or section.get("layers") or list(range(len(matrix)))
    cols = section.get("layers_b") or section.get("layers") or list(range(len(matrix[0])))
    if len(rows) != len(matrix) or len(cols) != len(matrix[0]):
        return None
    reference = str(section.get("reference") or section.get("against") or "itself")
    return SimilarityMap(model, matrix, list(rows), list(cols), key, reference)
