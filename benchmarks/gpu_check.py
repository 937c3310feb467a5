"""The prepared one-GPU check: throughput, MFU, NITP cost, loss memory, FSDP2 and geometry overhead.

Runs from the source tree (``PYTHONPATH=.``) on a bare machine with torch, transformers, numpy,
pyyaml, typer, rich, tokenizers and safetensors; no network, no data files: the token ids are
random (seeded), which is all a speed / memory measurement needs. Prints one table:

- tokens/s and MFU of the preset (default dense-0.5b, bf16 autocast, torch.compile, 2048
  context) for NTP and NITP, each a full training step (forward, backward, clip, AdamW), the two
  objectives alternating step by step so machine noise hits both alike;
- the NITP / NTP step-time ratio against the FLOPs prediction
  ``1 + (72 d^2 + 18 d) / training_flops_per_token`` (target: measured overhead <= 1.1x predicted);
- peak GPU memory of one NTP step with the plain loss, the chunked loss (``train.loss_impl: chunked:N``)
  and chunked + activation checkpointing;
- an FSDP2 step on a world-size-1 process group, with a sharded ``torch.distributed.checkpoint``
  save and load of model + optimizer;
- nitp-geom's cost over a bare forward: ``analysis.hidden.LayerCapture`` of the last hidden
  state plus its streaming float64 moments, against the same backbone's plain forward.

``--sweep`` runs instead one NITP training-step timing per combination of micro-batch size x
next-token loss implementation (``train.loss_impl``) x ``torch.compile`` mode
(``train.compile_mode``; ``eager`` = no compile), each with fused AdamW on CUDA and ``--accum``
micro-batches per timed optimizer step (gradient accumulation, as the recipes run), and prints
one row per combination: tokens/s, MFU, peak memory, first (compiling) step; a combination that
fails (e.g. out of memory) records its error and the sweep goes on. Then, at the best setting
(most tokens/s): the compile check (``torch._dynamo.explain`` graph / graph-break count, a
``fullgraph=True`` compile of the training forward + backward, recompiles over the trainer's call
pattern), the NITP / NTP step-time ratio over ``--ratio-pairs`` interleaved pairs of optimizer
steps with a 95% normal interval over the paired log-ratios (numpy; scipy is absent on the GPU
machine), and, with ``--write-overlay PATH``, the best setting as a config overlay YAML.
``--time-budget SECONDS`` skips the sweep points (and shortens the ratio) that would not fit.

``--study`` trains the single-GPU study (``configs/studies/gpu-single.yaml``, smoke: the
``quickstart`` study) through ``reports.study.run_study``, training only (the evaluators need
lm-eval / mteb, absent there), its ``train.steps`` trimmed to what fits the remaining budget at
the lower of 20% MFU and the MFU the sweep measured.

MFU = training FLOPs per token (``nitp_train.flops``) x tokens/s / peak bf16 FLOP/s of the GPU.

Examples::

    bash benchmarks/gpu_check.sh                          # the GPU check (one H100: about 5 min)
    python benchmarks/gpu_check.py --smoke                # CPU, tiny-dense, under 2 min
    bash benchmarks/gpu_check.sh --sweep                  # GPU: B x loss impl x compile mode
    python benchmarks/gpu_check.py --sweep --smoke        # CPU: the sweep's structure, seconds
    bash benchmarks/gpu_check.sh --sweep --time-budget 420 --write-overlay "$OUT/best.yaml"
    bash benchmarks/gpu_check.sh --study --time-budget 480   # the gpu-single study, trimmed
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import json
import math
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

from nitp_train.choices import loss_impl_text
from nitp_train.flops import nitp_flops_per_token, training_flops_per_token
from nitp_train.loss import NITPObjective
from nitp_train.metrics import peak_flops
from nitp_train.models import build_model, resolve_preset

FULL = dict(preset="dense-0.5b", seq_len=2048, batch_size=8, dtype="bf16", compile=True, device="cuda")
SMOKE = dict(preset="tiny-dense", seq_len=64, batch_size=2, dtype="fp32", compile=False, device="cpu")
SWEEP_LOSS_IMPLS = ("plain", "chunked", "chunked_gif", "liger")
SWEEP_COMPILE_MODES = ("eager", "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
SWEEP_FULL = dict(batch_sizes="8,16", loss_impls="plain,chunked,chunked_gif", compile_modes="default")
SWEEP_SMOKE = dict(batch_sizes="1,2", loss_impls="plain,chunked,chunked_gif", compile_modes="eager")
# an a-priori cost of one sweep point before any was measured (GPU: ~50 s compile + timed steps)
POINT_GUESS_S = {"cuda": 90.0, "cpu": 2.0}
RESERVE_GUESS_S = {"cuda": 200.0, "cpu": 3.0}  # compile check + ratio, before any point was timed
CHECK_GUESS_S = {"cuda": 30.0, "cpu": 2.0}  # the compile check (dynamo tracing, backend eager)
STUDY = {"cuda": "gpu-single", "cpu": "quickstart"}
STUDY_MFU_GUESS = 0.20  # the study trains uncompiled (its recipe): at most this, or the sweep's if lower
STUDY_START_S = 60.0  # per cell: model build, data check, compile, checkpoint
# modules a bare GPU machine lacks: importing any of them would make the check fail there
# (pandas is there, and torch / transformers may import it themselves)
ABSENT_THERE = ("datasets", "gensim", "lm_eval", "mteb", "sentence_transformers")


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="tiny preset on CPU (a test of the script)")
    p.add_argument("--preset")
    p.add_argument("--seq-len", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--steps", type=int, help="timed steps per objective")
    p.add_argument("--loss-chunk", type=int, help="positions per chunk of the chunked loss")
    p.add_argument("--no-compile", action="store_true")
    p.add_argument("--out", help="also write the results as JSON here")
    p.add_argument("--sweep", action="store_true", help="micro-batch x loss impl x compile mode instead")
    p.add_argument("--sweep-batch-sizes", help="comma-separated micro-batch sizes (default 8,16; smoke 1,2)")
    p.add_argument("--sweep-loss-impls", help=f"comma-separated, of {', '.join(SWEEP_LOSS_IMPLS)}")
    p.add_argument(
        "--sweep-compile-modes", help=f"comma-separated, of {', '.join(SWEEP_COMPILE_MODES)} (smoke: eager)"
    )
    p.add_argument("--accum", type=int, help="micro-batches per timed optimizer step (default 4; smoke 1)")
    p.add_argument("--warmup", type=int, help="untimed optimizer steps per point (default 2; smoke 1)")
    p.add_argument("--ratio-pairs", type=int, help="interleaved NTP/NITP step pairs (default 40; smoke 3)")
    p.add_argument("--write-overlay", metavar="PATH", help="write the best sweep setting as a config overlay")
    p.add_argument("--time-budget", type=float, metavar="SECONDS", help="skip what would not fit in this")
    p.add_argument("--study", action="store_true", help="train the single-GPU study (training only)")
    p.add_argument("--study-name", help="a study file or shipped name (default gpu-single; smoke quickstart)")
    p.add_argument("--study-out", help="the study's folder (default runs/gpu-check-study)")
    args = p.parse_args(argv)
    size = dict(SMOKE if args.smoke else FULL)
    for key in ("preset", "seq_len", "batch_size"):
        if getattr(args, key) is not None:
            size[key] = getattr(args, key)
    size["compile"] = size["compile"] and not args.no_compile
    size["steps"] = args.steps or (3 if args.smoke else 12)
    size["loss_chunk"] = args.loss_chunk or (16 if args.smoke else 512)
    size["mem_batch_size"] = max(1, size["batch_size"] // 2)  # eager steps (memory, FSDP2) keep headroom
    size["accum"] = _positive(args.accum, "--accum", 1 if args.smoke else 4)
    size["warmup"] = _positive(args.warmup, "--warmup", 1 if args.smoke else 2)
    size["ratio_pairs"] = _positive(args.ratio_pairs, "--ratio-pairs", 3 if args.smoke else 40)
    if args.time_budget is not None and not args.time_budget > 0:
        sys.exit(f"gpu_check: --time-budget {args.time_budget}: give a positive number of seconds")
    size["time_budget"] = args.time_budget
    if args.sweep:
        size["sweep"] = sweep_grid(args)
        size["steps"] = args.steps or (1 if args.smoke else 30)
    if args.study:
        size["study"] = args.study_name or STUDY[size["device"]]
    if size["device"] == "cuda" and not torch.cuda.is_available():
        sys.exit("gpu_check: no CUDA device; use --smoke for the CPU check")
    return args, size


def _positive(value, flag: str, default: int) -> int:
    if value is None:
        return default
    if value < 1:
        sys.exit(f"gpu_check: {flag} {value}: give a positive integer")
    return value


# ----------------------------------------------------------------------------- pieces
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def autocast(size: dict, device: torch.device):
    if size["dtype"] == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def nitp_cfg(spec: dict) -> dict:
    return {
        "target_layer": spec["target_layer"],
        "shift": 1,
        "loss": "cosine",
        "stop_grad": True,
        "projector": "swiglu",
    }


def make_objective(
    spec: dict, objective: str, device: torch.device, loss_chunk: int = 0, wrap=None, loss_impl: str = "auto"
):
    """Objective + AdamW (made after ``wrap``, e.g. FSDP2's sharding, which replaces the parameters)."""
    model = build_model(spec, seed=0)
    obj = NITPObjective(model, objective, nitp_cfg(spec), loss_chunk=loss_chunk, loss_impl=loss_impl)
    obj = obj.to(device)
    if wrap is not None:
        wrap(obj)
    opt = torch.optim.AdamW(
        obj.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1, fused=device.type == "cuda"
    )
    return obj, opt


def train_step(forward, params, opt, batches, amp) -> float:
    """One optimizer step over ``batches`` (a tensor, or a list of micro-batches: gradient
    accumulation, each loss divided by their number), clip, AdamW; returns the last loss."""
    batches = [batches] if isinstance(batches, torch.Tensor) else batches
    for x in batches:
        with amp:
            loss = forward(x)["loss_total"]
        (loss / len(batches)).backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss.detach()


def timed(fn, device: torch.device) -> float:
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


def random_batch(spec: dict, size: dict, device: torch.device, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, spec["vocab_size"], (size["batch_size"], size["seq_len"]), generator=g).to(device)


# ----------------------------------------------------------------------------- sections
def throughput(spec: dict, size: dict, device: torch.device, res: dict) -> None:
    """NTP and NITP training steps, alternating; median step time of each."""
    amp, x = autocast(size, device), random_batch(spec, size, device)
    runs = {}
    for objective in ("ntp", "nitp"):
        obj, opt = make_objective(spec, objective, device)
        fwd = torch.compile(obj) if size["compile"] else obj
        step = functools.partial(
            train_step, fwd, [p for p in obj.parameters() if p.requires_grad], opt, x, amp
        )
        t_first = timed(step, device)  # compiles
        timed(step, device)
        runs[objective] = (step, [], t_first)
    for _ in range(size["steps"]):
        for step, times, _t in runs.values():
            times.append(timed(step, device))
    tokens = size["batch_size"] * size["seq_len"]
    config = build_model_config(spec)
    base = training_flops_per_token(config, size["seq_len"])
    peak = peak_flops(device)
    for objective, (_s, times, t_first) in runs.items():
        step = statistics.median(times)
        flops = base + (nitp_flops_per_token(config.hidden_size) if objective == "nitp" else 0.0)
        res[f"{objective}_step_s"] = step
        res[f"{objective}_first_step_s"] = t_first
        res[f"{objective}_tokens_per_s"] = tokens / step
        res[f"{objective}_mfu"] = flops * tokens / step / peak if peak else None
    res["nitp_step_ratio"] = res["nitp_step_s"] / res["ntp_step_s"]
    res["nitp_predicted_ratio"] = 1.0 + nitp_flops_per_token(config.hidden_size) / base
    res["nitp_overhead_vs_predicted"] = (res["nitp_step_ratio"] - 1.0) / (res["nitp_predicted_ratio"] - 1.0)
    runs.clear()
    torch._dynamo.reset()  # drop the compiled graphs before the eager sections measure memory
    if device.type == "cuda":
        torch.cuda.empty_cache()


def build_model_config(spec: dict):
    from nitp_train.models import make_config

    return make_config(spec)


def loss_memory(spec: dict, size: dict, device: torch.device, res: dict) -> None:
    """Peak memory of one eager NTP step: plain loss, chunked loss, chunked + activation checkpointing."""
    if device.type != "cuda":
        res["memory"] = "n/a on CPU (benchmarks/loss_memory.py measures the loss alone)"
        return
    from nitp_train.parallel import enable_activation_checkpointing

    amp, x = (
        autocast(size, device),
        random_batch(spec, {**size, "batch_size": size["mem_batch_size"]}, device),
    )
    obj, _opt = make_objective(spec, "ntp", device)
    for name, impl, chunk, ckpt in (
        ("plain", "plain", 0, False),
        ("chunked", "chunked", size["loss_chunk"], False),
        ("chunked_gif", "chunked_gif", size["loss_chunk"], False),
        ("chunked_ac", "chunked", size["loss_chunk"], True),
    ):
        if ckpt:
            enable_activation_checkpointing(obj.model)
        obj.loss_impl, obj.loss_chunk = impl, chunk
        obj.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        with amp:
            loss = obj(x)["loss_total"]
        loss.backward()
        torch.cuda.synchronize()
        res[f"peak_gib_{name}"] = (torch.cuda.max_memory_allocated() - before) / 2**30
        res[f"loss_{name}"] = float(loss.detach())
    res["memory_ratio_chunked"] = res["peak_gib_chunked"] / res["peak_gib_plain"]
    obj.zero_grad(set_to_none=True)


def fsdp_smoke(spec: dict, size: dict, device: torch.device, res: dict) -> None:
    """One FSDP2 step on a world-1 process group, then a sharded save and load of its state."""
    import torch.distributed as dist

    from nitp_train.parallel import load_sharded, save_sharded, shard

    with tempfile.TemporaryDirectory() as tmp:
        dist.init_process_group(
            "nccl" if device.type == "cuda" else "gloo", init_method=f"file://{tmp}/pg", rank=0, world_size=1
        )
        try:
            obj, opt = make_objective(spec, "nitp", device, loss_chunk=size["loss_chunk"], wrap=shard)
            params = [p for p in obj.parameters() if p.requires_grad]
            x = random_batch(spec, {**size, "batch_size": size["mem_batch_size"]}, device, seed=1)
            loss = {}
            res["fsdp_step_s"] = timed(
                lambda: loss.update(v=train_step(obj, params, opt, x, autocast(size, device))), device
            )
            res["fsdp_loss"] = float(loss["v"])
            before = {k: v.full_tensor().clone() for k, v in obj.state_dict().items()}
            t0 = time.perf_counter()
            save_sharded(obj, opt, Path(tmp) / "dcp")
            res["fsdp_save_s"] = time.perf_counter() - t0
            train_step(obj, params, opt, x, autocast(size, device))  # move away, then load back
            load_sharded(obj, opt, Path(tmp) / "dcp")
            after = obj.state_dict()
            res["fsdp_reload_exact"] = all(torch.equal(before[k], after[k].full_tensor()) for k in before)
            if not math.isfinite(res["fsdp_loss"]) or not res["fsdp_reload_exact"]:
                raise RuntimeError(
                    f"FSDP2 smoke: loss {res['fsdp_loss']}, reload exact {res['fsdp_reload_exact']}"
                )
        finally:
            dist.destroy_process_group()


def geometry_overhead(spec: dict, size: dict, device: torch.device, res: dict) -> None:
    """nitp-geom's per-batch work (capture layer -1 + float64 moments) vs a bare backbone forward."""
    from analysis.hidden import LayerCapture, LoadedModel
    from nitp.streaming import Moments

    dtype = torch.bfloat16 if size["dtype"] == "bf16" else torch.float32
    backbone = build_model(spec, seed=0).model.to(device=device, dtype=dtype).eval()
    loaded = LoadedModel(
        model=backbone,
        tokenizer=None,
        path=Path("."),
        n_layers=spec["num_hidden_layers"],
        hidden_size=spec["hidden_size"],
        has_final_norm=True,
        device=str(device),
        dtype=str(dtype),
        max_positions=spec["max_position_embeddings"],
    )
    x = random_batch(spec, size, device, seed=2)
    mask = torch.ones_like(x)

    def bare():
        with torch.inference_mode():
            backbone(input_ids=x, attention_mask=mask, use_cache=False)

    moments = Moments()
    with LayerCapture(loaded, [-1]) as cap:

        def geom():
            h = cap.run(x, mask)[-1]
            moments.update(h[mask.bool()])

        for fn in (bare, geom):  # warm-up
            timed(fn, device)
        t_bare, t_geom = [], []
        for _ in range(size["steps"]):
            t_bare.append(timed(bare, device))
            t_geom.append(timed(geom, device))
    res["forward_s"] = statistics.median(t_bare)
    res["geom_s"] = statistics.median(t_geom)
    res["geom_ratio"] = res["geom_s"] / res["forward_s"]


# ----------------------------------------------------------------------------- sweep
def sweep_grid(args) -> list[tuple[int, str, str]]:
    """``(micro-batch, loss impl, compile mode)`` of every combination the ``--sweep-*`` lists give."""
    base = SWEEP_SMOKE if args.smoke else SWEEP_FULL
    lists = {
        "batch_sizes": args.sweep_batch_sizes or base["batch_sizes"],
        "loss_impls": args.sweep_loss_impls or base["loss_impls"],
        "compile_modes": args.sweep_compile_modes or base["compile_modes"],
    }
    parts = {k: [x.strip() for x in v.split(",") if x.strip()] for k, v in lists.items()}
    for key, allowed in (("loss_impls", SWEEP_LOSS_IMPLS), ("compile_modes", SWEEP_COMPILE_MODES)):
        bad = [x for x in parts[key] if x not in allowed]
        if bad:
            sys.exit(f"gpu_check: --sweep-{key.replace('_', '-')} {bad[0]!r}: use {', '.join(allowed)}")
    if not all(b.isdigit() and int(b) > 0 for b in parts["batch_sizes"]):
        sys.exit(
            f"gpu_check: --sweep-batch-sizes {lists['batch_sizes']!r}: give positive integers, e.g. 8,16"
        )
    return [
        (int(b), impl, mode)
        for b in parts["batch_sizes"]
        for impl in parts["loss_impls"]
        for mode in parts["compile_modes"]
    ]


def sweep(spec: dict, size: dict, device: torch.device, res: dict) -> None:
    """One NITP step timing per ``size["sweep"]`` combination, into ``res["sweep"]`` (a list of rows);
    a point that would overrun ``size["time_budget"]`` (less a reserve for the sections after it)
    is recorded as skipped."""
    res["sweep"] = []
    config = build_model_config(spec)
    flops = training_flops_per_token(config, size["seq_len"]) + nitp_flops_per_token(config.hidden_size)
    res["flops_per_token"], res["peak_flops"] = flops, peak_flops(device)
    point_s = POINT_GUESS_S[device.type]
    for batch_size, impl, mode in size["sweep"]:
        row = {"batch_size": batch_size, "loss_impl": impl, "compile_mode": mode}
        left, need = seconds_left(size), point_s + reserve_s(res["sweep"], size, device)
        if res["sweep"] and left is not None and left < need:  # the first point always runs
            row["skipped"] = f"time budget ({left:.0f} s left, this point + what follows ~{need:.0f} s)"
        else:
            t0 = time.perf_counter()
            try:
                row.update(sweep_point(spec, {**size, "batch_size": batch_size}, device, impl, mode))
                if res["peak_flops"]:
                    row["mfu"] = flops * row["tokens_per_s"] / res["peak_flops"]
            except Exception as e:  # out of memory, a missing package: this point only
                row["error"] = f"{type(e).__name__}: {e}".splitlines()[0][:200]
            point_s = max(point_s if res["sweep"] else 0.0, time.perf_counter() - t0)
        res["sweep"].append(row)
        print(f"[sweep] {json.dumps(row)}", file=sys.stderr, flush=True)
        release(device)
    timed_rows = [r for r in res["sweep"] if "tokens_per_s" in r]
    if res["sweep"] and not timed_rows:
        first = res["sweep"][0]
        raise RuntimeError("no sweep point was timed: " + first.get("error", first.get("skipped", "")))
    res["best"] = max(timed_rows, key=lambda r: r["tokens_per_s"]) if timed_rows else None


def reserve_s(rows: list[dict], size: dict, device: torch.device) -> float:
    """Seconds the sections after the sweep need: the compile check, two compiles and the
    interleaved pairs of the ratio, from the points timed so far (none yet: a guess)."""
    timed_rows = [r for r in rows if "tokens_per_s" in r]
    if not timed_rows:
        return RESERVE_GUESS_S[device.type]
    best = max(timed_rows, key=lambda r: r["tokens_per_s"])
    compile_s = max(r["first_step_s"] for r in timed_rows)
    steps = 2 * (size["ratio_pairs"] + size["warmup"])
    return CHECK_GUESS_S[device.type] + 2 * compile_s + steps * best["step_s"]


def seconds_left(size: dict) -> float | None:
    """Seconds of ``--time-budget`` left (None: no budget)."""
    if size.get("time_budget") is None:
        return None
    return size["time_budget"] - (time.perf_counter() - size["t_start"])


def release(device: torch.device) -> None:
    """Drop compiled graphs and cached GPU memory between measurements."""
    torch._dynamo.reset()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def micro_batches(spec: dict, size: dict, device: torch.device) -> list[torch.Tensor]:
    """``size["accum"]`` random micro-batches of ``size["batch_size"]`` x ``size["seq_len"]``."""
    return [random_batch(spec, size, device, seed=i) for i in range(size["accum"])]


def sweep_point(spec: dict, size: dict, device: torch.device, impl: str, mode: str) -> dict:
    """Median optimizer-step time (``accum`` micro-batches each) of ``size["steps"]`` steps after
    ``size["warmup"]`` untimed ones (the first compiles)."""
    obj, opt = make_objective(spec, "nitp", device, loss_chunk=loss_chunk_for(impl, size), loss_impl=impl)
    res = {"attn_implementation": str(getattr(obj.model.config, "_attn_implementation", None))}
    fwd = obj if mode == "eager" else torch.compile(obj, mode=mode)
    xs, amp = micro_batches(spec, size, device), autocast(size, device)
    step = functools.partial(train_step, fwd, [p for p in obj.parameters() if p.requires_grad], opt, xs, amp)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    res["first_step_s"] = timed(step, device)
    for _ in range(size["warmup"] - 1):
        timed(step, device)
    times = [timed(step, device) for _ in range(size["steps"])]
    res["step_s"] = statistics.median(times)
    res["tokens_per_s"] = size["accum"] * size["batch_size"] * size["seq_len"] / res["step_s"]
    if device.type == "cuda":
        res["peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    return res


def loss_chunk_for(impl: str, size: dict) -> int:
    return 0 if impl in ("plain", "liger") else size["loss_chunk"]


# ----------------------------------------------------------------------------- at the best setting
def best_setting(res: dict, size: dict) -> dict:
    """The best sweep row, or (no sweep) the check's own size with chunked_gif / default compile."""
    if res.get("best"):
        return res["best"]
    mode = "default" if size["compile"] else "eager"
    return {"batch_size": size["batch_size"], "loss_impl": "chunked_gif", "compile_mode": mode}


def graph_check(spec: dict, size: dict, device: torch.device, res: dict) -> None:
    """Graph breaks (``torch._dynamo.explain``), a ``fullgraph=True`` compile of the NITP training
    forward + backward, and the recompiles over the trainer's call pattern (``nitp_weight`` 0 before
    ``nitp.start_step`` then lambda; ``keep_last_hidden`` on geometry steps). Dynamo only (backend
    ``eager``): graph breaks are decided there, not by inductor, and no second compile is paid."""
    from torch._dynamo.utils import counters

    best = best_setting(res, size)
    impl = best["loss_impl"]
    obj, _opt = make_objective(spec, "nitp", device, loss_chunk=loss_chunk_for(impl, size), loss_impl=impl)
    # two rows are enough to see the breaks (one would let dynamo specialise on size 1) and keep
    # the eager backward of the fullgraph check far from the memory the best B needs
    x = random_batch(spec, {**size, "batch_size": min(2, best["batch_size"])}, device)
    docs, amp = torch.zeros_like(x), autocast(size, device)
    out = {"loss_impl": impl}
    with amp:
        explained = torch._dynamo.explain(obj)(x, nitp_weight=1.0, document_ids=docs)
    out["graphs"], out["graph_breaks"] = explained.graph_count, explained.graph_break_count
    reasons = dict.fromkeys(str(b.reason).splitlines()[0][:160] for b in explained.break_reasons)
    out["break_reasons"] = list(reasons)[:3]
    release(device)
    try:
        with amp:
            full = torch.compile(obj, backend="eager", fullgraph=True)
            full(x, nitp_weight=1.0, document_ids=docs)["loss_total"].backward()
        out["fullgraph"] = "ok"
    except Exception as e:
        out["fullgraph"] = f"fails: {type(e).__name__}: {str(e).splitlines()[0][:160]}"
    release(device)
    counters.clear()
    compiled = torch.compile(obj, backend="eager")
    calls = [(0.0, False), (1.0, False), (1.0, True), (1.0, False)]
    graphs = []
    for weight, keep in calls:
        with amp:
            compiled(x, nitp_weight=weight, keep_last_hidden=keep, document_ids=docs)["loss_total"].backward()
        graphs.append(int(counters["stats"]["unique_graphs"]))
    out["recompiles"] = graphs[-1] - graphs[0]
    out["recompile_calls"] = "nitp_weight 0 -> 1, keep_last_hidden off -> on -> off"
    res["compile_check"] = out
    release(device)


def paired_ratio(t_ntp: list[float], t_nitp: list[float], level: float = 0.95) -> dict:
    r"""NITP / NTP step-time ratio from paired step times, with a normal interval.

    With :math:`d_i = \log(t^{nitp}_i / t^{ntp}_i)` over :math:`n` pairs, mean :math:`\bar d`
    and standard deviation :math:`s`, the ratio is :math:`e^{\bar d}` and its interval
    :math:`e^{\bar d \pm z s / \sqrt n}`, :math:`z` the ``(1 + level) / 2`` normal quantile
    (``statistics.NormalDist``; numpy only: scipy is absent on the GPU machine). Inputs: two
    lists of n >= 2 seconds. Example: ``paired_ratio([1.0, 1.0], [1.02, 1.02])["ratio"]`` is 1.02.
    """
    import numpy as np

    d = np.log(np.asarray(t_nitp, dtype=float) / np.asarray(t_ntp, dtype=float))
    z = statistics.NormalDist().inv_cdf((1 + level) / 2)
    half = z * float(d.std(ddof=1)) / math.sqrt(len(d))
    mean = float(d.mean())
    return {
        "ratio": math.exp(mean),
        "lo": math.exp(mean - half),
        "hi": math.exp(mean + half),
        "half_width": math.exp(half) - 1.0,
        "pairs": len(d),
        "level": level,
    }


def nitp_ratio(spec: dict, size: dict, device: torch.device, res: dict) -> None:
    """NTP and NITP optimizer steps at the best setting, interleaved (NTP, NITP, then NITP, NTP, ...
    so drift hits both alike): the paired ratio, its interval and the FLOPs prediction."""
    best = best_setting(res, size)
    impl, mode = best["loss_impl"], best["compile_mode"]
    sized = {**size, "batch_size": best["batch_size"]}
    xs, amp = micro_batches(spec, sized, device), autocast(size, device)
    steps = {}
    for objective in ("ntp", "nitp"):
        obj, opt = make_objective(
            spec, objective, device, loss_chunk=loss_chunk_for(impl, size), loss_impl=impl
        )
        fwd = obj if mode == "eager" else torch.compile(obj, mode=mode)
        params = [p for p in obj.parameters() if p.requires_grad]
        steps[objective] = functools.partial(train_step, fwd, params, opt, xs, amp)
        for _ in range(size["warmup"]):
            timed(steps[objective], device)
    pairs = size["ratio_pairs"]
    if best.get("step_s") and seconds_left(size) is not None:  # what fits of the budget
        pairs = max(2, min(pairs, int(seconds_left(size) * 0.5 / (2 * best["step_s"]))))
    times = {"ntp": [], "nitp": []}
    for i in range(pairs):
        for objective in ("ntp", "nitp") if i % 2 == 0 else ("nitp", "ntp"):
            times[objective].append(timed(steps[objective], device))
    config = build_model_config(spec)
    base = training_flops_per_token(config, size["seq_len"])
    out = {"setting": {k: best[k] for k in ("batch_size", "loss_impl", "compile_mode")}}
    out.update(paired_ratio(times["ntp"], times["nitp"]))
    out["predicted"] = 1.0 + nitp_flops_per_token(config.hidden_size) / base
    out["overhead_vs_predicted"] = (out["ratio"] - 1.0) / (out["predicted"] - 1.0)
    out["ntp_step_s"], out["nitp_step_s"] = statistics.median(times["ntp"]), statistics.median(times["nitp"])
    res["ratio"] = out
    steps.clear()
    release(device)


def overlay_text(best: dict, size: dict, res: dict) -> str:
    """The best setting as a config overlay (``configs/ablations``-style: ``overlay: true`` + keys)."""
    import yaml

    mode = best["compile_mode"]
    train = {
        "batch_size": best["batch_size"],
        "loss_impl": loss_impl_text(best["loss_impl"], loss_chunk_for(best["loss_impl"], size)),
        "compile": mode != "eager",
        "compile_mode": "default" if mode == "eager" else mode,
        "fused_adamw": "auto",
    }
    mfu = "n/a" if best.get("mfu") is None else f"{best['mfu']:.1%}"
    head = (
        f"# The fastest of {len(res.get('sweep', []))} sweep points of benchmarks/gpu_check.py --sweep\n"
        f"# ({size['preset']}, T={size['seq_len']}, {size['dtype']}, accum {size['accum']}, device "
        f"{res.get('device_name')}, torch {torch.__version__}): {best['tokens_per_s']:,.0f} tokens/s, MFU {mfu}.\n"
        f"# Use: nitp-train run THIS_FILE --preset {size['preset']} (the preset's recipe + these keys).\n"
    )
    return head + yaml.safe_dump({"overlay": True, "train": train}, sort_keys=False)


def write_overlay(spec: dict, size: dict, device: torch.device, res: dict) -> None:
    from nitp.io import atomic_write_text

    if not res.get("best"):
        raise RuntimeError("no timed sweep point to write as the overlay")
    atomic_write_text(size["write_overlay"], overlay_text(res["best"], size, res))
    res["overlay"] = str(size["write_overlay"])


# ----------------------------------------------------------------------------- the study
def study_steps(configured: int, per_step_s: float | None, cells: int, seconds: float | None) -> int:
    """``train.steps`` per cell that fit ``seconds`` (None: no budget, or no estimate: ``configured``).

    steps = min(configured, floor((seconds / cells - STUDY_START_S) / per_step_s)), at least 1.
    Example: ``study_steps(600, 0.5, 2, 400.0)`` is 280.
    """
    if seconds is None or per_step_s is None:
        return configured
    return max(1, min(configured, int((seconds / cells - STUDY_START_S) / per_step_s)))


def study(spec: dict, size: dict, device: torch.device, res: dict) -> None:
    """Train the study's cells (``reports.study.run_study``, no evaluation), ``train.steps`` trimmed
    to the budget left; each cell's last throughput line into ``res["study"]``."""
    from nitp.io import read_jsonl
    from nitp_train.flops import training_flops_per_token as flops_at
    from reports.study import EvalPlan, cell_configs, cells, load_study, run_study

    study_spec = load_study(size["study"])
    out = Path(size["study_out"])
    first = next(iter(cell_configs(study_spec, out).values()))
    tc = first["train"]
    tokens_per_step = first["data"]["seq_len"] * (
        tc["global_batch"] or tc["batch_size"] * (tc["grad_accum"] or 1)
    )
    mfu = min((res.get("best") or {}).get("mfu") or STUDY_MFU_GUESS, STUDY_MFU_GUESS)
    per_step = None
    if peak_flops(device):
        per_step = flops_at(build_model_config(first["model"]), first["data"]["seq_len"]) * tokens_per_step
        per_step /= peak_flops(device) * mfu
    n_cells = len(cells(study_spec))
    steps = study_steps(first["train"]["steps"], per_step, n_cells, seconds_left(size))
    if device.type == "cpu":
        steps = min(steps, 2)  # smoke: the plumbing, not the study
    extra = (f"train.steps={steps}", "checkpoint.every=100000", f"train.device={device.type}")
    study_spec = dataclasses.replace(
        study_spec,
        set=(*study_spec.set, *extra),
        side_by_side=1,
        eval=EvalPlan(checkpoints="last", bench=[], mteb=None, geom=None, report=False),
    )
    # the steps follow the time left, so a rerun on a warm machine retrains rather than being refused
    log = lambda m: print(f"[study] {m}", file=sys.stderr, flush=True)  # noqa: E731
    run_study(study_spec, out, log=log, retrain_changed=True)
    rows = {}
    for c in cells(study_spec):
        lines = [r for r in read_jsonl(out / c.name / "metrics.jsonl") if "tokens_per_s" in r]
        last = lines[-1] if lines else {}
        rows[c.name] = {k: last.get(k) for k in ("step", "loss_total", "tokens_per_s", "mfu")}
    res["study"] = {"name": study_spec.name, "out": str(out), "steps": steps, "cells": rows}


def sweep_table(res: dict, size: dict) -> str:
    """One line per sweep point: B, loss impl, compile mode, tokens/s, MFU, peak memory, first step."""
    head = (
        f"gpu_check --sweep: {size['preset']}, T={size['seq_len']}, {size['dtype']}, NITP, "
        f"loss_chunk {size['loss_chunk']}, {size['steps']} timed steps per point, device "
        f"{res.get('device_name')}, torch {torch.__version__}; MFU: flops_per_token "
        f"{_f(res.get('flops_per_token'), '.4g')} / peak {_f(res.get('peak_flops'), '.4g')} "
        "(causal attention not halved)"
    )
    lines = [
        head,
        "| B | loss impl | compile mode | tokens/s | MFU | peak GiB | first step s | error |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in res.get("sweep", []):
        cells = (
            str(r["batch_size"]),
            r["loss_impl"],
            r["compile_mode"],
            _f(r.get("tokens_per_s"), ",.0f"),
            _f(r.get("mfu"), ".1%"),
            _f(r.get("peak_gib"), ".2f"),
            _f(r.get("first_step_s"), ".1f"),
            r.get("error", r.get("skipped", "")),
        )
        lines.append("| " + " | ".join(cells) + " |")
    lines += after_sweep_lines(res)
    lines += [f"error in {k}: {v}" for k, v in res.get("errors", {}).items()]
    return "\n".join(lines)


def after_sweep_lines(res: dict) -> list[str]:
    """The best setting, the compile check, the NITP / NTP ratio, the overlay and the study, one line each."""
    lines = []
    if res.get("best"):
        b = res["best"]
        lines.append(
            f"best: B={b['batch_size']} loss_impl={b['loss_impl']} compile_mode={b['compile_mode']}: "
            f"{b['tokens_per_s']:,.0f} tokens/s, MFU {_f(b.get('mfu'), '.1%')}"
        )
    if res.get("compile_check"):
        c = res["compile_check"]
        lines.append(
            f"compile check ({c['loss_impl']}): {c['graphs']} graphs, {c['graph_breaks']} graph breaks "
            f"{c['break_reasons']}; fullgraph=True: {c['fullgraph']}; recompiles over "
            f"{c['recompile_calls']}: {c['recompiles']}"
        )
    if res.get("ratio"):
        r = res["ratio"]
        resolved = "resolves" if r["half_width"] <= 0.005 else "does NOT resolve"
        lines.append(
            f"NITP / NTP step time at the best setting: {r['ratio']:.4f} ({r['level']:.0%} normal interval "
            f"{r['lo']:.4f}-{r['hi']:.4f}, +-{r['half_width']:.2%}, {resolved} 0.5%; {r['pairs']} interleaved "
            f"pairs, numpy); FLOPs prediction {r['predicted']:.4f}; overhead / predicted "
            f"{r['overhead_vs_predicted']:.2f} (target <= 1.1)"
        )
    if res.get("overlay"):
        lines.append(f"overlay written: {res['overlay']}")
    if res.get("study"):
        st = res["study"]
        cells = "; ".join(
            f"{name}: step {r['step']}, loss {_f(r['loss_total'], '.3f')}, {_f(r['tokens_per_s'], ',.0f')} "
            f"tokens/s, MFU {_f(r['mfu'], '.1%')}"
            for name, r in st["cells"].items()
        )
        lines.append(f"study {st['name']} ({st['steps']} steps per cell, {st['out']}): {cells}")
    return lines


# ----------------------------------------------------------------------------- table
def _f(v, fmt):
    return "n/a" if v is None else format(v, fmt)


def table(res: dict, size: dict) -> str:
    def verdict(ok):
        return "-" if ok is None else ("met" if ok else "NOT met")

    get = res.get
    mfu_ok = None if get("ntp_mfu") is None else min(get("ntp_mfu"), get("nitp_mfu")) >= 0.45
    rows = [
        ("NTP tokens/s", _f(get("ntp_tokens_per_s"), ",.0f"), "", ""),
        ("NITP tokens/s", _f(get("nitp_tokens_per_s"), ",.0f"), "", ""),
        ("NTP MFU", _f(get("ntp_mfu"), ".1%"), ">= 45%", verdict(mfu_ok)),
        ("NITP MFU", _f(get("nitp_mfu"), ".1%"), ">= 45%", verdict(mfu_ok)),
        ("NITP / NTP step time", _f(get("nitp_step_ratio"), ".4f"), "", ""),
        ("  FLOPs prediction", _f(get("nitp_predicted_ratio"), ".4f"), "", ""),
        (
            "  overhead / predicted",
            _f(get("nitp_overhead_vs_predicted"), ".2f"),
            "<= 1.1",
            verdict(
                None
                if get("nitp_overhead_vs_predicted") is None
                else get("nitp_overhead_vs_predicted") <= 1.1
            ),
        ),
        (f"peak mem B={size['mem_batch_size']}, plain loss (GiB)", _f(get("peak_gib_plain"), ".2f"), "", ""),
        (f"peak mem, chunked {size['loss_chunk']} (GiB)", _f(get("peak_gib_chunked"), ".2f"), "", ""),
        ("peak mem, chunked_gif (GiB)", _f(get("peak_gib_chunked_gif"), ".2f"), "", ""),
        ("peak mem, chunked + act. ckpt (GiB)", _f(get("peak_gib_chunked_ac"), ".2f"), "", ""),
        ("  chunked / plain", _f(get("memory_ratio_chunked"), ".3f"), "", ""),
        (
            "FSDP2 world-1 step (s) / loss",
            f"{_f(get('fsdp_step_s'), '.3f')} / {_f(get('fsdp_loss'), '.3f')}",
            "finite",
            verdict(None if get("fsdp_loss") is None else math.isfinite(get("fsdp_loss"))),
        ),
        (
            "  DCP save (s), reload exact",
            f"{_f(get('fsdp_save_s'), '.2f')}, {get('fsdp_reload_exact', 'n/a')}",
            "exact",
            verdict(get("fsdp_reload_exact")),
        ),
        (
            "bare forward (ms)",
            _f(None if get("forward_s") is None else 1e3 * get("forward_s"), ".1f"),
            "",
            "",
        ),
        (
            "nitp-geom capture+moments (ms)",
            _f(None if get("geom_s") is None else 1e3 * get("geom_s"), ".1f"),
            "",
            "",
        ),
        (
            "  geometry / forward",
            _f(get("geom_ratio"), ".3f"),
            "<= 1.15",
            verdict(None if get("geom_ratio") is None else get("geom_ratio") <= 1.15),
        ),
    ]
    head = (
        f"gpu_check: {size['preset']}, B={size['batch_size']} x T={size['seq_len']}, {size['dtype']}, "
        f"compile={size['compile']}, {size['steps']} timed steps, device {res.get('device_name')}, "
        f"torch {torch.__version__}"
    )
    w = max(len(r[0]) for r in rows)
    lines = [
        head,
        f"| {'check':<{w}} | {'value':>18} | {'target':>8} | {'':<7} |",
        f"|{'-' * (w + 2)}|{'-' * 20}|{'-' * 10}|{'-' * 9}|",
    ]
    lines += [f"| {a:<{w}} | {b:>18} | {c:>8} | {d:<7} |" for a, b, c, d in rows]
    lines += [f"error in {k}: {v}" for k, v in res.get("errors", {}).items()]
    return "\n".join(lines)


def chosen_sections(size: dict) -> list:
    """``--sweep``: the sweep, then the compile check, the ratio and the overlay at its best setting;
    ``--study`` (alone or after those): the study; neither: the check's four sections."""
    if "sweep" not in size and "study" not in size:
        return [
            ("throughput", throughput),
            ("loss_memory", loss_memory),
            ("fsdp_smoke", fsdp_smoke),
            ("geometry", geometry_overhead),
        ]
    sections = []
    if "sweep" in size:
        sections += [("sweep", sweep), ("compile_check", graph_check), ("nitp_ratio", nitp_ratio)]
        if size["write_overlay"]:
            sections.append(("overlay", write_overlay))
    if "study" in size:
        sections.append(("study", study))
    return sections


def main(argv=None) -> dict:
    args, size = parse(argv)
    # as a script every listed module counts; called in-process (tests), only what the check imports
    imported_before = set() if __name__ == "__main__" else set(sys.modules)
    device = torch.device(size["device"])
    spec = resolve_preset(size["preset"])
    res: dict = {"errors": {}, "size": size}
    res["device_name"] = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    t_start = size["t_start"] = time.perf_counter()
    size["write_overlay"] = args.write_overlay
    size["study_out"] = args.study_out or "runs/gpu-check-study"  # checkpoints: not under $OUT
    sections = chosen_sections(size)
    for name, section in sections:
        t0 = time.perf_counter()
        try:
            section(spec, size, device, res)
        except Exception as e:  # one broken section must not hide the others' numbers
            traceback.print_exc()
            res["errors"][name] = f"{type(e).__name__}: {e}"[:300]
        done = {k: v for k, v in res.items() if k != "size"}
        print(
            f"[{name}: {time.perf_counter() - t0:.1f} s] {json.dumps(done, default=str)}",
            file=sys.stderr,
            flush=True,
        )
    # the smoke study reads the built-in corpus (gensim); the GPU study reads its prepared tokens
    absent = [m for m in ABSENT_THERE if not (m == "gensim" and "study" in size and device.type == "cpu")]
    present = [m for m in absent if m in sys.modules and m not in imported_before]
    if present:
        res["errors"]["imports"] = f"imported {present}: a bare GPU machine lacks them"
    res["total_s"] = time.perf_counter() - t_start
    print(sweep_table(res, size) if "sweep" in size or "study" in size else table(res, size))
    print(f"total {res['total_s']:.0f} s")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(res, indent=1, default=str))
    if res["errors"]:
        sys.exit(1)
    return res


if __name__ == "__main__":
    main()
