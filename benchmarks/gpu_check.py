"""The prepared one-GPU check: throughput, MFU, NITP cost, loss memory, FSDP2 and geometry overhead.

Runs from the source tree (``PYTHONPATH=.``) on a bare machine with torch, transformers, numpy,
pyyaml, typer, rich, tokenizers and safetensors; no network, no data files: the token ids are
random (seeded), which is all a speed / memory measurement needs. Prints one table:

- tokens/s and MFU of the preset (default dense-0.5b, bf16 autocast, torch.compile, 2048
  context) for NTP and NITP, each a full training step (forward, backward, clip, AdamW), the two
  objectives alternating step by step so machine noise hits both alike;
- the NITP / NTP step-time ratio against the FLOPs prediction
  ``1 + (72 d^2 + 18 d) / training_flops_per_token`` (target: measured overhead <= 1.1x predicted);
- peak GPU memory of one NTP step with the plain loss, the chunked loss (``train.loss_chunk``)
  and chunked + activation checkpointing;
- an FSDP2 step on a world-size-1 process group, with a sharded ``torch.distributed.checkpoint``
  save and load of model + optimizer;
- nitp-geom's cost over a bare forward: ``analysis.hidden.LayerCapture`` of the last hidden
  state plus its streaming float64 moments, against the same backbone's plain forward.

``--sweep`` runs instead one NITP training-step timing per combination of micro-batch size x
next-token loss implementation (``train.loss_impl``) x ``torch.compile`` mode
(``train.compile_mode``; ``eager`` = no compile), each with fused AdamW on CUDA, and prints one
row per combination: tokens/s, MFU, peak memory, first (compiling) step; a combination that
fails (e.g. out of memory) records its error and the sweep goes on.

MFU = training FLOPs per token (``nitp_train.flops``) x tokens/s / peak bf16 FLOP/s of the GPU.

Examples::

    bash benchmarks/gpu_check.sh                          # the GPU check (one H100: about 5 min)
    python benchmarks/gpu_check.py --smoke                # CPU, tiny-dense, under 2 min
    bash benchmarks/gpu_check.sh --sweep                  # GPU: B x loss impl x compile mode
    python benchmarks/gpu_check.py --sweep --smoke        # CPU: the sweep's structure, seconds
"""

from __future__ import annotations

import argparse
import contextlib
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
    args = p.parse_args(argv)
    size = dict(SMOKE if args.smoke else FULL)
    for key in ("preset", "seq_len", "batch_size"):
        if getattr(args, key) is not None:
            size[key] = getattr(args, key)
    size["compile"] = size["compile"] and not args.no_compile
    size["steps"] = args.steps or (3 if args.smoke else 12)
    size["loss_chunk"] = args.loss_chunk or (16 if args.smoke else 512)
    size["mem_batch_size"] = max(1, size["batch_size"] // 2)  # eager steps (memory, FSDP2) keep headroom
    if args.sweep:
        size["sweep"] = sweep_grid(args)
        size["steps"] = args.steps or (1 if args.smoke else 8)
    if size["device"] == "cuda" and not torch.cuda.is_available():
        sys.exit("gpu_check: no CUDA device; use --smoke for the CPU check")
    return args, size


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


def train_step(forward, params, opt, x, amp) -> float:
    with amp:
        loss = forward(x)["loss_total"]
    loss.backward()
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
    """One NITP step timing per ``size["sweep"]`` combination, into ``res["sweep"]`` (a list of rows)."""
    res["sweep"] = []
    config = build_model_config(spec)
    flops = training_flops_per_token(config, size["seq_len"]) + nitp_flops_per_token(config.hidden_size)
    res["flops_per_token"], res["peak_flops"] = flops, peak_flops(device)
    for batch_size, impl, mode in size["sweep"]:
        row = {"batch_size": batch_size, "loss_impl": impl, "compile_mode": mode}
        try:
            row.update(sweep_point(spec, {**size, "batch_size": batch_size}, device, impl, mode))
            if res["peak_flops"]:
                row["mfu"] = flops * row["tokens_per_s"] / res["peak_flops"]
        except Exception as e:  # out of memory, a missing package: this point only
            row["error"] = f"{type(e).__name__}: {e}".splitlines()[0][:200]
        res["sweep"].append(row)
        print(f"[sweep] {json.dumps(row)}", file=sys.stderr, flush=True)
        torch._dynamo.reset()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    if res["sweep"] and all("error" in r for r in res["sweep"]):
        raise RuntimeError("every sweep point failed: " + res["sweep"][0]["error"])


def sweep_point(spec: dict, size: dict, device: torch.device, impl: str, mode: str) -> dict:
    """Median NITP step time of ``size["steps"]`` steps after one (compiling) warm-up step."""
    chunk = 0 if impl in ("plain", "liger") else size["loss_chunk"]
    obj, opt = make_objective(spec, "nitp", device, loss_chunk=chunk, loss_impl=impl)
    res = {"attn_implementation": str(getattr(obj.model.config, "_attn_implementation", None))}
    fwd = obj if mode == "eager" else torch.compile(obj, mode=mode)
    x, amp = random_batch(spec, size, device), autocast(size, device)
    step = functools.partial(train_step, fwd, [p for p in obj.parameters() if p.requires_grad], opt, x, amp)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    res["first_step_s"] = timed(step, device)
    times = [timed(step, device) for _ in range(size["steps"])]
    res["step_s"] = statistics.median(times)
    res["tokens_per_s"] = size["batch_size"] * size["seq_len"] / res["step_s"]
    if device.type == "cuda":
        res["peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    return res


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
            r.get("error", ""),
        )
        lines.append("| " + " | ".join(cells) + " |")
    lines += [f"error in {k}: {v}" for k, v in res.get("errors", {}).items()]
    return "\n".join(lines)


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


def main(argv=None) -> dict:
    args, size = parse(argv)
    device = torch.device(size["device"])
    spec = resolve_preset(size["preset"])
    res: dict = {"errors": {}, "size": size}
    res["device_name"] = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    t_start = time.perf_counter()
    sections = (
        [("sweep", sweep)]
        if "sweep" in size
        else [
            ("throughput", throughput),
            ("loss_memory", loss_memory),
            ("fsdp_smoke", fsdp_smoke),
            ("geometry", geometry_overhead),
        ]
    )
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
    present = [m for m in ABSENT_THERE if m in sys.modules]
    if present:
        res["errors"]["imports"] = f"imported {present}: a bare GPU machine lacks them"
    res["total_s"] = time.perf_counter() - t_start
    print(sweep_table(res, size) if "sweep" in size else table(res, size))
    print(f"total {res['total_s']:.0f} s")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(res, indent=1, default=str))
    if res["errors"]:
        sys.exit(1)
    return res


if __name__ == "__main__":
    main()
