"""The trainer's throughput switches: fused AdamW, torch.compile's mode, the facts logged with MFU."""

import importlib.util
import time
from types import SimpleNamespace

import pytest
import torch

from nitp.errors import UserError
from nitp_train import trainer
from nitp_train.config_model import DEFAULTS, Train, section
from nitp_train.loss import NITPObjective
from nitp_train.metrics import PEAK_BF16, peak_flops, peak_flops_for_name
from nitp_train.models import build_model, resolve_preset
from nitp_train.parallel import Dist

NITP_CFG = {"target_layer": 1, "shift": 1, "loss": "cosine", "stop_grad": True, "projector": "swiglu"}


def _train_cfg(**changes) -> Train:
    return section("train", {**DEFAULTS["train"], "lr": 1e-3, **changes})


@pytest.fixture(scope="module")
def objective():
    return NITPObjective(build_model(resolve_preset("tiny-dense"), seed=0), "nitp", NITP_CFG)


def test_adamw_on_cpu_is_not_fused_with_auto_or_false(objective):
    for setting in ("auto", False):
        opt = trainer._make_optimizer(objective, _train_cfg(fused_adamw=setting))
        assert not any(g["fused"] for g in opt.param_groups)
        assert {g["name"] for g in opt.param_groups} == {"model", "projector"}


def test_fused_adamw_true_on_cpu_is_a_one_line_error(objective):
    with pytest.raises(UserError, match="train.fused_adamw=true needs every parameter on CUDA") as e:
        trainer._make_optimizer(objective, _train_cfg(fused_adamw=True))
    assert "\n" not in str(e.value)
    with pytest.raises(UserError, match="train.fused_adamw=true needs a CUDA device"):
        trainer._check_speed_switches(_train_cfg(fused_adamw=True), torch.device("cpu"))


def test_loss_impl_contradiction_fails_before_any_work():
    with pytest.raises(UserError, match="loss_impl=plain with train.loss_chunk=32"):
        trainer._check_speed_switches(_train_cfg(loss_impl="plain", loss_chunk=32), torch.device("cpu"))
    trainer._check_speed_switches(_train_cfg(loss_impl="chunked_gif", loss_chunk=32), torch.device("cpu"))
    if importlib.util.find_spec("liger_kernel") is None:
        with pytest.raises(UserError, match="loss_impl=liger needs the liger-kernel package"):
            trainer._check_speed_switches(_train_cfg(loss_impl="liger"), torch.device("cpu"))


@pytest.mark.parametrize("mode", ["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"])
def test_compile_mode_reaches_torch_compile(monkeypatch, mode):
    calls = []
    monkeypatch.setattr(torch, "compile", lambda module, **kw: calls.append(kw) or ("compiled", module))
    module = torch.nn.Linear(2, 2)
    assert trainer._compiled(module, _train_cfg(compile=False, compile_mode=mode)) is module
    assert calls == []
    assert trainer._compiled(module, _train_cfg(compile=True, compile_mode=mode)) == ("compiled", module)
    assert calls == [{"mode": mode}]


def test_first_train_line_states_backend_and_mfu_convention(objective):
    opt = trainer._make_optimizer(objective, _train_cfg())
    facts = trainer._run_facts(_train_cfg(), objective.model, objective, opt)
    assert facts == {
        "parameters": sum(p.numel() for p in objective.model.parameters()),
        "attn_implementation": objective.model.config._attn_implementation,
        "loss_impl": "plain",
        "compile_mode": "off",
        "fused_adamw": False,
    }
    assert facts["attn_implementation"] in ("sdpa", "eager")
    st = SimpleNamespace(
        t0=time.perf_counter() - 1.0,
        sums={"loss_total": torch.tensor(2.0)},
        n_sums=1,
        d=Dist(),
        tokens_per_step=1000,
        cfg=SimpleNamespace(train=SimpleNamespace(grad_accum=1)),
        scheduler=SimpleNamespace(get_last_lr=lambda: [1e-3]),
        flops_per_token=6e6,
        peak=989e12,  # as if on an H100
        run_facts=dict(facts),
    )
    first = trainer._interval_means(st, torch.tensor(1.0))
    assert first["flops_per_token"] == 6e6 and first["peak_flops"] == 989e12
    assert first["mfu"] == pytest.approx(6e6 * first["tokens_per_s"] / 989e12)
    assert first["attn_implementation"] == facts["attn_implementation"]
    st.sums, st.n_sums = {"loss_total": torch.tensor(1.0)}, 1
    second = trainer._interval_means(st, torch.tensor(1.0))
    assert "mfu" in second and not {
        "flops_per_token",
        "peak_flops",
        "attn_implementation",
        "parameters",
    } & set(second)


def test_cpu_lines_state_flops_per_token_but_no_mfu_convention(objective):
    st = SimpleNamespace(
        t0=time.perf_counter(),
        sums={"loss_total": torch.tensor(2.0)},
        n_sums=1,
        d=Dist(),
        tokens_per_step=10,
        cfg=SimpleNamespace(train=SimpleNamespace(grad_accum=1)),
        scheduler=SimpleNamespace(get_last_lr=lambda: [1e-3]),
        flops_per_token=6e6,
        peak=None,
        run_facts={"loss_impl": "plain"},
    )
    row = trainer._interval_means(st, torch.tensor(1.0))
    # a size ladder reads a CPU run's compute from its first line; MFU needs a known peak
    assert row["loss_impl"] == "plain" and row["flops_per_token"] == 6e6
    assert not {"mfu", "peak_flops"} & set(row)


@pytest.mark.parametrize(
    "name, peak",
    [
        ("NVIDIA H200", 989e12),
        ("NVIDIA H100 80GB HBM3", 989e12),
        ("NVIDIA H100 PCIe", 989e12),
        ("NVIDIA A100-SXM4-80GB", 312e12),
        ("NVIDIA L40S", 362e12),
        ("NVIDIA A10G", 125e12),
        ("NVIDIA GeForce RTX 4090", 165e12),
        ("Tesla T4", None),
    ],
)
def test_peak_flops_table_lookup(name, peak):
    assert peak_flops_for_name(name) == peak


def test_peak_flops_is_none_off_cuda_and_the_table_is_dense_bf16():
    assert peak_flops(torch.device("cpu")) is None
    assert PEAK_BF16["H100"] == PEAK_BF16["H200"] == 989e12  # dense, not the 1979e12 sparse figure


@pytest.mark.slow
def test_a_run_with_the_gif_loss_logs_its_switches_and_matches_plain(tmp_path):
    from nitp.io import read_jsonl
    from tests.helpers import make_tiny_run

    common = ["log.every=1", "log.geom_every=0", "log.eval_every=0"]
    runs = {
        impl: make_tiny_run(tmp_path / impl, steps=2, extra=common + [f"train.loss_impl={impl}"])
        for impl in ("plain", "chunked_gif")
    }
    rows = {k: [r for r in read_jsonl(p / "metrics.jsonl") if "loss_total" in r] for k, p in runs.items()}
    first = rows["chunked_gif"][0]
    assert first["loss_impl"] == "chunked_gif" and first["compile_mode"] == "off"
    assert first["fused_adamw"] is False and first["attn_implementation"] in ("sdpa", "eager")
    assert "loss_impl" not in rows["chunked_gif"][1]
    for gif, plain in zip(rows["chunked_gif"], rows["plain"]):
        assert gif["loss_total"] == pytest.approx(plain["loss_total"], rel=1e-4)
