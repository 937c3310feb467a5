"""The one hidden-state layer convention, and the hooks that read a layer in the same forward pass.

Numbering (used by ``nitp.target_layer``, ``nitp-geom --layers`` and ``nitp-eval mteb --layer``)::

    0      token embeddings: the input of the first transformer block (for BERT-style encoders
           that input includes position / type embeddings and their LayerNorm)
    k      the output of transformer block k, 1 <= k <= L
    -1     the last hidden state: the final-norm output, i.e. the vector fed to the LM head;
           for encoders without a final norm, the output of block L

The paper's "layer 4 of 17" is ``k = 4`` here. :func:`hook_point` maps a number to the module to
hook and is the only place that knows where blocks and the final norm live.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Iterator

from .errors import UserError

FINAL_NORM_NAMES = ("norm", "final_layernorm", "final_layer_norm", "ln_f", "norm_f")
# The paper's best NITP targets 4/17, 5/24, 6/28, 3/16 sit at ~21% of the depth.
TARGET_DEPTH = 0.21


def num_layers(model) -> int:
    """Number of transformer blocks L of a model (or of its text part, for multimodal configs).

    Models without a Hugging Face ``config`` (torchtitan's ``Transformer``) are read from their
    ``model_args.n_layers``.
    """
    config = getattr(model, "config", None)
    if config is None and hasattr(model, "model_args"):
        return int(model.model_args.n_layers)
    if hasattr(config, "get_text_config"):
        config = config.get_text_config()
    return int(config.num_hidden_layers)


def default_target_layer(n_layers: int) -> int:
    """The paper's depth rule for the NITP target: round(0.21 L) (4/17, 5/24, 6/28), at least 1.

    >>> default_target_layer(24)
    5
    """
    return max(1, round(TARGET_DEPTH * n_layers))


def check_layer(layer, n_layers: int, *, allow_last: bool = True, name: str = "layer") -> int:
    """Validate a layer number against a model with ``n_layers`` blocks; the one validation.

    ``allow_last=False`` refuses -1 (the NITP target must be a shallow layer, not the output).
    Raises ``UserError`` naming ``name`` and the valid range.
    """
    try:
        k = int(layer)
        if isinstance(layer, float) and layer != k:
            raise ValueError
    except (TypeError, ValueError):
        raise UserError(f"{name} {layer!r}: give an integer layer number (0 = embeddings)") from None
    if (k == -1 and allow_last) or 0 <= k <= n_layers:
        return k
    last = ", or -1 for the last hidden state" if allow_last else ""
    raise UserError(
        f"{name} {k} is out of range for a {n_layers}-layer model (use 0..{n_layers}; 0 = embeddings{last})"
    )


def transformer_blocks(model):
    """The model's L blocks in order (Qwen2/Llama: ``model.layers``; BERT: ``encoder.layer``;
    torchtitan: the ``nn.ModuleDict`` ``layers``): the shallowest ModuleList or ModuleDict of that
    length (a ModuleDict's values in their order, as an ``nn.ModuleList`` view)."""
    import torch

    n = num_layers(model)
    found = [
        (name.count("."), name, m)
        for name, m in model.named_modules()
        if isinstance(m, (torch.nn.ModuleList, torch.nn.ModuleDict)) and len(m) == n
    ]
    if not found:
        raise UserError(
            f"{type(model).__name__}: cannot find its {n} transformer blocks (no ModuleList of that length)"
        )
    blocks = min(found, key=lambda t: (t[0], t[1]))[2]
    return torch.nn.ModuleList(blocks.values()) if isinstance(blocks, torch.nn.ModuleDict) else blocks


def final_norm(model):
    """The final norm (its output feeds the LM head), or None for encoders without one."""
    import torch

    base = model.get_decoder() if hasattr(model, "get_decoder") else model
    for owner in (base, getattr(model, "model", None), model):
        for name in FINAL_NORM_NAMES:
            module = getattr(owner, name, None) if owner is not None else None
            if isinstance(module, torch.nn.Module):
                return module
    return None


def hook_point(model, layer: int) -> tuple[object, str]:
    """``(module, "input" | "output")``: where layer ``layer`` (already validated) is read."""
    if layer == 0:
        return transformer_blocks(model)[0], "input"
    if layer == -1:
        norm = final_norm(model)
        return (norm, "output") if norm is not None else (transformer_blocks(model)[-1], "output")
    return transformer_blocks(model)[layer - 1], "output"


def layer_name(model, layer: int) -> str:
    if layer == 0:
        return "embeddings"
    if layer == -1:
        n = num_layers(model)
        return "last (final norm)" if final_norm(model) is not None else f"last (= block {n}; no final norm)"
    return f"block {layer}"


def register_layer_hook(model, layer: int, fn):
    """Call ``fn(tensor)`` with layer ``layer``'s ``[B, T, d]`` hidden states at every forward
    pass (no extra pass, nothing kept). Returns the hook handle (``.remove()`` it when done)."""
    module, where = hook_point(model, layer)
    if where == "input":

        def pre_hook(_module, args, kwargs):
            fn(args[0] if args else kwargs["hidden_states"])

        return module.register_forward_pre_hook(pre_hook, with_kwargs=True)

    def post_hook(_module, _args, output):
        fn(output[0] if isinstance(output, (tuple, list)) else output)

    return module.register_forward_hook(post_hook)


@contextlib.contextmanager
def capture(model, layers, *, detach: bool = False, stop_after: int | None = None) -> Iterator[dict]:
    """Forward hooks that store layers ``layers`` of each forward pass in the yielded dict.

    ``states[k]`` is the ``[B, T, d]`` tensor of layer k of the latest forward pass; nothing else
    is kept (no ``output_hidden_states``). ``detach=True`` stores ``tensor.detach()``
    (stop-gradient targets). ``stop_after=k`` raises :class:`StopForward` once layer k is stored,
    so later blocks are skipped (use :func:`run_until`).
    """
    states: dict[int, object] = {}

    def store(k, tensor):
        states[k] = tensor.detach() if detach else tensor
        if k == stop_after:
            raise StopForward

    handles = []
    try:
        for k in dict.fromkeys(layers):
            handles.append(register_layer_hook(model, k, functools.partial(store, k)))
        yield states
    finally:
        for h in handles:
            h.remove()


class StopForward(Exception):
    """Raised by a :func:`capture` hook once the last wanted layer is stored: later blocks are skipped."""


def run_until(model, layer: int, forward=None, **inputs):
    """Hidden states ``[B, T, d]`` of ``layer`` from one forward pass that stops right after it.

    The pass is ``forward()`` when given (e.g. a wrapper's own forward over ``model``), else
    ``model(**inputs)``; blocks after ``layer`` never run.
    """
    with capture(model, [layer], stop_after=layer) as states, contextlib.suppress(StopForward):
        forward() if forward is not None else model(**inputs)
    return states[layer]
