"""nitp: nitp_train."""
