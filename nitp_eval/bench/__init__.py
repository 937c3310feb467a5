"""Benchmarks with lm-evaluation-harness: what to run (``plan``), how (``settings``) and running it (``run``).

Example
-------
>>> from nitp_eval.bench import BenchSettings, format_table, run_bench
>>> print(format_table(run_bench(["runs/tiny-nitp"], BenchSettings(suite="offline"))))  # doctest: +SKIP
"""

from __future__ import annotations

from .run import format_table, run_bench
from .settings import BenchSettings

__all__ = ["BenchSettings", "format_table", "run_bench"]
