"""Process groups and model wrapping (DDP or FSDP2), kept apart from the model and the trainer.

Under ``torchrun`` the environment holds RANK / WORLD_SIZE / LOCAL_RANK; otherwise the run is a
single process. Backend: nccl on GPU, gloo on CPU.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from nitp.layers import transformer_blocks


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1


def setup(device: str = "auto") -> Dist:
    """Initialise the process group when launched by torchrun; pick the device."""
    from nitp.runtime import pick_device

    use_cuda = pick_device(None if device == "auto" else device, "train.device").startswith("cuda")
    if "RANK" not in os.environ:
        return Dist(device=torch.device("cuda" if use_cuda else "cpu"))
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local = int(os.environ.get("LOCAL_RANK", 0))
    if use_cuda:
        torch.cuda.set_device(local)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return Dist(rank, world, local, torch.device(f"cuda:{local}" if use_cuda else "cpu"))


def teardown(d: Dist) -> None:
    if d.enabled and dist.is_initialized():
        dist.destroy_process_group()


def barrier(d: Dist) -> None:
    if d.enabled:
        dist.barrier()


def all_mean(d: Dist, values: dict[str, float]) -> dict[str, float]:
    """Mean of each scalar over ranks (one all-reduce for the whole dict)."""
    if not d.enabled or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=d.device)
    dist.all_reduce(t)
    return {k: v / d.world for k, v in zip(keys, t.tolist())}


def gather_checksums(d: Dist, module: torch.nn.Module) -> list[float]:
    """float64 sum of every parameter, from each rank: equal lists mean the replicas agree (DDP)."""
    with torch.no_grad():
        local = sum(p.detach().double().sum() for p in module.parameters())
    t = torch.as_tensor(local, dtype=torch.float64, device=d.device).reshape(1)
    return [float(x) for x in all_gather(d, t)]


def all_gather(d: Dist, t: torch.Tensor) -> list[torch.Tensor]:
    """``t`` of every rank, in rank order (same shape on every rank; ``[t]`` in a single process)."""
    if not d.enabled:
        return [t]
    out = [torch.empty_like(t) for _ in range(d.world)]
    dist.all_gather(out, t)
    return out


def wrap(module: torch.nn.Module, d: Dist, mode: str, param_dtype: str = "fp32") -> torch.nn.Module:
    """DDP, or FSDP2 (``fully_shard`` each decoder block, then the root) with ``param_dtype``
    (``train.param_dtype``; ``bf16`` needs FSDP2: ``nitp_train.trainer`` refuses it otherwise)."""
    if not d.enabled:
        return module
    if mode == "ddp":
        from torch.nn.parallel import DistributedDataParallel as DDP

        return DDP(module, device_ids=[d.local_rank] if d.device.type == "cuda" else None)
    return shard(module, param_dtype)


def mixed_precision_policy(param_dtype: str):
    """FSDP2's ``MixedPrecisionPolicy`` for ``train.param_dtype``, or ``None`` for ``fp32``.

    ``bf16``: the blocks all-gather and compute with bfloat16 parameters, gradients are reduced
    in float32 (``reduce_dtype``) into the float32 shards, which stay the master copy that AdamW
    (float32 moments) updates. Example: ``mixed_precision_policy("bf16").param_dtype`` is
    ``torch.bfloat16``.
    """
    if param_dtype == "fp32":
        return None
    from torch.distributed.fsdp import MixedPrecisionPolicy

    return MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)


def shard(module: torch.nn.Module, param_dtype: str = "fp32") -> torch.nn.Module:
    """FSDP2 in place: ``fully_shard`` each decoder block of ``module.model``, then the root
    (needs an initialised process group; world size 1 works too), with
    :func:`mixed_precision_policy` of ``param_dtype``."""
    from torch.distributed.fsdp import fully_shard

    policy = mixed_precision_policy(param_dtype)
    kwargs = {} if policy is None else {"mp_policy": policy}
    for block in transformer_blocks(inner_module(module).model):  # the same blocks nitp.layers hooks
        fully_shard(block, **kwargs)
    fully_shard(module, **kwargs)
    return module


def inner_module(module: torch.nn.Module) -> torch.nn.Module:
    """The module inside DDP / accelerate (``.module``) and ``torch.compile`` (``._orig_mod``)
    wrappers, however nested; FSDP2 shards in place (the module itself)."""
    for _ in range(8):
        inner = getattr(module, "module", None)
        inner = inner if inner is not None else getattr(module, "_orig_mod", None)
        if not isinstance(inner, torch.nn.Module):
            return module
        module = inner
    return module


def full_state_dicts(wrapped: torch.nn.Module, optimizer, d: Dist, mode: str):
    """(model state dict, optimizer state dict), full and on CPU, for saving on rank 0."""
    if not d.enabled or mode == "ddp":
        return inner_module(wrapped).state_dict(), optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_state_dict(wrapped, optimizer, options=opts)


def load_full_state_dicts(
    wrapped: torch.nn.Module, optimizer, model_sd, optim_sd, d: Dist, mode: str
) -> None:
    if not d.enabled or mode == "ddp":
        inner_module(wrapped).load_state_dict(model_sd)
        optimizer.load_state_dict(optim_sd)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

    set_state_dict(
        wrapped,
        optimizer,
        model_state_dict=model_sd,
        optim_state_dict=optim_sd,
        options=StateDictOptions(full_state_dict=True),
    )


def enable_activation_checkpointing(model: torch.nn.Module) -> None:
    """Recompute each decoder block in the backward pass instead of keeping its activations
    (transformers' own switch; non-reentrant, so forward hooks and torch.compile keep working)."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x name
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def save_sharded(wrapped: torch.nn.Module, optimizer, path) -> None:
    """Each rank writes its own shards of the model and optimizer state to ``path`` (a folder)
    with ``torch.distributed.checkpoint``; collective under a process group, plain otherwise.
    Nothing is gathered: the files hold every shard plus the global shapes, so ``load_sharded``
    can read them back at another world size. The metadata is JSON, never a pickle
    (``nitp_train.dcp_json``)."""
    from torch.distributed.checkpoint.state_dict import get_state_dict

    from .dcp_json import save_state

    model_sd, optim_sd = get_state_dict(wrapped, optimizer)
    save_state({"model": model_sd, "optimizer": optim_sd}, path)


def load_sharded(wrapped: torch.nn.Module, optimizer, path) -> None:
    """Load what ``save_sharded`` wrote into ``wrapped`` / ``optimizer``, resharding to this
    run's world size (FSDP2 shards, DDP replicas or a single process alike). Nothing is
    unpickled: JSON metadata, non-tensor items and tensors through ``torch.load(weights_only=True)``;
    a ``.metadata`` that is not nitp's JSON is a one-line ``UserError``."""
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    from .dcp_json import load_state

    model_sd, optim_sd = get_state_dict(wrapped, optimizer)
    state = {"model": model_sd, "optimizer": optim_sd}
    load_state(state, path)
    set_state_dict(wrapped, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])


def full_model_state_dict(wrapped: torch.nn.Module, d: Dist, mode: str) -> dict:
    """The full model state dict on CPU (gathered from the FSDP2 shards; optimizer left sharded)."""
    if not d.enabled or mode == "ddp":
        return inner_module(wrapped).state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(wrapped, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def all_max(d: Dist, t: torch.Tensor) -> torch.Tensor:
    """Elementwise max of ``t`` over ranks, in place (unchanged in a single process)."""
    if d.enabled and dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t
