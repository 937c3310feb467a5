"""What may be compared with what: settings groups of records, size blocks and ablations.

Two rules keep a report honest:

1. **Records of different settings are never merged.** Bench records are grouped by suite,
   tasks, limit, shots and seed; MTEB records by suite, tasks, pooling and layer; geom records
   by corpus, tokens, layers and first-position handling. Each group gets its own table.
2. **Deltas compare like with like.** Models are put in blocks of one size (preset). In a
   block, the *baseline* is the NTP run, the *reference* is the NITP run with the paper's
   default knobs (else the most typical one), and a NITP run that differs from the reference
   in exactly one knob (same seed, data and steps) is an *ablation* of that knob; an NTP run
   with the cosine regulariser on is the ablation ``cos_reg.weight``. Anything else is shown
   as is, without a delta.

Example
-------
>>> layout = arrange(study)                                     # doctest: +SKIP
>>> [(b.size, b.baseline.label, b.reference.label) for b in layout.blocks]   # doctest: +SKIP
[('tiny-dense', 'NTP tiny-dense @300', 'NITP tiny-dense @300')]
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from nitp_train.config_model import ablation_knobs

from .inputs import Model, Study, find_model

# Settings that do not change a score (batching, where data or the device live).
SETTINGS_IGNORED = {"batch_size", "device", "data_dir", "out", "redo"}
MAIN_SETTINGS = ("suite", "num_fewshot", "limit", "pooling", "layer", "corpus", "n_tokens")  # a lone group's

# The knobs of the paper's ablations (docs/contracts.md), their names in tables and their defaults
# where the config model has one (target layer and λ come from the preset): all read from the
# fields of nitp_train.config_model marked with knob(label, rank).
KNOBS = {key: label for key, (label, _) in ablation_knobs().items()}
KNOB_DEFAULTS = {key: default for key, (_, default) in ablation_knobs().items() if default is not None}
NITP_KNOBS = [k for k in KNOBS if k.startswith("nitp.")]
# An ablation must agree with its reference on these (else it is a different study).
STUDY_KEYS = (
    "seed",
    "data.corpus",
    "data.seq_len",
    "data.vocab_size",
    "train.steps",
    "train.batch_size",
    "train.lr",
)


# ----------------------------------------------------------------------------- settings groups
@dataclass
class SettingsGroup:
    """Records of one kind that share every score-changing setting."""

    kind: str
    settings: dict[str, Any]
    records: dict[str, list[dict]] = field(default_factory=dict)  # model key -> its records
    description: str = ""

    def latest(self, model: Model) -> dict | None:
        """The model's record at its newest step (the newest written on a tie)."""
        recs = self.records.get(model.key) or []
        return max(recs, key=lambda r: (_step(r), r.get("created") or ""), default=None)

    def by_step(self, model: Model) -> list[dict]:
        """One record per step, oldest step first (the newest written wins a tie)."""
        best: dict[int, dict] = {}
        for r in sorted(self.records.get(model.key) or [], key=lambda r: r.get("created") or ""):
            best[_step(r)] = r
        return [best[s] for s in sorted(best)]


def _step(record: dict) -> int:
    step = record["model"].get("step")
    return step if isinstance(step, int) else -1


def _dump(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def settings_key(record: dict) -> str:
    return _dump({k: v for k, v in record["settings"].items() if k not in SETTINGS_IGNORED})


def settings_groups(models: list[Model], kind: str) -> list[SettingsGroup]:
    """Groups of ``kind`` records, the one covering the most models first (then unlimited ones)."""
    groups: dict[str, SettingsGroup] = {}
    for model in models:
        for rec in model.records_of(kind):
            g = groups.setdefault(settings_key(rec), SettingsGroup(kind, json.loads(settings_key(rec))))
            g.records.setdefault(model.key, []).append(rec)
    # Most models first; on a tie, full evaluations (no --limit) before subsets.
    ordered = sorted(groups.values(), key=lambda g: (-len(g.records), g.settings.get("limit") is not None))
    describe_groups(ordered)
    return ordered


def describe_groups(groups: list[SettingsGroup]) -> None:
    """Name each group by the settings that tell it apart (its main settings when it is alone)."""
    keys = sorted({k for g in groups for k in g.settings})
    if len(groups) > 1:
        shown = [k for k in keys if len({_dump(g.settings.get(k)) for g in groups}) > 1]
    else:
        shown = [k for k in MAIN_SETTINGS if k in keys]
    for g in groups:
        g.description = ", ".join(f"{k}={_short(g.settings.get(k))}" for k in shown) or "default settings"


def _short(value: Any) -> str:
    if isinstance(value, dict) and value and len(set(map(str, value.values()))) == 1:
        return f"{next(iter(value.values()))} (all tasks)"
    if isinstance(value, (list, dict)):
        text = json.dumps(value, default=str)
        return text if len(text) <= 60 else text[:57] + "..."
    return str(value)


# ----------------------------------------------------------------------------- size blocks
@dataclass(eq=False)
class Pair:
    """One compared pair: Δ = ``new`` − ``base``; iterates as ``(base, new)``."""

    base: Model
    new: Model

    @property
    def objectives(self) -> bool:
        """The NTP baseline against the NITP reference (claims about the objectives need seeds)."""
        return self.base.role == "ntp" and self.new.role == "nitp"

    @property
    def name(self) -> str:
        """``"NITP − NTP"`` for the objective pair, else ``"<new label> − <base label>"``."""
        return "NITP − NTP" if self.objectives else f"{self.new.label} − {self.base.label}"

    @property
    def delta_label(self) -> str:
        return f"Δ ({self.name})"

    def __iter__(self):
        return iter((self.base, self.new))


@dataclass
class SizeBlock:
    """Models of one size: the NTP baseline, the NITP reference, ablations and the rest.

    ``compared``: set when the comparison is against a chosen baseline (``--baseline``, or no
    objective labels): every model in it gets a Δ against ``baseline``.
    """

    size: str
    baseline: Model | None = None
    reference: Model | None = None
    others: list[Model] = field(default_factory=list)
    ablations: dict[str, list[Model]] = field(default_factory=dict)  # knob -> variants
    compared: list[Model] | None = None

    @property
    def main(self) -> list[Model]:
        """Models of the main tables: baseline, reference, then anything not an ablation."""
        return [m for m in (self.baseline, self.reference) if m is not None] + self.others

    @cached_property  # one Pair object per comparison, so tables and the ledger share it
    def pairs(self) -> list[Pair]:
        """The pairs that get a Δ: each compared model vs the baseline, else baseline vs reference."""
        if self.compared is not None and self.baseline is not None:
            return [Pair(self.baseline, m) for m in self.compared]
        return [Pair(self.baseline, self.reference)] if self.baseline and self.reference else []


@dataclass
class Layout:
    blocks: list[SizeBlock]
    notes: list[str] = field(default_factory=list)

    @property
    def main(self) -> list[Model]:
        return [m for b in self.blocks for m in b.main]

    @property
    def pairs(self) -> list[Pair]:
        """Every compared pair of every block (NTP baseline, NITP reference by default)."""
        return [p for b in self.blocks for p in b.pairs]


def config_value(model: Model, dotted: str) -> Any:
    """A config value by dotted path, the contract's default when absent, None without a config."""
    if model.config is None:
        return None
    node: Any = model.config
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return _knob_default(model, dotted)
        node = node[part]
    return node


def _knob_default(model: Model, dotted: str) -> Any:
    if dotted in KNOB_DEFAULTS:
        return KNOB_DEFAULTS[dotted]
    if dotted in ("nitp.target_layer", "nitp.lambda") and model.preset:
        from nitp_train.models import PRESETS

        return PRESETS.get(model.preset, {}).get(dotted.split(".")[1])
    return None


def _size_of(model: Model) -> str:
    if model.role == "other" and model.preset is None:
        return "other models"
    cfg = (model.config or {}).get("model") or {}
    size = str(model.preset or "unknown size")
    return f"{size}|d={cfg['hidden_size']},L={cfg.get('num_hidden_layers')}" if "hidden_size" in cfg else size


def arrange(study: Study, baseline: str | None = None) -> Layout:
    """Size blocks with baseline, reference, ablations and others (see module doc).

    ``baseline`` (a model's label, run name or run directory): compare every model with that one
    instead (any pair or set of checkpoints). Without it, inputs none of which is labelled NTP or
    NITP are compared with the first input.
    """
    from nitp_train.models import PRESETS

    if baseline is not None:
        return _against(study, find_model(study.models, baseline, "--baseline"), [])
    if len(study.models) >= 2 and all(m.role == "other" for m in study.models):
        note = (
            f"No input is labelled NTP or NITP: every model is compared with the first input, "
            f"{study.models[0].label} (--baseline NAME picks another)."
        )
        return _against(study, study.models[0], [note])

    by_size: dict[str, list[Model]] = {}
    for m in study.models:
        by_size.setdefault(_size_of(m), []).append(m)
    presets = [s.split("|")[0] for s in by_size]
    order = {preset: i for i, preset in enumerate(PRESETS)}
    layout = Layout(blocks=[])
    # presets in their table's order, "other models" last; ties keep the input order (sorted is stable)
    for size in sorted(by_size, key=lambda s: (s == "other models", order.get(s.split("|")[0], len(order)))):
        preset = size.split("|")[0]
        shown = preset if presets.count(preset) == 1 else size.replace("|", " ")  # dims only when needed
        layout.blocks.append(_arrange_block(shown, by_size[size], layout.notes))
    return layout


def _against(study: Study, base: Model, notes: list[str]) -> Layout:
    """One block: ``base`` and every other model, each compared with it."""
    others = [m for m in study.models if m is not base]
    block = SizeBlock(size="all models", baseline=base, others=others, compared=list(others))
    return Layout(blocks=[block], notes=[*notes, f"Baseline of every Δ: {base.label}."])


def _arrange_block(size: str, models: list[Model], notes: list[str]) -> SizeBlock:
    ntp = [m for m in models if m.role == "ntp"]
    nitp = [m for m in models if m.role == "nitp"]
    block = SizeBlock(size, baseline=ntp[0] if ntp else None, reference=_pick_reference(nitp))
    candidates = [(m, block.reference, NITP_KNOBS) for m in nitp if m is not block.reference]
    candidates += [(m, block.baseline, ["cos_reg.weight"]) for m in models if m.role == "cos_reg"]
    for model, base, knobs in candidates:
        if knob := _single_knob(model, base, knobs):
            block.ablations.setdefault(knob, []).append(model)
        else:
            block.others.append(model)
            if base is not None and model.config is not None and base.config is not None:
                notes.append(
                    f"{model.label}: differs from {base.label} in more than one knob or in "
                    "seed/data/steps, so it is shown as is, not as an ablation."
                )
    block.others += ntp[1:] + [m for m in models if m.role == "other"]
    for knob, variants in block.ablations.items():
        variants.sort(key=lambda m: _sort_value(config_value(m, knob)))
    return block


def _sort_value(value: Any) -> tuple:
    return (0, float(value), "") if isinstance(value, (int, float)) else (1, 0.0, str(value))


def _pick_reference(nitp: list[Model]) -> Model | None:
    """The NITP run with the paper's default knobs, else the one closest to the typical knobs."""
    if len(nitp) <= 1:
        return nitp[0] if nitp else None
    defaults = [
        m
        for m in nitp
        if m.config is not None and all(config_value(m, k) == _knob_default(m, k) for k in NITP_KNOBS)
    ]
    if defaults:
        return defaults[0]

    def knob(m: Model, k: str) -> str:
        return json.dumps(config_value(m, k), default=str)

    typical = {k: Counter(knob(m, k) for m in nitp).most_common(1)[0][0] for k in NITP_KNOBS}
    return min(nitp, key=lambda m: sum(knob(m, k) != typical[k] for k in NITP_KNOBS))


def _single_knob(model: Model, base: Model | None, knobs: list[str]) -> str | None:
    """The one knob in which ``model`` differs from ``base`` (same study keys), else None."""
    if base is None or model.config is None or base.config is None:
        return None
    if any(config_value(model, k) != config_value(base, k) for k in STUDY_KEYS):
        return None
    diff = [k for k in knobs if config_value(model, k) != config_value(base, k)]
    return diff[0] if len(diff) == 1 else None
