"""The training loop: NTP or NITP pre-training of a Hugging Face causal LM from scratch.

Reads top to bottom: set up processes and data, build (or resume) the model and its projector,
then loop: micro-batches -> one forward pass computing every loss term -> backward -> clip ->
AdamW step -> warmup-stable-decay schedule; log, measure geometry, validate, checkpoint.
:func:`_build_state` builds a :class:`TrainState`, :func:`_train_step` runs one optimizer step on
it and :func:`_after_step` does what follows (log, evaluate, save). NITP runs pass each token's
document id to the pair rule (``TokenShards.document_batches``): no NITP pair crosses a document.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import torch
import yaml

from nitp.errors import UserError
from nitp.io import atomic_write_text, read_jsonl
from nitp.runs import checkpoint_name, list_checkpoints, read_run_config, resolve_checkpoint, run_lock
from nitp.runtime import use_bf16

from . import checkpoint as ckpt_io
from . import parallel
from .config import RESUMABLE_CHANGES, apply_plan, config_diff, plan_summary
from .config_model import Config, Train, as_config, section
from .data import TokenShards, prepare
from .evaluators import evaluate_in_loop, load_evaluators
from .loss import NITPObjective, parse_loss_impl, require_liger
from .metrics import GeometrySample, MetricsLog, peak_flops, truncate_after
from .models import build_model, count_parameters
from .probe import gradient_probe, heldout_batch, heldout_geometry
from .trackers import Trackers
from .trackers import require as require_tracker


def train(cfg: Config | dict, run_dir: str | Path, resume: bool = False, log=print) -> Path:
    """Train per the resolved ``cfg`` (a :class:`Config`, or its dict, e.g. from ``load_config``)
    into ``run_dir``; returns the run directory.

    ``resume=True`` continues from the run's latest checkpoint: same weights, optimizer,
    schedule, RNG and data cursor, so the result equals an uninterrupted run.
    """
    from transformers.utils import logging as hf_logging

    from .memory import check_fits

    hf_logging.disable_progress_bar()
    cfg, run_dir = as_config(cfg), Path(run_dir)
    d = parallel.setup(cfg.train.device)
    log = log if d.is_main else (lambda *a, **k: None)
    try:  # rank 0 holds the run directory from before its checks until the run ends
        with run_lock(run_dir) if d.is_main else contextlib.nullcontext():
            if d.is_main:
                ckpt_io.verify_resume(run_dir, resume)
            check_fits(cfg.model, d.device, d.world, sharded=cfg.train.parallel == "fsdp")
            st = _build_state(cfg, run_dir, resume, d, log)
            try:
                if st.step > 0:
                    _finish_interrupted_step(st)
                st.t0 = time.perf_counter()
                while st.step < st.cfg.train.steps:
                    want_geom, grad_norm = _train_step(st)
                    _after_step(st, want_geom, grad_norm)
            finally:
                st.mlog.close()
            log(f"done: {st.step} steps, {st.tokens_seen:,} tokens -> {run_dir}")
            return run_dir
    finally:
        parallel.teardown(d)


@dataclass
class TrainState:
    """Everything one training step and what follows it need, built once by :func:`_build_state`.

    ``step`` / ``tokens_seen`` count finished optimizer steps; ``sums`` / ``n_sums`` accumulate
    the loss terms of the current logging interval, timed from ``t0``.
    """

    cfg: Config
    run_dir: Path
    d: parallel.Dist
    objective: NITPObjective
    wrapped: torch.nn.Module  # DDP / FSDP around the objective
    forward: torch.nn.Module  # wrapped, or torch.compile(wrapped)
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    tokenizer: object
    shards: TokenShards
    batches: Iterator
    amp: object
    mlog: MetricsLog
    geom: GeometrySample
    tokens_per_step: int
    flops_per_token: float
    peak: float | None
    heldout: tuple | None = None  # (tokens, document ids) of the fixed held-out batch (nitp_train.probe)
    run_facts: dict = field(default_factory=dict)  # logged once, on the first train line of this start
    evaluators: list = field(default_factory=list)  # eval.every: step callbacks (nitp_train.evaluators)
    step: int = 0
    tokens_seen: int = 0
    last_good: str | None = None
    pending_line: dict | None = None  # the resumed checkpoint's metrics line (_finish_interrupted_step)
    sums: dict = field(default_factory=dict)
    n_sums: int = 0
    t0: float = 0.0
    nonfinite: torch.Tensor | None = None  # [kind, -first step] of non-finite losses (_flag_nonfinite)


def _build_state(cfg: Config | dict, run_dir: Path, resume: bool, d: parallel.Dist, log) -> TrainState:
    """Plan, data, model + objective (fresh or resumed), optimizer, schedule, logs: the state at
    the run's current step. The run directory appears only once all of it succeeded."""
    cfg = as_config(cfg)
    if resume and cfg.train.global_batch is None and (run_dir / "config.yaml").is_file():
        # a resume at another world size keeps the run's global batch (accumulation is re-derived)
        saved = (read_run_config(run_dir).get("train") or {}).get("global_batch")
        if saved is not None:
            train = cfg.train.model_copy(update={"global_batch": saved, "grad_accum": None})
            cfg = cfg.model_copy(update={"train": train})
    cfg, plan = apply_plan(cfg, d.world)
    tc, lc = cfg.train, cfg.log
    log(plan_summary(cfg, plan))
    _check_speed_switches(tc, d.device)
    _check_param_dtype(tc, d)
    evaluators = load_evaluators(cfg) if d.is_main else []
    for name in lc.trackers:
        require_tracker(name)
    if tc.threads:
        torch.set_num_threads(int(tc.threads))
    last_ckpt = _check_run_dir(cfg, run_dir, resume, log)
    shards, tokenizer = _prepared_data(cfg, run_dir, d, log)
    model, objective = _build_objective(cfg, last_ckpt, tokenizer, d, log)
    wrapped = parallel.wrap(objective, d, tc.parallel, tc.param_dtype)
    optimizer = _make_optimizer(objective, tc)
    scheduler = _make_scheduler(optimizer, tc)
    step, tokens_seen, pending_line = 0, 0, None
    if last_ckpt is not None:  # weights, optimizer and schedule of the last checkpoint
        saved = ckpt_io.load_trainer_state(last_ckpt)
        if saved["sharded"] is not None:  # FSDP2 shards, resharded to this world size
            parallel.load_sharded(wrapped, optimizer, saved["sharded"])
        else:
            model_sd = objective.state_dict()
            parallel.load_full_state_dicts(wrapped, optimizer, model_sd, saved["optimizer"], d, tc.parallel)
        scheduler.load_state_dict(saved["scheduler"])
        # the restored optimizer carries the lr of the old schedule; a resume that changes
        # train.steps (allowed) must take the next step at the new schedule's lr
        for group, base, factor in zip(optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas):
            group["lr"] = base * factor(scheduler.last_epoch)
        state = saved["state"]  # pending_line: the step's metrics line as saved (None in older checkpoints)
        step, tokens_seen, pending_line = state["step"], state["tokens_seen"], state.get("pending_line")
        log(f"resumed from {last_ckpt.name} (step {step}, {tokens_seen:,} tokens)")
    seq, bsz, accum = cfg.data.seq_len, tc.batch_size, tc.grad_accum
    flops_per_token, peak = _flops_per_token(cfg, model), peak_flops(d.device)  # may refuse: before mkdir
    metrics_path = run_dir / "metrics.jsonl"
    if d.is_main:  # the run directory appears only once everything above succeeded
        run_dir.mkdir(parents=True, exist_ok=True)
        ckpt_io.clean_partial(run_dir)
        atomic_write_text(
            run_dir / "config.yaml", yaml.safe_dump(cfg.model_dump(by_alias=True), sort_keys=False)
        )
        truncate_after(metrics_path, step)
    trackers = None
    if d.is_main and lc.trackers:  # log.trackers, opened on rank 0
        trackers = Trackers(
            run_dir, lc.trackers, cfg.run_name, cfg.model_dump(by_alias=True), step if resume else None
        )
    heldout = None  # the fixed held-out batch of log.geom_batch: val and log.probe_every
    if (lc.geom_every > 0 and lc.geom_batch == "val") or lc.probe_every > 0:
        if lc.probe_every > 0 and tc.parallel == "fsdp" and d.enabled:
            raise UserError(
                "log.probe_every needs the whole model on rank 0 (train.parallel=fsdp shards it): "
                "set log.probe_every=0 or train.parallel=ddp"
            )
        heldout = heldout_batch(shards, seq)
    # (tokens, document ids or None) per micro-batch: only NITP's pair rule reads the document ids
    where = dict(start=step * accum, rank=d.rank, world=d.world)
    if cfg.objective == "nitp":
        batches = ((t, docs) for _, t, docs in shards.document_batches(seq, bsz, cfg.seed, **where))
    else:
        batches = ((t, None) for _, t in shards.batches(seq, bsz, cfg.seed, **where))
    bf16 = tc.dtype == "bf16" or (tc.dtype == "auto" and use_bf16(str(d.device)))
    return TrainState(
        cfg=cfg,
        run_dir=run_dir,
        d=d,
        objective=objective,
        wrapped=wrapped,
        forward=_compiled(wrapped, tc),
        optimizer=optimizer,
        scheduler=scheduler,
        tokenizer=tokenizer,
        shards=shards,
        batches=batches,
        amp=torch.autocast(d.device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext(),
        mlog=MetricsLog(
            metrics_path, tc.steps, step, enabled=d.is_main, title=cfg.run_name, trackers=trackers
        ),
        geom=GeometrySample(seq, bsz * accum, d.world, lc.geom_every, d.rank, cfg.seed),
        tokens_per_step=seq * bsz * accum * d.world,
        flops_per_token=flops_per_token,
        peak=peak,
        run_facts=_run_facts(tc, model, objective, optimizer),
        evaluators=evaluators,
        heldout=heldout,
        step=step,
        tokens_seen=tokens_seen,
        last_good=last_ckpt.name if last_ckpt is not None else None,
        pending_line=pending_line,
    )


def _build_objective(cfg: Config, last_ckpt: Path | None, tokenizer, d: parallel.Dist, log):
    """``(model, NITPObjective)`` on ``d.device``: from the last checkpoint, ``model.init_from``
    (continued pre-training) or a fresh preset, seeded by ``cfg.seed``."""
    tc = cfg.train
    torch.manual_seed(cfg.seed)
    if last_ckpt is not None:
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(last_ckpt, dtype=torch.float32)
    elif cfg.model.get("init_from"):  # an optional model key (init_from.py), not a default
        from .init_from import load_init_model

        model = load_init_model(cfg.model)
    else:
        model = build_model(cfg.model, seed=cfg.seed)
    model.config.bos_token_id, model.config.eos_token_id = tokenizer.bos_token_id, tokenizer.eos_token_id
    model.config.pad_token_id = tokenizer.pad_token_id
    if tc.activation_checkpointing:
        parallel.enable_activation_checkpointing(model)
    objective = NITPObjective(
        model, cfg.objective, cfg.nitp, cfg.cos_reg.weight, cfg.cos_reg.kind, loss_impl=tc.loss_impl
    )
    if last_ckpt is not None and objective.head is not None:
        objective.head.load_state_dict(ckpt_io.load_head(last_ckpt))
    objective.to(d.device)
    counts = count_parameters(model)
    head = objective.head
    log(
        f"{cfg.model['preset']} ({cfg.objective}): {counts['total']:,} parameters, {counts['active']:,} active"
        + (f", projector {sum(p.numel() for p in head.parameters()):,} (training only)" if head else "")
    )
    return model, objective


def _train_step(st: TrainState) -> tuple[bool, torch.Tensor]:
    """One optimizer step (all micro-batches, clip, AdamW, schedule); returns
    ``(whether geometry is measured after it, the gradient norm before clipping)``."""
    cfg, lc, d = st.cfg, st.cfg.log, st.d
    accum = cfg.train.grad_accum
    want_geom = lc.geom_every > 0 and (st.step + 1) % lc.geom_every == 0
    # geom_batch=train: this step's tokens enter the next measurement
    sample_geom = lc.geom_batch == "train" and st.geom.collecting(st.step + 1)
    nitp_weight = cfg.nitp.lambda_ * float(st.step >= cfg.nitp.start_step)
    for micro in range(accum):
        tokens, docs = next(st.batches)
        x = torch.from_numpy(tokens).to(d.device, non_blocking=True)
        documents = torch.from_numpy(docs).to(d.device, non_blocking=True) if docs is not None else None
        last = micro == accum - 1 or not hasattr(st.wrapped, "no_sync")
        sync = contextlib.nullcontext() if last else st.wrapped.no_sync()
        with sync, st.amp:
            out = st.forward(x, nitp_weight=nitp_weight, keep_last_hidden=sample_geom, document_ids=documents)
            (out["loss_total"] / accum).backward()
        if sample_geom:
            st.geom.add(out.pop("last_hidden"), st.step + 1, micro)
        for k, v in out.items():
            if k.startswith(("loss", "aux")):
                st.sums[k] = st.sums.get(k, 0.0) + v.detach()
        st.n_sums += 1
    grad_norm = torch.nn.utils.clip_grad_norm_(st.objective.parameters(), cfg.train.grad_clip)
    _flag_nonfinite(st, grad_norm)
    if _read_after(st, st.step + 1):  # before this step's update: a saved checkpoint is never poisoned
        _stop_if_nonfinite(st)
    if st.step < cfg.nitp.start_step:
        # before NITP starts, drop the projector's (zero) gradients: AdamW then skips it entirely, so
        # it is neither weight-decayed nor stepped, and its moments start at its first real step
        for group in st.optimizer.param_groups:
            if group.get("name") == "projector":
                for p in group["params"]:
                    p.grad = None
    st.optimizer.step()
    st.scheduler.step()
    st.optimizer.zero_grad(set_to_none=True)
    st.step += 1
    st.tokens_seen += st.tokens_per_step
    st.mlog.advance(st.step)
    return want_geom, grad_norm


_NONFINITE = {
    4: "loss became nan",
    3: "loss became inf",
    2: "loss became -inf",
    1: "gradient norm became nan or inf",
}


def _flag_nonfinite(st: TrainState, grad_norm: torch.Tensor) -> None:
    """Fold this step into ``st.nonfinite`` on the device, without a host sync.

    ``[kind, -step]``: kind 0 = finite, 1 = gradient norm non-finite, 2/3/4 = loss -inf/inf/nan;
    an elementwise max keeps the worst kind and the earliest bad step (across steps and ranks).
    """
    loss = st.sums["loss_total"]  # the interval's sum: non-finite once any step of it was
    local = getattr(grad_norm, "to_local", None)  # FSDP2: a DTensor; any rank's shard suffices
    finite_norm = torch.isfinite(local() if local else grad_norm).to(loss.device)
    kind = torch.where(
        torch.isfinite(loss),
        (~finite_norm).to(torch.float64),
        torch.where(torch.isnan(loss), 4.0, torch.where(loss > 0, 3.0, 2.0)).to(torch.float64),
    )
    step = torch.where(kind > 0, -float(st.step + 1), -math.inf)
    now = torch.stack([kind, step.to(torch.float64)])
    st.nonfinite = now if st.nonfinite is None else torch.maximum(st.nonfinite, now)


def _read_after(st: TrainState, step: int) -> bool:
    """Whether :func:`_after_step` reads the model or the losses after ``step`` (log, geometry,
    probe, validation, checkpoint, evaluation, last step): the non-finite check must come first."""
    cfg, lc = st.cfg, st.cfg.log
    intervals = (lc.every, lc.geom_every, lc.probe_every, lc.eval_every, cfg.checkpoint.every, cfg.eval.every)
    if step == cfg.train.steps or step in _log_spaced(cfg.train.steps, lc.eval_points):
        return True
    return any(n > 0 and step % n == 0 for n in intervals)


def _stop_if_nonfinite(st: TrainState) -> None:
    """Raise the one-line error on every rank when any rank saw a non-finite step since the last
    check (one all-reduce and one host sync, at steps that sync anyway)."""
    kind, neg_step = parallel.all_max(st.d, st.nonfinite.clone()).tolist()
    if kind > 0:
        first, now = int(-neg_step), st.step + 1
        where = f"at step {first}" + (f" (found at step {now})" if now != first else "")
        raise UserError(
            f"{_NONFINITE[int(kind)]} {where}; last good checkpoint: {st.last_good or 'none'} "
            "(lower train.lr or check the data)"
        )


def _after_step(st: TrainState, want_geom: bool, grad_norm: torch.Tensor) -> None:
    """Log the interval's means, measure geometry, validate, evaluate (``eval.every``) and checkpoint when due."""
    cfg, lc, d, steps = st.cfg, st.cfg.log, st.d, st.cfg.train.steps
    row = {}
    if _due(st, lc.every) or want_geom:
        row = _interval_means(st, grad_norm)
    if want_geom and lc.geom_batch == "val":  # the fixed held-out batch: every rank (a collective under FSDP)
        row.update(
            heldout_geometry(st.wrapped, st.objective, st.heldout, d.device, st.amp, cfg.train.batch_size)
        )
    elif want_geom:
        row.update(st.geom.result(d))
    if _due(st, lc.probe_every) and d.is_main:
        # the gradient probe at the current NITP weight (rank 0, bare model)
        weight = cfg.nitp.lambda_ * float(st.step >= cfg.nitp.start_step) if cfg.objective == "nitp" else 0.0
        row.update(gradient_probe(st.objective, st.heldout, d.device, weight))
    if validation_due(st.step, steps, lc.eval_every, lc.eval_points):
        row.update(_validate(st.wrapped, st.shards, cfg, d, st.amp))
    # the checkpoint comes first, at every evaluated step too: an evaluator's or a tracker's failure
    # below never costs training state; it carries this step's line, which a resume writes if the
    # run died before it did
    if _due(st, cfg.checkpoint.every) or _due(st, cfg.eval.every):
        _save(st, pending_line=row)
        st.last_good = checkpoint_name(st.step)
    _evaluate_and_log(st, row)
    if not st.sums:  # a logging interval ended: time the next one from here (eval and saving excluded)
        st.t0 = time.perf_counter()


def log_spaced_steps(steps: int, points: int) -> set[int]:
    """``points`` steps spread evenly on a log scale from 1 to ``steps`` (rounded, duplicates
    merged, so early on fewer than ``points``), ``steps`` included.

    >>> sorted(log_spaced_steps(1000, 4))
    [1, 10, 100, 1000]
    """
    import numpy as np

    if points <= 0:
        return set()
    return {int(s) for s in np.unique(np.round(np.geomspace(1, steps, points)))}


@functools.lru_cache(maxsize=8)
def _log_spaced(steps: int, points: int) -> frozenset[int]:
    return frozenset(log_spaced_steps(steps, points))


def validation_due(step: int, steps: int, every: int, points: int) -> bool:
    """Validate at every ``every``-th step (0: never), at the log-spaced ``points`` and at the last
    step whenever either is on."""
    if every <= 0 and points <= 0:
        return False
    return step == steps or (every > 0 and step % every == 0) or step in _log_spaced(steps, points)


def _due(st: TrainState, every: int) -> bool:
    """Whether something done every ``every`` steps (0: never) is due now, the last step included."""
    return every > 0 and (st.step % every == 0 or st.step == st.cfg.train.steps)


def _evaluate(st: TrainState) -> dict:
    """The in-loop evaluators' results at this step (rank 0; the others wait)."""
    modules = (st.objective, st.wrapped)  # put back in training mode afterwards
    return evaluate_in_loop(
        st.evaluators, st.objective.model, modules, st.tokenizer, st.step, st.run_dir, st.d
    )


def _evaluate_and_log(st: TrainState, row: dict) -> None:
    """Run the in-loop evaluators when due (``eval.every``), then write the step's metrics line."""
    try:
        if _due(st, st.cfg.eval.every):
            row.update(_evaluate(st))
    finally:  # the line of this step is written even when an evaluator failed
        if row:
            st.mlog.write({"step": st.step, "tokens": st.tokens_seen, **row})


def _finish_interrupted_step(st: TrainState) -> None:
    """Finish the resumed checkpoint's step. A run killed between its checkpoint and that step's
    metrics line lost the line: write it from the checkpoint and run the evaluators. A run stopped
    by an evaluator's failure wrote the line without its results: evaluate now and add them."""
    path = st.run_dir / "metrics.jsonl"
    rows = read_jsonl(path) if st.d.is_main and path.is_file() else []
    at = [i for i, r in enumerate(rows) if r.get("step") == st.step]
    no_line = st.d.is_main and st.pending_line is not None and not at
    no_eval = (
        bool(at and st.evaluators) and _due(st, st.cfg.eval.every) and "eval/seconds" not in rows[at[-1]]
    )
    todo = parallel.all_max(st.d, torch.tensor([float(no_line), float(no_eval)], device=st.d.device))
    if todo[0].item():
        _evaluate_and_log(st, dict(st.pending_line or {}))
    elif todo[1].item():
        results = _evaluate(st)
        if st.d.is_main:  # the step's line gets the results in place; the trackers get only them
            rows[at[-1]] = {**rows[at[-1]], **results}
            st.mlog.file.close()  # the rewrite is a new file: append to it, not to the old one
            atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))
            st.mlog.file = open(path, "a")
            if st.mlog.trackers is not None:
                st.mlog.trackers.log({"step": st.step, "tokens": st.tokens_seen, **results})


def _interval_means(st: TrainState, grad_norm: torch.Tensor) -> dict:
    """The logging interval's mean loss terms (over ranks), lr, gradient norm, throughput, MFU;
    starts the next interval."""
    dt = time.perf_counter() - st.t0
    row = parallel.all_mean(st.d, {k: float(v) / st.n_sums for k, v in st.sums.items()})
    tps = st.tokens_per_step * st.n_sums / st.cfg.train.grad_accum / max(dt, 1e-9)
    row.update(lr=st.scheduler.get_last_lr()[0], grad_norm=float(grad_norm), tokens_per_s=tps)
    if st.peak and st.flops_per_token:
        row["mfu"] = st.flops_per_token * tps / st.d.world / st.peak
    if st.run_facts:  # the first train line of this start: how the numbers above were obtained
        row.update(st.run_facts)
        # training FLOPs per token (NITP's projector included) on every device: a size ladder's compute
        row["flops_per_token"] = st.flops_per_token
        if "mfu" in row:  # MFU's convention (nitp_train.metrics.peak_flops)
            row["peak_flops"] = st.peak
        st.run_facts = {}
    st.sums, st.n_sums = {}, 0
    return row


# ----------------------------------------------------------------------------- pieces
def _prepared_data(cfg: Config, run_dir: Path, d: parallel.Dist, log):
    """Tokenize once (rank 0), memory-map the shards, and check they fit the plan.

    A failed check removes the folders this start created (the run directory, a new
    prepared_dir), so a corrected rerun starts clean; an interrupted preparation keeps its
    partial state beside the prepared folder and resumes at the next start.
    """
    prepared = Path(cfg.data.prepared_dir or run_dir / "data")
    created = [p for p in (run_dir, prepared) if not p.exists()] if d.is_main else []
    try:
        if d.is_main:
            prepare(cfg.data.model_dump(), prepared, log=log)
        parallel.barrier(d)
        shards = TokenShards(prepared)
        shards.check_fits(cfg.data.seq_len, cfg.train.batch_size, d.world)
        tokenizer = shards.tokenizer()
        vocab = cfg.model["vocab_size"]
        if len(tokenizer) > vocab:
            raise UserError(
                f"tokenizer has {len(tokenizer)} tokens but model.vocab_size={vocab}: "
                f"set model.vocab_size>={len(tokenizer)} or data.vocab_size<={vocab}"
            )
    except Exception:
        if not (run_dir / "config.yaml").exists():
            for path in created:
                shutil.rmtree(path, ignore_errors=True)
        raise
    return shards, tokenizer


def _check_run_dir(cfg: Config, run_dir: Path, resume: bool, log=print) -> Path | None:
    """Refuse to overwrite a run; on resume, check the config and return the last checkpoint."""
    exists = (run_dir / "config.yaml").is_file()
    if not resume:
        if exists:
            raise UserError(
                f"{run_dir} already holds a run: add --resume to continue it, or choose another --run-dir"
            )
        return None
    if not exists:
        log(f"--resume: {run_dir} holds no run yet; starting a new one")
        return None
    changed = [
        k
        for k in config_diff(read_run_config(run_dir), cfg.model_dump(by_alias=True))
        if not any(k == r or k.startswith(r + ".") for r in RESUMABLE_CHANGES)
    ]
    if changed:
        raise UserError(
            f"--resume: config differs from the run's in {', '.join(changed[:5])}; resume with the same config or use another --run-dir"
        )
    if not list_checkpoints(run_dir):
        log(f"--resume: {run_dir} has no complete checkpoint yet; starting from step 0")
        return None
    return resolve_checkpoint(run_dir)


def _make_optimizer(objective: torch.nn.Module, tc: Train) -> torch.optim.Optimizer:
    """AdamW; weight decay on matrices only (not norms, biases, or other vectors). ``tc``: the
    ``train`` section (a dict is validated).

    The projector has groups of its own (``name: projector``) so that :func:`_train_step` can keep
    it out of the update until ``nitp.start_step``.
    """
    tc = section("train", tc)
    head = getattr(objective, "head", None)
    head_ids = {id(p) for p in head.parameters()} if head is not None else set()
    groups = []
    for name, is_head in (("model", False), ("projector", True)):
        params = [p for p in objective.parameters() if p.requires_grad and (id(p) in head_ids) == is_head]
        groups += [
            {"name": name, "params": [p for p in params if p.ndim >= 2], "weight_decay": tc.weight_decay},
            {"name": name, "params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
        ]
    groups = [g for g in groups if g["params"]]
    # train.fused_adamw: auto = fused when every parameter is on CUDA; true there only
    params = [p for g in groups for p in g["params"]]
    on_cuda = bool(params) and all(p.device.type == "cuda" for p in params)
    if tc.fused_adamw is True and not on_cuda:
        where = sorted({p.device.type for p in params}) or ["no parameters"]
        raise UserError(
            f"train.fused_adamw=true needs every parameter on CUDA (found {', '.join(where)}): set train.fused_adamw to auto or false"
        )
    fused = on_cuda if tc.fused_adamw == "auto" else bool(tc.fused_adamw)
    return torch.optim.AdamW(groups, lr=tc.lr, betas=tuple(tc.betas), eps=tc.eps, fused=fused)


def _check_speed_switches(tc: Train, device: torch.device) -> None:
    """Fail before any work on switches that cannot apply: ``liger`` without its package,
    ``fused_adamw: true`` off CUDA."""
    if parse_loss_impl(tc.loss_impl)[0] == "liger":
        require_liger()
    if tc.fused_adamw is True and device.type != "cuda":
        raise UserError(
            f"train.fused_adamw=true needs a CUDA device (training on {device.type}): set train.fused_adamw to auto or false"
        )


def _check_param_dtype(tc: Train, d: parallel.Dist) -> None:
    """``train.param_dtype: bf16`` is FSDP2's ``MixedPrecisionPolicy`` (``parallel.mixed_precision_policy``):
    float32 shards as the master copy, bf16 for the gathered parameters. A single process or DDP
    has no such master copy (bf16 parameters there would be the only copy, and AdamW would update
    bf16 weights), and bf16 autocast (``train.dtype``) already runs its matmuls in bf16: refused."""
    if tc.param_dtype == "bf16" and not (tc.parallel == "fsdp" and d.enabled):
        where = "a single process" if not d.enabled else f"train.parallel={tc.parallel}"
        raise UserError(
            f"train.param_dtype=bf16 needs train.parallel=fsdp under torchrun (this run: {where}): "
            "set train.param_dtype=fp32 (bf16 autocast via train.dtype still applies) or launch with torchrun and train.parallel=fsdp"
        )


def _compiled(wrapped: torch.nn.Module, tc: Train) -> torch.nn.Module:
    """``torch.compile(wrapped, mode=train.compile_mode)`` when ``train.compile``, else ``wrapped``."""
    return torch.compile(wrapped, mode=tc.compile_mode) if tc.compile else wrapped


def _run_facts(tc: Train, model, objective: NITPObjective, optimizer) -> dict:
    """The facts behind the throughput of this start, logged once in ``metrics.jsonl`` (attention
    backend: sdpa, eager, flash_attention_2, ...)."""
    return {
        "parameters": count_parameters(model)["total"],
        "attn_implementation": str(getattr(model.config, "_attn_implementation", None)),
        "loss_impl": objective.loss_impl,
        "compile_mode": tc.compile_mode if tc.compile else "off",
        "fused_adamw": any(bool(g.get("fused")) for g in optimizer.param_groups),
    }


def _make_scheduler(optimizer, tc: Train):
    r"""The warmup-stable-decay schedule: transformers' ``get_wsd_schedule`` (a ``LambdaLR``; its
    state is the step counter, saved with checkpoints).

    Multiplier of the lr used by update ``step`` (0-based), with W warmup steps, D = round(
    train.decay_ratio x steps) decay steps, s = train.warmup_start_ratio, f = train.min_lr_ratio:

    .. math::
        m(t) = \begin{cases} s + (1 - s)\, t / W & t < W \\ 1 & t < S - D \\
               f + (1 - f)\, \mathrm{shape}((t - S + D) / D) & \text{after} \end{cases}

    shape(p) = 1 - p (linear), (1 + cos(pi p)) / 2 (cosine) or 1 - sqrt(p) (1-sqrt); the floor f
    is reached at ``t == steps``; D = 0 keeps 1 to the end. Example: steps 100, W 10, D 20, s 0,
    f 0.1 -> 0.0 at 0, 1.0 at 10..80, 0.1 at 100.

    ``get_wsd_schedule`` has every shape but starts its warmup at ``min_lr_ratio``: when s != f
    (the default: s = 0, f = 0.1) the warmup part comes from a second ``get_wsd_schedule`` with
    ``min_lr_ratio = s`` (:func:`_wsd_multiplier` picks the part), the only code of our own.
    """
    from transformers.optimization import get_wsd_schedule

    tc = section("train", tc)  # a dict is validated
    steps = tc.steps
    warmup = min(tc.warmup_steps, steps)
    decay = min(int(round(tc.decay_ratio * steps)), steps - warmup)
    start, floor = tc.warmup_start_ratio, tc.min_lr_ratio
    wsd = dict(num_warmup_steps=warmup, num_decay_steps=decay, decay_type=tc.decay_type)
    # no decay: stay at 1 to the end (and beyond) instead of dropping to the floor at t = steps
    stable = steps - warmup - decay if decay > 0 else steps + 1
    if start == floor or warmup == 0:
        return get_wsd_schedule(optimizer, num_stable_steps=stable, min_lr_ratio=floor, **wsd)
    probe = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)  # only lends its lambdas
    warm = get_wsd_schedule(probe, num_stable_steps=stable, min_lr_ratio=start, **wsd).lr_lambdas[0]
    rest = get_wsd_schedule(probe, num_stable_steps=stable, min_lr_ratio=floor, **wsd).lr_lambdas[0]
    factor = functools.partial(_wsd_multiplier, warmup=warmup, warm=warm, rest=rest)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _wsd_multiplier(step: int, warmup: int, warm, rest) -> float:
    """``warm(step)`` during the warmup (it ramps from warmup_start_ratio), ``rest(step)`` after."""
    return warm(step) if step < warmup else rest(step)


def _flops_per_token(cfg: Config | dict, model) -> float:
    from .flops import nitp_flops_per_token, training_flops_per_token

    cfg = as_config(cfg)
    f = training_flops_per_token(model.config, cfg.data.seq_len)
    return f + (nitp_flops_per_token(model.config.hidden_size) if cfg.objective == "nitp" else 0.0)


@torch.no_grad()
def _validate(wrapped, shards: TokenShards, cfg: Config, d: parallel.Dist, amp) -> dict:
    """Mean next-token CE over the fixed validation batches; on one process also each batch's CE
    (``val_loss_batches``: the same batches in every run of the same data, so two runs pair by batch)."""
    wrapped.eval()
    losses = []
    batches = shards.val_batches(
        cfg.data.seq_len, cfg.train.batch_size, cfg.log.eval_batches, d.rank, d.world
    )
    for batch in batches:
        with amp:
            out = wrapped(torch.from_numpy(batch).to(d.device), nitp_weight=0.0)
        losses.append(float(out["loss_ntp"]))
    wrapped.train()
    if not losses:
        return {}
    val = parallel.all_mean(d, {"val_loss": sum(losses) / len(losses)})["val_loss"]
    row = {"val_loss": val, "val_ppl": math.exp(min(val, 50.0))}
    if d.world == 1:
        row["val_loss_batches"] = losses
    return row


def _save(st: TrainState, pending_line: dict) -> None:
    """Checkpoint ``step_N`` of the state: model (HF folder), projector, optimizer, schedule, cursor,
    and the step's metrics line before evaluation (``pending_line``)."""
    cfg, d, step, run_dir = st.cfg, st.d, st.step, st.run_dir
    mode = cfg.train.parallel
    sharded = mode == "fsdp" and d.enabled
    if sharded:  # each rank writes its own optimizer / model shards; only the model is gathered
        staging = ckpt_io.start(run_dir, step) if d.is_main else ckpt_io.staging_dir(run_dir, step)
        parallel.barrier(d)
        parallel.save_sharded(st.wrapped, st.optimizer, staging / "trainer_state" / ckpt_io.SHARDED_DIR)
        model_sd, optim_sd = parallel.full_model_state_dict(st.wrapped, d, "fsdp"), None
    else:
        model_sd, optim_sd = parallel.full_state_dicts(st.wrapped, st.optimizer, d, mode)
    checksums = parallel.gather_checksums(d, st.objective) if mode == "ddp" else []
    if d.is_main:
        is_nitp, nitp = cfg.objective == "nitp", cfg.nitp
        if len(set(checksums)) > 1:
            print(f"warning: ranks disagree on the weights at step {step}: {checksums}")
        contents = ckpt_io.Contents(
            model_sd=model_sd,
            optim_sd=optim_sd,
            scheduler=st.scheduler,
            model=st.objective.model,
            tokenizer=st.tokenizer,
            meta={  # nitp_meta.json: what the checkpoint is (objective, NITP settings) for the other tools
                "step": step,
                "tokens_seen": st.tokens_seen,
                "objective": cfg.objective,
                "preset": cfg.model["preset"],
                "target_layer": nitp.target_layer if is_nitp else None,
                "lambda": nitp.lambda_ if is_nitp else None,
                "projector": nitp.projector if is_nitp else None,
                "cos_reg_weight": cfg.cos_reg.weight,
                "cos_reg_kind": cfg.cos_reg.kind,
            },
            state={  # where the run stands: the next micro-batch index, world size, rank checksums
                "step": step,
                "tokens_seen": st.tokens_seen,
                "next_batch": step * cfg.train.grad_accum,
                "world_size": d.world,
                "rank_param_checksums": checksums,
                "pending_line": pending_line,
            },
        )
        ckpt_io.save(run_dir, step, contents, cfg.checkpoint.keep_last, sharded=sharded)
    parallel.barrier(d)
