"""A small table model and its three renderings: Markdown, LaTeX (booktabs) and CSV.

Tables hold numbers, not strings: formatting happens at rendering time, so the CSV keeps full
precision while Markdown and LaTeX show the paper's two decimals. A missing value (``None``)
is shown as "—" (never 0) and is an empty cell in the CSV.

Emphasis: with ``emphasis="tested"`` (every table of ``nitp-report compare``) a cell is bold only
when its test says so: a cell carrying a :class:`reports.paired.Tested` whose interval excludes 0
and whose (Holm-adjusted) p is below 0.05 is bold, and so is the better model's value of that
column in its block; nothing else is. Such a cell shows ``Δ [low, high] p=… n=…``; without a
result it shows ``Δ [n/a]`` and the reason goes to the table's notes. :meth:`Table.to_stats_csv`
gives every tested cell as one row of numbers. ``emphasis="best"`` bolds the best value per
column within a block (one model size) instead, following each column's direction; ties are all
bold; a column with fewer than two values has no bold.

Example
-------
>>> t = Table("demo", "Demo", ["ARC-C", "Avg."], higher_is_better=[True, True])
>>> ntp, nitp = t.add("NTP", [51.2, 40.27]), t.add("NITP", [53.95, 42.94])
>>> delta = t.add_delta("Δ (NITP − NTP)", nitp, ntp)
>>> for line in t.to_markdown().splitlines()[4:7]:
...     print(line)
| NTP | 51.20 | 40.27 |
| NITP | **53.95** | **42.94** |
| *Δ (NITP − NTP)* | +2.75 | +2.67 |
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field
from typing import Any

MISSING = "—"
TEXT_WIDTH_PT = 345.0  # LaTeX article's \textwidth; wider tables are scaled down to fit


@dataclass
class Row:
    label: str
    values: list[Any]  # float | int | str | None, one per column
    kind: str = "model"  # "model" rows compete for bold; "delta" rows are signed
    block: int = 0  # rows of one block (model size) are compared with each other
    bold: list[bool] = field(default_factory=list)
    tests: dict[int, Any] = field(default_factory=dict)  # column -> reports.paired.Tested
    hand_bold: set[int] = field(default_factory=set)  # columns bold whatever the tests say
    pair: tuple[Row, Row] | None = None  # a delta row's (new, base) rows


@dataclass
class Table:
    """A titled grid: one label column, then value columns.

    ``decimals``: digits after the point per column (one int for all), or a format spec
    such as ``".3g"``. ``higher_is_better``:
    per column, True / False / None (None = never bold).
    """

    name: str  # file stem under tables/
    title: str
    columns: list[str]
    higher_is_better: list[bool | None] | None = None
    decimals: int | list[int] = 2
    label_header: str = "model"
    notes: list[str] = field(default_factory=list)
    signed: set[int] = field(default_factory=set)  # columns of differences: always with a sign
    unsigned: set[int] = field(default_factory=set)  # columns never signed, even on delta rows (p, n)
    emphasis: str = "best"  # "best": best value per column; "tested": only significant tests
    verdicts: list[str] = field(default_factory=list)  # one line per comparison, under the table
    power: list[str] = field(default_factory=list)  # what each comparison's n can detect (reports.power)
    # (what, pair, Tested, Δ value or row, extra) per comparison, for the claim ledger
    findings: list[tuple] = field(default_factory=list)
    rows: list[Row] = field(default_factory=list)
    _block: int = 0

    # --------------------------------------------------------------- building
    def new_block(self) -> None:
        """Start a new block: a rule in LaTeX, a separate bold competition."""
        if self.rows and self.rows[-1].block == self._block:
            self._block += 1

    def add(self, label: str, values: list[Any], kind: str = "model") -> Row:
        if len(values) != len(self.columns):
            raise ValueError(f"row {label!r} has {len(values)} values for {len(self.columns)} columns")
        row = Row(label, [_clean(v) for v in values], kind, self._block)
        self.rows.append(row)
        return row

    def add_delta(
        self,
        label: str,
        new: Row,
        base: Row,
        columns: list[int] | None = None,
        tests: dict[int, Any] | None = None,
    ) -> Row:
        """``new - base`` per numeric column (only ``columns`` when given); missing stays missing.

        ``tests``: column -> :class:`reports.paired.Tested` of that difference (shown in the cell).
        """
        keep = set(range(len(self.columns)) if columns is None else columns)
        values = [
            (a - b) if i in keep and _is_num(a) and _is_num(b) else None
            for i, (a, b) in enumerate(zip(new.values, base.values))
        ]
        row = self.add(label, values, kind="delta")
        row.tests = {j: t for j, t in (tests or {}).items() if values[j] is not None}
        row.pair = (new, base)
        return row

    def tested(self) -> list[tuple[Row, int, Any]]:
        """Every (row, column, Tested) of the table, in row order."""
        return [(r, j, t) for r in self.rows for j, t in sorted(r.tests.items())]

    # --------------------------------------------------------------- bold
    def mark(self) -> None:
        """Set the bold cells: :meth:`mark_tested` or :meth:`mark_best` (``emphasis``)."""
        (self.mark_tested if self.emphasis == "tested" else self.mark_best)()

    def _marked(self) -> None:
        """Bold set before rendering, unless a caller set it (``emphasis="best"`` tables only)."""
        if not any(r.bold for r in self.rows) or self.emphasis == "tested":
            self.mark()

    def mark_tested(self) -> None:
        """Bold a tested cell whose test is significant, and the better model's value beside it.

        Columns in ``row.hand_bold`` are bold too (a builder that tested them itself).
        """
        direction = self.higher_is_better or [True] * len(self.columns)
        for row in self.rows:
            row.bold = [j in row.hand_bold for j in range(len(self.columns))]
        for row, j, test in self.tested():
            if not test.significant:
                continue
            row.bold[j] = True
            if row.pair is not None and direction[j] is not None:
                new, base = row.pair
                better = (row.values[j] > 0) == bool(direction[j])
                (new if better else base).bold[j] = True

    def mark_best(self) -> None:
        """Bold the best model value per column within each block (ties: all)."""
        direction = self.higher_is_better or [True] * len(self.columns)
        for row in self.rows:
            row.bold = [False] * len(self.columns)
        for block in {r.block for r in self.rows}:
            rows = [r for r in self.rows if r.block == block and r.kind == "model"]
            for j, better in enumerate(direction):
                vals = [r.values[j] for r in rows if _is_num(r.values[j])]
                if better is None or len(vals) < 2:
                    continue
                best = max(vals) if better else min(vals)
                for r in rows:
                    if _is_num(r.values[j]) and _same(r.values[j], best, self._digits(j)):
                        r.bold[j] = True

    def _digits(self, j: int) -> int | str:
        """Digits after the point, or a format spec such as ".3g" for numbers of any scale."""
        return self.decimals[j] if isinstance(self.decimals, list) else self.decimals

    def _is_text(self, j: int) -> bool:
        """A column of words (left-aligned) rather than numbers."""
        values = [r.values[j] for r in self.rows if r.values[j] is not None]
        return bool(values) and all(isinstance(v, str) for v in values)

    def cell(self, row: Row, j: int) -> str:
        """The value as shown: fixed decimals, a sign on deltas, "—" when missing; a tested cell
        adds its interval, p and n: ``+0.67 [-3.33, +4.67] p=0.85 n=150``."""
        text = self._number(row, j)
        test = row.tests.get(j)
        return text if test is None or text == MISSING else f"{text} {stat_text(test, self._digits(j))}"

    def _signed(self, row: Row, j: int) -> bool:
        return j in self.signed or (row.kind == "delta" and j not in self.unsigned)

    def _number(self, row: Row, j: int) -> str:
        v = row.values[j]
        if v is None:
            return MISSING
        if isinstance(v, str):
            return v
        d = self._digits(j)
        if isinstance(d, str):
            return format(v, ("+" if self._signed(row, j) else "") + d)
        return f"{v:+.{d}f}" if self._signed(row, j) else f"{v:,.{d}f}" if abs(v) >= 1e4 else f"{v:.{d}f}"

    # --------------------------------------------------------------- renderings
    # not pandas: its Markdown pads cells, its LaTeX lacks block rules, its CSV turns gapped ints into 150.0
    def to_markdown(self) -> str:
        self._marked()
        head = [self.label_header, *self.columns]
        align = [":---" if self._is_text(j) else "---:" for j in range(len(self.columns))]
        lines = [
            f"**{_md(self.title)}**",
            "",
            "| " + " | ".join(map(_md, head)) + " |",
            "|" + "|".join([":---", *align]) + "|",
        ]
        for r in self.rows:
            cells = [self.cell(r, j) for j in range(len(self.columns))]
            cells = [f"**{c}**" if r.bold and r.bold[j] else c for j, c in enumerate(cells)]
            label = f"*{_md(r.label)}*" if r.kind == "delta" else _md(r.label)
            lines.append("| " + " | ".join([label, *cells]) + " |")
        lines += [""] + [f"{_md(v)}  " for v in self.verdicts + self.power + self.notes]
        return "\n".join(lines).rstrip() + "\n"

    def to_latex(self) -> str:
        """A ``table`` float with a booktabs ``tabular`` (needs ``\\usepackage{booktabs}``)."""
        self._marked()
        spec = "l" + "".join("l" if self._is_text(j) else "r" for j in range(len(self.columns)))
        wide = self._width_pt() > TEXT_WIDTH_PT
        out = [
            "% generated by nitp-report; needs \\usepackage{booktabs} (and graphicx when resized)",
            "\\begin{table}[t]",
            "\\centering",
            f"\\caption{{{tex_escape(self.title)}}}",
            f"\\label{{tab:nitp-{self.name}}}",
            *(["\\resizebox{\\linewidth}{!}{%"] if wide else []),
            f"\\begin{{tabular}}{{{spec}}}",
            "\\toprule",
            " & ".join(tex_escape(h) for h in [self.label_header, *self.columns]) + " \\\\",
            "\\midrule",
        ]
        previous = None
        for r in self.rows:
            if previous is not None and r.block != previous.block:
                out.append("\\midrule")
            cells = [self.cell(r, j) for j in range(len(self.columns))]
            cells = [
                "---"
                if c == MISSING
                else (f"\\textbf{{{_tex_number(c)}}}" if r.bold and r.bold[j] else _tex_number(c))
                for j, c in enumerate(cells)
            ]
            label = f"\\textit{{{tex_escape(r.label)}}}" if r.kind == "delta" else tex_escape(r.label)
            out.append(" & ".join([label, *cells]) + " \\\\")
            previous = r
        out += ["\\bottomrule", "\\end{tabular}" + ("}" if wide else "")]
        if self.notes or self.verdicts:
            out.append(
                "\\par\\smallskip{\\footnotesize "
                + " ".join(tex_escape(n) for n in self.verdicts + self.power + self.notes)
                + "}"
            )
        out.append("\\end{table}")
        return "\n".join(out) + "\n"

    def _width_pt(self) -> float:
        """Rough printed width: ~5 pt per character of the widest cell, 12 pt between columns."""
        heads = [self.label_header, *self.columns]
        widths = [max([len(heads[0])] + [len(r.label) for r in self.rows])]
        widths += [max([len(h)] + [len(self.cell(r, j)) for r in self.rows]) for j, h in enumerate(heads[1:])]
        return sum(5.0 * w + 12.0 for w in widths)

    def to_csv(self) -> str:
        """Full-precision numbers in the table's units; empty cell = missing."""
        rows = [
            [r.label, *("" if v is None else (round(v, 6) if isinstance(v, float) else v) for v in r.values)]
            for r in self.rows
        ]
        return _csv([[self.label_header, *self.columns], *rows])

    STATS_COLUMNS = ("row", "column", "delta", "ci_low", "ci_high", "p", "p_holm", "n", "units", "test")
    STATS_COLUMNS += ("significant", "note")

    def to_stats_csv(self) -> str:
        """One line per tested cell, in the table's units: ``row, column, delta, ci_low,
        ci_high, p, p_holm, n, units, test, significant, note`` (empty = not available; ``note``
        = why there is no interval, or what was paired)."""
        lines = [self.STATS_COLUMNS]
        for row, j, t in self.tested():
            r = t.result
            if r is None:  # the Δ alone
                numbers = [row.values[j]] + [None] * 7
            else:
                numbers = [
                    None if getattr(r, k, None) is None else round(t.scale * getattr(r, k), 10)
                    for k in ("delta", "ci_low", "ci_high")
                ]
                units = getattr(t, "unit", None) or getattr(r, "units", "")
                numbers += [getattr(r, "p_value", None), getattr(r, "p_holm", None), r.n, units, r.test]
            note = "; ".join(x for x in (t.reason or t.note, getattr(t, "flag", None)) if x) or None
            fields = [row.label, self.columns[j], *numbers, str(t.significant).lower(), note]
            lines.append(["" if v is None else v for v in fields])
        return _csv(lines)


def stat_text(test: Any, digits: int | str = 2) -> str:
    """``[low, high] p=… n=…`` of a :class:`reports.paired.Tested` in table units (``[n/a]``
    without a result). The p shown is Holm-adjusted ("p_Holm") when the table adjusted it.

    Example
    -------
    >>> from reports.stats import GroupMean
    >>> from reports.paired import Tested
    >>> stat_text(Tested(GroupMean(5, 0.004, -0.011, 0.019, 0.95, "BCa")))
    '[-1.10, +1.90] n=5 tasks'
    """
    r = test.result
    if r is None:
        return "[n/a]"
    d = digits if isinstance(digits, int) else 2
    flag = getattr(test, "flag", None)
    if r.ci_low is None or r.ci_high is None:
        interval = "[no interval]"
    elif getattr(r, "interval", None) == "exact" and flag:  # zero width: say why, not [+0.00, +0.00]
        interval, flag = f"[{flag.split('; ')[0]}]", "; ".join(flag.split("; ")[1:]) or None
    else:
        interval = f"[{test.scale * r.ci_low:+.{d}f}, {test.scale * r.ci_high:+.{d}f}]"
    p_holm = getattr(r, "p_holm", None)
    p, name = (p_holm, "p_Holm") if p_holm is not None else (getattr(r, "p_value", None), "p")
    p_part = "" if p is None else " " + _p_text(p, name)
    units = getattr(test, "unit", None) or getattr(r, "units", "items")
    n_part = f" n={r.n:,}" + ("" if units == "items" else f" {units}")
    return interval + p_part + n_part + (f" ({flag})" if flag else "")


def _p_text(p: float, name: str) -> str:
    from .stats import format_p

    return format_p(p).replace("p ", f"{name}", 1).replace(" ", "")


# ----------------------------------------------------------------------------- helpers
def _csv(rows) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    return buf.getvalue()


def _clean(v: Any) -> Any:
    """None for missing or non-finite numbers (so NaN never prints as a score)."""
    if v is None or isinstance(v, str):
        return v
    if isinstance(v, bool):
        return str(v).lower()
    try:
        f = float(v)
    except (TypeError, ValueError):
        return str(v)
    return (int(v) if isinstance(v, int) else f) if math.isfinite(f) else None


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _same(a: float, b: float, digits: int | str) -> bool:
    """Equal as shown (ties at the displayed precision are all bold)."""
    if isinstance(digits, str):
        return format(a, digits) == format(b, digits)
    return round(a, digits) == round(b, digits)


def _md(text: str) -> str:
    return str(text).replace("|", "\\|")


_TEX_SPECIAL = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "Δ": r"$\Delta$",
    "−": r"$-$",
    "λ": r"$\lambda$",
    "≥": r"$\geq$",
    "≤": r"$\leq$",
    "±": r"$\pm$",
    "·": r"$\cdot$",
    "×": r"$\times$",
    "—": "---",
    "–": "--",
    "²": r"$^2$",
    "→": r"$\rightarrow$",
}


def _tex_number(text: str) -> str:
    """A cell for LaTeX: a true minus sign on negative numbers, specials escaped."""
    return "$-$" + tex_escape(text[1:]) if text[:1] == "-" and text[1:2].isdigit() else tex_escape(text)


def tex_escape(text: str) -> str:
    """Escape LaTeX specials and map the few non-ASCII symbols tables use to math mode."""
    return "".join(_TEX_SPECIAL.get(ch, ch) for ch in str(text))
