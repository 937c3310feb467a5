"""The prepared GPU check runs end to end on CPU in its smoke mode and prints its one table."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_gpu_check_smoke_runs_every_section(tmp_path):
    out = tmp_path / "check.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--smoke", "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| NITP / NTP step time" in proc.stdout and "geometry / forward" in proc.stdout
    import json

    res = json.loads(out.read_text())
    assert res["errors"] == {}
    assert res["fsdp_reload_exact"] is True  # sharded save + load on a world-1 group
    assert res["ntp_tokens_per_s"] > 0 and res["nitp_tokens_per_s"] > 0 and res["geom_ratio"] > 0
    assert res["nitp_predicted_ratio"] > 1.0


def _gpu_check_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_sweep_grid_is_the_product_of_the_lists_and_refuses_unknown_names():
    gpu_check = _gpu_check_module()
    args, size = gpu_check.parse(
        ["--smoke", "--sweep", "--sweep-batch-sizes", "1,4", "--sweep-loss-impls", "plain,chunked_gif"]
    )
    assert size["sweep"] == [
        (1, "plain", "eager"),
        (1, "chunked_gif", "eager"),
        (4, "plain", "eager"),
        (4, "chunked_gif", "eager"),
    ]
    _, full = gpu_check.parse(["--smoke", "--sweep", "--sweep-compile-modes", "default,max-autotune"])
    assert {mode for _, _, mode in full["sweep"]} == {"default", "max-autotune"}
    for bad in (["--sweep-loss-impls", "fast"], ["--sweep-batch-sizes", "0"], ["--sweep-compile-modes", "x"]):
        with pytest.raises(SystemExit, match="gpu_check: --sweep-"):
            gpu_check.parse(["--smoke", "--sweep", *bad])


@pytest.mark.slow
def test_sweep_smoke_times_every_point_and_prints_one_row_each(tmp_path, capsys):
    gpu_check = _gpu_check_module()
    out = tmp_path / "sweep.json"
    argv = ["--smoke", "--sweep", "--sweep-batch-sizes", "1,2", "--out", str(out)]
    res = gpu_check.main(argv + ["--sweep-loss-impls", "plain,chunked,chunked_gif"])
    rows = res["sweep"]
    assert [(r["batch_size"], r["loss_impl"]) for r in rows] == [
        (b, impl) for b in (1, 2) for impl in ("plain", "chunked", "chunked_gif")
    ]
    assert all("error" not in r and r["tokens_per_s"] > 0 for r in rows)
    assert all(r["attn_implementation"] in ("sdpa", "eager") for r in rows)
    assert res["flops_per_token"] > 0 and res["peak_flops"] is None  # CPU: no MFU claimed
    printed = capsys.readouterr().out
    assert printed.count("| eager |") == 6 and "causal attention not halved" in printed
    import json

    assert json.loads(out.read_text())["sweep"] == rows


def test_accumulation_pairs_and_budget_flags_have_smoke_defaults_and_refuse_nonsense():
    gpu_check = _gpu_check_module()
    _, size = gpu_check.parse(["--smoke", "--sweep"])
    assert (size["accum"], size["warmup"], size["ratio_pairs"], size["time_budget"]) == (1, 1, 3, None)
    _, size = gpu_check.parse(["--smoke", "--sweep", "--accum", "8", "--time-budget", "420", "--study"])
    assert size["accum"] == 8 and size["time_budget"] == 420.0 and size["study"] == "quickstart"
    for bad in (["--accum", "0"], ["--ratio-pairs", "-1"], ["--time-budget", "0"]):
        with pytest.raises(SystemExit, match="gpu_check: --"):
            gpu_check.parse(["--smoke", "--sweep", *bad])


def test_train_step_accumulates_the_mean_gradient_of_its_micro_batches():
    gpu_check = _gpu_check_module()
    import contextlib

    import torch

    w = torch.nn.Parameter(torch.zeros(3))

    def forward(x):
        return {"loss_total": (w * x).sum()}

    opt = torch.optim.SGD([w], lr=1.0)
    xs = [torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.0, 0.0, 0.5])]
    gpu_check.train_step(forward, [w], opt, xs, contextlib.nullcontext())
    assert torch.allclose(w.detach(), -torch.tensor([0.5, 0.0, 0.25]))  # SGD on the mean gradient


def test_paired_ratio_is_the_geometric_mean_with_a_normal_interval():
    gpu_check = _gpu_check_module()
    constant = gpu_check.paired_ratio([1.0, 2.0, 4.0], [1.02, 2.04, 4.08])
    assert constant["ratio"] == pytest.approx(1.02) and constant["half_width"] == pytest.approx(
        0.0, abs=1e-12
    )
    ntp, nitp = [1.0, 1.1, 0.9, 1.05], [1.03, 1.11, 0.93, 1.06]
    r95, r99 = gpu_check.paired_ratio(ntp, nitp), gpu_check.paired_ratio(ntp, nitp, level=0.99)
    assert r95["lo"] < r95["ratio"] < r95["hi"] and r99["lo"] < r95["lo"] and r99["hi"] > r95["hi"]
    more = gpu_check.paired_ratio(ntp * 4, nitp * 4)  # the same spread over 4x the pairs: narrower
    assert more["half_width"] < r95["half_width"] / 1.8 and more["pairs"] == 16


def test_study_steps_fit_the_budget_and_never_exceed_the_study():
    gpu_check = _gpu_check_module()
    assert gpu_check.study_steps(600, 0.5, 2, 400.0) == 280
    assert gpu_check.study_steps(600, 0.01, 2, 400.0) == 600  # fits whole
    assert gpu_check.study_steps(600, 0.5, 2, 10.0) == 1
    assert (
        gpu_check.study_steps(600, None, 2, 400.0) == 600 and gpu_check.study_steps(600, 0.5, 2, None) == 600
    )


def test_the_best_setting_is_written_as_a_loadable_overlay(tmp_path):
    gpu_check = _gpu_check_module()
    from nitp_train.config import load_config, overlay_keys

    _, size = gpu_check.parse(["--smoke", "--sweep"])
    best = {"batch_size": 4, "loss_impl": "chunked_gif", "compile_mode": "max-autotune-no-cudagraphs"}
    text = gpu_check.overlay_text({**best, "tokens_per_s": 1e5, "mfu": 0.4}, size, {"sweep": [best]})
    path = tmp_path / "best.yaml"
    path.write_text(text)
    keys = overlay_keys(path)
    assert keys["train.loss_impl"] == "chunked_gif:16" and keys["train.compile"] is True
    assert keys["train.compile_mode"] == "max-autotune-no-cudagraphs" and "train.loss_chunk" not in keys
    cfg = load_config(path, [], preset="tiny-dense")
    assert (cfg["train"]["batch_size"], cfg["train"]["loss_impl"], cfg["train"]["fused_adamw"]) == (
        4,
        "chunked_gif:16",  # the implementation and its chunk size, one knob
        "auto",
    )


@pytest.mark.slow
def test_budgeted_sweep_then_checks_overlay_and_study_in_smoke_mode(tmp_path, capsys):
    gpu_check = _gpu_check_module()
    overlay, study_out = tmp_path / "best.yaml", tmp_path / "study"
    argv = ["--smoke", "--sweep", "--time-budget", "0.001", "--write-overlay", str(overlay)]
    res = gpu_check.main(argv + ["--study", "--study-out", str(study_out), "--out", str(tmp_path / "r.json")])
    rows = res["sweep"]
    assert "tokens_per_s" in rows[0] and all("time budget" in r["skipped"] for r in rows[1:])
    assert res["best"] == rows[0]
    check = res["compile_check"]
    assert check["graphs"] >= 1 and check["graph_breaks"] >= 0 and check["recompiles"] >= 0
    assert check["fullgraph"] == "ok" or check["fullgraph"].startswith("fails:")
    assert res["ratio"]["pairs"] == 2 and res["ratio"]["lo"] <= res["ratio"]["ratio"] <= res["ratio"]["hi"]
    assert res["ratio"]["predicted"] > 1.0
    from nitp_train.config import overlay_keys

    assert overlay_keys(overlay)["train.batch_size"] == rows[0]["batch_size"]
    assert res["study"]["steps"] == 2 and set(res["study"]["cells"]) == {"ntp", "nitp"}
    assert all(c["step"] == 2 for c in res["study"]["cells"].values())
    printed = capsys.readouterr().out
    assert "NITP / NTP step time at the best setting" in printed and "compile check" in printed
    assert "study quickstart (2 steps per cell" in printed
