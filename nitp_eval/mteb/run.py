"""`run_mteb`: score checkpoints' frozen embeddings with ``mteb.evaluate``, resumably.

Each checkpoint becomes a ``SentenceTransformer`` (``encoder.HiddenStateEncoder``) and each task
is scored on its own: its score is kept at once in ``nitp.records.RecordCache("mteb", model
key)`` (``nitp.records.model_identity``: weights, config and tokenizer files; unit = task name;
settings = pooling, layer, dtype, max_length and the task's data and scope), so a killed run,
rerun, computes only the tasks it had not finished. mteb's own result cache (``$MTEB_CACHE``) is
also kept, keyed by model name, revision = the same model key, and pooling / layer / dtype /
max_length. A record is written only when the run scored at least every task that a record of
the same model at that path already holds. Checkpoints, tasks, sizes, device and dtype are all
checked (and chosen) once, before any model loads.

Example
-------
>>> records = run_mteb(["runs/ntp", "runs/nitp"], suite="offline")          # doctest: +SKIP
>>> print(format_table(records))                                            # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import gc
import warnings
from pathlib import Path
from typing import Callable, Sequence

from nitp.errors import UserError, on_interrupt
from nitp.loading import offline_hub
from nitp.records import (
    RecordCache,
    check_output,
    library_versions,
    make_record,
    model_identity,
    read_record,
    write_record,
)

from . import encoder as encoder_lib
from .results import (
    aggregate,
    is_recorded,
    mteb_model_name,
    record_path,
    record_tag,
    replaces_record,
    task_score,
)
from .tasks import SUITES, apply_data_dir, export_hint, resolve_tasks


def run_mteb(
    checkpoints,
    *,
    suite: str | None = None,
    tasks: Sequence[str] | None = None,
    pooling: str = "mean",
    layer: int = -1,
    out: str | Path | None = None,
    data_dir: str | Path | None = None,
    redo: bool = False,
    device: str | None = None,
    batch_size: int = 32,
    batch_tokens: int = encoder_lib.DEFAULT_BATCH_TOKENS,
    max_length: int = encoder_lib.DEFAULT_MAX_LENGTH,
    save_encoder: str | Path | None = None,
    log: Callable[[str], None] = encoder_lib._stderr,
) -> list[dict]:
    """Score checkpoints' frozen embeddings on MTEB tasks; one ``mteb`` record per checkpoint.

    Parameters
    ----------
    checkpoints : checkpoint folders, run directories (their latest checkpoint), Hugging Face
        model folders or ``.gguf`` files; one path or a list
    suite : "paper" (the 25 tasks) | "offline" (shipped data; the default when ``tasks`` is None)
    tasks : mteb task names (instead of a suite)
    pooling, layer, max_length : see ``nitp_eval.mteb.encoder``
    out : record file (``.json``, one checkpoint) or directory; default ``RUN/results/mteb/...``
    data_dir : local mirror of the tasks' dataset repositories (``embed_data``); implies
        HF_HUB_OFFLINE. Tasks without a folder there are reported at once and skipped.
    redo : recompute even what the record and the caches hold
    device, batch_size, batch_tokens : where, and how many texts / padded tokens per forward pass
    save_encoder : also save each checkpoint's ``SentenceTransformer`` there (``DIR``, or
        ``DIR/<name>-<hash8>`` for several checkpoints)

    Returns
    -------
    list of records (dicts, docs/contracts.md ``mteb``), in the order of ``checkpoints``.
    Tasks that could not run are absent from ``scores["tasks"]`` (see ``missing_tasks``) and are
    retried on rerun.
    """
    if suite is not None and suite not in SUITES:
        raise UserError(f"unknown suite {suite!r} (choose one of: {', '.join(SUITES)})")
    suite = None if tasks else (suite or "offline")
    paths = [checkpoints] if isinstance(checkpoints, (str, Path)) else list(checkpoints)
    if not paths:
        raise UserError("no checkpoint given")
    if data_dir is not None and not Path(data_dir).expanduser().is_dir():
        raise UserError(
            f"--data-dir {data_dir}: no such directory "
            f"(write one with `nitp-eval mirror export --tasks ... --out {data_dir}`)"
        )
    if out is not None:
        check_output(out, folder=Path(out).suffix != ".json")
    if save_encoder is not None:
        _check_save_encoder(save_encoder)
    specs = [  # bad paths, tokenizers, weights, sizes, device: one line before any work
        encoder_lib.preflight(
            p,
            pooling,
            layer,
            device=device,
            max_length=max_length,
            batch_size=batch_size,
            batch_tokens=batch_tokens,
        )
        for p in paths
    ]
    infos = [model_identity(p) for p in paths]
    task_names = [t.metadata.name for t in resolve_tasks(suite, tasks)]  # unknown names fail here
    with offline_hub(data_dir is not None):  # local data: no hub retries
        records = []
        for info, spec in zip(infos, specs):
            settings = {
                "suite": suite,
                "tasks": task_names,
                "pooling": spec.pooling,
                "layer": spec.layer,
                "max_length": int(max_length),
                "batch_size": int(batch_size),
                "batch_tokens": int(batch_tokens),
            }
            path = record_path(
                info, out, len(infos) > 1, record_tag(suite, task_names, spec.pooling, spec.layer)
            )
            save_to = _save_dir(save_encoder, info, len(infos) > 1)
            check_output(path)
            if not redo and save_to is None and is_recorded(path, info, settings):
                log(f"{info['path']}: already recorded in {path} (--redo recomputes)")
                records.append(read_record(path))
                continue
            record = _score_checkpoint(info, spec, settings, data_dir, redo, save_to, log)
            if replaces_record(path, record):
                write_record(path, record)
                log(f"record: {path}")
            elif record["scores"]["tasks"]:
                log(f"kept {path}: it holds tasks this run could not score (see the errors above)")
            records.append(record)
    return records


def _check_save_encoder(save_encoder) -> None:
    """``--save-encoder`` must be a new or empty folder in a writable place (checked first)."""
    target = Path(save_encoder).expanduser()
    check_output(target, "--save-encoder", folder=True)
    if target.is_dir() and any(target.iterdir()):
        raise UserError(f"--save-encoder {save_encoder}: folder exists and is not empty; choose a new folder")


def _save_dir(save_encoder, info: dict, several: bool) -> Path | None:
    if save_encoder is None:
        return None
    return Path(save_encoder) / f"{info['name']}-{info['hash'][:8]}" if several else Path(save_encoder)


def task_cache_settings(task, settings: dict, dtype: str) -> dict:
    """What a cached task score depends on: the embedding settings and the task's data and scope."""
    return {
        "pooling": settings["pooling"],
        "layer": settings["layer"],
        "max_length": settings["max_length"],
        "dtype": dtype,
        "dataset": dict(task.metadata.dataset),
        "splits": list(task.eval_splits),
        "subsets": list(task.hf_subsets or []),
    }


def _score_checkpoint(info, spec, settings, data_dir, redo, save_to, log) -> dict:
    task_objs = _tasks_with_data(settings, data_dir, log)
    cache = RecordCache("mteb", info["key"])
    on_interrupt(
        f"the tasks finished so far are cached in {cache.root} and no record was written; "
        "rerun the same command to resume from them"
    )
    keys = {t.metadata.name: task_cache_settings(t, settings, spec.dtype) for t in task_objs}
    done = {} if redo else {n: v for n, k in keys.items() if (v := cache.get(n, k)) is not None}
    todo = [t for t in task_objs if t.metadata.name not in done]
    if todo or save_to is not None:
        encoder = encoder_lib.HiddenStateEncoder(
            spec, name=mteb_model_name(info), revision=info["key"], log=log
        )
        try:
            if save_to is not None:
                log(f"encoder: {encoder_lib.save_encoder(encoder, save_to)}")
            for task in todo:  # one at a time: each finished task is cached before the next starts
                entry = _evaluate_task(encoder, task, redo, data_dir, log)
                if entry is not None:
                    cache.put(task.metadata.name, keys[task.metadata.name], entry)
                    done[task.metadata.name] = entry
        finally:
            del encoder
            _free_memory()
    scores = {t.metadata.name: done[t.metadata.name] for t in task_objs if t.metadata.name in done}
    versions = library_versions("mteb", "sentence-transformers", "datasets")
    return make_record("mteb", info, settings, {"tasks": scores, **aggregate(scores)}, versions=versions)


def _tasks_with_data(settings: dict, data_dir, log) -> list:
    task_objs = resolve_tasks(settings["suite"], None if settings["suite"] else settings["tasks"])
    if data_dir is None:
        return task_objs
    task_objs, problems = apply_data_dir(task_objs, data_dir)
    for line in problems:
        log(f"error: {line}")
    if not task_objs:
        names = ",".join(settings["tasks"])
        raise UserError(
            f"--data-dir {data_dir}: none of the {len(settings['tasks'])} tasks has data there; "
            f"export them with `nitp-eval mirror export --tasks {names} --out {data_dir}`"
        )
    return task_objs


def _evaluate_task(encoder, task, redo: bool, data_dir, log) -> dict | None:
    """``scores.tasks`` entry of one task scored by ``mteb.evaluate``; None (and one error line) on failure."""
    import mteb

    with _quiet_mteb():
        result = mteb.evaluate(
            encoder,
            [task],
            encode_kwargs={"batch_size": encoder.batch_size},
            cache=mteb.ResultCache(),
            overwrite_strategy="always" if redo else "only-missing",
            raise_error=False,
        )
    for failure in result.exceptions:
        text = str(failure.exception).strip()
        first = text.splitlines()[0][:300] if text else "no message"
        hint = (
            ""
            if data_dir is not None
            else f"; without hub access, {export_hint(failure.task_name)} and pass --data-dir DIR"
        )
        log(f"error: {failure.task_name}: could not run ({first}){hint}")
    return task_score(task, result.task_results[0]) if result.task_results else None


@contextlib.contextmanager
def _quiet_mteb():
    """Keep the log readable: mteb's per-task bar stays; these go.

    The paper's task versions are superseded in mteb on purpose (skip that warning), and
    ``datasets`` draws a bar for every few-row split it generates (restored afterwards).
    """
    import datasets

    bars_were_on = not datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*is superseded by.*")
            warnings.filterwarnings("ignore", message=r".*No prompt found.*")
            yield
    finally:
        if bars_were_on:
            datasets.enable_progress_bars()


def _free_memory() -> None:
    gc.collect()
    with contextlib.suppress(Exception):
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
