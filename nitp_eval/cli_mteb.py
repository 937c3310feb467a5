"""`nitp-eval mteb` (placeholder until the MTEB issue lands)."""
