"""`nitp-eval`: score checkpoints with lm-eval benchmarks (`bench`) and frozen-embedding MTEB (`mteb`).

The commands live in `cli_bench.py` (bench, mirror) and `cli_mteb.py` (mteb); each only parses
arguments and calls library functions in `bench.py`, `mirror.py` and `embed.py`.
"""

from __future__ import annotations

import typer

from nitp.errors import user_errors

from . import cli_bench, cli_mteb

app = typer.Typer(
    help="Score NITP/NTP checkpoints: lm-eval benchmarks and frozen-embedding MTEB.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

app.command("bench", help=cli_bench.BENCH_HELP)(cli_bench.bench)
app.command("mteb", no_args_is_help=True)(cli_mteb.mteb_command)
app.add_typer(cli_bench.mirror_app, name="mirror")


def main() -> None:
    with user_errors():
        app()


if __name__ == "__main__":  # `python -m nitp_eval.cli`, e.g. under `accelerate launch -m`
    main()
