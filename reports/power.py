"""Power beside every comparison: the smallest effect this n can detect, and the n the paper's needs.

At 80 % power and a two-sided 5 % level, for the test each comparison uses:

=====================  ============================================  ===============================
comparison (unit)      minimum detectable effect (MDE)               source
=====================  ============================================  ===============================
0/1 items (McNemar)    accuracy difference δ such that Connor's      Connor (1987), Biometrics 43;
                       n(δ, ψ) equals the items at hand, ψ = the     normal quantiles from scipy,
                       observed discordance (n01 + n10) / n          solved with scipy's brentq
other items, batches,  d × sd of the paired differences, d from      statsmodels ``TTestPower``
tasks, seeds           the paired (one-sample) t-test's power
sign test over tasks   the win rate q whose exact two-sided          scipy ``binom`` / ``binomtest``
                       binomial test rejects with 80 % power
=====================  ============================================  ===============================

and the n needed to detect the paper's own effect with the observed spread (:data:`PAPER_EFFECTS`:
+2.7 points of benchmark average, +2.3 points of MTEB overall, 23 of 25 tasks won, 0.002 nats
of validation CE). Everything is in record units (fractions, nats); sentences show points.

Example
-------
>>> round(100 * mcnemar_mde(2000, 0.20), 1)        # DESIGN.md: ~2,000 items, 20 % discordant
2.8
>>> mcnemar_n(0.027, 0.20)
2151
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

ALPHA = 0.05
POWER = 0.80
# The paper's effects (9B-A1B MoE / 3B MoE), in record units.
PAPER_EFFECTS = {
    "bench average": (0.027, "+2.7 points (benchmark average, 9B-A1B MoE)"),
    "mteb overall": (0.023, "+2.3 points (MTEB overall, 3B MoE)"),
    "mteb sign": (23 / 25, "23 of 25 tasks won"),
    "validation CE": (0.002, "0.002 nats ('equal within')"),
}


@dataclass(frozen=True)
class Power:
    """What a comparison of ``n`` ``unit`` can detect (``mde``) and what the paper's effect needs."""

    what: str
    unit: str
    n: int
    method: str
    spread: str  # the observed spread the numbers rest on
    mde: float | None  # record units; None: not computable (the note says why)
    paper: str | None = None  # the paper's effect, in words
    n_needed: int | None = None
    note: str = ""


# ----------------------------------------------------------------------------- McNemar
def _z(p: float) -> float:
    from scipy.stats import norm

    return float(norm.ppf(p))


def _connor(delta: float, psi: float, alpha: float, power: float) -> float:
    """Connor's n of :func:`mcnemar_n`, unrounded."""
    za, zb = _z(1 - alpha / 2), _z(power)
    return (za * math.sqrt(psi) + zb * math.sqrt(max(psi - delta**2, 0.0))) ** 2 / delta**2


def mcnemar_n(delta: float, discordance: float, alpha: float = ALPHA, power: float = POWER) -> int | None:
    """Items needed for McNemar's test to detect an accuracy difference ``delta`` (Connor 1987):
    ``n = (z_{1-a/2} sqrt(psi) + z_{power} sqrt(psi - delta^2))^2 / delta^2``, ``psi`` the
    probability that the two models disagree on an item. None when ``|delta| >= psi`` (the
    models cannot differ by more than they disagree)."""
    delta = abs(delta)
    if delta <= 0 or discordance <= 0 or delta >= discordance:
        return None
    return math.ceil(_connor(delta, discordance, alpha, power))


def mcnemar_mde(n: int, discordance: float, alpha: float = ALPHA, power: float = POWER) -> float | None:
    """The accuracy difference McNemar's test detects with ``power`` on ``n`` items when the
    models disagree on a fraction ``discordance`` of them (Connor's formula solved for delta)."""
    from scipy.optimize import brentq

    if n < 2 or discordance <= 0:
        return None

    def gap(delta: float) -> float:
        return _connor(delta, discordance, alpha, power) - n

    top = discordance * (1 - 1e-9)
    if gap(top) > 0:  # even a difference as large as the disagreement is not detectable
        return None
    return float(brentq(gap, 1e-9, top))


# ----------------------------------------------------------------------------- paired t
def t_mde(n: int, sd: float, alpha: float = ALPHA, power: float = POWER) -> float | None:
    """``d x sd``: the mean paired difference a paired t-test detects on ``n`` units
    (statsmodels ``TTestPower``, two-sided); None below 2 units or without spread."""
    from statsmodels.stats.power import TTestPower

    if n < 2 or not sd or not math.isfinite(sd):
        return None
    d = TTestPower().solve_power(effect_size=None, nobs=n, alpha=alpha, power=power)
    return float(d) * sd


def t_n(delta: float, sd: float, alpha: float = ALPHA, power: float = POWER) -> int | None:
    """Units (items, batches, tasks, seeds) a paired t-test needs to detect ``delta``."""
    from statsmodels.stats.power import TTestPower

    if not sd or not math.isfinite(sd) or delta == 0:
        return None
    n = TTestPower().solve_power(effect_size=abs(delta) / sd, nobs=None, alpha=alpha, power=power)
    return max(2, math.ceil(float(n)))


# ----------------------------------------------------------------------------- sign test
def sign_power(n: int, q: float, alpha: float = ALPHA) -> float:
    """Exact power of the two-sided sign test (``binomtest``) over ``n`` tasks when each task is
    a win with probability ``q``."""
    from scipy.stats import binom, binomtest

    reject = [k for k in range(n + 1) if binomtest(k, n, 0.5).pvalue < alpha]
    return float(sum(binom.pmf(k, n, q) for k in reject))


def sign_mde(n: int, alpha: float = ALPHA, power: float = POWER) -> float | None:
    """The smallest win rate (> 1/2) the sign test over ``n`` tasks detects with ``power``."""
    from scipy.optimize import brentq

    if n < 1 or sign_power(n, 1.0, alpha) < power:
        return None
    return float(brentq(lambda q: sign_power(n, q, alpha) - power, 0.5, 1.0))


def sign_n(q: float, alpha: float = ALPHA, power: float = POWER, limit: int = 10_000) -> int | None:
    """Tasks the sign test needs to detect a win rate ``q``."""
    if not 0.5 < q <= 1:
        return None
    n = 1
    while n <= limit:
        if sign_power(n, q, alpha) >= power:
            return n
        n = n + 1 if n < 64 else int(n * 1.1)
    return None


# ----------------------------------------------------------------------------- per comparison
def power_of(test: Any, what: str) -> Power | None:
    """The :class:`Power` of a tested comparison (a ``reports.paired.Tested``), or None when
    there is no result. ``what``: a key of :data:`PAPER_EFFECTS` or any name."""
    r = getattr(test, "result", None)
    if r is None:
        return None
    unit = getattr(test, "unit", None) or getattr(r, "units", "items")
    effect, paper = PAPER_EFFECTS.get(what, (None, None))
    n, note = r.n, ""
    if r.__class__.__name__ == "SignTest":
        unit, method, spread = "tasks", "sign test (exact binomial)", f"{r.wins} of {r.n} won"
        mde, need = sign_mde(n), sign_n(effect) if effect else None
    elif getattr(r, "n01", None) is not None:  # 0/1 items: McNemar on the observed discordance
        psi = (r.n01 + r.n10) / n
        method, spread = "McNemar (Connor 1987)", f"discordance {100 * psi:.1f} %"
        mde, need = mcnemar_mde(n, psi), mcnemar_n(effect, psi) if effect else None
        note = "" if psi else "no discordant item: the models answered alike everywhere"
    else:
        sd = getattr(r, "sd_diff", None)
        method = "paired t (statsmodels TTestPower)"
        spread = f"sd of differences {test.scale * sd:.3g}" if sd else "no spread"
        mde, need = (t_mde(n, sd), t_n(effect, sd) if effect else None) if sd else (None, None)
        note = "" if sd else "no spread between units: power is undefined"
    return Power(what, unit, n, method, spread, mde, paper, need, note)


def describe(p: Power, scale: float = 100.0) -> str:
    """``"at n = 450 items (discordance 23.0 %): MDE ±6.3 points at 80 % power; the paper's
    +2.7 points needs ~2,150 items"``."""
    units = "points" if scale == 100 else "nats"
    if p.method.startswith("sign"):
        mde = "none" if p.mde is None else f"a win rate of {100 * p.mde:.0f} %"
    else:
        mde = "none reachable" if p.mde is None else f"±{scale * p.mde:.{2 if scale == 100 else 4}f} {units}"
    head = f"at n = {p.n:,} {p.unit} ({p.spread}), detectable with 80 % power: {mde}"
    if p.note:
        head += f" ({p.note})"
    if p.paper:
        need = "unknown" if p.n_needed is None else f"~{p.n_needed:,} {p.unit}"
        head += f"; the paper's {p.paper} needs {need}"
    return head


def power_sentence(test: Any, what: str) -> str | None:
    """One line for under a table: ``"Power (McNemar ...): at n = ..."``, or None without a result."""
    p = power_of(test, what)
    if p is None:
        return None
    return f"Power ({p.method}, two-sided 5 %): {describe(p, getattr(test, 'scale', 100.0))}."
