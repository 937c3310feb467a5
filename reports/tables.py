"""The paper's tables, built from result records and metrics (never recomputed).

Every builder takes the :class:`~reports.grouping.Layout` (size blocks: NTP baseline, NITP
reference, ablations, others) and, for record-based tables, the settings groups of that
record kind; it returns :class:`~reports.formats.Table` objects (Markdown / LaTeX / CSV).

================  =========================================================  ==============
builder           rows x columns                                             paper
================  =========================================================  ==============
bench_tables      models x benchmarks + Avg. (record's average), Δ row       Tables 1, 2
mteb_tables       models x Classification / STS / Retrieval-dup / Overall    Table 6
mteb_task_tables  tasks x models (+ Δ), on request
lm_table          models x validation CE and perplexity (last val line)      §LM preserved
geometry_tables   models x effective ranks and anisotropy; per-layer tables  Figure 1
ablation_tables   one per knob: settings x headline scores                   Tables 3, 7, 8
cost_table        sizes x parameters, FLOPs, overhead, measured time ratio   §Cost
================  =========================================================  ==============

Scores in records are fractions (0..1); tables show percentages with two decimals. Every Δ
cell carries its statistics (:mod:`reports.paired`): bench deltas are paired item by item
(McNemar exact / paired permutation, paired bootstrap interval), MTEB group deltas over tasks
(bootstrap interval, sign test), validation CE over batches; the p-values of one table are
Holm-adjusted together; bold marks only significant cells; a verdict line per comparison goes
under the table.

Example
-------
>>> layout = arrange(load_inputs(["runs/ntp", "runs/nitp"]))             # doctest: +SKIP
>>> print(bench_tables(layout, settings_groups(layout.main, "bench"))[0].to_markdown())  # doctest: +SKIP
"""

from __future__ import annotations

import re
import statistics
from typing import Any

from nitp import metrics_registry as registry
from nitp_eval.tasks import BENCHMARKS, SUITES

from . import paired as P
from .formats import Table, _is_num
from .grouping import KNOBS, Layout, Pair, SettingsGroup, SizeBlock, config_value
from .inputs import Model

# The paper's column order and short headers (Table 1), from nitp_eval's benchmark table;
# other task names pass through.
BENCH_HEADERS = {name: BENCHMARKS[name].header for name in SUITES["paper"]}
MTEB_GROUPS = ["Classification", "STS", "Retrieval/dup"]


def pct(value: Any) -> float | None:
    """A 0..1 score as a percentage; None stays None (shown "—", never 0)."""
    return None if value is None else 100.0 * float(value)


def _suffix(i: int) -> str:
    return "" if i == 0 else f"-{i + 1}"


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower() or "model"


def row_label(model: Model, record: dict | None) -> str:
    """The model's label, with the record's step when it is not the run's newest."""
    step = (record or {}).get("model", {}).get("step")
    return model.label if step is None or step == model.step else f"{model.label} (step {step})"


def _add_block(
    table: Table,
    block: SizeBlock,
    rows: dict[str, Any],
    delta_columns: list[int] | None = None,
    tests: list[dict[int, P.Tested] | None] | None = None,
) -> list[tuple[Any, Pair, SizeBlock]]:
    """Rows of one size block (baseline, reference, others) and a Δ row per compared pair.

    ``tests``: per pair of ``block.pairs``, column -> the statistics of that Δ cell
    (:mod:`reports.paired`). Returns ``(Δ row, pair, block)`` for every pair whose two rows exist.
    """
    added = {}
    table.new_block()
    for model in block.main:
        if model.key in rows:
            label, values = rows[model.key]
            added[model.key] = table.add(label, values)
    out = []
    for i, pair in enumerate(block.pairs):
        if pair.base.key in added and pair.new.key in added:
            cells = (tests or [None] * len(block.pairs))[i]
            row = table.add_delta(
                pair.delta_label, added[pair.new.key], added[pair.base.key], delta_columns, cells
            )
            out.append((row, pair, block))
    return out


def _pair_records(group: SettingsGroup, pair: Pair) -> tuple[dict, dict] | None:
    """(base's, new's) newest records of the group, when both exist."""
    a, b = group.latest(pair.base), group.latest(pair.new)
    return (a, b) if a is not None and b is not None else None


def _record_rows(group: SettingsGroup, block: SizeBlock, values, arg) -> dict[str, tuple[str, list]]:
    """Model key -> (row label, ``values(record, arg)``) of the block's models with a record in the group."""
    return {
        m.key: (row_label(m, rec), values(rec, arg))
        for m in block.main
        if (rec := group.latest(m)) is not None
    }


def _score(rec: dict | None, key: str) -> float | None:
    """A record's ``scores[key]`` (%); None without the record or the key."""
    return pct((rec or {}).get("scores", {}).get(key))


def _bench_row(rec: dict, tasks: list[str]) -> list:
    return [_task_score(rec, t) for t in tasks] + [_score(rec, "average")]


def _mteb_row(rec: dict, names: list[str]) -> list:
    return [pct(rec["scores"].get("groups", {}).get(g)) for g in names] + [_score(rec, "overall")]


def _geom_row(rec: dict, columns: list[tuple]) -> list:
    return [rec["model"].get("step")] + [rec["scores"].get("summary", {}).get(c[0]) for c in columns]


def _records(group: SettingsGroup) -> list[dict]:
    """Every record of a settings group, in record order."""
    return [rec for recs in group.records.values() for rec in recs]


def _known_first(names, known) -> list[str]:
    """``names`` (deduplicated) with those of ``known`` first, in its order."""
    names = list(dict.fromkeys(names))
    return [k for k in known if k in names] + [n for n in names if n not in known]


def _block_prefix(layout: Layout, block: SizeBlock) -> str:
    return f"{block.size}: " if len(layout.blocks) > 1 else ""


def finish_tests(table: Table, method: str) -> None:
    """Holm over the table's tests, the reasons for missing intervals and the method as notes."""
    cells = table.tested()
    if not cells:
        return
    adjusted = P.holm_family([t for _, _, t in cells])
    for (row, j, _), t in zip(cells, adjusted):
        row.tests[j] = t
    n_tests = sum(1 for t in adjusted if getattr(t.result, "p_holm", None) is not None)
    holm = f" p_Holm: Holm-adjusted over the {n_tests} tests of this table." if n_tests else ""
    table.notes.append(
        " ".join(x for x in ("Δ cells: Δ [95% interval] p n.", method, holm.strip(), BOLD_RULE) if x)
    )
    reasons: dict[str, list[str]] = {}
    for _row, j, t in cells:
        if t.reason:
            reasons.setdefault(t.reason, []).append(table.columns[j])
    for reason, where in reasons.items():
        table.notes.append(f"n/a ({', '.join(dict.fromkeys(where))}): {reason}.")
    for note in dict.fromkeys(t.note for _, _, t in cells if t.note):
        table.notes.append(f"{note}.")


def verdict_line(what: str, test: P.Tested, pair: Pair, value: float | None, extra: str = "") -> str:
    """The one-line conclusion under a table (:func:`reports.stats.verdict`), or why there is none,
    with its unit of replication, what it cannot claim and any flag (chance level, identical
    answers, a p at the permutation floor)."""
    from .stats import verdict

    digits = 2 if test.scale == 100 else 4
    if test.result is None:
        shown = "" if value is None else f" {value:+.{digits}f}"
        return f"{what}:{shown} [n/a]: no interval ({test.reason}){extra}"
    line = verdict(
        what,
        test.result,
        names=(pair.base.label, pair.new.label),
        scale=test.scale,
        digits=digits,
        higher_is_better=test.higher_is_better,
        units=test.unit,
    )
    flag = f"; flagged: {test.flag}" if test.flag else ""
    return line + extra + flag + scope(test.unit, pair)


def scope(unit: str, pair: Pair) -> str:
    """What a test over ``unit`` can claim about ``pair`` (empty for seeds)."""
    if unit == "seeds":
        return ""
    what = "these two checkpoints" if pair.objectives else "these checkpoints"
    claim = f". Unit: {unit}; it says whether {what} differ on these {unit}"
    if pair.objectives:
        claim += ", not whether the objectives do (that needs several seeds of each)"
    return claim + "."


BOLD_RULE = "Bold: only where the interval excludes 0 and p < 0.05; nothing else is emphasised."
BENCH_METHOD = (
    "Paired by item (subtask, doc_id): exact McNemar test on 0/1 items, paired permutation test "
    "otherwise; paired bootstrap interval (BCa); Avg.: every item weighted 1/(tasks × its task's items), "
    "so the weighted mean is the suite average (permutation test)."
)
GEOM_NA = (
    "a geom record holds one number per model and statistic, so a Δ has no interval "
    "(several seeds give one: nitp-report compare groups runs that differ only in seed)"
)
PER_TASK_NA = (
    "MTEB records hold one score per task, no per-item results, so a task's Δ has no interval "
    "(the MTEB table tests the group means and counts the tasks with a sign test)"
)
MTEB_METHOD = (
    "Mean of the per-task deltas with a bootstrap interval over tasks (too narrow below ~10 tasks; "
    "MTEB records hold one score per task, no per-item results); n = tasks; sign test in the verdict."
)


def _steps_note(table: Table) -> None:
    if any("(step " in r.label for r in table.rows):
        table.notes.append("Some rows are from an earlier checkpoint than the run's last one (step shown).")


# ----------------------------------------------------------------------------- benchmarks
def bench_tasks(group: SettingsGroup) -> list[str]:
    """Task names of a settings group in the paper's order, then in record order."""
    return _known_first((t for rec in _records(group) for t in rec["scores"].get("tasks", {})), BENCH_HEADERS)


def bench_tables(layout: Layout, groups: list[SettingsGroup]) -> list[Table]:
    """Benchmarks x models per settings group: per-task scores, Avg., best bold, Δ rows."""
    tables = []
    for i, group in enumerate(groups):
        tasks = bench_tasks(group)
        table = Table(
            f"bench{_suffix(i)}",
            f"Benchmarks ({group.description}); scores in %",
            [BENCH_HEADERS.get(t, t) for t in tasks] + ["Avg."],
            emphasis="tested",
        )
        pending = []
        for block in layout.blocks:
            rows = _record_rows(group, block, _bench_row, tasks)
            for model in block.main:
                if (rec := group.latest(model)) is not None:
                    table.notes += _record_notes(row_label(model, rec), rec["scores"], tasks)
            tests = [
                bench_tests(*recs, tasks) if (recs := _pair_records(group, p)) else None for p in block.pairs
            ]
            pending += _add_block(table, block, rows, tests=tests)
        if not table.rows:
            continue
        finish_tests(table, BENCH_METHOD)
        for delta, pair, block in pending:
            if (test := delta.tests.get(len(tasks))) is not None:
                what = f"{_block_prefix(layout, block)}{pair.name} on the average of {len(tasks)} benchmarks"
                _conclude(table, "bench average", what, test, pair, delta.values[-1], group)
        metrics = "; ".join(_task_metric(group, t) for t in tasks)
        table.notes.append(f"Metrics: {metrics}. Avg. is the record's suite average.")
        _flags_note(table)
        _steps_note(table)
        tables.append(table)
    return tables


def _record_notes(label: str, scores: dict, tasks: list[str]) -> list[str]:
    """Why a model's cell is "—" although its record has the task: no items were scored."""
    reason = P.NO_ITEMS_REASON
    empty = [t for t in tasks if (scores.get("tasks", {}).get(t) or {}).get("items_unavailable") == reason]
    notes = [f"{label}: {', '.join(empty)}: {reason} (no items; shown —, never 0)."] if empty else []
    return notes + ([f"{label}: {scores['average_note']}."] if scores.get("average_note") else [])


def _conclude(table: Table, kind: str, what: str, test: P.Tested, pair: Pair, value, found, extra="") -> None:
    """A tested comparison's verdict line under the table, its finding (for the claim ledger) and
    its power sentence; ``found``: the finding's extra (the settings group, the MTEB sign test)."""
    table.verdicts.append(verdict_line(what, test, pair, value, extra))
    table.findings.append((kind, pair, test, value, found))
    _power_line(table, test, kind)


def _power_line(table: Table, test: P.Tested, what: str) -> None:
    """The power sentence of a tested comparison (:mod:`reports.power`) under its verdict."""
    from .power import power_sentence

    if line := power_sentence(test, what):
        table.power.append(line)


def _flags_note(table: Table) -> None:
    """Say once what the flags in Δ cells mean."""
    flags = " ".join(t.flag or "" for _, _, t in table.tested())
    if "chance" in flags or "floor" in flags:
        table.notes.append(
            "at chance / at the floor: that model's accuracy does not differ from guessing (binomial test "
            "against 1 / choices, p ≥ 0.05; generated answers: 95% upper bound below 5 %); where both are, "
            "the Δ compares noise, not the models."
        )
    if "identical answers" in flags:
        table.notes.append(
            "identical answers: both models gave the same answer on every item, so there is no interval "
            "to speak of (not an effect measured as exactly 0)."
        )


def bench_tests(record_a: dict, record_b: dict, tasks: list[str]) -> dict[int, P.Tested]:
    """Column -> paired test of every task column and of Avg. (the last column)."""
    tests = {j: P.bench_task(record_a, record_b, t) for j, t in enumerate(tasks)}
    tests[len(tasks)] = P.bench_average(record_a, record_b)
    return tests


def _task_metric(group: SettingsGroup, task: str) -> str:
    for rec in _records(group):
        if info := rec["scores"].get("tasks", {}).get(task):
            shots = info.get("shots")
            return f"{BENCH_HEADERS.get(task, task)} {info.get('metric', '?')}" + (
                f", {shots}-shot" if shots is not None else ""
            )
    return task


# ----------------------------------------------------------------------------- MTEB
def mteb_group_names(group: SettingsGroup) -> list[str]:
    return _known_first((g for rec in _records(group) for g in rec["scores"].get("groups", {})), MTEB_GROUPS)


def _mteb_tasks(group: SettingsGroup) -> dict[str, str]:
    """Task -> group name, over every record of the settings group (record order)."""
    tasks: dict[str, str] = {}
    for rec in _records(group):
        for name, info in rec["scores"].get("tasks", {}).items():
            tasks.setdefault(name, str((info or {}).get("group") or (info or {}).get("type") or "other"))
    return tasks


def mteb_tables(layout: Layout, groups: list[SettingsGroup]) -> list[Table]:
    """Group averages and overall per model (from the record), Δ row, "NITP wins k of n"."""
    tables = []
    for i, group in enumerate(groups):
        names = mteb_group_names(group)
        tasks = _mteb_tasks(group)
        counts = {g: sum(1 for t in tasks.values() if t == g) for g in names}
        table = Table(
            f"mteb{_suffix(i)}",
            f"MTEB, frozen representations ({group.description}); main scores in %",
            [f"{g} ({counts[g]})" for g in names] + [f"Overall ({len(tasks)})"],
            emphasis="tested",
        )
        pending, signs = [], {}
        for block in layout.blocks:
            rows = _record_rows(group, block, _mteb_row, names)
            tested = [
                P.mteb_groups(*recs, names) if (recs := _pair_records(group, p)) else ({}, None)
                for p in block.pairs
            ]
            columns = [{j: t[g] for j, g in enumerate([*names, "Overall"]) if g in t} for t, _ in tested]
            signs.update({id(p): sign for p, (_, sign) in zip(block.pairs, tested)})
            pending += _add_block(table, block, rows, tests=columns)
            for pair in block.pairs:
                note = wins_note(group, pair.base, pair.new, _winner(pair))
                if note:
                    table.notes.append(_block_prefix(layout, block) + note)
        if table.rows:
            table.notes.append(
                "Group and overall scores are the record's macro averages over the tasks present."
            )
            finish_tests(table, MTEB_METHOD)
            for delta, pair, block in pending:
                test, sign = delta.tests.get(len(names)), signs[id(pair)]
                if test is not None:
                    what = f"{_block_prefix(layout, block)}{pair.name} on MTEB overall"
                    extra = sign_text(sign, _winner(pair))
                    _conclude(table, "mteb overall", what, test, pair, delta.values[-1], sign, extra)
                    _power_line(table, P.Tested(sign, units="tasks"), "mteb sign")
            _steps_note(table)
            tables.append(table)
    return tables


def _winner(pair: Pair) -> str:
    """Who "wins" a task in notes: "NITP" for the objective pair, else the compared model's label."""
    return "NITP" if pair.objectives else pair.new.label


def sign_text(sign, who: str = "NITP") -> str:
    """``"; sign test: NITP better on 4 of 5 tasks (1 tied), p = 0.38"`` (empty without one)."""
    if sign is None:
        return ""
    from .stats import format_p

    ties = f", {sign.ties} tied" if sign.ties else ""
    return f"; sign test: {who} better on {sign.wins} of {sign.n} tasks{ties}, {format_p(sign.p_value)}"


def task_deltas(group: SettingsGroup, base: Model, new: Model) -> dict[str, float]:
    """Per-task main-score difference new - base (percentage points), tasks both hold."""
    a, b = group.latest(base), group.latest(new)
    if a is None or b is None:
        return {}
    ta, tb = a["scores"].get("tasks", {}), b["scores"].get("tasks", {})
    return {
        t: 100.0 * (tb[t]["main_score"] - ta[t]["main_score"])
        for t in tb
        if t in ta and tb[t].get("main_score") is not None and ta[t].get("main_score") is not None
    }


def wins_note(group: SettingsGroup, base: Model, new: Model, who: str = "NITP") -> str | None:
    """``"NITP wins 23 of 25 tasks (losses: AskUbuntuDupQuestions −0.15, ...)"``."""
    deltas = task_deltas(group, base, new)
    if not deltas:
        return None
    wins = sum(d > 0 for d in deltas.values())
    losses = [
        f"{t} {d:+.2f}".replace("-", "−") for t, d in sorted(deltas.items(), key=lambda kv: kv[1]) if d < 0
    ]
    ties = sum(d == 0 for d in deltas.values())
    text = f"{who} wins {wins} of {len(deltas)} tasks"
    extra = ([f"losses: {', '.join(losses)}"] if losses else []) + ([f"{ties} tied"] if ties else [])
    return text + (f" ({'; '.join(extra)})" if extra else "") + "."


def mteb_task_tables(layout: Layout, groups: list[SettingsGroup]) -> list[Table]:
    """Tasks x models main scores, with a Δ column per size block that has NTP and NITP."""
    tables = []
    for i, group in enumerate(groups):
        models = [m for m in layout.main if group.latest(m) is not None]
        if not models:
            continue
        pairs = [p for p in layout.pairs if p.base in models and p.new in models]
        columns = [m.label for m in models] + [
            p.delta_label if len(pairs) == 1 or not p.objectives else f"Δ {p.base.preset}" for p in pairs
        ]
        table = Table(
            f"mteb-tasks{_suffix(i)}",
            f"MTEB per task ({group.description}); main scores in %",
            columns,
            higher_is_better=[None] * len(columns),
            label_header="task",
            signed=set(range(len(models), len(columns))),
            emphasis="tested",
        )
        tasks = _mteb_tasks(group)
        deltas = [task_deltas(group, b, n) for b, n in pairs]
        for g in _known_first(sorted(set(tasks.values())), MTEB_GROUPS):
            table.new_block()
            for task in [t for t, tg in tasks.items() if tg == g]:
                values = [
                    pct((group.latest(m)["scores"]["tasks"].get(task) or {}).get("main_score"))
                    for m in models
                ]
                row = table.add(f"{task} ({g})", values + [d.get(task) for d in deltas])
                row.tests = {
                    len(models) + k: P.untested(PER_TASK_NA) for k, d in enumerate(deltas) if task in d
                }
        finish_tests(table, "")
        tables.append(table)
    return tables


# ----------------------------------------------------------------------------- language modelling
def last_validation(model: Model) -> dict | None:
    lines = [m for m in model.metrics if "val_loss" in m]
    return max(lines, key=lambda m: m["step"]) if lines else None


def lm_table(layout: Layout) -> Table | None:
    """Validation cross-entropy (nats/token) and perplexity at each run's last validation."""
    table = Table(
        "lm",
        "Language modelling: validation cross-entropy and perplexity",
        ["step", "tokens", "val CE (nats/token)", "val ppl"],
        higher_is_better=[None, None, False, False],
        decimals=[0, 0, 4, 2],
        emphasis="tested",
    )
    pending = []
    for block in layout.blocks:
        rows = {
            m.key: (m.label, [v["step"], v.get("tokens"), v["val_loss"], v.get("val_ppl")])
            for m in block.main
            if (v := last_validation(m)) is not None
        }
        tests = [
            _ce_tests(pair) if {pair.base.key, pair.new.key} <= set(rows) else None for pair in block.pairs
        ]
        pending += _add_block(table, block, rows, [2, 3], tests)
    if not table.rows:
        return None
    table.notes.append("From each run's last validation line in metrics.jsonl (val_loss, val_ppl).")
    finish_tests(
        table,
        "Validation CE paired by validation batch (only between runs with the same data, seq_len, "
        "eval_batches and batch_size): paired permutation test, paired bootstrap interval (nats/token).",
    )
    for delta, pair, block in pending:
        what = f"{_block_prefix(layout, block)}{pair.name} on validation CE (nats/token)"
        steps = (delta.pair[1].values[0], delta.pair[0].values[0])
        extra = f" (at steps {steps[0]} and {steps[1]})" if steps[0] != steps[1] else ""
        _conclude(table, "validation CE", what, delta.tests[2], pair, delta.values[2], None, extra)
    return table


def _ce_tests(pair: Pair) -> dict[int, P.Tested]:
    ce = P.validation_ce(
        last_validation(pair.base), last_validation(pair.new), pair.base.config, pair.new.config
    )
    return {2: ce, 3: P.untested(PPL_NA, scale=1.0, higher_is_better=False)}


PPL_NA = "perplexity = exp(CE): its Δ is judged by the CE interval"


# ----------------------------------------------------------------------------- geometry
def geom_columns() -> list[tuple[str, str, bool | None, int]]:
    """The summary table's columns: ``(statistic, header, higher_is_better, decimals)`` of the
    registry's ``report_summary`` view (across documents is the paper's anisotropy)."""
    return [
        (m.name, m.summary_header, m.higher_is_better, m.decimals)
        for m in registry.metrics(view="report_summary")
    ]


def layer_columns() -> dict[str, str]:
    """Per-layer columns in display order, ``{statistic: header}``: the registry's
    ``report_layers`` view (absent ones are left out of a table)."""
    return {m.name: m.header for m in registry.metrics(view="report_layers")}


def __getattr__(name: str):
    """``GEOM_COLUMNS``, read from the registry when asked (PEP 562)."""
    if name == "GEOM_COLUMNS":
        return geom_columns()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def geometry_tables(layout: Layout, groups: list[SettingsGroup]) -> list[Table]:
    """Last-hidden-state effective ranks and anisotropy per model, then per-layer tables."""
    tables, columns_of = [], geom_columns()
    for i, group in enumerate(groups):
        table = Table(
            f"geometry{_suffix(i)}",
            f"Geometry of the last hidden state ({group.description})",
            ["step"] + [c[1] for c in columns_of],
            higher_is_better=[None] + [c[2] for c in columns_of],
            decimals=[0] + [c[3] for c in columns_of],
            emphasis="tested",
        )
        for block in layout.blocks:
            rows = _record_rows(group, block, _geom_row, columns_of)
            columns = list(range(1, len(columns_of) + 1))
            na = {j: P.untested(GEOM_NA, scale=1.0) for j in columns}
            for row, pair, _ in _add_block(table, block, rows, columns, [na] * len(block.pairs)):
                table.findings.append(("geometry", pair, None, row, group))
        if not table.rows:
            continue
        finish_tests(table, "")
        table.notes.append(
            "Effective rank = exp(entropy) of the normalised eigenvalues of the covariance (the paper's); "
            "the singular-value variant (Roy & Vetterli) is a different number. "
            "Anisotropy = mean cosine between different tokens' vectors."
        )
        _steps_note(table)
        tables.append(table)
        for model in layout.main:
            rec = group.latest(model)
            if rec is not None and rec["scores"].get("layers"):
                tables.append(layer_table(model, rec, f"layers-{slug(model.label)}{_suffix(i)}"))
    return tables


def layer_table(model: Model, record: dict, name: str) -> Table:
    """The per-layer table of a geom record (``nitp-geom layers``), NITP target marked.

    Columns: the statistics of :func:`layer_columns` the record holds; a record without any of
    them shows its top-level numeric statistics instead.
    """
    layers = record["scores"]["layers"]
    numeric = dict.fromkeys(k for x in layers for k, v in x.items() if k != "layer" and _is_num(v))
    present = [k for k in layer_columns() if any(isinstance(x.get(k), (int, float)) for x in layers)]
    present = present or list(numeric)
    table = Table(
        name,
        f"Per-layer statistics: {model.label}",
        [_layer_header(k) for k in present],
        higher_is_better=[None] * len(present),
        decimals=3,
        label_header="layer",
        emphasis="tested",
    )
    target = config_value(model, "nitp.target_layer") if model.role == "nitp" else None
    depth_rule = record["scores"].get("paper_depth_rule_layer")
    for layer in layers:
        k = layer.get("layer")
        marks = (["NITP target"] if target is not None and k == target else []) + (
            ["paper depth rule"] if k == depth_rule else []
        )
        shown = "last" if k == -1 else str(k)
        table.add(shown + (f" ({', '.join(marks)})" if marks else ""), [layer.get(key) for key in present])
    table.notes.append(
        "Layer 0 = token embeddings, k = output of decoder block k, last = the vector fed to the LM head; "
        "ridge = linear map from h_last[t] to h_k[t+1] scored on held-out tokens."
    )
    return table


def _layer_header(key: str) -> str:
    """A per-layer column's header: the registry's ``header`` (the name with spaces for others)."""
    m = registry.find(key)
    return m.header if m is not None else key.replace("_", " ")


# ----------------------------------------------------------------------------- ablations
def final_metric(model: Model, key: str) -> float | None:
    lines = [m for m in model.metrics if isinstance(m.get(key), (int, float))]
    return max(lines, key=lambda m: m["step"])[key] if lines else None


def ablation_tables(layout: Layout, bench: list[SettingsGroup], mteb: list[SettingsGroup]) -> list[Table]:
    """One table per ablated knob: NTP baseline, NITP reference and the variants."""
    return [
        _ablation_table(layout, block, knob, variants, bench[:1], mteb[:1])
        for block in layout.blocks
        for knob, variants in block.ablations.items()
    ]


def _ablation_table(
    layout: Layout,
    block: SizeBlock,
    knob: str,
    variants: list[Model],
    bench: list[SettingsGroup],
    mteb: list[SettingsGroup],
) -> Table:
    name = KNOBS[knob]
    if knob == "cos_reg.weight":
        rows = [(block.baseline, "NTP (baseline)")] + [
            (v, f"NTP + cos-reg, weight = {config_value(v, knob)}") for v in variants
        ]
        rows += [(block.reference, "NITP")] if block.reference else []
    else:
        rows = [(block.baseline, "NTP (baseline)")] if block.baseline else []
        rows += [(block.reference, f"NITP, {name} = {config_value(block.reference, knob)} (reference)")]
        rows += [(v, f"NITP, {name} = {config_value(v, knob)}") for v in variants]
    columns: list[tuple[str, bool | None, int, Any]] = []  # (header, higher is better, decimals, value)
    for g in bench:
        columns += [
            (BENCH_HEADERS.get(t, t), True, 2, lambda m, g=g, t=t: _task_score(g.latest(m), t))
            for t in bench_tasks(g)
        ]
        columns.append(("Avg.", True, 2, lambda m, g=g: _score(g.latest(m), "average")))
    columns += [("MTEB overall", True, 2, lambda m, g=g: _score(g.latest(m), "overall")) for g in mteb]
    columns.append(("val CE", False, 4, lambda m: (last_validation(m) or {}).get("val_loss")))
    columns.append(("final NITP loss", None, 4, lambda m: final_metric(m, "loss_nitp")))
    grid = [[get(m) for *_, get in columns] for m, _ in rows]
    keep = [j for j in range(len(columns)) if any(r[j] is not None for r in grid)]
    headline = next((j for j in keep if columns[j][0] in ("Avg.", "MTEB overall")), None)
    title = f"Ablation: {name}" + (f" ({block.size})" if len(layout.blocks) > 1 else "")
    cols = [columns[j][0] for j in keep] + (
        [f"Δ {columns[headline][0]} vs NTP"] if headline is not None and block.baseline else []
    )
    table = Table(
        f"ablation-{'cos-reg' if knob == 'cos_reg.weight' else slug(knob.split('.')[-1])}"
        + (f"-{slug(block.size)}" if len(layout.blocks) > 1 else ""),
        title,
        cols,
        higher_is_better=[columns[j][1] for j in keep] + [None] * (len(cols) - len(keep)),
        decimals=[columns[j][2] for j in keep] + [2] * (len(cols) - len(keep)),
        label_header="setting",
        signed=set(range(len(keep), len(cols))),
        emphasis="tested",
    )
    base_row = grid[0] if block.baseline else None
    for (model, label), values in zip(rows, grid):
        shown = [values[j] for j in keep]
        if len(cols) > len(keep):
            a, b = values[headline], base_row[headline]
            shown.append(None if a is None or b is None or model is block.baseline else a - b)
        row = table.add(label, shown)
        if len(cols) > len(keep) and shown[-1] is not None:
            test = _ablation_test(block.baseline, model, columns[headline][0], bench, mteb)
            row.tests = {len(cols) - 1: test}
    table.notes.append("Rows: " + "; ".join(f"{label} = {m.label}" for m, label in rows) + ".")
    if bench:
        table.notes.append(f"Benchmarks: {bench[0].description}.")
    finish_tests(table, ABLATION_METHOD)
    return table


ABLATION_METHOD = (
    "Δ vs NTP: the row's model − the NTP baseline, tested like the Avg. of the benchmark table "
    "(items paired, weighted to the suite average) or like MTEB overall (bootstrap over tasks)."
)


def _ablation_test(
    base: Model, model: Model, headline: str, bench: list[SettingsGroup], mteb: list[SettingsGroup]
) -> P.Tested:
    """The paired test of a variant's headline score against the NTP baseline's."""
    groups = bench if headline == "Avg." else mteb
    a, b = groups[0].latest(base), groups[0].latest(model)
    if a is None or b is None:
        return P.untested("the baseline or the variant has no record of these settings")
    if headline == "Avg.":
        return P.bench_average(a, b)
    return P.mteb_groups(a, b, [])[0]["Overall"]


def _task_score(rec: dict | None, task: str) -> float | None:
    """A bench record's score (%) of one task; None without the record or the task."""
    return None if rec is None else pct((rec["scores"].get("tasks", {}).get(task) or {}).get("value"))


# ----------------------------------------------------------------------------- cost
def cost_table(layout: Layout, speed_records: list[dict]) -> Table | None:
    """Per size: parameters, projector, FLOPs per token, predicted and measured NITP overhead."""
    columns = [
        "d",
        "layers",
        "params (M)",
        "active (M)",
        "projector (M, training only)",
        "train FLOPs/token",
        "NITP FLOPs/token",
        "predicted overhead (%)",
        "time ratio NITP/NTP (train logs)",
        "time ratio NITP/NTP (benchmark)",
    ]
    table = Table(
        "cost",
        "Cost of NITP",
        columns,
        higher_is_better=[None] * len(columns),
        decimals=[0, 0, 2, 2, 2, ".3g", ".3g", 2, 3, 3],
        label_header="size",
        emphasis="tested",
    )
    flops_missing = False
    for block in layout.blocks:
        model = block.reference or block.baseline or (block.others[0] if block.others else None)
        if model is None or model.preset is None:
            continue
        spec, note = model_spec(model)
        if note:
            table.notes.append(note)
        if spec is None:
            continue
        from nitp_train.models import count_parameters_from_spec

        params = count_parameters_from_spec(spec)
        d = int(spec["hidden_size"])
        train, extra = predicted_flops(spec, (model.config or {}).get("data", {}).get("seq_len"))
        flops_missing |= train is None
        if train and extra:
            table.notes.append(
                f"{block.size}: predicted overhead {100 * extra / train:.1f} % because {overhead_reason(spec, train)} "
                "(the paper: ~2.3 % predicted, 1.8 % measured at 9B MoE)."
            )
        sizes = [
            d,
            spec.get("num_hidden_layers"),
            params["total"] / 1e6,
            params["active"] / 1e6,
            12 * d * d / 1e6,
        ]
        overhead = None if train is None or extra is None else 100.0 * extra / train
        ratios = [_log_time_ratio(block), _benchmark_time_ratio(speed_records, block)]
        table.add(block.size, [*sizes, train, extra, overhead, *ratios])
    if not table.rows:
        return None
    table.notes.append(
        "Projector = SwiGLU d→4d→d (12 d² parameters), dropped at inference. "
        "Train-log ratio = median tokens/s of the NTP run over the NITP run's (not measured side by side)."
    )
    if flops_missing:
        table.notes.append("FLOPs: nitp_train.flops is not available, shown as —.")
    return table


def model_spec(model: Model) -> tuple[dict | None, str | None]:
    """The model's preset with the run config's model fields applied (None + note if unknown)."""
    from nitp.errors import UserError
    from nitp_train.models import make_config, resolve_preset

    overrides = {k: v for k, v in ((model.config or {}).get("model") or {}).items() if k != "preset"}
    try:
        spec = resolve_preset(model.preset, overrides)
        make_config(spec)  # validates the overrides
        return spec, None
    except UserError as e:
        note = f"{model.label}: model fields not understood ({e}); cost shown for the plain preset."
        try:
            return resolve_preset(model.preset), note
        except UserError:
            return None, f"{model.label}: unknown preset {model.preset!r}; no cost row."


def predicted_flops(spec: dict, seq_len: int | None) -> tuple[float | None, float | None]:
    """(training FLOPs per token, NITP extra FLOPs per token) from ``nitp_train.flops``, or Nones."""
    try:
        from nitp_train.flops import nitp_flops_per_token, training_flops_per_token
    except ImportError:
        return None, None
    from nitp_train.models import make_config

    seq = int(seq_len or spec.get("max_position_embeddings") or 2048)
    train = float(training_flops_per_token(make_config(spec), seq))
    return train, float(nitp_flops_per_token(int(spec["hidden_size"])))


def _log_time_ratio(block: SizeBlock) -> float | None:
    if not (block.baseline and block.reference):
        return None
    rates = []
    for m in (block.baseline, block.reference):
        values = [v for x in m.metrics if isinstance(v := x.get("tokens_per_s"), (int, float)) and v > 0]
        if not values:
            return None
        rates.append(statistics.median(values))
    return rates[0] / rates[1]


def _benchmark_time_ratio(speed_records: list[dict], block: SizeBlock) -> float | None:
    """``scores.step_time_ratio`` of the newest ``kind: "speed"`` record for this size."""
    preset = (block.reference or block.baseline or block.others[0]).preset
    for rec in sorted(speed_records, key=lambda r: r.get("created") or "", reverse=True):
        if (rec["model"].get("preset") or rec["settings"].get("preset")) == preset:
            ratio = rec["scores"].get("step_time_ratio")
            if isinstance(ratio, (int, float)):
                return float(ratio)
    return None


# ----------------------------------------------------------------------------- where they differ
def _depth_label(layer) -> str:
    """A layer's label: last, 0 (embeddings), k; a layer that is not a number as given."""
    return {-1: "last", 0: "0 (embeddings)"}.get(layer, str(layer)) if isinstance(layer, int) else str(layer)


def depth_mteb_tables(depth_sets) -> list[Table]:
    """MTEB overall score (%) by layer, one column per model, from ``reports.depth`` sweeps.

    Rows: every layer any model was scored at, by depth (0 = embeddings, k = block k, last =
    after the final norm); the best layer of each model is bold; "—" = not scored.
    """
    tables = []
    for i, depth in enumerate(depth_sets):
        profiles = list(depth.by_model.values())
        layers = sorted({k for p in profiles for k in p.points}, key=lambda k: (k == -1, k))
        table = Table(
            f"depth-mteb{_suffix(i)}",
            f"MTEB overall score by layer ({depth.description})",
            [p.model.label for p in profiles],
            higher_is_better=[True] * len(profiles),
            decimals=2,
            label_header="layer",
        )
        for k in layers:
            table.add(_depth_label(k), [pct(p.points.get(k)) for p in profiles])
        best = [
            f"{p.model.label}: {_depth_label(max(p.points, key=p.points.get))}" for p in profiles if p.points
        ]
        table.notes.append(
            "Each layer scored on the same tasks (nitp-eval mteb --layers); the paper scores only the last "
            "layer. Best layer per model: " + "; ".join(best) + "."
        )
        tables.append(table)
    return tables


def similarity_tables(maps) -> list[Table]:
    """Each CKA map of ``reports.depth.similarity_maps`` as a table: layer i (rows) x layer j."""
    tables = []
    for m in maps:
        table = Table(
            f"similarity-{slug(m.model.label)}",
            f"{m.what.replace('_', ' ')}: {m.model.label} layer i (rows) x layer j of {m.reference}",
            [_depth_label(j) for j in m.cols],
            higher_is_better=[None] * len(m.cols),
            decimals=3,
            label_header="layer",
        )
        for i, row in zip(m.rows, m.matrix):
            table.add(_depth_label(i), list(row))
        tables.append(table)
    return tables


def overhead_reason(spec: dict, train_flops: float) -> str:
    """Why NITP costs more at small sizes: the projector's 72 d² FLOPs per token against ~6 N."""
    from nitp_train.models import count_parameters_from_spec

    d = int(spec["hidden_size"])
    active = count_parameters_from_spec(spec)["active"]
    return (
        f"the projector (12 d² = {12 * d * d / 1e6:.2f} M parameters, 72 d² = {72 * d * d:.3g} FLOPs per token) "
        f"is large next to a {active / 1e6:.2f} M-parameter model ({train_flops:.3g} FLOPs per token); at 9B-A1B "
        "(d = 1280, ~1B active) the same projector is ~2 % of the model's FLOPs"
    )
