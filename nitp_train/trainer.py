"""The training loop: NTP or NITP pre-training of a Hugging Face causal LM from scratch.

Reads top to bottom: set up processes and data, build (or resume) the model and its projector,
then loop: micro-batches -> one forward pass computing every loss term -> backward -> clip ->
AdamW step -> warmup-stable-decay schedule; log, measure geometry, validate, checkpoint.
"""

from __future__ import annotations

import contextlib
import math
import time
from pathlib import Path

import torch
import yaml

from nitp.errors import UserError
from nitp.io import atomic_write_text
from nitp.runs import checkpoint_name, list_checkpoints, read_run_config, resolve_checkpoint

from . import checkpoint as ckpt_io
from . import parallel
from .config import RESUMABLE_CHANGES, config_diff
from .data import TokenShards, prepare
from .loss import NITPObjective
from .metrics import MetricsLog, peak_flops, truncate_after
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
    tc, lc = cfg["train"], cfg["log"]
    if tc["threads"]:
        torch.set_num_threads(int(tc["threads"]))
    last_ckpt = _check_run_dir(cfg, run_dir, resume)

    # ---- data: tokenize once (rank 0), everyone memory-maps the shards
    prepared = Path(cfg["data"]["prepared_dir"] or run_dir / "data")
    if d.is_main:
        prepare(cfg["data"], prepared, log=log)
    parallel.barrier(d)
    shards = TokenShards(prepared)
    tokenizer = shards.tokenizer()
    if len(tokenizer) > cfg["model"]["vocab_size"]:
        raise UserError(
            f"tokenizer has {len(tokenizer)} tokens but model.vocab_size={cfg['model']['vocab_size']}: set model.vocab_size>={len(tokenizer)} or data.vocab_size<={cfg['model']['vocab_size']}"
        )

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
    objective = NITPObjective(model, cfg["objective"], cfg["nitp"], cfg["cos_reg"]["weight"])
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
        parallel.load_full_state_dicts(
            wrapped, optimizer, objective.state_dict(), saved["optimizer"], d, tc["parallel"]
        )
        scheduler.load_state_dict(saved["scheduler"])
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
    last_good = last_ckpt.name if last_ckpt is not None else None

    try:
        t0, sums, n_sums = time.perf_counter(), {}, 0
        while step < tc["steps"]:
            want_geom = lc["geom_every"] > 0 and (step + 1) % lc["geom_every"] == 0
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
                    out = forward(
                        x, nitp_weight=nitp_weight, keep_last_hidden=want_geom and micro == accum - 1
                    )
                    (out["loss_total"] / accum).backward()
                for k, v in out.items():
                    if k.startswith(("loss", "aux")):
                        sums[k] = sums.get(k, 0.0) + v.detach()
                n_sums += 1
            grad_norm = torch.nn.utils.clip_grad_norm_(objective.parameters(), tc["grad_clip"])
            if not torch.isfinite(sums["loss_total"]):
                raise UserError(
                    f"loss became {float(sums['loss_total'])} at step {step + 1}; last good checkpoint: {last_good or 'none'} (lower train.lr or check the data)"
                )
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
                row.update(_geometry(out["last_hidden"]))
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
def _check_run_dir(cfg: dict, run_dir: Path, resume: bool) -> Path | None:
    """Refuse to overwrite a run; on resume, check the config and return the last checkpoint."""
    exists = (run_dir / "config.yaml").is_file()
    if not resume:
        if exists:
            raise UserError(
                f"{run_dir} already holds a run: add --resume to continue it, or choose another --run-dir"
            )
        return None
    if not exists:
        return None  # nothing to resume: start fresh
    changed = [
        k
        for k in config_diff(read_run_config(run_dir), cfg)
        if not any(k == r or k.startswith(r + ".") for r in RESUMABLE_CHANGES)
    ]
    if changed:
        raise UserError(
            f"--resume: config differs from the run's in {', '.join(changed[:5])}; resume with the same config or use another --run-dir"
        )
    return resolve_checkpoint(run_dir) if list_checkpoints(run_dir) else None


def _make_optimizer(objective: torch.nn.Module, tc: dict) -> torch.optim.Optimizer:
    """AdamW; weight decay on matrices only (not norms, biases, or other vectors)."""
    params = [p for p in objective.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": tc["weight_decay"]},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=tc["lr"], betas=tuple(tc["betas"]), eps=tc["eps"])


def _make_scheduler(optimizer, tc: dict):
    from transformers import get_wsd_schedule

    steps = tc["steps"]
    warmup = min(tc["warmup_steps"], steps)
    decay = min(int(round(tc["decay_ratio"] * steps)), steps - warmup)
    return get_wsd_schedule(
        optimizer,
        num_warmup_steps=warmup,
        num_decay_steps=decay,
        num_training_steps=steps,
        decay_type=tc["decay_type"],
        min_lr_ratio=tc["min_lr_ratio"],
    )


def _autocast(device: torch.device, dtype: str):
    if dtype == "bf16" or (dtype == "auto" and device.type == "cuda"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _flops_per_token(cfg: dict, model) -> float:
    from .flops import nitp_flops_per_token, training_flops_per_token

    f = training_flops_per_token(model.config, cfg["data"]["seq_len"])
    return f + (nitp_flops_per_token(model.config.hidden_size) if cfg["objective"] == "nitp" else 0.0)


def _geometry(last_hidden: torch.Tensor) -> dict:
    """The paper's Figure 1 measures on this batch's last hidden states (all tokens)."""
    from nitp.geometry import anisotropy, effective_rank

    h = last_hidden.reshape(-1, last_hidden.shape[-1]).float()
    return {"erank": float(effective_rank(h)), "mean_cos": float(anisotropy(h))}


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
        )
    parallel.barrier(d)
