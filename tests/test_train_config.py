"""Recipes resolve exactly: paper plans, ablation overlays on every preset, dry-run, the lr schedule."""

import math
from pathlib import Path

import pytest
import yaml

from nitp.errors import UserError
from nitp_train.cli import main
from nitp_train.config import RECIPES, apply_plan, config_diff, load_config, overlay_keys
from nitp_train.models import PRESETS
from tests.helpers import run_main

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
PAPER = {  # PAPER_NOTES.md, training-recipe table: preset -> (global batch, tokens, lr, lambda, target)
    "dense-0.5b": (512, 200e9, 4.2e-4, 1.0, 5),
    "dense-2b": (1024, 330e9, 4.2e-4, 1.0, 6),
    "dense-3b": (1024, 330e9, 4.2e-4, 0.8, 6),
    "moe-1.9b-a0.3b": (256, 105e9, 6.0e-4, 1.0, 3),
    "moe-3b-a0.5b": (512, 200e9, 8.7e-4, 1.0, 4),
    "moe-9b-a1b": (1024, 330e9, 4.2e-4, 0.8, 5),
    "moe-45b-a5.5b": (768, 240e9, 2.8e-4, 0.6, 5),
}
ABLATIONS = sorted((CONFIGS / "ablations").glob("*.yaml"))


def dry_run(args, capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    code, out, err = run_main(main, "nitp-train", ["run", *map(str, args), "--dry-run"], monkeypatch, capsys)
    assert list(tmp_path.iterdir()) == [], "a dry run wrote something"
    return code, out, err


@pytest.mark.parametrize("preset", sorted(PAPER))
def test_paper_config_dry_run_on_8_processes_gives_the_papers_batch_and_budget(
    preset, capsys, monkeypatch, tmp_path
):
    batch, tokens, lr, lam, target = PAPER[preset]
    path = CONFIGS / f"paper-{preset}-nitp.yaml"
    code, out, err = dry_run([path, "--world-size", "8"], capsys, monkeypatch, tmp_path)
    assert code == 0, err
    cfg = yaml.safe_load(out)  # stdout is the YAML and nothing else
    tc = cfg["train"]
    assert tc["global_batch"] == batch and tc["tokens"] == tokens
    assert tc["grad_accum"] * tc["batch_size"] * 8 == batch
    assert tc["steps"] == math.ceil(tokens / (batch * 8192))
    assert tc["steps"] * batch * 8192 - tokens < batch * 8192  # the budget, up to one step
    assert (tc["lr"], tc["warmup_steps"], tc["decay_ratio"], tc["warmup_start_ratio"]) == (lr, 2000, 0.2, 0.0)
    assert (cfg["nitp"]["lambda"], cfg["nitp"]["target_layer"], cfg["data"]["seq_len"]) == (lam, target, 8192)
    assert (tc["betas"], tc["weight_decay"], tc["grad_clip"]) == ([0.9, 0.95], 0.1, 1.0)
    line = err.strip().splitlines()[-1]
    assert line.startswith(f"global batch {batch:,} x 8,192 = ") and f"{tc['steps']:,} steps = " in line


def test_plan_line_matches_the_issue_example():
    cfg, plan = apply_plan(load_config("paper-dense-0.5b-nitp"), 8)
    from nitp_train.config import plan_summary

    assert plan_summary(cfg, plan).startswith(
        "global batch 512 x 8,192 = 4.19M tokens/step, 47,684 steps = 200B tokens"
    )
    assert plan["grad_accum"] == 64 and plan["warmup_steps"] == 2000 and plan["decay_steps"] == 9537


def test_every_preset_has_a_recipe_of_that_preset():
    assert set(RECIPES) == set(PRESETS)
    for preset, name in RECIPES.items():
        assert load_config(CONFIGS / name)["model"]["preset"] == preset


@pytest.mark.parametrize("ablation", ABLATIONS, ids=lambda p: p.stem)
def test_every_ablation_on_every_preset_differs_from_the_recipe_only_in_its_knob(ablation):
    knobs = overlay_keys(ablation)
    assert knobs and "run_name" not in knobs
    for preset, recipe in RECIPES.items():
        base = load_config(CONFIGS / recipe)
        ablated = load_config(ablation, preset=preset)
        diff = set(config_diff(base, ablated)) - {"run_name"}
        # a size overlay's train.steps replaces the recipe's token budget (one choice, two keys)
        allowed = set(knobs) | ({"train.tokens"} if "train.steps" in knobs else set())
        assert diff <= allowed, (preset, diff - allowed)
        for key, value in knobs.items():
            section, leaf = key.split(".") if "." in key else (None, key)
            got = ablated[section][leaf] if section else ablated[leaf]
            if value in ("middle", "deep"):  # depth-relative: resolved against this preset's depth
                depth = base["model"]["num_hidden_layers"]
                assert got == round({"middle": 0.5, "deep": 0.75}[value] * depth), (preset, key, got)
            else:
                assert got == value, (preset, key)
            if got != (base[section][leaf] if section else base[leaf]):
                assert key in diff
        assert ablated["run_name"] == f"{preset}-{ablation.stem}"


def test_overlay_needs_a_known_preset(capsys, monkeypatch, tmp_path):
    code, out, err = dry_run(
        [CONFIGS / "ablations" / "shift-0.yaml", "--preset", "moe-9b-a1"], capsys, monkeypatch, tmp_path
    )
    assert code == 2 and "did you mean" in err and out == ""


@pytest.mark.parametrize(
    "sets, needle",
    [
        (["train.global_batch=10", "train.batch_size=4"], "not a multiple of train.batch_size=4"),
        (["train.global_batch=16", "train.grad_accum=3"], "train.grad_accum=3"),
        (["train.steps=10", "train.tokens=1e6"], "both given"),
    ],
)
def test_plans_that_do_not_resolve_are_one_line(sets, needle, capsys, monkeypatch, tmp_path):
    args = ["tiny-nitp", *[a for s in sets for a in ("--set", s)]]
    code, out, err = dry_run(args, capsys, monkeypatch, tmp_path)
    assert code == 2 and out == "" and needle in err and len(err.strip().splitlines()) == 1, err


def test_token_budget_gives_steps_and_the_micro_batch_must_divide():
    cfg, plan = apply_plan(
        load_config("tiny-nitp", ["train.tokens=1e5", "train.steps=null", "train.global_batch=64"]), 2
    )
    assert cfg["train"]["grad_accum"] == 2 and plan["tokens_per_step"] == 64 * 128
    assert plan["steps"] == math.ceil(1e5 / (64 * 128)) and plan["tokens"] >= 1e5
    with pytest.raises(UserError, match="train.global_batch=8"):
        apply_plan(load_config("tiny-nitp", ["train.global_batch=8"]), 2)
    legacy, plan = apply_plan(load_config("tiny-nitp", ["train.grad_accum=3"]), 2)
    assert legacy["train"]["global_batch"] == 16 * 3 * 2  # no global_batch: micro x accum x world


def test_steps_flag_replaces_a_token_budget(capsys, monkeypatch, tmp_path):
    code, out, err = dry_run(["paper-moe-3b-a0.5b-nitp", "--steps", "7"], capsys, monkeypatch, tmp_path)
    assert code == 0, err
    tc = yaml.safe_load(out)["train"]
    assert tc["steps"] == 7 and tc["tokens"] is None and tc["grad_accum"] == 512


# ----------------------------------------------------------------------------- the lr schedule
def _lrs(tc_over: dict, steps: int) -> list[float]:
    import torch

    from nitp_train.trainer import _make_scheduler

    tc = {**load_config("tiny-nitp")["train"], **tc_over, "steps": steps}
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))], lr=tc["lr"])
    sched = _make_scheduler(opt, tc)
    lrs = []
    for _ in range(steps + 1):
        lrs.append(opt.param_groups[0]["lr"] / tc["lr"])
        opt.step()
        sched.step()
    return lrs


@pytest.mark.parametrize("shape", ["linear", "cosine", "1-sqrt"])
def test_schedule_warms_up_from_zero_holds_and_decays_to_the_floor(shape):
    lr = _lrs({"warmup_steps": 10, "decay_ratio": 0.2, "decay_type": shape, "min_lr_ratio": 0.1}, 100)
    assert lr[0] == 0.0  # warm-up starts at 0, not at the floor
    assert lr[5] == pytest.approx(0.5)
    assert lr[10] == 1.0 and lr[79] == 1.0  # end of warm-up, stable
    assert lr[80] == 1.0 and lr[81] < 1.0  # decay starts at 80% of the steps
    assert lr[100] == pytest.approx(0.1)  # the floor, reached at the end
    assert all(a >= b for a, b in zip(lr[80:], lr[81:]))
    mid = {"linear": 0.55, "cosine": 0.55, "1-sqrt": 0.1 + 0.9 * (1 - math.sqrt(0.5))}[shape]
    assert lr[90] == pytest.approx(mid)


def test_schedule_warm_up_start_is_a_key():
    lr = _lrs({"warmup_steps": 4, "warmup_start_ratio": 0.2, "decay_ratio": 0.0}, 10)
    assert lr[0] == pytest.approx(0.2) and lr[2] == pytest.approx(0.6) and lr[4:] == [1.0] * 7
