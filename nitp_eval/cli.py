"""`nitp-eval`: score checkpoints with lm-eval benchmarks (`bench`) and frozen-embedding MTEB (`mteb`).

The commands live in `cli_bench.py` (bench, mirror) and `cli_mteb.py` (mteb); each only parses
arguments and calls library functions in `bench.py`, `mirror.py` and `embed.py`.
"""

from __future__ import annotations

import typer

from nitp_train.artifacts import user_errors

app = typer.Typer(
    help="Score NITP/NTP checkpoints: lm-eval benchmarks and frozen-embedding MTEB.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

from . import cli_bench, cli_mteb  # noqa: E402,F401  (register their commands on `app`)


def main() -> None:
    with user_errors():
        app()


if __name__ == "__main__":
    # `python -m nitp_eval.cli` (e.g. under `accelerate launch -m`): the commands are registered on
    # the package module's `app`, not on this `__main__` copy, so run that one.
    from nitp_eval.cli import main as _main

    _main()
