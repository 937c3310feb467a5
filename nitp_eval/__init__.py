"""nitp: nitp_eval."""

import sys


def log_stderr(msg: str) -> None:
    """The default progress log of bench, mteb and the in-loop evaluators: one line on stderr."""
    print(msg, file=sys.stderr, flush=True)
