"""Where and in which precision a model runs: the one device and dtype choice of every tool.

``pick_device(name)`` turns ``--device`` (None for "the best there is") into a checked device
string; ``pick_dtype(device, name)`` turns ``--dtype`` (None for "the usual for that device")
into a torch dtype name; ``use_bf16(device)`` says whether bfloat16 is the usual one there::

    device = --device, else "cuda" when a GPU is visible, else "cpu"
    dtype  = --dtype,  else "bfloat16" when use_bf16(device), else "float32"
    use_bf16(device) = device is CUDA and the GPU supports bfloat16

>>> pick_device(None), pick_dtype("cpu")                                    # doctest: +SKIP
('cpu', 'float32')
"""

from __future__ import annotations

from .errors import UserError


def pick_device(name: str | None = None, option: str = "--device") -> str:
    """``name`` checked against the machine, or cuda when a GPU is visible, else cpu.

    ``UserError`` naming ``option`` for an unknown device string or a GPU that is not there.
    """
    import torch

    if name is None or str(name).strip() == "":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(str(name))
    except (RuntimeError, ValueError):
        raise UserError(f"{option} {name}: not a device (use cpu, cuda or cuda:N)") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise UserError(f"{option} {name}: no GPU is visible on this machine; use {option} cpu")
        if device.index is not None and device.index >= count:
            raise UserError(f"{option} {name}: only {count} GPU(s) visible (cuda:0 .. cuda:{count - 1})")
    return str(name)


def use_bf16(device: str) -> bool:
    """True when ``device`` is a CUDA GPU that computes in bfloat16 (the usual GPU precision)."""
    import torch

    return str(device).startswith("cuda") and torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def pick_dtype(device: str, name: str | None = None, option: str = "--dtype") -> str:
    """``name`` checked (a torch floating dtype), else bfloat16 where ``use_bf16``, else float32."""
    import torch

    if name is None:
        return "bfloat16" if use_bf16(device) else "float32"
    dtype = getattr(torch, str(name), None)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise UserError(f"{option} {name}: not a model dtype (use float32, bfloat16 or float16)")
    return str(name)
