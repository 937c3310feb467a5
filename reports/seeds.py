"""Runs that differ only in their seed, summarised together: mean ± sd, 95% interval, paired Δ.

A *seed set* is the runs of one block (size) whose resolved configs are equal except ``seed``
and ``run_name`` (same objective, knobs, data, steps). For the NTP baseline's set and the NITP
reference's set, :func:`seed_tables` writes one table per bench / MTEB settings group:

=========================  ==================================================================
row                        columns
=========================  ==================================================================
``<metric>: NTP (k seeds)`` mean, sd (ddof = 1), Student-t 95% interval of the mean, seeds
``<metric>: Δ by seed``    mean of per-seed NITP − NTP, its t interval, paired t-test p,
                           Holm-adjusted p over the Δ rows of the table, seeds paired
=========================  ==================================================================

(:func:`reports.stats.seed_summary`, :func:`reports.stats.paired_by_seed`, :func:`~reports.stats.with_holm`).

Example
-------
>>> [s.label for s in seed_sets(study.models)]                    # doctest: +SKIP
['NTP tiny-dense (3 seeds)', 'NITP tiny-dense (3 seeds)']
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Callable

from . import stats
from .formats import Table
from .grouping import Layout, SettingsGroup
from .inputs import OBJECTIVE_NAMES, Model

IGNORED_KEYS = {"seed", "run_name"}


@dataclass
class SeedSet:
    """Runs equal in everything but the seed; ``models`` in seed order."""

    role: str
    models: list[Model]

    @property
    def label(self) -> str:
        preset = self.models[0].preset or ""
        return f"{OBJECTIVE_NAMES.get(self.role, self.role)} {preset} ({len(self.models)} seeds)".replace(
            "  ", " "
        )

    def by_seed(self, value: Callable[[Model], float | None]) -> dict[str, float]:
        """``{seed: value(model)}`` of the runs that have a value."""
        return {str(seed_of(m)): float(v) for m in self.models if (v := value(m)) is not None}


def seed_of(model: Model):
    return (model.config or {}).get("seed")


def _signature(model: Model) -> str:
    cfg = {k: v for k, v in (model.config or {}).items() if k not in IGNORED_KEYS}
    return model.role + json.dumps(cfg, sort_keys=True, default=str)


def seed_sets(models: list[Model]) -> list[SeedSet]:
    """Sets of at least two runs with distinct seeds and otherwise equal configs."""
    sets: dict[str, list[Model]] = {}
    for m in models:
        if m.config is not None and seed_of(m) is not None:
            sets.setdefault(_signature(m), []).append(m)
    out = []
    for members in sets.values():
        by_seed = {str(seed_of(m)): m for m in members}
        if len(by_seed) >= 2:
            out.append(SeedSet(members[0].role, sorted(by_seed.values(), key=lambda m: str(seed_of(m)))))
    return out


def set_of(model: Model | None, sets: list[SeedSet]) -> SeedSet | None:
    return next((s for s in sets if model is not None and model in s.models), None)


COLUMNS = ["mean", "sd", "95% CI low", "95% CI high", "p", "p_Holm", "seeds"]


def seed_table(
    name: str,
    title: str,
    metrics: list[tuple[str, Callable[[Model], float | None]]],
    base: SeedSet,
    new: SeedSet,
    pair=None,
    what: str = "",
) -> Table:
    """Per metric: each set's mean ± sd [t interval] and the Δ paired by seed (values in %)."""
    table = Table(
        name,
        title,
        COLUMNS,
        higher_is_better=[None] * len(COLUMNS),
        decimals=[2, 2, 2, 2, 3, 3, 0],
        label_header="metric",
        emphasis="tested",
        unsigned={4, 5, 6},  # p, p_Holm and the seed count carry no sign
    )
    by_metric = [(label, base.by_seed(value), new.by_seed(value)) for label, value in metrics]
    deltas = {label: stats.paired_by_seed(a, b) for label, a, b in by_metric if len(set(a) & set(b)) >= 2}
    if len(deltas) > 1:  # Holm over the Δ rows of this table
        deltas = dict(zip(deltas, stats.with_holm(list(deltas.values()))))
    for label, a, b in by_metric:
        table.new_block()
        for s, values in ((base, a), (new, b)):
            if values:
                m = stats.seed_summary(values)
                table.add(
                    f"{label}: {s.label}",
                    [100 * m.mean, _pct(m.sd), _pct(m.ci_low), _pct(m.ci_high), None, None, m.n],
                )
        if (c := deltas.get(label)) is not None:
            values = [100 * c.delta, None, 100 * c.ci_low, 100 * c.ci_high, c.p_value, c.p_holm, c.n]
            row = table.add(f"{label}: Δ NITP − NTP by seed", values, kind="delta")
            if c.significant and (c.p_holm if c.p_holm is not None else c.p_value) < 1 - c.confidence:
                row.hand_bold = {0}
    table.notes.append(
        "Mean, sd (ddof = 1) and Student-t 95% interval of the mean over seeds; Δ: NITP − NTP paired by "
        "seed (paired t-test; p_Holm over the Δ rows of this table). Bold: only a Δ whose interval "
        "excludes 0 with p < 0.05."
    )
    table.notes.append(" ".join(f"{s.label}: {', '.join(m.label for m in s.models)}." for s in (base, new)))
    last = metrics[-1][0]
    if (headline := deltas.get(last)) is not None:
        verdict = stats.verdict(
            f"NITP − NTP on {last}, paired by seed", headline, names=("NTP", "NITP"), digits=2
        )
        table.verdicts.append(
            f"{verdict} (a claim about the objectives at this size, over {headline.n} seeds)"
        )
        from .paired import Tested
        from .power import power_sentence

        tested = Tested(headline, units="seeds")
        line = power_sentence(tested, what)
        table.power += [line] if line else []
        if pair is not None:
            table.findings.append((f"{what} seeds", pair, tested, 100 * headline.delta, None))
    return table


def _pct(v: float | None) -> float | None:
    return None if v is None else 100 * v


def seed_tables(
    layout: Layout, study_models: list[Model], bench: list[SettingsGroup], mteb: list[SettingsGroup]
) -> list[Table]:
    """One seed table per bench and MTEB settings group and block with NTP and NITP seed sets."""
    from .tables import slug

    sets = seed_sets(study_models)
    kinds = (("bench", bench, "Benchmarks", "bench average"), ("mteb", mteb, "MTEB", "mteb overall"))
    tables = []
    for block in layout.blocks:
        base, new = set_of(block.baseline, sets), set_of(block.reference, sets)
        if base is None or new is None:
            continue
        suffix = f" ({block.size})" if len(layout.blocks) > 1 else ""
        slug_ = f"-{slug(suffix)}" if suffix else ""
        pair = next((p for p in block.pairs if p.base is block.baseline and p.new is block.reference), None)
        for kind, groups, title, what in kinds:
            for i, group in enumerate(groups):
                name = f"{kind}-seeds{f'-{i + 1}' if i else ''}{slug_}"
                heading = f"{title} over seeds ({group.description}){suffix}; in %"
                tables.append(seed_table(name, heading, _seed_metrics(kind, group), base, new, pair, what))
    return [t for t in tables if t.rows]


def _seed_metrics(kind: str, group: SettingsGroup) -> list[tuple[str, Callable[[Model], float | None]]]:
    """The rows of a seed table: each task and the average (bench), or each group and overall (MTEB)."""
    from .tables import BENCH_HEADERS, bench_tasks, mteb_group_names

    if kind == "bench":
        return [
            (
                BENCH_HEADERS.get(t, t),
                lambda m, t=t: (_scores(group, m).get("tasks", {}).get(t) or {}).get("value"),
            )
            for t in bench_tasks(group)
        ] + [("Avg.", lambda m: _scores(group, m).get("average"))]
    return [
        (g, lambda m, g=g: _scores(group, m).get("groups", {}).get(g)) for g in mteb_group_names(group)
    ] + [("MTEB overall", lambda m: _scores(group, m).get("overall"))]


def _scores(group: SettingsGroup, model: Model) -> dict:
    """The ``scores`` of the model's latest record in ``group`` (empty without one)."""
    return (group.latest(model) or {}).get("scores", {})
