"""`nitp-eval bench` and `nitp-eval mirror` (placeholder until the bench issue lands)."""
