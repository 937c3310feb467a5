"""Frozen hidden states as sentence embeddings, scored on MTEB (the paper's second evidence).

The public names in one place; each lives in a file with one job:

- ``nitp_eval.encoder``       the checkpoint as a ``SentenceTransformer`` (Transformer -> Pooling ->
                              Normalize) and mteb's wrapper around it, token-budget batching
- ``nitp_eval.st_layer``      the ``Transformer`` module that emits layer k (``--layer``)
- ``nitp_eval.mteb_run``      ``run_mteb``: tasks scored one at a time, cached per task, records
- ``nitp_eval.mteb_results``  mteb results -> record scores, group averages, record paths
- ``nitp_eval.mteb_table``    the plain-text table
- ``nitp_eval.embed_data``    suites, task scope, ``--data-dir`` mirrors

Example
-------
>>> from nitp_eval.embed import run_mteb, format_table
>>> print(format_table(run_mteb(["runs/ntp", "runs/nitp"], suite="offline")))  # doctest: +SKIP
"""

from __future__ import annotations

from .encoder import HiddenStateEncoder, pool_hidden_states, save_encoder
from .mteb_results import aggregate, missing_tasks, summarise
from .mteb_run import run_mteb
from .mteb_table import format_table, model_labels

__all__ = [
    "HiddenStateEncoder",
    "aggregate",
    "format_table",
    "missing_tasks",
    "model_labels",
    "pool_hidden_states",
    "run_mteb",
    "save_encoder",
    "summarise",
]
