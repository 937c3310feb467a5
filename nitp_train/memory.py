"""Will the model fit? Training memory estimated from the model config before anything is allocated.

Training keeps, per parameter, fp32 weights, fp32 gradients and AdamW's two fp32 moments:
``bytes = 16 * parameters`` (activations come on top, so this is a lower bound). A run whose
lower bound exceeds the memory it can use is refused in one line before the model is built,
instead of failing deep inside an allocation minutes later.
"""

from __future__ import annotations

import os
from pathlib import Path

from nitp.errors import UserError

BYTES_PER_PARAMETER = 4 + 4 + 8  # fp32 weights + fp32 gradients + AdamW exp_avg and exp_avg_sq


def training_bytes(parameters: int, world: int = 1, sharded: bool = False) -> int:
    """Lower bound of one rank's training memory: ``16 * parameters`` (``/ world`` with FSDP).

    >>> training_bytes(1_000_000)
    16000000
    """
    return BYTES_PER_PARAMETER * parameters // (world if sharded else 1)


def available_bytes(device) -> int | None:
    """Memory a new allocation can use on ``device``: free GPU memory, or the host's
    ``MemAvailable`` capped by a cgroup limit; None when unknown."""
    if getattr(device, "type", str(device)) == "cuda":
        import torch

        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    host = _meminfo_available()
    limit = _cgroup_room()
    known = [b for b in (host, limit) if b is not None]
    return min(known) if known else None


def _meminfo_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _cgroup_room() -> int | None:
    """``memory.max - memory.current`` of this process's cgroup (v2), when it has a limit."""
    root = Path("/sys/fs/cgroup")
    try:
        limit = (root / "memory.max").read_text().strip()
        if limit == "max":
            return None
        return int(limit) - int((root / "memory.current").read_text())
    except (OSError, ValueError):
        return None


def check_fits(model_cfg: dict, device, world: int = 1, sharded: bool = False) -> None:
    """Refuse (``UserError``) a model whose training memory lower bound exceeds what ``device`` has.

    On the CPU the ranks on this host (``LOCAL_WORLD_SIZE`` under torchrun) share its memory.
    Continued pre-training (``model.init_from``) is checked by its loader, not here.

    >>> check_fits({"preset": "tiny-dense", ...}, torch.device("cpu"))      # doctest: +SKIP
    """
    if model_cfg.get("init_from"):
        return
    from .models import count_parameters_from_spec

    params = count_parameters_from_spec(model_cfg)["total"]
    need = training_bytes(params, world, sharded and world > 1)
    if getattr(device, "type", str(device)) != "cuda":
        need *= int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    have = available_bytes(device)
    if have is None or need <= have:
        return
    raise UserError(
        f"model too big for memory: {params / 1e6:,.0f}M parameters need at least {need / 2**30:.1f} GiB to train "
        f"(16 bytes each: fp32 weights, gradients, AdamW moments) but {device} has {have / 2**30:.1f} GiB free; "
        f"lower model.hidden_size ({model_cfg.get('hidden_size')}) or model.num_hidden_layers "
        f"({model_cfg.get('num_hidden_layers')}), or choose a smaller --preset"
    )
