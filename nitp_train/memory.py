"""Will the model fit? Training memory estimated from the model config before anything is allocated.

Training keeps, per parameter, fp32 weights, fp32 gradients and AdamW's two fp32 moments:
``bytes = 16 * parameters`` (activations come on top, so this is a lower bound). A run whose
lower bound exceeds the memory it can use is refused in one line before the model is built,
instead of failing deep inside an allocation minutes later.
"""

from __future__ import annotations

import os

from nitp.errors import UserError
from nitp.loading import available_memory

BYTES_PER_PARAMETER = 4 + 4 + 8  # fp32 weights + fp32 gradients + AdamW exp_avg and exp_avg_sq


def training_bytes(parameters: int, world: int = 1, sharded: bool = False) -> int:
    """Lower bound of one rank's training memory: ``16 * parameters`` (``/ world`` with FSDP).

    >>> training_bytes(1_000_000)
    16000000
    """
    return BYTES_PER_PARAMETER * parameters // (world if sharded else 1)


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
    have = available_memory(device)
    if need > have:
        raise UserError(
            f"model too big for memory: {params / 1e6:,.0f}M parameters need at least {need / 2**30:.1f} GiB to train "
            f"(16 bytes each: fp32 weights, gradients, AdamW moments) but {device} has {have / 2**30:.1f} GiB free; "
            f"lower model.hidden_size ({model_cfg.get('hidden_size')}) or model.num_hidden_layers "
            f"({model_cfg.get('num_hidden_layers')}), or choose a smaller --preset"
        )
