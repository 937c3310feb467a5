"""The trainer's warmup-stable-decay schedule (transformers' get_wsd_schedule) against the formula
it replaced, written out here as the independent reference; and its resume."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from nitp_train.trainer import _make_scheduler


def reference_factor(step: int, steps: int, warmup: int, decay: int, start: float, floor: float, shape: str):
    """The former ``nitp_train.trainer.lr_factor``, verbatim in substance."""
    if step < warmup:
        return start + (1.0 - start) * step / warmup
    decay_start = steps - decay
    if decay <= 0 or step < decay_start:
        return 1.0
    p = min(1.0, (step - decay_start) / decay)
    shapes = {"linear": 1.0 - p, "cosine": 0.5 * (1.0 + math.cos(math.pi * p)), "1-sqrt": 1.0 - math.sqrt(p)}
    return floor + (1.0 - floor) * shapes[shape]


def tc(**over) -> dict:
    base = dict(
        steps=50,
        warmup_steps=7,
        warmup_start_ratio=0.0,
        decay_ratio=0.2,
        decay_type="cosine",
        min_lr_ratio=0.1,
    )
    return {**base, **over}


def optimizer(lr: float = 3e-3):
    return torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))], lr=lr)


def lr_sequence(scheduler, optim, n: int) -> list[float]:
    out = [optim.param_groups[0]["lr"]]
    for _ in range(n):
        optim.step()
        scheduler.step()
        out.append(optim.param_groups[0]["lr"])
    return out


CASES = [
    tc(),  # the defaults: ramp from 0, floor 0.1 (two get_wsd_schedule lambdas)
    tc(decay_type="linear", min_lr_ratio=0.0),  # start == floor: get_wsd_schedule alone
    tc(decay_type="1-sqrt", warmup_start_ratio=0.25),
    tc(warmup_start_ratio=0.1, min_lr_ratio=0.1),
    tc(decay_ratio=0.0),  # no decay: 1 to the end
    tc(warmup_steps=0, decay_ratio=1.0),
    tc(steps=5, warmup_steps=30),  # warmup longer than the run
]


@pytest.mark.parametrize("cfg", CASES)
def test_lr_sequence_equals_the_former_formula(cfg):
    opt = optimizer()
    got = lr_sequence(_make_scheduler(opt, cfg), opt, cfg["steps"] + 3)  # and past the end
    warmup = min(cfg["warmup_steps"], cfg["steps"])
    decay = min(int(round(cfg["decay_ratio"] * cfg["steps"])), cfg["steps"] - warmup)
    args = (cfg["steps"], warmup, decay, cfg["warmup_start_ratio"], cfg["min_lr_ratio"], cfg["decay_type"])
    want = [3e-3 * reference_factor(t, *args) for t in range(cfg["steps"] + 4)]
    assert got == pytest.approx(want, rel=1e-12, abs=1e-18)
    if cfg["warmup_start_ratio"] == 0.0:
        assert got == want  # bit for bit with the paper's ramp from 0 (the default)


def test_scheduler_state_resumes_bit_for_bit():
    cfg = tc()
    opt = optimizer()
    sched = _make_scheduler(opt, cfg)
    lr_sequence(sched, opt, 20)
    saved_sched, saved_opt = copy.deepcopy(sched.state_dict()), copy.deepcopy(opt.state_dict())
    rest = lr_sequence(sched, opt, 25)

    opt2 = optimizer()
    sched2 = _make_scheduler(opt2, cfg)
    opt2.load_state_dict(saved_opt)
    sched2.load_state_dict(saved_sched)
    assert set(saved_sched) >= {"last_epoch", "base_lrs", "lr_lambdas"}  # a LambdaLR's state
    assert lr_sequence(sched2, opt2, 25) == rest
