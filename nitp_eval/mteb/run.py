"""`run_mteb`: score checkpoints' frozen embeddings with ``mteb.evaluate``, resumably.

Each checkpoint becomes a ``SentenceTransformer`` (``hidden_encoder.HiddenStateEncoder``) and each task
is scored on its own and kept at once in ``nitp.records.RecordCache("mteb", model key)`` (key:
:func:`task_cache_settings`), so a killed run, rerun, computes only the tasks it had not finished.
mteb's own result cache (``$MTEB_CACHE``) is written too, never read. A record is written only when
the run scored at least every task that a record of the same model at that path already holds.
Checkpoints, tasks, sizes, device and dtype are all checked (and chosen) once, before any model loads.

Example
-------
>>> records = run_mteb(["runs/ntp", "runs/nitp"], MtebSettings(suite="offline"))  # doctest: +SKIP
>>> print(format_table(records))                                            # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import warnings
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Callable

from nitp.cachekey import cache_key, device_kind
from nitp.errors import UserError, on_interrupt
from nitp.loading import offline_hub
from nitp.records import (
    RecordCache,
    check_output,
    library_versions,
    make_record,
    model_identity,
    read_record,
    settings_digest,
    write_record,
)

from .. import log_stderr
from . import encoder as encoder_lib
from .results import (
    aggregate,
    is_recorded,
    record_path,
    record_tag,
    replaces_record,
    task_score,
)
from .settings import MtebSettings, embedding_fields, parse_layers
from .tasks import apply_data_dir, data_root, export_hint, resolve_tasks


def run_mteb(
    checkpoints,
    settings: MtebSettings = MtebSettings(),
    *,
    out: str | Path | None = None,
    redo: bool = False,
    save_encoder: str | Path | None = None,
    log: Callable[[str], None] = log_stderr,
) -> list[dict]:
    """Score checkpoints' frozen embeddings on MTEB tasks; one ``mteb`` record per checkpoint.

    Parameters
    ----------
    checkpoints : checkpoint folders, run directories (their latest checkpoint), Hugging Face
        model folders or ``.gguf`` files; one path or a list
    settings : suite or tasks, pooling, layer or layer sweep, sizes, device, dtype, data mirror
        (:class:`~nitp_eval.mteb.settings.MtebSettings`). A sweep (``settings.layers``) makes one
        forward pass per batch for every layer and one record per layer (``settings.layer = k``),
        each equal to a ``layer=k`` run's. With ``data_dir`` (implies HF_HUB_OFFLINE), tasks
        without a folder there are reported at once and skipped.
    out : record file (``.json``, one checkpoint) or directory; default ``RUN/results/mteb/...``
    redo : recompute even what the record and the caches hold
    save_encoder : also save each checkpoint's ``SentenceTransformer`` there (``DIR``, or
        ``DIR/<name>-<hash8>`` for several checkpoints)

    Returns
    -------
    list of records (dicts, docs/contracts.md ``mteb``), in the order of ``checkpoints`` (and,
    for a sweep, of each checkpoint's layers by depth).
    Tasks that could not run are absent from ``scores["tasks"]`` (see ``missing_tasks``) and are
    retried on rerun.
    """
    paths = [checkpoints] if isinstance(checkpoints, (str, Path)) else list(checkpoints)
    if not paths:
        raise UserError("no checkpoint given")
    data_dir = settings.data_dir
    if data_dir is not None:
        data_root(data_dir)
    if settings.layers is not None and save_encoder is not None:
        raise UserError("--save-encoder saves one layer's encoder: use it with --layer k, not --layers")
    if out is not None:
        check_output(out, folder=Path(out).suffix != ".json")
    if save_encoder is not None:  # a new or empty folder in a writable place
        target = Path(save_encoder).expanduser()
        check_output(target, "--save-encoder", folder=True)
        if target.is_dir() and any(target.iterdir()):
            raise UserError(
                f"--save-encoder {save_encoder}: folder exists and is not empty; choose a new folder"
            )
    # bad paths, tokenizers, weights, sizes, device: one line before any work
    specs = [encoder_lib.preflight(p, settings) for p in paths]
    wanted = [
        [s.layer] if settings.layers is None else parse_layers(settings.layers, s.num_layers) for s in specs
    ]
    if out is not None and Path(out).suffix == ".json" and any(len(ks) > 1 for ks in wanted):
        raise UserError(f"--out {out}: one file for several layers; give a directory instead")
    infos = [{**model_identity(p), "num_layers": s.num_layers} for p, s in zip(paths, specs)]
    # unknown names fail here
    task_names = [t.metadata.name for t in resolve_tasks(settings.suite, settings.tasks)]
    job = _Job(settings, task_names, out, len(infos) > 1, redo, save_encoder, log)
    with offline_hub(data_dir is not None):  # local data: no hub retries
        return [r for info, spec, ks in zip(infos, specs, wanted) for r in _records(info, spec, ks, job)]


@dataclass(frozen=True)
class _Job:
    """What one ``run_mteb`` call shares across its checkpoints: the settings, the resolved
    task names, and the arguments that change no score."""

    settings: MtebSettings
    task_names: list[str]
    out: str | Path | None
    several: bool  # several checkpoints: one record (and saved encoder) per checkpoint in a folder
    redo: bool
    save_encoder: str | Path | None
    log: Callable[[str], None]

    def record_settings(self, layer: int) -> dict:
        """The record's ``settings`` of one layer (docs/contracts.md ``mteb``)."""
        s = self.settings
        return {
            "suite": s.suite,
            "tasks": self.task_names,
            "pooling": s.pooling,
            "layer": layer,
            "max_length": s.max_length,
            "batch_size": s.batch_size,
            "batch_tokens": s.batch_tokens,
        }


def _records(info, spec, wanted, job: _Job) -> list[dict]:
    """The records of one checkpoint's layers: read where recorded, else scored, then written."""
    settings, paths = {}, {}
    for k in wanted:
        settings[k] = job.record_settings(k)
        tag = record_tag(job.settings.suite, job.task_names, spec.pooling, k)
        paths[k] = record_path(info, job.out, job.several, tag)
        check_output(paths[k])
    save_to = None if job.save_encoder is None else Path(job.save_encoder)
    if save_to is not None and job.several:  # one encoder per checkpoint
        save_to = save_to / f"{info['name']}-{info['hash'][:8]}"
    task_objs = _tasks_with_data(job.settings, job.task_names, job.log)
    keys = {
        (k, t.metadata.name): task_cache_settings(t, dataclasses.replace(spec, layer=k))
        for k in wanted
        for t in task_objs
    }
    inputs = {k: settings_digest({u[1]: key for u, key in keys.items() if u[0] == k}) for k in wanted}
    found = {}
    for k in wanted:
        if not job.redo and save_to is None and is_recorded(paths[k], info, settings[k], inputs[k]):
            job.log(f"{info['path']}: already recorded in {paths[k]} (--redo recomputes)")
            found[k] = read_record(paths[k])
    todo = {k: settings[k] for k in wanted if k not in found}
    if todo:
        scored = _score_checkpoint(info, spec, todo, job, save_to, (task_objs, keys))
        for k, record in scored.items():
            record["inputs"] = inputs[k]  # the digest of every task's cache key: what is_recorded checks
            if replaces_record(paths[k], record):
                write_record(paths[k], record)
                job.log(f"record: {paths[k]}")
            elif record["scores"]["tasks"]:
                job.log(f"kept {paths[k]}: it holds tasks this run could not score (see the errors above)")
            found[k] = record
    return [found[k] for k in wanted]


def task_cache_settings(task, spec) -> dict:
    """What a cached task score depends on (``nitp.cachekey.cache_key``): every embedding setting
    of ``spec`` (``settings.embedding_fields``: pooling, layer, lengths, batch sizes, dtype; the
    device by kind), the task's scope, its dataset (a local ``--data-dir`` folder by contents)
    and the mteb version. ``spec``: an ``encoder.EncoderSpec`` (its layer = the scored layer)."""
    dataset = dict(task.metadata.dataset)
    local = dataset.get("path")
    local = local if isinstance(local, str) and Path(local).expanduser().exists() else None
    return cache_key(
        {
            **embedding_fields(spec),
            "device": device_kind(spec.device),
            "dataset": dataset,
            "data": local,
            "splits": list(task.eval_splits),
            "subsets": list(task.hf_subsets or []),
            "mteb": metadata.version("mteb"),
        },
        files=("data",),
    )


def _score_checkpoint(info, spec, settings_by_layer, job: _Job, save_to, tasks) -> dict[int, dict]:
    """One record per layer of ``settings_by_layer``; each task is scored (and cached) per layer,
    and with a sweep every layer's embeddings come from one pass over the task's texts.
    ``tasks``: the task objects (data applied) and their cache keys per (layer, task name)."""
    task_objs, all_keys = tasks
    redo, log = job.redo, job.log
    sweep = job.settings.layers is not None
    cache = RecordCache("mteb", info["key"])
    on_interrupt(
        f"the tasks finished so far are cached in {cache.root} and no record was written; "
        "rerun the same command to resume from them"
    )
    keys = {u: key for u, key in all_keys.items() if u[0] in settings_by_layer}
    done = {} if redo else {u: v for u, key in keys.items() if (v := cache.get(u[1], key)) is not None}
    todo = {
        t.metadata.name: [k for k in settings_by_layer if (k, t.metadata.name) not in done] for t in task_objs
    }
    if any(todo.values()) or save_to is not None:
        encoders, shared = _encoders(info, spec, list(settings_by_layer), sweep, log)
        try:
            if save_to is not None:
                log(f"encoder: {encoder_lib.save_encoder(encoders[spec.layer], save_to)}")
            for task in task_objs:  # one at a time: each finished task is cached before the next starts
                name = task.metadata.name
                for k in todo[name]:
                    entry = _evaluate_task(encoders[k], task, redo, job.settings.data_dir, log)
                    if entry is not None:
                        cache.put(name, keys[(k, name)], entry)
                        done[(k, name)] = entry
                if shared is not None:
                    shared.clear()
        finally:
            del encoders, shared
            gc.collect()
            with contextlib.suppress(Exception):
                import torch

                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
    versions = library_versions("mteb", "sentence-transformers", "datasets")
    records = {}
    for k, settings in settings_by_layer.items():
        scores = {
            t.metadata.name: done[(k, t.metadata.name)] for t in task_objs if (k, t.metadata.name) in done
        }
        records[k] = make_record(
            "mteb", info, settings, {"tasks": scores, **aggregate(scores)}, versions=versions
        )
    return records


def _encoders(info, spec, layers: list[int], sweep: bool, log):
    """``({layer: mteb encoder}, LayerSweep or None)``: one encoder, or a sweep's views."""
    from . import hidden_encoder  # imports mteb (seconds): only when a run encodes

    step = f"-step{info['step']}" if info.get("step") is not None else ""
    name, revision = f"nitp-local/{info['name']}{step}", info["key"]
    if not sweep:
        return {
            spec.layer: hidden_encoder.HiddenStateEncoder(spec, name=name, revision=revision, log=log)
        }, None
    from .sweep import LayerSweep

    shared = LayerSweep(spec, layers, log=log)
    return dict(zip(layers, shared.views(name=name, revision=revision))), shared


def _tasks_with_data(settings: MtebSettings, task_names: list[str], log) -> list:
    task_objs = resolve_tasks(settings.suite, settings.tasks)
    data_dir = settings.data_dir
    if data_dir is None:
        return task_objs
    task_objs, problems = apply_data_dir(task_objs, data_dir)
    for line in problems:
        log(f"error: {line}")
    if not task_objs:
        names = ",".join(task_names)
        raise UserError(
            f"--data-dir {data_dir}: none of the {len(task_names)} tasks has data there; "
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
            # mteb's own cache is keyed on less than ours (not the data's contents): written for
            # mteb's tools, never read; nitp's RecordCache is the one that answers
            overwrite_strategy="always",
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
