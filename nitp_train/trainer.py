"""The training loop: NTP or NITP pre-training of a Hugging Face causal LM from scratch.

Reads top to bottom: set up processes and data, build (or resume) the model and its projector,
then loop: micro-batches -> one forward pass computing every loss term -> backward -> clip ->
AdamW step -> warmup-stable-decay schedule; log, measure geometry, validate, checkpoint.
"""

from __future__ import annotations

import contextlib
import copy
import math
import shutil
import time
from pathlib import Path

import torch
import yaml

from nitp.errors import UserError
from nitp.io import atomic_write_text
from nitp.runs import checkpoint_name, list_checkpoints, read_run_config, resolve_checkpoint

from . import checkpoint as ckpt_io
from . import parallel
from .config import RESUMABLE_CHANGES, apply_plan, config_diff, plan_summary
from .data import TokenShards, prepare
from .loss import NITPObjective
from .metrics import GeometrySample, MetricsLog, peak_flops, truncate_after
from .models import build_model, count_parameters


def train(cfg: dict, run_dir: str | Path, resume: bool = False, log=print) -> Path:
    """Train per the resolved ``cfg`` into ``run_dir``; returns the run directory.

    ``resume=True`` continues from the run's latest checkpoint: same weights, optimizer,
    schedule, RNG and data cursor, so the result equals an uninterrupted run.
    """
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    run_dir = Path(run_dir)
    d = parallel.setup(cfg["train"]["device"])
    log = log if d.is_main else (lambda *a, **k: None)
    try:
        return _train(cfg, run_dir, resume, d, log)
    finally:
        parallel.teardown(d)


def _train(cfg: dict, run_dir: Path, resume: bool, d: parallel.Dist, log) -> Path:
    cfg, plan = apply_plan(_keep_global_batch(cfg, run_dir, resume), d.world)
    tc, lc = cfg["train"], cfg["log"]
    log(plan_summary(cfg, plan))
    if tc["threads"]:
        torch.set_num_threads(int(tc["threads"]))
    last_ckpt = _check_run_dir(cfg, run_dir, resume, log)
    shards, tokenizer = _prepared_data(cfg, run_dir, d, log)

    # ---- model + objective (+ projector), fresh or from the last checkpoint
    torch.manual_seed(cfg["seed"])
    if last_ckpt is not None:
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(last_ckpt, dtype=torch.float32)
    elif cfg["model"].get("init_from"):  # continued pre-training (init_from.py)
        from .init_from import load_init_model

        model = load_init_model(cfg["model"])
    else:
        model = build_model(cfg["model"], seed=cfg["seed"])
    model.config.bos_token_id, model.config.eos_token_id = tokenizer.bos_token_id, tokenizer.eos_token_id
    model.config.pad_token_id = tokenizer.pad_token_id
    if tc.get("activation_checkpointing"):
        parallel.enable_activation_checkpointing(model)
    objective = NITPObjective(
        model,
        cfg["objective"],
        cfg["nitp"],
        cfg["cos_reg"]["weight"],
        cfg["cos_reg"].get("kind", "hidden"),
        loss_chunk=tc.get("loss_chunk", 0),
    )
    if last_ckpt is not None and objective.head is not None:
        objective.head.load_state_dict(ckpt_io.load_head(last_ckpt))
    objective.to(d.device)
    counts = count_parameters(model)
    log(
        f"{cfg['model']['preset']} ({cfg['objective']}): {counts['total']:,} parameters, {counts['active']:,} active"
        + (
            f", projector {sum(p.numel() for p in objective.head.parameters()):,} (training only)"
            if objective.head
            else ""
        )
    )

    wrapped = parallel.wrap(objective, d, tc["parallel"])
    optimizer = _make_optimizer(objective, tc)
    scheduler = _make_scheduler(optimizer, tc)
    step, tokens_seen = 0, 0
    if last_ckpt is not None:
        saved = ckpt_io.load_trainer_state(last_ckpt)
        if saved["sharded"] is not None:  # FSDP2 shards, resharded to this world size
            parallel.load_sharded(wrapped, optimizer, saved["sharded"])
        else:
            parallel.load_full_state_dicts(
                wrapped, optimizer, objective.state_dict(), saved["optimizer"], d, tc["parallel"]
            )
        scheduler.load_state_dict(saved["scheduler"])
        # the restored optimizer carries the lr of the old schedule; a resume that changes
        # train.steps (allowed) must take the next step at the new schedule's lr
        for group, base, factor in zip(optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas):
            group["lr"] = base * factor(scheduler.last_epoch)
        step, tokens_seen = saved["state"]["step"], saved["state"]["tokens_seen"]
        log(f"resumed from {last_ckpt.name} (step {step}, {tokens_seen:,} tokens)")
    forward = torch.compile(wrapped) if tc["compile"] else wrapped

    amp = _autocast(d.device, tc["dtype"])
    seq, bsz, accum = cfg["data"]["seq_len"], tc["batch_size"], tc["grad_accum"]
    tokens_per_step = seq * bsz * accum * d.world
    batches = shards.batches(seq, bsz, cfg["seed"], start=step * accum, rank=d.rank, world=d.world)
    flops_per_token, peak = _flops_per_token(cfg, model), peak_flops(d.device)
    metrics_path = run_dir / "metrics.jsonl"
    if d.is_main:  # the run directory appears only once everything above succeeded
        run_dir.mkdir(parents=True, exist_ok=True)
        ckpt_io.clean_partial(run_dir)
        atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(cfg, sort_keys=False))
        truncate_after(metrics_path, step)
    mlog = MetricsLog(metrics_path, tc["steps"], step, enabled=d.is_main, title=cfg["run_name"])
    geom = GeometrySample(seq, bsz * accum, d.world, lc["geom_every"], d.rank, cfg["seed"])
    last_good = last_ckpt.name if last_ckpt is not None else None

    try:
        t0, sums, n_sums = time.perf_counter(), {}, 0
        while step < tc["steps"]:
            want_geom = lc["geom_every"] > 0 and (step + 1) % lc["geom_every"] == 0
            sample_geom = geom.collecting(step + 1)  # this step's tokens enter the next measurement
            nitp_weight = cfg["nitp"]["lambda"] * float(step >= cfg["nitp"]["start_step"])
            for micro in range(accum):
                _, batch = next(batches)
                x = torch.from_numpy(batch).to(d.device, non_blocking=True)
                sync = (
                    contextlib.nullcontext()
                    if (micro == accum - 1 or not hasattr(wrapped, "no_sync"))
                    else wrapped.no_sync()
                )
                with sync, amp:
                    out = forward(x, nitp_weight=nitp_weight, keep_last_hidden=sample_geom)
                    (out["loss_total"] / accum).backward()
                if sample_geom:
                    geom.add(out.pop("last_hidden"), step + 1, micro)
                for k, v in out.items():
                    if k.startswith(("loss", "aux")):
                        sums[k] = sums.get(k, 0.0) + v.detach()
                n_sums += 1
            grad_norm = torch.nn.utils.clip_grad_norm_(objective.parameters(), tc["grad_clip"])
            if not torch.isfinite(sums["loss_total"]):
                raise UserError(
                    f"loss became {float(sums['loss_total'])} at step {step + 1}; last good checkpoint: {last_good or 'none'} (lower train.lr or check the data)"
                )
            if step < cfg["nitp"]["start_step"]:
                _hold_projector(optimizer)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            tokens_seen += tokens_per_step
            mlog.advance(step)

            row = {}
            if step % lc["every"] == 0 or step == tc["steps"] or want_geom:
                dt = time.perf_counter() - t0
                row = {k: float(v) / n_sums for k, v in sums.items()}
                row = parallel.all_mean(d, row)
                tps = tokens_per_step * n_sums / accum / max(dt, 1e-9)
                row.update(lr=scheduler.get_last_lr()[0], grad_norm=float(grad_norm), tokens_per_s=tps)
                if peak and flops_per_token:
                    row["mfu"] = flops_per_token * tps / d.world / peak
                sums, n_sums = {}, 0
            if want_geom:
                row.update(geom.result(d))
            if lc["eval_every"] > 0 and (step % lc["eval_every"] == 0 or step == tc["steps"]):
                row.update(_validate(wrapped, shards, cfg, d, amp))
            if row:
                mlog.write({"step": step, "tokens": tokens_seen, **row})
            if step % cfg["checkpoint"]["every"] == 0 or step == tc["steps"]:
                _save(run_dir, step, tokens_seen, cfg, wrapped, objective, optimizer, scheduler, tokenizer, d)
                last_good = checkpoint_name(step)
            if not sums:  # a logging interval ended: time the next one from here (eval and saving excluded)
                t0 = time.perf_counter()
    finally:
        mlog.close()
    log(f"done: {step} steps, {tokens_seen:,} tokens -> {run_dir}")
    return run_dir


# ----------------------------------------------------------------------------- pieces
def _prepared_data(cfg: dict, run_dir: Path, d: parallel.Dist, log):
    """Tokenize once (rank 0), memory-map the shards, and check they fit the plan.

    A failed check removes the folders this start created (the run directory, a new
    prepared_dir), so a corrected rerun starts clean; an interrupted preparation keeps its
    partial state beside the prepared folder and resumes at the next start.
    """
    prepared = Path(cfg["data"]["prepared_dir"] or run_dir / "data")
    created = [p for p in (run_dir, prepared) if not p.exists()] if d.is_main else []
    try:
        if d.is_main:
            prepare(cfg["data"], prepared, log=log)
        parallel.barrier(d)
        shards = TokenShards(prepared)
        shards.check_fits(cfg["data"]["seq_len"], cfg["train"]["batch_size"], d.world)
        tokenizer = shards.tokenizer()
        vocab = cfg["model"]["vocab_size"]
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


def _keep_global_batch(cfg: dict, run_dir: Path, resume: bool) -> dict:
    """On resume at another world size, keep the run's global batch (accumulation is re-derived)
    unless the config states one itself."""
    if not resume or cfg["train"]["global_batch"] is not None or not (run_dir / "config.yaml").is_file():
        return cfg
    saved = (read_run_config(run_dir).get("train") or {}).get("global_batch")
    if saved is None:
        return cfg
    cfg = copy.deepcopy(cfg)
    cfg["train"].update(global_batch=saved, grad_accum=None)
    return cfg


def _check_run_dir(cfg: dict, run_dir: Path, resume: bool, log=print) -> Path | None:
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
        for k in config_diff(read_run_config(run_dir), cfg)
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


def _make_optimizer(objective: torch.nn.Module, tc: dict) -> torch.optim.Optimizer:
    """AdamW; weight decay on matrices only (not norms, biases, or other vectors).

    The projector has groups of its own (``name: projector``) so that :func:`_hold_projector`
    can keep it out of the update until ``nitp.start_step``.
    """
    head = getattr(objective, "head", None)
    head_ids = {id(p) for p in head.parameters()} if head is not None else set()
    groups = []
    for name, is_head in (("model", False), ("projector", True)):
        params = [p for p in objective.parameters() if p.requires_grad and (id(p) in head_ids) == is_head]
        groups += [
            {"name": name, "params": [p for p in params if p.ndim >= 2], "weight_decay": tc["weight_decay"]},
            {"name": name, "params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
        ]
    groups = [g for g in groups if g["params"]]
    return torch.optim.AdamW(groups, lr=tc["lr"], betas=tuple(tc["betas"]), eps=tc["eps"])


def _hold_projector(optimizer: torch.optim.Optimizer) -> None:
    """Before NITP starts, drop the projector's (zero) gradients: AdamW then skips it entirely,
    so it is neither weight-decayed nor stepped, and its moments start at its first real step."""
    for group in optimizer.param_groups:
        if group.get("name") == "projector":
            for p in group["params"]:
                p.grad = None


def lr_factor(step: int, steps: int, warmup: int, decay: int, tc: dict) -> float:
    """Warmup-stable-decay multiplier of the lr used by update ``step`` (0-based).

    Warm-up: ``s + (1 - s) * step / warmup`` with s = train.warmup_start_ratio (0: a linear ramp
    from 0, the paper's); stable: 1 until ``steps - decay``; decay over the last ``decay`` steps
    with p = (step - (steps - decay)) / decay to the floor f = train.min_lr_ratio:
    ``f + (1 - f) * shape(p)``, shape = 1 - p (linear), (1 + cos(pi p)) / 2 (cosine) or
    1 - sqrt(p) (1-sqrt). The floor is reached at ``step == steps``.

    Example: steps 100, warmup 10, decay 20, s 0, f 0.1 -> 0.0 at 0, 1.0 at 10..80, 0.1 at 100.
    """
    start, floor = tc["warmup_start_ratio"], tc["min_lr_ratio"]
    if step < warmup:
        return start + (1.0 - start) * step / warmup
    decay_start = steps - decay
    if decay <= 0 or step < decay_start:
        return 1.0
    p = min(1.0, (step - decay_start) / decay)
    shape = {"linear": 1.0 - p, "cosine": 0.5 * (1.0 + math.cos(math.pi * p)), "1-sqrt": 1.0 - math.sqrt(p)}
    return floor + (1.0 - floor) * shape[tc["decay_type"]]


def _make_scheduler(optimizer, tc: dict):
    """A ``LambdaLR`` of :func:`lr_factor` (its state is the step counter, saved with checkpoints)."""
    import functools

    steps = tc["steps"]
    warmup = min(tc["warmup_steps"], steps)
    decay = min(int(round(tc["decay_ratio"] * steps)), steps - warmup)
    factor = functools.partial(lr_factor, steps=steps, warmup=warmup, decay=decay, tc=dict(tc))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _autocast(device: torch.device, dtype: str):
    if dtype == "bf16" or (dtype == "auto" and device.type == "cuda"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _flops_per_token(cfg: dict, model) -> float:
    from .flops import nitp_flops_per_token, training_flops_per_token

    f = training_flops_per_token(model.config, cfg["data"]["seq_len"])
    return f + (nitp_flops_per_token(model.config.hidden_size) if cfg["objective"] == "nitp" else 0.0)


@torch.no_grad()
def _validate(wrapped, shards: TokenShards, cfg: dict, d: parallel.Dist, amp) -> dict:
    wrapped.eval()
    total, n = 0.0, 0
    for batch in shards.val_batches(
        cfg["data"]["seq_len"], cfg["train"]["batch_size"], cfg["log"]["eval_batches"], d.rank, d.world
    ):
        with amp:
            out = wrapped(torch.from_numpy(batch).to(d.device), nitp_weight=0.0)
        total, n = total + float(out["loss_ntp"]), n + 1
    wrapped.train()
    if n == 0:
        return {}
    val = parallel.all_mean(d, {"val_loss": total / n})["val_loss"]
    return {"val_loss": val, "val_ppl": math.exp(min(val, 50.0))}


def _save(run_dir, step, tokens_seen, cfg, wrapped, objective, optimizer, scheduler, tokenizer, d) -> None:
    sharded = cfg["train"]["parallel"] == "fsdp" and d.enabled
    if sharded:  # each rank writes its own optimizer / model shards; only the model is gathered
        staging = ckpt_io.start(run_dir, step) if d.is_main else ckpt_io.staging_dir(run_dir, step)
        parallel.barrier(d)
        parallel.save_sharded(wrapped, optimizer, staging / "trainer_state" / ckpt_io.SHARDED_DIR)
        model_sd, optim_sd = parallel.full_model_state_dict(wrapped, d, "fsdp"), None
    else:
        model_sd, optim_sd = parallel.full_state_dicts(wrapped, optimizer, d, cfg["train"]["parallel"])
    checksums = parallel.gather_checksums(d, objective) if cfg["train"]["parallel"] == "ddp" else []
    if d.is_main:
        nitp = cfg["nitp"] if cfg["objective"] == "nitp" else {}
        meta = {
            "step": step,
            "tokens_seen": tokens_seen,
            "objective": cfg["objective"],
            "preset": cfg["model"]["preset"],
            "target_layer": nitp.get("target_layer"),
            "lambda": nitp.get("lambda"),
            "projector": nitp.get("projector"),
            "cos_reg_weight": cfg["cos_reg"]["weight"],
            "cos_reg_kind": cfg["cos_reg"].get("kind", "hidden"),
        }
        state = {
            "step": step,
            "tokens_seen": tokens_seen,
            "next_batch": step * cfg["train"]["grad_accum"],
            "world_size": d.world,
            "rank_param_checksums": checksums,
        }
        if len(set(checksums)) > 1:
            print(f"warning: ranks disagree on the weights at step {step}: {checksums}")
        ckpt_io.save(
            run_dir,
            step,
            model_sd,
            optim_sd,
            scheduler,
            objective.model,
            tokenizer,
            meta,
            state,
            cfg["checkpoint"]["keep_last"],
            sharded=sharded,
        )
    parallel.barrier(d)
