"""nitp: nitp_eval."""
