"""The claim ledger: each of the paper's claims beside what this comparison measured, and a verdict.

For every compared pair (``new`` − ``base``; NITP − NTP by default) the ledger lists the paper's
claims (PAPER_NOTES.md) with this study's value, its interval, n with its unit, and a verdict:

- **consistent**: the interval lies on the claimed side of 0 (an equivalence claim: inside the
  paper's margin) and the test agrees;
- **contradicted**: the interval lies on the other side (outside the margin);
- **inconclusive at this n**: neither, or no interval at all (one number per model).

A claim about the *objectives* needs several seeds of each: a verdict from the items, batches or
tasks of one seed pair is about *these two checkpoints*, and says so. Beside it, the regime the
runs reached (tokens per active parameter, steps, warm-up) and the paper's, and the power of
each comparison (:mod:`reports.power`).

The ledger reads what the tables already computed (``Table.findings``) and the runs' metrics
and configs; it tests nothing new except the paired-by-seed Δs of geometry and validation CE.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

from . import stats
from .formats import Table
from .grouping import Layout, Pair
from .inputs import Model
from .paired import Tested, passes_test

CONSISTENT, CONTRADICTED, INCONCLUSIVE = "consistent", "contradicted", "inconclusive at this n"
PAPER_TOKENS_PER_PARAM = (30, 50)  # tokens per active parameter where NTP and NITP separate
PAPER_STEPS, PAPER_WARMUP = 40_000, 2_000
VAL_CE_MARGIN = 0.002


@dataclass
class Entry:
    """One ledger row."""

    claim: str
    paper: str
    value: str = "—"
    n: str = "—"
    verdict: str = INCONCLUSIVE
    why: str = ""


# ----------------------------------------------------------------------------- verdicts
def directional(result: Any, sign: int) -> str:
    """consistent / contradicted / inconclusive of an effect claimed to have ``sign`` (+1 / -1)."""
    if result is None or result.ci_low is None or result.ci_high is None:
        return INCONCLUSIVE
    tested = passes_test(result)
    if tested and sign * result.ci_low > 0 and sign * result.ci_high > 0:
        return CONSISTENT
    if tested and sign * result.ci_low < 0 and sign * result.ci_high < 0:
        return CONTRADICTED
    return INCONCLUSIVE


def equivalence(result: Any, margin: float) -> str:
    """An "unchanged within ±margin" claim: the interval inside the margin, or wholly outside it."""
    if result is None or result.ci_low is None or result.ci_high is None:
        return INCONCLUSIVE
    if -margin <= result.ci_low and result.ci_high <= margin:
        return CONSISTENT
    if result.ci_low > margin or result.ci_high < -margin:
        return CONTRADICTED
    return INCONCLUSIVE


def _interval(result: Any, scale: float, digits: int) -> str:
    if result is None:
        return "—"
    head = f"{scale * result.delta:+.{digits}f}"
    if result.ci_low is None:
        return head + " [no interval]"
    return f"{head} [{scale * result.ci_low:+.{digits}f}, {scale * result.ci_high:+.{digits}f}]"


def _scope(test: Tested, pair: Pair) -> str:
    """Who a verdict is about: the objectives (seeds) or these checkpoints (one seed pair)."""
    if test.unit == "seeds":
        return "about the objectives at this size and regime"
    if pair.objectives:
        return f"about these two checkpoints ({test.unit} of one seed pair), not the objectives"
    return f"about these checkpoints ({test.unit})"


# ----------------------------------------------------------------------------- sources
def _finding(tables: list[Table], what: str, pair: Pair) -> tuple | None:
    """The first (what, pair, Tested, value, extra) a table recorded for ``pair``."""
    for table in tables:
        for f in table.findings:
            if f[0] == what and f[1] is pair:
                return f
    return None


def _final(model: Model, key: str) -> float | None:
    """Mean of ``key`` over the last 10 % of the run's logged steps (a steadier end value)."""
    rows = [(m["step"], m[key]) for m in model.metrics if isinstance(m.get(key), (int, float))]
    if not rows:
        return None
    last = max(s for s, _ in rows)
    tail = [v for s, v in rows if s >= 0.9 * last]
    return float(sum(tail) / len(tail))


def _geom_value(model: Model, group, key: str) -> float | None:
    rec = group.latest(model) if group is not None else None
    value = ((rec or {}).get("scores", {}).get("summary") or {}).get(key)
    return float(value) if isinstance(value, (int, float)) else None


def _by_seed_test(pair: Pair, models: list[Model], value) -> Tested | None:
    """Paired-by-seed Δ of ``value(model)`` between the pair's seed sets (None: no seed sets)."""
    from .seeds import seed_sets, set_of

    sets = seed_sets(models)
    base, new = set_of(pair.base, sets), set_of(pair.new, sets)
    if base is None or new is None:
        return None
    a, b = base.by_seed(value), new.by_seed(value)
    if len(set(a) & set(b)) < 2:
        return None
    return Tested(stats.paired_by_seed(a, b), scale=1.0, units="seeds")


# ----------------------------------------------------------------------------- claims
def _geometry_claim(claim, paper, key, metric_key, sign, pair, models, geom_group) -> Entry:
    if warm := _warmup_reached(pair):
        return Entry(claim, paper, why=warm)
    use_geom = geom_group is not None and all(_geom_value(m, geom_group, key) is not None for m in pair)

    def value(m: Model) -> float | None:
        return _geom_value(m, geom_group, key) if use_geom else _final(m, metric_key)

    source = f"geom records ({key})" if use_geom else f"{metric_key} in metrics.jsonl, last 10 % of steps"
    seeds = _by_seed_test(pair, models, value)
    if seeds is not None:
        r = seeds.result
        shown = _interval(r, 1.0, 4 if abs(r.delta) < 1 else 2)
        why = f"paired by seed, {source}; {_scope(seeds, pair)}"
        return Entry(claim, paper, shown, f"{r.n} seeds", directional(r, sign), why)
    a, b = value(pair.base), value(pair.new)
    if a is None or b is None:
        return Entry(claim, paper, verdict="not measured", why=f"no {source} for both models")
    why = f"{source}; one number per model gives no interval (needs several seeds of each)"
    return Entry(claim, paper, f"{b - a:+.3g} [no interval]", "1 model pair", why=why)


def _warmup_reached(pair: Pair) -> str:
    """Why an "after warm-up" claim cannot be judged (empty when the runs passed warm-up)."""
    for m in (pair.base, pair.new):
        warm = ((m.config or {}).get("train") or {}).get("warmup_steps")
        if isinstance(warm, int) and m.step is not None and m.step <= warm:
            return f"not reached: {m.label} ends at step {m.step}, its warm-up at {warm}"
    return ""


def _tested_claim(claim, paper, test: Tested | None, pair: Pair, judge, scale, digits, extra="") -> Entry:
    if test is None:
        return Entry(claim, paper, verdict="not measured", why="no comparable records of both models")
    if (r := test.result) is None:
        return Entry(claim, paper, why=test.reason or "no interval")
    why = _scope(test, pair) + (f"; flagged: {test.flag}" if test.flag else "")
    return Entry(claim, paper, _interval(r, scale, digits) + extra, f"{r.n:,} {test.unit}", judge(r), why)


def _test_of(tables, pair: Pair, *whats: str) -> Tested | None:
    """The test of the first of ``whats`` a table recorded for ``pair`` (the seed-level one first)."""
    found = next((f for what in whats if (f := _finding(tables, what, pair)) is not None), None)
    return found[2] if found else None


def _mteb_entry(tables, pair: Pair) -> Entry:
    found = _finding(tables, "mteb overall", pair)
    test = _test_of(tables, pair, "mteb overall seeds", "mteb overall")
    sign = found[4] if found else None
    extra = f"; wins {sign.wins} of {sign.n + sign.ties}" if sign is not None else ""

    def judge(r):
        verdict = directional(r, +1)
        if sign is None or verdict != CONSISTENT:
            return verdict
        return CONSISTENT if sign.p_value < 0.05 and sign.wins > sign.losses else INCONCLUSIVE

    return _tested_claim(
        "MTEB overall up, wins most tasks", "+2.3 points; wins 23 of 25", test, pair, judge, 100, 2, extra
    )


def _phases_entry(pair: Pair) -> Entry:
    from .phases import run_phases

    entry = Entry(
        "NITP loss: drop, hump, long decline (three phases)", "I < 100 steps, II hump ~2k, III decline"
    )
    model = pair.new
    if not any(isinstance(m.get("loss_nitp"), (int, float)) for m in model.metrics):
        entry.verdict, entry.why = "not measured", f"{model.label} logged no NITP loss"
        return entry
    phases = run_phases(model.metrics, model.config)
    found = [p is not None for p in (phases.initial_min, phases.hump_peak, phases.converged)]
    entry.value, entry.n = phases.describe(), "1 run"
    if all(found):
        entry.verdict = CONSISTENT
    elif (model.step or 0) >= PAPER_WARMUP and not found[1]:
        entry.verdict = CONTRADICTED
        entry.why = f"no hump by step {model.step} (the paper's peaks during its 2k-step warm-up)"
    else:
        entry.why = f"the run ends at step {model.step}: the paper's hump ends near {PAPER_WARMUP:,} steps"
    return entry


def _cost_entries(pair: Pair, speed: list[dict]) -> list[Entry]:
    from nitp_train.flops import nitp_flops_per_token, paper_moe_flops_per_token

    from .tables import model_spec, overhead_reason, predicted_flops

    model = pair.new if pair.new.preset else pair.base
    # the paper's Appendix G at 9B-A1B: d 1280, expert 640, 8 routed + 1 shared, 24 layers, V 152064
    ref = nitp_flops_per_token(1280) / paper_moe_flops_per_token(1280, 640, 9, 24, 152064)
    flops = Entry("NITP training FLOPs overhead", "~2.3 % (9B-A1B MoE, closed form)")
    flops.verdict = CONSISTENT if abs(100 * ref - 2.3) < 0.1 else CONTRADICTED
    flops.why = f"formula check: the paper's closed form gives {100 * ref:.2f} % at 9B-A1B"
    spec = model_spec(model)[0] if model.preset and model.config is not None else None
    if spec is not None:
        train, extra = predicted_flops(spec, ((model.config or {}).get("data") or {}).get("seq_len"))
        if train and extra:
            flops.value = f"{100 * extra / train:.2f} % predicted at {model.preset}"
            flops.why += f"; at this size {overhead_reason(spec, train)}"
    time = Entry("NITP wall-clock overhead", "~1.8 % (9B MoE, 5k steps)")
    ratio = _time_ratio(pair, speed)
    if ratio is not None:
        time.value, time.n = f"{100 * (ratio[0] - 1):+.1f} %", ratio[1]
        time.why = "a time ratio at this size, not at the paper's; small models are latency-bound"
    else:
        time.verdict, time.why = "not measured", "no throughput of both runs"
    return [flops, time]


def _time_ratio(pair: Pair, speed: list[dict]) -> tuple[float, str] | None:
    from .grouping import SizeBlock
    from .tables import _benchmark_time_ratio, _log_time_ratio

    block = SizeBlock(size="", baseline=pair.base, reference=pair.new)
    bench = _benchmark_time_ratio(speed, block) if pair.new.preset else None
    if bench is not None:
        return bench, "side-by-side benchmark"
    logs = _log_time_ratio(block)
    return (logs, "2 runs' logs (not side by side)") if logs is not None else None


# (claim, the paper's value, geom record statistic, metrics.jsonl key, claimed sign of new − base)
GEOMETRY_CLAIMS = [
    (
        "Effective rank of last hidden states higher after warm-up",
        "~60 vs ~25 (of 1280) at 40k steps",
        "effective_rank_covariance",
        "erank",
        +1,
    ),
    (
        "Anisotropy (mean cosine across documents) lower",
        "~0.33 vs ~0.37",
        "anisotropy_across_documents",
        "mean_cos",
        -1,
    ),
]


def claim_entries(pair: Pair, tables: list[Table], models: list[Model], geom_group, speed) -> list[Entry]:
    """Every ledger row of one compared pair."""
    geometry = [_geometry_claim(*claim, pair, models, geom_group) for claim in GEOMETRY_CLAIMS]
    from .tables import last_validation

    ce_test = _by_seed_test(pair, models, lambda m: (last_validation(m) or {}).get("val_loss"))
    ce_test = ce_test if ce_test is not None else _test_of(tables, pair, "validation CE")
    ce_claim = ("Validation CE unchanged", f"equal within {VAL_CE_MARGIN} nats (2.006 vs 2.006)")
    ce = _tested_claim(*ce_claim, ce_test, pair, lambda r: equivalence(r, VAL_CE_MARGIN), 1.0, 4)
    bench_test = _test_of(tables, pair, "bench average seeds", "bench average")
    bench_claim = ("Benchmark average up", "+2.7 points (13 benchmarks, 9B-A1B)")
    bench = _tested_claim(*bench_claim, bench_test, pair, lambda r: directional(r, +1), 100, 2)
    return [*geometry, ce, bench, _mteb_entry(tables, pair), _phases_entry(pair), *_cost_entries(pair, speed)]


def ledger_table(name: str, title: str, entries: list[Entry]) -> Table:
    columns = ["paper", "this study", "n", "verdict", "why"]
    table = Table(name, title, columns, higher_is_better=[None] * len(columns), label_header="claim")
    for e in entries:
        table.add(e.claim, [e.paper, e.value, e.n, e.verdict, e.why])
    table.notes.append(
        "consistent: the 95% interval lies on the claimed side of 0 (validation CE: inside ±0.002) and the test "
        "agrees; contradicted: it lies on the other side (outside ±0.002); inconclusive at this n: neither, or "
        "no interval. Claims about the objectives need several seeds of each; a verdict over items, batches "
        "or tasks of one seed pair is about those two checkpoints."
    )
    return table


# ----------------------------------------------------------------------------- regime
def regime(model: Model) -> dict[str, Any]:
    """Tokens seen, active parameters, tokens per active parameter, steps and warm-up of a run."""
    from .tables import model_spec

    tokens = model.tokens
    active = None
    if model.preset and model.config is not None:
        spec = model_spec(model)[0]
        if spec is not None:
            from nitp_train.models import count_parameters_from_spec

            active = count_parameters_from_spec(spec)["active"]
    warm = ((model.config or {}).get("train") or {}).get("warmup_steps")
    return {
        "tokens": tokens,
        "active": active,
        "tokens_per_param": tokens / active if tokens and active else None,
        "steps": model.step,
        "warmup": warm,
    }


def regime_table(models: list[Model]) -> Table:
    """This study's runs beside the paper's regime."""
    table = Table(
        "regime",
        "Regime reached (tokens per active parameter, steps) beside the paper's",
        ["tokens", "active params (M)", "tokens / active param", "steps", "warm-up steps"],
        higher_is_better=[None] * 5,
        decimals=[0, 2, ".2g", 0, 0],
    )
    for m in models:
        r = regime(m)
        active = None if r["active"] is None else r["active"] / 1e6
        table.add(m.label, [r["tokens"], active, r["tokens_per_param"], r["steps"], r["warmup"]])
    table.new_block()
    table.add(
        "paper (9B-A1B, Figure 1)",
        ["34-50 B at separation", 1000.0, "30-50 at separation", "40,000+", PAPER_WARMUP],
    )
    table.notes.append(
        "The paper's NTP and NITP separate after 4-6k steps (34-50B tokens, ~30-50 tokens per active parameter), "
        "after a 2,000-step warm-up; before that NTP's rank has not collapsed and NITP has nothing to prevent. "
        "A plain model's tokens and parameters are unknown (—)."
    )
    return table


def regime_sentence(models: list[Model]) -> str:
    """One sentence: the regime reached beside the paper's."""
    runs = [(m, regime(m)) for m in models if m.config is not None]
    if not runs:
        return "The models are not runs of this toolkit, so the regime they reached (tokens per parameter, steps) is unknown."
    tpp = [r["tokens_per_param"] for _, r in runs if r["tokens_per_param"]]
    steps = [r["steps"] for _, r in runs if r["steps"]]
    low, high = (f"{min(tpp):.2g}", f"{max(tpp):.2g}") if tpp else ("?", "?")
    reach = low if low == high else f"{low}-{high}"
    below = tpp and max(tpp) < 0.95 * PAPER_TOKENS_PER_PARAM[0]  # 29.9 of a 30 target is there
    where = (
        "below the regime where the paper's objectives separate, so NTP's rank collapse may not have begun"
        if below
        else "within or past the paper's regime of separation"
    )
    return (
        f"The runs reached {reach} tokens per active parameter and {max(steps) if steps else '?'} steps "
        f"(paper: 30-50 tokens per active parameter before NTP and NITP separate, 40k+ steps): {where}."
    )


# ----------------------------------------------------------------------------- power table
def power_table(tables: list[Table]) -> Table | None:
    """One row per tested comparison of the report: n, spread, MDE at 80 % power, n for the paper's effect."""
    from .power import power_of

    table = Table(
        "power",
        "Power: what this n can detect (80% power, two-sided 5%)",
        ["unit", "n", "observed spread", "detectable Δ", "the paper's effect", "n needed for it"],
        higher_is_better=[None] * 6,
        decimals=0,
    )
    pairs = {(pair.base.label, pair.new.label): pair.name for t in tables for _, pair, *_ in t.findings}
    shared = len(set(pairs.values())) < len(pairs)  # several pairs named NITP − NTP (sizes, seeds)
    for t in tables:
        for what, pair, test, _value, extra in t.findings:
            label = f"{pair.new.label} − {pair.base.label}" if shared else pair.name
            rows = [(what, test)]
            if what == "mteb overall" and extra:
                rows.append(("mteb sign", Tested(extra, units="tasks")))
            for name, tested in rows:
                if tested is None or (p := power_of(tested, name)) is None:
                    continue
                mde = _mde_text(p, getattr(tested, "scale", 100.0))
                needed = "—" if p.n_needed is None else f"{p.n_needed:,}"
                table.add(f"{name} ({label})", [p.unit, p.n, p.spread, mde, p.paper or "—", needed])
    if not table.rows:
        return None
    table.notes.append(
        "McNemar: Connor (1987) on the observed discordance; items other than 0/1, batches, tasks and seeds: "
        "paired t (statsmodels TTestPower) on the observed sd of the differences; sign test: exact binomial. "
        "A Δ smaller than the detectable one is invisible at this n whatever its sign."
    )
    return table


def _mde_text(p, scale: float) -> str:
    if p.mde is None:
        return "none reachable" + (f" ({p.note})" if p.note else "")
    if p.method.startswith("sign"):
        return f"win rate {100 * p.mde:.0f} %"
    return f"±{scale * p.mde:.2f} points" if scale == 100 else f"±{scale * p.mde:.4f} nats"


# ----------------------------------------------------------------------------- conclusion
def conclusion(
    layout: Layout, tables: list[Table], ledgers: dict[str, list[Entry]], models: list[Model]
) -> str:
    """The paragraph that opens report.md: regime, replication, what is and is not detectable, ledger."""
    from .power import power_of

    parts = [regime_sentence(models)]
    seeded = any(f[0].endswith("seeds") for t in tables for f in t.findings) or any(
        e.n.endswith("seeds") for entries in ledgers.values() for e in entries
    )
    if any(p.objectives for p in layout.pairs) and not seeded:
        parts.append(
            "There is one seed per objective, so every test below says whether these two checkpoints differ, "
            "not whether the objectives do."
        )
    elif not layout.pairs:
        parts.append("No pair of models is compared (give a --baseline, or NTP and NITP runs of one size).")
    detect = []
    for t in tables:
        for what, _pair, test, _value, _extra in t.findings:
            if test is None or what not in ("bench average", "mteb overall", "validation CE"):
                continue
            if (p := power_of(test, what)) is not None and p.mde is not None:
                scale = getattr(test, "scale", 100.0)
                need = f" (the paper's {p.paper.split(' (')[0]} needs ~{p.n_needed:,})" if p.n_needed else ""
                detect.append(f"{what} ±{_mde_text(p, scale).lstrip('±')} at n = {p.n:,} {p.unit}{need}")
    if detect:
        parts.append(
            "Smallest differences detectable with 80% power: " + "; ".join(dict.fromkeys(detect)) + "."
        )
    counts = Counter(e.verdict for entries in ledgers.values() for e in entries)
    if counts:
        parts.append(
            "Claim ledger: " + ", ".join(f"{n} {v}" for v, n in counts.items()) + " (section Claim ledger)."
        )
    return " ".join(parts)
