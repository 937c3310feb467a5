"""Terminal output: every table the tools print is a rich table rendered to text here."""

from __future__ import annotations

import io
from typing import Iterable, Sequence


def text_table(
    columns: Sequence[str],
    rows: Iterable[Sequence[object]],
    *,
    title: str | None = None,
    left: Iterable[str] = (),
    section_before: Iterable[int] = (),
) -> str:
    """A rich table as plain text (never wrapped: wide tables scroll).

    Parameters
    ----------
    columns : column headers.
    rows : cell values (``str()`` of each; None shows "-").
    left : columns justified left (the others right, for numbers).
    section_before : row indices that start a new section (a rule above them).

    >>> print(text_table(["task", "score"], [["arc", "41.0"]], left=["task"]))  # doctest: +SKIP
    """
    from rich.console import Console
    from rich.table import Table

    left, breaks = set(left), set(section_before)
    table = Table(title=title)
    for c in columns:
        table.add_column(str(c), justify="left" if c in left else "right", no_wrap=True)
    for i, row in enumerate(rows):
        if i in breaks:
            table.add_section()
        table.add_row(*["-" if v is None else str(v) for v in row])
    console = Console(width=1000, record=True, file=io.StringIO())
    console.print(table)
    return console.export_text().rstrip("\n")
