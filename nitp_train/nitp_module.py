"""The NITP module: its settings, its projector P and the hooks that capture h and z.

One :class:`NITPModule` is what each integration builds, adding only its normalisation of the
``(sum, count)`` it returns (listed in :mod:`nitp_train.objective`) and its plumbing; it
checks the target layer against the model when it hooks it. It is not an ``nn.Module``: each
integration registers the projector ``.head`` under its own key (``head.*`` in the trainer's and
the wrapper's state dict, ``nitp_head.*`` on a torchtitan model), the keys that checkpoints,
optimizer states and exported folders already hold.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from nitp.layers import check_layer, num_layers, register_layer_hook

from .choices import PROJECTORS as PROJECTORS  # re-exported: nitp_train.nitp_module.PROJECTORS
from .objective import nitp_pairs, nitp_sum


class SwiGLUHead(nn.Module):
    """The paper's projector: down(silu(gate(x)) * up(x)), d -> 4d -> d, 12 d^2 parameters."""

    def __init__(self, d_in: int, d_out: int, expansion: int = 4):
        super().__init__()
        self.gate = nn.Linear(d_in, expansion * d_in, bias=False)
        self.up = nn.Linear(d_in, expansion * d_in, bias=False)
        self.down = nn.Linear(expansion * d_in, d_out, bias=False)

    def forward(self, x):
        return self.down(F.silu(self.gate(x)) * self.up(x))


def make_head(kind: str, d_in: int, d_out: int) -> nn.Module | None:
    """The projector named by ``nitp.projector`` (one of ``PROJECTORS``); ``None`` = identity."""
    if kind == "swiglu":
        return SwiGLUHead(d_in, d_out)
    if kind == "linear":
        return nn.Linear(d_in, d_out, bias=False)
    if kind == "none":
        return None
    raise ValueError(f"projector must be one of {PROJECTORS}, got {kind!r}")


@dataclass(frozen=True)
class NITPSettings:
    """What defines the NITP term: z = layer ``target_layer`` (``nitp.layers`` numbering) at
    t + ``shift``, the ``loss`` kind, the ``projector``, stop-gradient on z, and whether pairs may
    cross document boundaries. Validated by the caller (config model, ``wrap_model``, ``attach``).
    """

    target_layer: int
    shift: int = 1
    loss: str = "cosine"
    projector: str = "swiglu"
    stop_grad: bool = True
    cross_documents: bool = False

    @classmethod
    def from_config(cls, nitp: dict, cross_documents: bool = False) -> NITPSettings:
        """From the ``nitp:`` section of a training config: every field of the same name
        (``cross_documents`` is no config key)."""
        named = {f.name: nitp[f.name] for f in dataclasses.fields(cls) if f.name != "cross_documents"}
        return cls(**named, cross_documents=bool(cross_documents))


class LayerCapture:
    """Hidden states ``[B, T, d]`` of named layers, stored by forward hooks and kept until taken.

    ``gated=True`` stores only inside :meth:`during`, so inference through the model and the
    recomputation of gradient checkpointing keep nothing.
    """

    def __init__(self, model: nn.Module, layers: dict[str, int], gated: bool = False):
        self.tensors: dict[str, torch.Tensor] = {}
        self.gated, self._open = gated, False
        self.handles = [
            register_layer_hook(model, k, functools.partial(self._store, name)) for name, k in layers.items()
        ]

    def _store(self, name: str, tensor: torch.Tensor) -> None:
        if self._open or not self.gated:
            self.tensors[name] = tensor

    @contextlib.contextmanager
    def during(self) -> Iterator[None]:
        """Store (what a gated capture otherwise ignores) for the forward pass run inside."""
        self.tensors.clear()
        self._open = True
        try:
            yield
        finally:
            self._open = False

    def take(self) -> dict[str, torch.Tensor]:
        """The stored tensors by name; the capture is empty afterwards."""
        taken, self.tensors = self.tensors, {}
        return taken


class NITPModule:
    """Settings, projector and hooks of the NITP term; :meth:`term` is its ``(sum, count)``.

    Parameters
    ----------
    settings : NITPSettings
    dim : int
        d, the width of h and z (the projector maps d -> d).
    like : Tensor or None
        Put the projector on this tensor's device and dtype (``None``: where it is built).

    Examples
    --------
    >>> nitp = NITPModule(NITPSettings(target_layer=2), dim=32)        # doctest: +SKIP
    >>> capture = nitp.attach(model); model(input_ids)                  # doctest: +SKIP
    >>> got = capture.take(); nitp.term(got["last"], got["target"])     # doctest: +SKIP
    """

    def __init__(self, settings: NITPSettings, dim: int, like: torch.Tensor | None = None):
        self.settings = settings
        head = make_head(settings.projector, dim, dim)
        if head is not None and like is not None:
            head = head.to(device=like.device, dtype=like.dtype)
        self.head = head
        self.capture: LayerCapture | None = None

    def attach(self, model: nn.Module, gated: bool = False) -> LayerCapture:
        """Hook ``model``'s layer -1 (h, stored as ``last``) and the target layer (z, ``target``),
        both read in the same forward pass; see :class:`LayerCapture` for ``gated``. The target
        layer is checked against ``model`` first (``nitp.layers.check_layer``: 0..L, one-line
        ``UserError`` otherwise)."""
        k = check_layer(self.settings.target_layer, num_layers(model), allow_last=False, name="target_layer")
        self.settings = dataclasses.replace(self.settings, target_layer=k)
        layers = {"last": -1, "target": k}
        self.capture = LayerCapture(model, layers, gated=gated)
        return self.capture

    def term(self, last_hidden: torch.Tensor, target_hidden: torch.Tensor, **pair_inputs):
        r"""``(sum, count)`` of the NITP loss over the valid pairs of one batch.

        .. math::
            S = \sum_{(b,t) \in V} \ell\big(P(h_{b,t}),\ \mathrm{sg}(z_{b,t+s})\big)

        ``last_hidden`` h and ``target_hidden`` z are ``[B, T, d]``; ``pair_inputs`` (``labels``,
        ``attention_mask``, ``position_ids``, ``document_ids``, each ``[B, T]``) choose V by
        :func:`nitp_train.objective.nitp_pairs`; the sum is :func:`nitp_train.objective.nitp_sum`.
        Returns ``(Tensor [] float32, Tensor [] int64)``.
        """
        s = self.settings
        pairs = nitp_pairs(
            last_hidden.shape[:2],
            s.shift,
            cross_documents=s.cross_documents,
            device=last_hidden.device,
            **pair_inputs,
        )
        return nitp_sum(last_hidden, target_hidden, pairs, self.head, s.shift, s.loss, s.stop_grad)
