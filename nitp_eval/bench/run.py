"""`nitp-eval bench`: score checkpoints on the paper's benchmarks with lm-evaluation-harness.

lm-eval does all the evaluating: each benchmark is one ``lm_eval.simple_evaluate`` call on an
``HFLM`` (or vLLM) model built once per checkpoint, with a ``TaskManager`` that also sees the
task files of ``nitp_eval/tasks/`` (C3, Balanced COPA, Xiezhi, LCBench, the offline suite) and,
with ``data_dir``, override files pointing every task at a local mirror (``mirror.py``).

Per checkpoint one result record (docs/contracts.md, ``kind: "bench"``)::

    scores = {"tasks": {name: {"metric", "value", "stderr", "n", "n_total", "shots", "version",
                               "lm_eval_task"[, "filter"],
                               "items": {leaf: {"doc_id": [...], metric: [...]}}}},
              "average": arithmetic mean of the tasks' values (as the paper averages benchmarks),
              ["failed": {name: one-line reason}]}

Values are fractions (0..1) as lm-eval reports them; ``items`` are lm-eval's per-sample scores
(``log_samples``), so two records pair item by item (``reports.paired``). Each finished task is also
cached under ``cache_dir()/bench/<model key>/`` (key: :func:`bench_cache_key`): a rerun only
evaluates what is missing; ``redo=True`` evaluates everything again.

Example
-------
>>> from nitp_eval.bench import BenchSettings, run_bench
>>> [record] = run_bench(["runs/quickstart/nitp"], BenchSettings(suite="offline"))  # doctest: +SKIP
>>> record["scores"]["average"]                                            # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Callable

from nitp.console import text_table
from nitp.errors import UserError, on_interrupt
from nitp.loading import check_model_files, load_tokenizer, model_folder, offline_hub
from nitp.records import (
    RecordCache,
    check_output,
    default_record_path,
    library_versions,
    make_record,
    model_identity,
    read_record,
    write_record,
)
from nitp.runs import resolve_checkpoint

from .. import log_stderr
from ..tasks import Benchmark
from .plan import (
    Plan,
    check_causal_lm,
    check_data_dir,
    check_numbers,
    plan_tasks,
    select_benchmarks,
    shots_for,
    task_fingerprint,
)
from .settings import BenchSettings, keyed_settings


def run_bench(
    checkpoints,
    settings: BenchSettings = BenchSettings(),
    *,
    out=None,
    redo: bool = False,
    log: Callable[[str], None] | None = None,
) -> list[dict]:
    """Score each checkpoint on the chosen benchmarks; write and return one record per checkpoint.

    Parameters
    ----------
    checkpoints : checkpoint folders, run directories (their latest checkpoint) or Hugging Face
        model folders of causal language models.
    settings : tasks or suite, limit, shots, data mirror, device, batch size, backend, ...
        (:class:`~nitp_eval.bench.settings.BenchSettings`; default: the offline suite).
    out : record path (one checkpoint only); default ``default_record_path(model, "bench", tag)``.
    redo : evaluate again even where a cached result exists.
    log : where progress lines go (default: stderr).

    Returns
    -------
    list of result records, in the order of ``checkpoints``.
    """
    log = log or log_stderr
    benchmarks = select_benchmarks(settings.tasks, settings.suite)
    check_numbers(settings.limit, settings.num_fewshot, benchmarks)
    check_data_dir(settings.data_dir)
    check_output(out)  # an unwritable --out fails now, not after the evaluation
    # a .gguf stays itself here (the record is named after it); _bench_one loads its converted folder
    ckpts = [resolve_checkpoint(c) for c in checkpoints]
    if not ckpts:
        raise UserError("no checkpoint given (give a checkpoint, a run directory or --all-checkpoints RUN)")
    if out is not None and len(ckpts) > 1:
        raise UserError(
            f"--out names one file but {len(ckpts)} checkpoints were given; omit --out to get one record each"
        )
    settings = settings.resolved()
    for ckpt in ckpts:  # cheap checks before any task runs: one line each, no traceback from lm-eval
        check_causal_lm(model_folder(ckpt))
        check_model_files(ckpt, device=settings.device)  # tokenizer, weights, memory: before any cache lookup
    with offline_hub(settings.data_dir is not None):
        plan = plan_tasks(benchmarks, settings.data_dir, settings.allow_unsafe_code, log)
        if len(plan.no_data) == len(benchmarks):  # the mirror has none of them: one line, no record touched
            reason = next(iter(plan.failed.values()))
            more = f" (nor for the other {len(benchmarks) - 1} task(s))" if len(benchmarks) > 1 else ""
            raise UserError(reason + more)
        return [_bench_one(ckpt, plan, benchmarks, settings, out=out, redo=redo, log=log) for ckpt in ckpts]


# ----------------------------------------------------------------------------- one checkpoint
def _bench_one(
    ckpt: Path, plan: Plan, benchmarks: list[Benchmark], settings: BenchSettings, *, out, redo, log
) -> dict:
    s = settings
    info = model_identity(ckpt)  # weights + config + tokenizer: the record cache's model key
    ckpt = model_folder(ckpt)  # a .gguf file: its converted float32 folder
    cache = RecordCache("bench", info["key"])
    path = Path(out) if out is not None else default_record_path(info, "bench", _tag(s, benchmarks))
    check_output(path)  # before any task runs
    on_interrupt(
        f"the tasks finished so far are cached in {cache.root} and no record was written; "
        "rerun the same command to resume from them"
    )
    scores: dict[str, dict] = {}
    failed = dict(plan.failed)
    lm = None
    todo = [b for b in benchmarks if b.name not in failed]
    for i, b in enumerate(todo, 1):
        shots = shots_for(b, s.num_fewshot)
        key = bench_cache_key(info, b, plan, **keyed_settings(s, shots))
        cached = None if redo else cache.get(b.name, key)
        # a score cached before records kept per-item results is evaluated again
        if cached is not None and ("items" in cached or "items_unavailable" in cached):
            scores[b.name] = cached
            log(f"[{i}/{len(todo)}] {b.name}: cached ({cache.path(b.name, key)})")
            continue
        log(
            f"[{i}/{len(todo)}] {b.name}: lm-eval {b.lm_eval_task}"
            + ("" if shots is None else f", {shots}-shot")
        )
        if lm is None:
            lm = load_lm(ckpt, device=s.device, batch_size=s.batch_size, backend=s.backend, log=log)
        try:
            results = evaluate(
                lm,
                b,
                plan.task_manager,
                shots=shots,
                limit=s.limit,
                allow_unsafe_code=s.allow_unsafe_code,
                max_gen_toks=s.max_gen_toks,
            )
            if results is None:  # a non-zero rank under data parallelism: rank 0 records
                continue
            scores[b.name] = extract_score(results, b)
        except Exception as e:  # noqa: BLE001 - one task failing must not stop the others
            if os.environ.get("NITP_DEBUG"):
                raise
            failed[b.name] = e.args[0] if isinstance(e, UserError) else _task_error(b, e, s.data_dir)
            log(f"error: {failed[b.name]}")
            continue
        cache.put(b.name, key, scores[b.name])  # a killed run resumes from the finished tasks
    if failed and not scores:  # a record of failures only would read as a result: none is written
        raise UserError(
            f"{info['path']}: none of the {len(failed)} task(s) ran (reasons above); no record written"
        )
    record = make_record(
        "bench",
        info,
        _record_settings(s, benchmarks),
        record_scores(scores, failed),
        versions=library_versions("lm_eval", "datasets", "vllm"),
    )
    if int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0"))) == 0:  # the main process writes
        if _would_clobber(path, record):
            log(
                f"record not written: the good record at {path} is kept (this run failed: {', '.join(failed)})"
            )
            return record
        write_record(path, record)
        record["path"] = str(path)
        log(f"record: {path}")
    return record


def record_scores(scores: dict, failed: dict) -> dict:
    """The record's ``scores``: the tasks, their mean and (if any) the failures."""
    values = [s["value"] for s in scores.values()]
    out = {"tasks": scores, "average": sum(values) / len(values) if values else None}
    if failed:
        out["failed"] = failed
    return out


def _record_settings(s: BenchSettings, benchmarks: list[Benchmark]) -> dict:
    """The record's ``settings`` (docs/contracts.md): the resolved settings, shots per task, and
    the seeds simple_evaluate uses (its defaults, which nitp does not change)."""
    from lm_eval import simple_evaluate

    params = inspect.signature(simple_evaluate).parameters  # random_seed, numpy_random_seed, ...
    return {
        "suite": s.suite,
        "tasks": [b.name for b in benchmarks],
        "lm_eval_tasks": {b.name: b.lm_eval_task for b in benchmarks},
        "limit": s.limit,
        "num_fewshot": {b.name: shots_for(b, s.num_fewshot) for b in benchmarks},
        "batch_size": s.batch_size,
        "device": s.device,
        "backend": s.backend,
        "max_gen_toks": s.max_gen_toks,
        "seed": {
            k: params[name].default
            for k, name in [
                ("random", "random_seed"),
                ("numpy", "numpy_random_seed"),
                ("torch", "torch_random_seed"),
                ("fewshot", "fewshot_random_seed"),
            ]
        },
        "data_dir": str(Path(s.data_dir).resolve()) if s.data_dir else None,
    }


def bench_cache_key(info: dict, b: Benchmark, plan: Plan, **settings) -> dict:
    """The cache key of one benchmark's score (``nitp.cachekey.cache_key``): the model key, the
    task and its task files, the data by contents (the offline suite's folder or the ``--data-dir``
    mirror; ``hub`` for the hub), every setting (shots, limit, device kind, batch size, backend,
    generation cap) and the lm-eval version."""
    import lm_eval

    from nitp.cachekey import cache_key, device_kind

    data = plan.data_key[b.name]
    return cache_key(
        {
            "model": info["key"],
            "lm_eval_task": b.lm_eval_task,
            "task_files": task_fingerprint(plan.task_manager, b.lm_eval_task),
            "data": data,
            **settings,
            "device": device_kind(settings.get("device")),
            "lm_eval": lm_eval.__version__,
        },
        files=("data",) if data != "hub" else (),
    )


def _would_clobber(path: Path, record: dict) -> bool:
    """A failed evaluation never replaces a record that scored the tasks it failed."""
    failed = record["scores"].get("failed") or {}
    if not failed or not path.is_file():
        return False
    try:
        old = read_record(path)
    except UserError:
        return False  # unreadable: replacing it loses nothing
    return any(name in old.get("scores", {}).get("tasks", {}) for name in failed)


def load_lm(ckpt: Path, *, device: str, batch_size, backend: str, log):
    """lm-eval's model wrapper for a checkpoint: ``HFLM`` (or ``VLLM``)."""
    tok = load_tokenizer(ckpt)
    if tok.pad_token is None:
        # lm-eval sets the pad token itself (configure_pad_token): unk if there is one, else eos
        used = "unk" if tok.unk_token else "eos"
        log(
            f"note: {ckpt}: tokenizer has no pad token; lm-eval pads with its {used} token "
            f"({getattr(tok, used + '_token')!r}) as for any such model (padded positions are masked, scores unaffected)"
        )
    if backend == "vllm":
        from lm_eval.models.vllm_causallms import VLLM

        return VLLM(pretrained=str(ckpt), batch_size=batch_size, dtype="auto")
    from lm_eval.models.huggingface import HFLM

    return HFLM(pretrained=str(ckpt), device=device, batch_size=batch_size, dtype="auto")


def evaluate(
    lm, b: Benchmark, task_manager, *, shots, limit, allow_unsafe_code=False, max_gen_toks=None
) -> dict | None:
    """One ``lm_eval.simple_evaluate`` call for one benchmark (its raw results dict)."""
    from lm_eval import simple_evaluate

    # lm-eval prints progress notes to stdout; keep stdout for the result table
    with contextlib.redirect_stdout(sys.stderr), _quiet_git():
        return simple_evaluate(
            model=lm,
            tasks=[b.lm_eval_task],
            num_fewshot=shots,
            limit=limit,
            task_manager=task_manager,
            log_samples=True,  # per-item results: paired tests between records
            confirm_run_unsafe_code=allow_unsafe_code,
            gen_kwargs={"max_gen_toks": max_gen_toks} if max_gen_toks else None,
        )


@contextlib.contextmanager
def _quiet_git():
    """lm-eval records ``git describe`` of the working folder in its results; outside a git
    checkout git prints "fatal: not a git repository" once per task. Within the block the same
    call runs with git's stderr discarded (lm-eval's own fallback kept)."""
    from unittest import mock  # here, not at the top: it imports asyncio (~40 ms at every start)

    from lm_eval import evaluator
    from lm_eval.loggers.utils import get_commit_from_path

    def describe():
        try:
            out = subprocess.check_output(["git", "describe", "--always"], stderr=subprocess.DEVNULL)
            return out.strip().decode()
        except (subprocess.CalledProcessError, OSError):
            return get_commit_from_path(os.getcwd())

    with mock.patch.object(evaluator, "get_git_commit_hash", describe):
        yield


def extract_score(results: dict, b: Benchmark) -> dict:
    """The benchmark's main metric from lm-eval's results (groups: lm-eval's aggregate)."""
    name = b.lm_eval_task
    row = results["results"][name]
    reported = [k for k in row if "," in k and "_stderr," not in k]  # "metric,filter"
    metric, filt = b.metric, b.filter
    if metric is None:  # pass-through task: its first reported metric
        metric, filt = next(iter(reported)).split(",", 1)
    value = row.get(f"{metric},{filt}")
    if value is None:
        raise UserError(
            f"{b.name}: lm-eval reported no {metric},{filt} for {name} (it reported {', '.join(reported)})"
        )
    stderr = row.get(f"{metric}_stderr,{filt}")
    leaves = _leaves(results, name)
    counts = results.get("n-samples", {})
    shots = sorted({results.get("n-shot", {}).get(leaf) for leaf in leaves} - {None})
    score = {
        "metric": metric,
        "value": float(value),
        "stderr": float(stderr) if isinstance(stderr, (int, float)) else None,
        "n": sum(counts[leaf]["effective"] for leaf in leaves if leaf in counts),
        "n_total": sum(counts[leaf]["original"] for leaf in leaves if leaf in counts),
        "shots": shots[0] if len(shots) == 1 else shots,
        "version": results.get("versions", {}).get(name),
        "lm_eval_task": name,
    }
    if filt != "none":
        score["filter"] = filt
    score.update(extract_items(results, leaves, metric, filt))
    return score


def extract_items(results: dict, leaves: list[str], metric: str, filt: str) -> dict:
    """Per-item scores from lm-eval's logged samples: ``{"items": {leaf: {"doc_id", metric}}}``.

    One entry per leaf (sub)task, its documents in lm-eval's order: ``doc_id[i]`` (lm-eval's
    document index) and ``metric[i]`` (the item's value of the record's metric under its filter,
    e.g. acc 0/1). Two records of the same task and settings pair by ``(leaf, doc_id)``. When
    lm-eval logged no samples, or the metric is not a number per item (corpus-level metrics such
    as BLEU or perplexity), ``{"items_unavailable": reason}`` instead.

    Example
    -------
    >>> extract_items({"samples": {"t": [{"doc_id": 0, "filter": "none", "acc": 1.0}]}}, ["t"], "acc", "none")
    {'items': {'t': {'doc_id': [0], 'acc': [1]}}}
    """
    samples = results.get("samples") or {}
    items: dict[str, dict] = {}
    for leaf in leaves:
        rows = [x for x in samples.get(leaf, []) if x.get("filter", filt) == filt]
        values = [x.get(metric) for x in rows]
        if not rows or not all(_is_number(v) for v in values):
            what = "no samples" if not rows else f"{metric} is not a number per item"
            return {"items_unavailable": f"{leaf}: lm-eval logged {what}"}
        items[leaf] = {
            "doc_id": [x["doc_id"] for x in rows],
            metric: [int(v) if float(v).is_integer() else float(v) for v in values],
        }
    return {"items": items}


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value


def _leaves(results: dict, name: str) -> list[str]:
    children = results.get("group_subtasks", {}).get(name)
    if not children:
        return [name]
    return [leaf for c in children for leaf in _leaves(results, c)]


def _task_error(b: Benchmark, e: Exception, data_dir) -> str:
    msg = (str(e).strip().splitlines() or [""])[0][:240]
    hint = f"; without the hub, mirror it (`nitp-eval mirror export --tasks {b.name} --out DIR`) and pass --data-dir DIR"
    return f"{b.name}: lm-eval could not run {b.lm_eval_task} ({type(e).__name__}: {msg}){'' if data_dir else hint}"


def _tag(settings: BenchSettings, benchmarks: list[Benchmark]) -> str:
    suite, limit, num_fewshot = settings.suite, settings.limit, settings.num_fewshot
    tag = suite or "-".join(b.name for b in benchmarks)
    if len(tag) > 60:
        tag = tag[:40] + "-" + hashlib.sha256(tag.encode()).hexdigest()[:8]
    if limit is not None:
        tag += f"-limit{limit}"
    if isinstance(num_fewshot, int):
        tag += f"-{num_fewshot}shot"
    elif isinstance(num_fewshot, dict) and num_fewshot:
        tag += "-shots" + hashlib.sha256(json.dumps(num_fewshot, sort_keys=True).encode()).hexdigest()[:6]
    return tag


# ----------------------------------------------------------------------------- output
def format_table(record: dict) -> str:
    """A rich table of one record: task, metric, score (%), stderr, n, shots, then the average."""
    model = record["model"]
    step = f" step {model['step']}" if model.get("step") is not None else ""
    title = f"{model.get('name')}{step} ({model['hash'][:8]})"
    rows = []
    for name, s in record["scores"]["tasks"].items():
        metric = s["metric"] + (f" ({s['filter']})" if s.get("filter") else "")
        err = "" if s["stderr"] is None else f"{100 * s['stderr']:.2f}"
        rows.append((name, metric, f"{100 * s['value']:.2f}", err, s["n"], s["shots"]))
    for name in record["scores"].get("failed", {}):
        rows.append((name, "failed", "-", "", "", ""))
    avg = record["scores"]["average"]
    rows.append(("average", "mean of tasks", "-" if avg is None else f"{100 * avg:.2f}", "", "", ""))
    columns = ("task", "metric", "score %", "± %", "n", "shots")
    return text_table(columns, rows, title=title, left=columns[:2], section_before=[len(rows) - 1])
