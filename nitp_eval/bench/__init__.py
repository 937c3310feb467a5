"""Benchmarks with lm-evaluation-harness: what to run (``plan``) and running it (``run``).

Example
-------
>>> from nitp_eval.bench import run_bench, format_table
>>> print(format_table(run_bench(["runs/tiny-nitp"], suite="offline")))  # doctest: +SKIP
"""

from __future__ import annotations

from .run import format_table, run_bench

__all__ = ["format_table", "run_bench"]
