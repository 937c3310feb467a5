"""nitp: reports."""
