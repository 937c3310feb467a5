"""`nitp-report compare`: runs and records in, a paper-style report out.

``compare(inputs, out_dir)`` writes::

    DIR/report.md            every table inline, figures linked, notes on what was kept apart
    DIR/tables/<name>.md|.tex|.csv
    DIR/tables/<name>.stats.csv   every tested Δ: delta, ci_low, ci_high, p, p_holm, n, test
    DIR/figures/<name>.png|.pdf   (forest-<table>: the Δs of a table with their intervals)

Every Δ carries its paired statistics (:mod:`reports.paired`, :mod:`reports.seeds`); bold marks
only significant ones; each compared pair gets a one-line verdict under its table.

It reads run directories (config.yaml, metrics.jsonl, RUN/results/**.json) and result
records, never recomputes what a record holds, and never averages records of different
settings together (each settings group gets its own table, and the report says so). The
whole folder is built beside ``DIR`` and swapped in at the end (:mod:`reports.outdir`), so an
interrupted call or a full disk leaves the previous report exactly as it was, and a rerun never
leaves a stale table or figure behind.

Example
-------
>>> from reports import compare
>>> compare(["runs/tiny-ntp", "runs/tiny-nitp"], "reports/quickstart")      # doctest: +SKIP
PosixPath('reports/quickstart/report.md')
"""

from __future__ import annotations

import datetime as _dt
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from nitp.io import atomic_write_text

from .formats import Table
from .grouping import KNOBS, Layout, arrange, settings_groups
from .inputs import Study, load_inputs

KNOWN_KINDS = {"bench", "mteb", "geom", "speed"}


@dataclass
class Report:
    """What a compare call produced, in report order."""

    out_dir: Path
    sections: list[tuple[str, list[str]]] = field(default_factory=list)  # (heading, markdown blocks)
    written: set[Path] = field(default_factory=set)
    notes: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    conclusion: str = ""  # the paragraph report.md opens with (reports.ledger.conclusion)

    def table(self, heading: str, table: Table | None) -> None:
        if table is None:  # a builder with nothing to show
            return
        files = {"md": (".md", table.to_markdown()), "tex": (".tex", table.to_latex())}
        files["csv"] = (".csv", table.to_csv())
        if table.tested():
            files["statistics"] = (".stats.csv", table.to_stats_csv())
        for suffix, text in files.values():
            self.written.add(atomic_write_text(self.out_dir / "tables" / f"{table.name}{suffix}", text))
        links = " · ".join(f"[{link}](tables/{table.name}{suffix})" for link, (suffix, _) in files.items())
        self.tables.append(table)
        self._add(heading, table.to_markdown() + f"\n<sub>tables/{table.name}: {links}</sub>")

    def figure(self, heading: str, paths: list[Path], caption: str) -> None:
        self.written.update(paths)
        png, pdf = (p.relative_to(self.out_dir).as_posix() for p in paths)
        self._add(heading, f"![{caption}]({png})\n\n*{caption}* ([PDF]({pdf}))")

    def _add(self, heading: str, block: str) -> None:
        for name, blocks in self.sections:
            if name == heading:
                blocks.append(block)
                return
        self.sections.append((heading, [block]))


def compare(
    inputs: list[str | os.PathLike],
    out_dir: str | os.PathLike,
    labels: dict[str, str] | None = None,
    *,
    per_task: bool = False,
    baseline: str | None = None,
    log: Callable[[str], None] | None = None,
) -> Path:
    """Build the report of ``inputs`` (run dirs, record files, folders of records) in ``out_dir``.

    Parameters
    ----------
    inputs : run directories, result record files or folders of records
    out_dir : where ``report.md``, ``tables/`` and ``figures/`` go (created)
    labels : renames, ``{"run name or default label": "new label"}``
    per_task : also write the MTEB per-task table
    baseline : compare every model with this one (label, run name or run directory) instead of
        NTP baseline vs NITP reference; default: the first input when no input is labelled NTP/NITP
    log : receives one line per skipped figure or note (default: ignore)

    Returns
    -------
    Path of ``report.md``.
    """
    from .outdir import check_report_folder, staged_report

    log = log or (lambda _msg: None)
    out = Path(out_dir).expanduser()
    check_report_folder(out)  # before any work: a run directory or a foreign folder is refused
    study = load_inputs(list(inputs), labels)
    layout = arrange(study, baseline)
    with staged_report(out) as stage:  # the whole folder is swapped in at the end, or nothing
        report = Report(out_dir=stage, notes=list(layout.notes))
        _build(report, study, layout, per_task, log)
        atomic_write_text(stage / "report.md", render(report, study, layout))
    return out / "report.md"


def _build(report: Report, study: Study, layout: Layout, per_task: bool, log: Callable[[str], None]) -> None:
    """Every table, figure and note of the report, written under ``report.out_dir``."""
    from .tables import depth_mteb_tables, similarity_tables

    for rec in (rec for model in study.models for rec in model.records):
        if rec.get("kind") not in KNOWN_KINDS:
            report.notes.append(
                f"{rec['_path']}: record kind {rec.get('kind')!r} is not reported (known: bench, mteb, geom, speed)."
            )
    groups = {kind: settings_groups(study.models, kind) for kind in ("bench", "mteb", "geom")}
    for kind, gs in groups.items():
        if len(gs) > 1:
            report.notes.append(
                f"{kind} records come in {len(gs)} different settings ({'; '.join(g.description for g in gs)}): "
                "they are kept in separate tables and never averaged together."
            )
    _tables(report, study, layout, groups, per_task)
    _ledger(report, study, layout, groups)
    where = where_they_differ(study, layout, groups)
    for t in depth_mteb_tables(where[0]) + similarity_tables(where[2]):
        report.table(WHERE, t)
    _figures(report, study, layout, groups, where)
    _forests(report)
    for line in report.skipped + report.notes:
        log(line)


def _tables(report: Report, study: Study, layout: Layout, groups: dict, per_task: bool) -> None:
    from . import tables as T

    report.table("Models", models_table(study, layout))
    for t in T.bench_tables(layout, groups["bench"]):
        report.table("Benchmarks", t)
    for t in T.mteb_tables(layout, groups["mteb"]):
        report.table("MTEB (frozen representations)", t)
    if per_task:
        for t in T.mteb_task_tables(layout, groups["mteb"]):
            report.table("MTEB (frozen representations)", t)
    from .seeds import seed_tables

    for t in seed_tables(layout, study.models, groups["bench"], groups["mteb"]):
        report.table("Seeds", t)
    report.table("Language modelling", T.lm_table(layout))
    from .regime import markdown_sections  # geometry at matched validation CE, the gradient probe

    for heading, block in markdown_sections([m.run_dir for m in study.models if m.run_dir is not None]):
        report._add(heading, block)
    for t in T.geometry_tables(layout, groups["geom"]):
        report.table("Geometry", t)
    for t in T.ablation_tables(layout, groups["bench"], groups["mteb"]):
        report.table("Ablations", t)
    report.table("Cost", T.cost_table(layout, study.speed))


LEDGER = "Claim ledger"


def _ledger(report: Report, study: Study, layout: Layout, groups: dict) -> None:
    """The paper's claims beside this comparison's numbers (reports.ledger), the regime reached
    and the power of each comparison: the report's first section, and its opening paragraph."""
    from . import ledger as L

    tables = list(report.tables)
    geom = groups["geom"][0] if groups["geom"] else None
    ledgers = {}
    for i, pair in enumerate(layout.pairs):
        ledgers[pair.name] = entries = L.claim_entries(pair, tables, study.models, geom, study.speed)
        name = "ledger" if i == 0 else f"ledger-{i + 1}"
        title = f"The paper's claims: {pair.name}"
        if len(layout.pairs) > 1:  # several sizes or pairs: say which one each table is
            title += f" ({pair.new.label} vs {pair.base.label})"
        report.table(LEDGER, L.ledger_table(name, title, entries))
    runs = [m for m in layout.main if m.config is not None]
    if runs:
        report.table(LEDGER, L.regime_table(runs))
    report.table(LEDGER, L.power_table(tables))
    report.conclusion = L.conclusion(layout, tables, ledgers, layout.main)
    report.sections.sort(key=lambda s: s[0] != LEDGER)  # first, right under the conclusion


WHERE = "Where they differ (by depth)"


def where_they_differ(study: Study, layout: Layout, groups: dict) -> tuple[list, list, list]:
    """(MTEB sweeps, geometry depth profiles, CKA maps) the records hold (``reports.depth``);
    all empty, and no section, unless there is an MTEB sweep, a CKA map or a depth statistic
    beyond the effective rank (which the Geometry section already draws)."""
    from .depth import geom_depth_profiles, mteb_depth_profiles, similarity_maps

    mteb = mteb_depth_profiles(layout.main, groups["mteb"])
    geom = geom_depth_profiles(layout.main, groups["geom"])
    maps = similarity_maps(layout.main, groups["geom"])
    beyond_rank = any(not d.what.startswith("effective rank") for d in geom)
    return (mteb, geom, maps) if mteb or maps or beyond_rank else ([], [], [])


def _figures(report: Report, study: Study, layout: Layout, groups: dict, where: tuple) -> None:
    """Every figure of the report, drawn in report order; one with nothing to plot is listed as skipped."""
    from rich.console import Console
    from rich.progress import track

    from . import figures as F
    from .seeds import seed_sets
    from .tables import _suffix, slug

    def job(heading: str, caption: str, plot, *args) -> Callable[[], tuple]:
        return lambda: (heading, plot(*args), caption)

    figs, dynamics = report.out_dir / "figures", "Training dynamics"
    caption = (
        "Effective rank and mean cosine of the last hidden states during "
        "training (smoothed; band = rolling standard deviation)."
    )
    jobs = [job(dynamics, caption, F.plot_training_geometry, layout.main, figs / "training_geometry")]
    if sets := seed_sets(study.models):
        caption = (
            "Effective rank and mean cosine of the last hidden states over seeds "
            "(line = mean over seeds, band = min-max across seeds)."
        )
        jobs.append(job(dynamics, caption, F.plot_seed_geometry, sets, figs / "training_geometry_seeds"))
    for i, group in enumerate(groups["bench"]):
        caption = f"Average benchmark score over checkpoints ({group.description})."
        stem = figs / f"bench_vs_step{_suffix(i)}"
        jobs.append(job(dynamics, caption, F.plot_bench_curve, layout.main, group, layout.pairs, stem))
    nitp_runs = [m for m in layout.main if m.role == "nitp"]
    if not nitp_runs:
        report.skipped.append("NITP-loss figure skipped: no NITP run among the inputs.")
    for model in nitp_runs:

        def loss(model=model):
            phases, paths = F.plot_nitp_loss(model, figs / f"nitp_loss-{slug(model.label)}")
            return dynamics, paths, f"NITP loss of {model.label}: {phases.describe()}."

        jobs.append(loss)
    for i, group in enumerate(groups["geom"]):
        caption = f"Per-layer statistics ({group.description}); dashed: the NITP target layer."
        stem = figs / f"layer_profiles{_suffix(i)}"
        jobs.append(job("Geometry", caption, F.plot_layer_profiles, layout.main, group, stem))
    mteb, geom, maps = where
    if mteb or geom:
        sets = seed_sets(layout.main)
        caption = F.depth_caption(mteb, geom, sets)
        jobs.append(job(WHERE, caption, F.plot_depth_profiles, mteb, geom, sets, figs / "depth_profiles"))
    if maps:
        caption = "CKA of layer i with layer j (1 = the same representation up to rotation and scale)."
        jobs.append(job(WHERE, caption, F.plot_similarity_maps, maps, figs / "similarity_maps"))
    for draw in track(jobs, description="figures", transient=True, console=Console(stderr=True)):
        try:
            report.figure(*draw())
        except F.NothingToPlot as e:
            report.skipped.append(f"figure skipped: {e}")


FOREST_TABLES = ("bench", "mteb")


def _forests(report: Report) -> None:
    """A forest plot of every bench / MTEB table's Δs that have an interval."""
    from . import figures as F

    for table in list(report.tables):
        if not table.name.startswith(FOREST_TABLES) or table.name.startswith("mteb-tasks"):
            continue
        rows = F.forest_rows(table)
        if not rows:
            report.skipped.append(f"forest plot of {table.name} skipped: no Δ with an interval.")
            continue
        bench = table.name.startswith("bench")
        title = f"{_delta_name(table)}, 95% intervals: {table.title}"
        units = "points (%)" if bench else "points of the main score (%)"
        paths = F.plot_forest(
            rows, title, f"Δ in {units}", report.out_dir / "figures" / f"forest-{table.name}"
        )
        report.figure(
            "Benchmarks" if bench else "MTEB (frozen representations)",
            paths,
            f"Δ with its 95% interval per column of {table.name}; filled = significant (p < 0.05 after Holm), dashed line = no difference.",
        )


def _delta_name(table: Table) -> str:
    """The Δ rows' label when the table has one kind (``Δ (NITP − NTP)``), else ``Δ``."""
    labels = {r.label for r in table.rows if r.kind == "delta"}
    return labels.pop() if len(labels) == 1 else "Δ"


def models_table(study: Study, layout: Layout) -> Table:
    """Who is who: label, objective, size, step, tokens, role in the comparison, source."""
    roles = {}
    for block in layout.blocks:
        if block.compared is not None and block.baseline:  # --baseline, or no objective labels
            roles[block.baseline.key] = "baseline"
            roles.update({m.key: f"compared with {block.baseline.label}" for m in block.compared})
            continue
        if block.baseline:
            roles[block.baseline.key] = "NTP baseline"
        if block.reference:
            roles[block.reference.key] = "NITP reference"
        for knob, variants in block.ablations.items():
            for v in variants:
                roles[v.key] = f"ablation: {KNOBS[knob]}"
    table = Table(
        "models",
        "Models compared",
        ["objective", "size", "step", "tokens", "role", "source"],
        higher_is_better=[None] * 6,
        decimals=0,
    )
    for m in study.models:
        source = str(m.run_dir) if m.run_dir else f"{len(m.records)} record(s)"
        role = roles.get(m.key, "shown as is")
        table.add(m.label, [m.objective or "—", m.preset or "—", m.step, m.tokens, role, source])
    return table


def render(report: Report, study: Study, layout: Layout) -> str:
    now = _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    any_pair = any(b.compared is not None for b in layout.blocks)
    delta_rule = (
        f"each model − the baseline {layout.blocks[0].baseline.label}"
        if any_pair
        else "NITP reference − NTP baseline of the same size"
    )
    lines = [
        "# NTP vs NITP report" if not any_pair else "# Comparison report",
        "",
        f"Generated by `nitp-report compare` on {now} from {len(study.sources)} input(s): "
        + ", ".join(f"`{s}`" for s in study.sources)
        + ".",
        f"Scores are percentages (records hold fractions); Δ = {delta_rule}, "
        "shown as Δ [95% interval] p n; bold only where the interval excludes 0 and p < 0.05 (Holm-adjusted "
        "within the table); [n/a] = no interval, the table's notes say why; — = not measured.",
        "",
    ]
    if report.conclusion:
        lines[2:2] = [f"**Conclusion.** {report.conclusion}", ""]
    for heading, blocks in report.sections:
        lines += [f"## {heading}", ""]
        for block in blocks:
            lines += [block.rstrip(), ""]
    if report.notes or report.skipped:
        lines += ["## Notes", ""] + [f"- {n}" for n in report.notes + report.skipped] + [""]
    return "\n".join(lines)
