"""Builders of small run directories and result records for the report tests.

Everything follows docs/contracts.md exactly: ``config.yaml`` (resolved schema),
``metrics.jsonl`` (train lines every ``log.every`` steps with ``loss_nitp`` on NITP runs,
``erank``/``mean_cos`` every ``log.geom_every``, ``val_loss``/``val_ppl`` every
``log.eval_every``; absent keys are absent, never 0), and records made with
``artifacts.make_record`` and written where ``default_record_path`` puts them.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import yaml

from nitp_train.artifacts import default_record_path, make_record, write_record

PAPER_NITP = {"target_layer": 1, "lambda": 1.0, "shift": 1, "loss": "cosine", "stop_grad": True,
              "projector": "swiglu", "start_step": 0}


def nitp_loss_curve(steps: np.ndarray, rng: np.random.Generator | None = None, noise: float = 0.005) -> np.ndarray:
    """The paper's three-phase shape: drop to ~0.02 by step ~40, hump ~0.25, decline."""
    s = np.maximum(np.asarray(steps, dtype=float), 1.0)
    curve = 0.02 + 0.98 * np.exp(-s / 8) + 0.23 * np.exp(-((np.log(s) - np.log(150)) / 0.7) ** 2)
    return curve + (rng.normal(0, noise, len(s)) if rng is not None else 0.0)


def write_run(root: Path, name: str, objective: str = "nitp", *, preset: str = "tiny-dense", steps: int = 600,
              nitp: dict | None = None, cos_reg: float = 0.0, seed: int = 0, log_every: int = 5,
              geom_every: int = 20, eval_every: int = 100, val_loss: float = 5.0, tokens_per_s: float = 1000.0,
              erank_end: float = 20.0) -> Path:
    """A run directory (config.yaml + metrics.jsonl) as nitp-train writes it; no checkpoints."""
    run = root / name
    run.mkdir(parents=True)
    config = {
        "run_name": name, "seed": seed, "objective": objective,
        "model": {"preset": preset, "hidden_size": 128, "num_hidden_layers": 4, "num_attention_heads": 4,
                  "num_key_value_heads": 2, "intermediate_size": 384, "vocab_size": 4096},
        "nitp": {**PAPER_NITP, **(nitp or {})},
        "cos_reg": {"weight": cos_reg},
        "data": {"corpus": "builtin", "tokenizer": None, "vocab_size": 4096, "seq_len": 64, "val_fraction": 0.02},
        "train": {"steps": steps, "batch_size": 8, "grad_accum": 1, "lr": 3e-3, "warmup_steps": 50,
                  "decay_ratio": 0.2, "weight_decay": 0.1},
        "log": {"every": log_every, "geom_every": geom_every, "eval_every": eval_every, "eval_batches": 4},
        "checkpoint": {"every": 200, "keep_last": 3},
    }
    (run / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    rng = np.random.default_rng(seed + len(name))
    lines = []
    for step in range(log_every, steps + 1, log_every):
        line = {"step": step, "tokens": step * 8 * 64, "lr": 3e-3, "loss_ntp": 8.0 * math.exp(-step / 300) + 4.0,
                "grad_norm": 1.0, "tokens_per_s": tokens_per_s * (1 + 0.01 * rng.normal())}
        if objective == "nitp":
            line["loss_nitp"] = float(nitp_loss_curve(np.array([step]), rng)[0])
            line["loss_total"] = line["loss_ntp"] + line["loss_nitp"]
        else:
            line["loss_total"] = line["loss_ntp"]
        if cos_reg > 0:
            line["loss_cos_reg"] = 0.3
        if step % geom_every == 0:
            line["erank"] = float(erank_end + 30 * math.exp(-step / 150) + rng.normal(0, 0.5))
            line["mean_cos"] = float(0.35 - 0.2 * math.exp(-step / 150) + rng.normal(0, 0.005))
        lines.append(line)
        if step % eval_every == 0:
            lines.append({"step": step, "tokens": step * 8 * 64, "val_loss": val_loss + 2.0 * (1 - step / steps),
                          "val_ppl": math.exp(val_loss + 2.0 * (1 - step / steps))})
    (run / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return run


def model_info(run: Path | None, step: int | None, objective: str | None = "nitp", preset: str | None = "tiny-dense",
               name: str | None = None, hash_: str = "0" * 64) -> dict:
    """``checkpoint_info`` of a run's checkpoint (or of a plain model folder when run is None)."""
    if run is None:
        return {"path": f"/models/{name}", "run": None, "name": name, "step": step, "objective": objective,
                "preset": preset, "tokens_seen": None, "hash": hash_}
    path = run / "checkpoints" / f"step_{step:06d}"
    return {"path": str(path), "run": str(run), "name": run.name, "step": step, "objective": objective,
            "preset": preset, "tokens_seen": step * 8 * 64, "hash": hash_}


def bench_record(model: dict, values: dict[str, float | None], *, average: float | None = None, shots: int = 0,
                 suite: str = "offline", limit: int | None = None, out: Path | None = None) -> Path:
    """A ``kind: "bench"`` record (a task with value None is left out, as a failed task would be)."""
    tasks = {t: {"metric": "acc_norm" if t == "arc_challenge" else "acc", "value": v, "stderr": 0.01, "n": 100,
                 "shots": shots, "version": "1.0", "lm_eval_task": t} for t, v in values.items() if v is not None}
    if average is None:
        average = sum(x["value"] for x in tasks.values()) / len(tasks)
    settings = {"suite": suite, "tasks": sorted(values), "limit": limit,
                "num_fewshot": {t: shots for t in sorted(values)}, "batch_size": 8, "seed": 0}
    rec = make_record("bench", model, settings, {"tasks": tasks, "average": average}, versions={"lm_eval": "0.4.13"})
    return write_record(out or default_record_path(model, "bench", f"{suite}-{shots}shot"), rec)


def mteb_record(model: dict, scores: dict[str, tuple[str, float]], *, suite: str = "offline",
                out: Path | None = None) -> Path:
    """A ``kind: "mteb"`` record: per task (group, main score); group and overall macro averages."""
    types = {"Classification": "Classification", "STS": "STS", "Retrieval/dup": "PairClassification"}
    tasks = {t: {"main_score": s, "metric": "cosine_spearman" if g == "STS" else "accuracy", "type": types[g], "group": g}
             for t, (g, s) in scores.items()}
    groups = {g: float(np.mean([s for gg, s in scores.values() if gg == g])) for g in dict.fromkeys(g for g, _ in scores.values())}
    settings = {"suite": suite, "tasks": sorted(scores), "pooling": "mean", "layer": -1, "batch_size": 32}
    rec = make_record("mteb", model, settings, {"tasks": tasks, "groups": groups,
                                                 "overall": float(np.mean([s for _, s in scores.values()]))},
                      versions={"mteb": "2.26.24"})
    return write_record(out or default_record_path(model, "mteb", suite), rec)


def geom_record(model: dict, summary: dict[str, float], layers: list[dict], *, recommended: int = 1,
                n_tokens: int = 4096, out: Path | None = None) -> Path:
    settings = {"corpus": "builtin", "n_tokens": n_tokens, "layers": [x["layer"] for x in layers],
                "exclude_first": False, "seed": 0}
    rec = make_record("geom", model, settings, {"summary": summary, "layers": layers,
                                                 "recommended_target_layer": recommended})
    return write_record(out or default_record_path(model, "geom", f"builtin-{n_tokens}"), rec)


def layer_stats(n_layers: int = 4, scale: float = 1.0) -> list[dict]:
    """Per-layer entries: both effective ranks, anisotropy and the NITP target statistics."""
    return [{"layer": k, "effective_rank_covariance": scale * (40 - 5 * k), "effective_rank_singular": scale * (60 - 5 * k),
             "anisotropy": 0.1 + 0.05 * k, "anisotropy_across_sequences": 0.08 + 0.05 * k,
             "next_token_linear_r2": 0.2 + 0.1 * k, "next_token_linear_cos": 0.5 + 0.05 * k,
             "temporal_self_cos": 0.3}
            for k in range(n_layers + 1)]


def test_builders_follow_the_contract(tmp_path):
    """The fixtures themselves: records readable by read_record, found under RUN/results/."""
    from nitp_train.artifacts import read_jsonl, read_record

    run = write_run(tmp_path, "r", "nitp", steps=100)
    rec = read_record(bench_record(model_info(run, 100), {"arc_challenge": 0.3}))
    assert rec["kind"] == "bench" and rec["scores"]["tasks"]["arc_challenge"]["shots"] == 0
    assert list((run / "results" / "bench").glob("step_000100-*.json"))
    lines = read_jsonl(run / "metrics.jsonl")
    assert all("step" in x and "tokens" in x for x in lines)
    assert any("val_loss" in x for x in lines) and all(x.get("loss_nitp", 1) != 0 for x in lines)
