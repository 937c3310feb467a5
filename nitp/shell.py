"""Writing shell: every value put into a generated script (a command, a comment, an ``#SBATCH``
line) goes through :func:`quote`.

``shlex.quote`` makes a value one word for bash, and for sbatch, whose ``#SBATCH`` parser reads
the same single and double quotes. Quoting cannot protect a comment, though: a newline ends it
and the rest of the value runs as a command. So a value holding a control character (newline,
carriage return, tab, NUL, ESC, ...), a line separator or a byte that is not UTF-8 is refused
with one line instead of being written.
"""

from __future__ import annotations

import os
import shlex
import unicodedata
from typing import Any, Iterable

from .errors import UserError

# Cc: C0/C1 controls (\n \r \t \0 \x1b \x85 ...); Zl/Zp: U+2028/U+2029, line breaks to editors
# and Python; Cs: the surrogates that stand for undecodable bytes in a path (surrogateescape).
_REFUSED = {"Cc": "a control character", "Zl": "a line separator", "Zp": "a paragraph separator"}


def check(value: Any, what: str) -> str:
    """``value`` as text when a shell script can carry it; else a one-line ``UserError``.

    >>> check("runs/a b", "--out")
    'runs/a b'
    >>> check("runs/a\\nrm -rf ~", "--out")
    Traceback (most recent call last):
    ...
    nitp.errors.UserError: --out 'runs/a\\nrm -rf ~' contains a control character ('\\n'); ...
    """
    text = os.fspath(value) if isinstance(value, os.PathLike) else str(value)
    for ch in text:
        category = unicodedata.category(ch)
        if category == "Cs":
            raise UserError(
                f"{what} {text!r} contains a byte that is not UTF-8; rename it to UTF-8 text "
                "before writing it into a shell script"
            )
        if category in _REFUSED:
            raise UserError(
                f"{what} {text!r} contains {_REFUSED[category]} ({ch!r}); rename it without newlines, "
                "tabs or other control characters before writing it into a shell script"
            )
    return text


def quote(value: Any, what: str = "value") -> str:
    """One shell word for ``value`` (``shlex.quote``), after :func:`check`.

    >>> quote("/data/my runs/$(id)", "--out")
    "'/data/my runs/$(id)'"
    """
    return shlex.quote(check(value, what))


def join(words: Iterable[Any], what: str = "command word") -> str:
    """A command line of ``words``, each through :func:`quote`.

    >>> join(["nitp-study", "a b.yaml", "--cell", "s0"])
    "nitp-study 'a b.yaml' --cell s0"
    """
    return " ".join(quote(w, what) for w in words)


def sbatch_quote(value: Any, what: str = "value") -> str:
    """:func:`quote` for the value of an ``#SBATCH`` option.

    sbatch reads a backslash as an escape even inside quotes, so a value with one is refused
    (it would reach SLURM changed).
    """
    text = check(value, what)
    if "\\" in text:
        raise UserError(f"{what} {text!r} contains a backslash, which sbatch reads as an escape; rename it")
    return shlex.quote(text)
