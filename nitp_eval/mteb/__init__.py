"""Frozen hidden states as sentence embeddings, scored on MTEB (the paper's second evidence).

One job per module:

- ``settings``  ``MtebSettings``: every option that changes a score (no mteb import)
- ``encoder``   the checkpoint as a ``SentenceTransformer`` (Transformer -> Pooling -> Normalize)
                and mteb's wrapper around it, token-budget batching
- ``st_layer``  the ``Transformer`` module that emits layer k (``--layer``)
- ``sweep``     the layer sweep (``--layers``): one pass, one mteb encoder per layer
- ``figure``    the sweep's score-by-depth figure
- ``run``       ``run_mteb``: tasks scored one at a time, cached per task, records
- ``results``   mteb results -> record scores, group averages, record paths
- ``table``     the plain-text table
- ``tasks``     suites, task scope, ``--data-dir`` mirrors

The public names below load lazily (mteb and sentence-transformers take seconds to import).

Example
-------
>>> from nitp_eval.mteb import MtebSettings, run_mteb, format_table
>>> print(format_table(run_mteb(["runs/ntp", "runs/nitp"], MtebSettings(suite="offline"))))  # doctest: +SKIP
"""

from __future__ import annotations

import importlib

POOLINGS = ("mean", "last", "eos")  # here, not in encoder: a study file checks them without importing mteb
_MODULES = {  # module -> the public names it defines
    "hidden_encoder": ("HiddenStateEncoder",),
    "encoder": ("pool_hidden_states", "save_encoder"),
    "results": ("aggregate", "missing_tasks", "summarise"),
    "run": ("run_mteb",),
    "settings": ("MtebSettings", "EmbedSettings", "parse_layers"),
    "table": ("format_table", "format_layer_table", "model_labels"),
    "sweep": ("LayerSweep",),
    "figure": ("plot_layer_sweep",),
}
_PUBLIC = {name: module for module, names in _MODULES.items() for name in names}
__all__ = sorted(_PUBLIC)


def __getattr__(name: str):
    if name not in _PUBLIC:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_PUBLIC[name]}"), name)
