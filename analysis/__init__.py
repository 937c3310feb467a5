"""nitp: analysis."""
