"""NITP for torchtitan (checked against torchtitan main at commit b5bcd76, Aug 2026).

torchtitan's loss extension point is ``torchtitan.components.loss.BaseLoss``: a ``Configurable``
whose ``__call__(pred, labels, global_valid_tokens, **kwargs)`` returns ``(scaled_loss, metrics)``,
where ``pred`` are the logits [B, T, V], ``labels`` are already shifted (labels[t] = token t+1) and
the loss is a *sum* divided by ``global_valid_tokens``; the trainer passes ``positions`` for packed
documents. The logits alone carry no hidden states, so :class:`NITPTerm` hooks the model with
``nitp.layers.register_layer_hook`` (h = layer -1, the final norm; z = layer k, same forward pass)
and the projector is registered on the model as ``nitp_head`` (so FSDP shards it and the optimizer
sees it); :func:`drop_nitp_head` is the state-dict filter that keeps it out of the exported model.
Settings, projector, hooks, pairs and sum are ``nitp_train.nitp_module.NITPModule``'s (the one
``nitp-train`` and ``wrap_model`` use); only the normalisation, ``sum / global_valid_tokens``,
and the label layout are torchtitan's.

``NITPTerm`` imports nothing from torchtitan (tested here on CPU); :func:`nitp_loss_class`
builds the ``BaseLoss`` subclass when torchtitan is installed.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from nitp_train.nitp_module import NITPModule, NITPSettings
from nitp_train.objective import IGNORE_INDEX

HEAD_PREFIX = "nitp_head."


class NITPTerm:
    """The NITP ``(sum, count)`` of one micro-batch, from hooks on the model's layers -1 and k.

    ``__call__(labels, positions)`` reads torchtitan's shifted ``labels`` (``labels[t]`` = token
    t+1, -100 = ignored); pairs follow ``nitp_train.objective.nitp_pairs`` (any shift; with
    ``positions`` or ``document_ids``, not across documents).
    """

    def __init__(
        self,
        dim: int,
        projector: str = "swiglu",
        loss: str = "cosine",
        stop_grad: bool = True,
        shift: int = 1,
        cross_documents: bool = False,
    ):
        self.dim = dim
        self.options = dict(
            shift=shift, loss=loss, projector=projector, stop_grad=stop_grad, cross_documents=cross_documents
        )
        self.module: NITPModule | None = None  # built by attach, which knows the target layer

    @property
    def head(self) -> nn.Module | None:
        """The projector (``model.nitp_head`` once attached; ``None`` before, or with ``projector='none'``)."""
        return self.module.head if self.module is not None else None

    @property
    def captured(self) -> dict[str, torch.Tensor]:
        """h (``last``) and z (``target``) of the latest forward pass, until the term reads them."""
        return self.module.capture.tensors if self.module is not None else {}

    def attach(self, model: nn.Module, target_layer: int) -> nn.Module:
        """Hook ``model``'s final norm (h) and layer ``target_layer`` (z, ``nitp.layers`` numbering)
        and register the projector as ``model.nitp_head``; returns ``model``.

        ``model`` is any model ``nitp.layers`` reads: an HF causal LM, or torchtitan's own
        ``Transformer`` (blocks in the ``nn.ModuleDict`` ``layers``, depth ``model_args.n_layers``).
        """
        settings = NITPSettings(target_layer, **self.options)
        self.module = NITPModule(settings, self.dim, like=next(model.parameters()))
        self.module.attach(model)  # checks target_layer against the model
        model.nitp_head = self.module.head
        return model

    def __call__(
        self,
        labels: torch.Tensor,
        positions: torch.Tensor | None = None,
        document_ids: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        captured = self.module.capture.take()
        return self.module.term(
            captured["last"],
            captured["target"],
            labels=unshifted_labels(labels),
            position_ids=positions,
            document_ids=document_ids,
        )


def unshifted_labels(shifted: torch.Tensor) -> torch.Tensor:
    """torchtitan's shifted labels (``[t]`` = token t+1) in the HF layout ``nitp_pairs`` reads
    (``[t]`` = token t; the first column, which no pair reads as a next-token label, is -100).

    >>> unshifted_labels(torch.tensor([[7, 8, -100]])).tolist()
    [[-100, 7, 8]]
    """
    first = torch.full_like(shifted[:, :1], IGNORE_INDEX)
    return torch.cat([first, shifted[:, :-1]], 1)


def drop_nitp_head(state_dict: dict) -> dict:
    """State-dict filter for export: the model's keys without the projector's (``nitp_head.*``)."""
    return {k: v for k, v in state_dict.items() if not k.startswith(HEAD_PREFIX)}


def nitp_loss_class():
    """``NITPLoss(BaseLoss)`` for torchtitan: CE (torchtitan's own) + weight * NITP, both sums over
    ``global_valid_tokens``; metrics ``loss_ntp`` / ``loss_nitp``. Needs torchtitan installed.

    Use: ``loss = NITPLoss(NITPLoss.Config(), term=NITPTerm(dim).attach(...)...)``; see docs/dropin.md.
    """
    from dataclasses import dataclass

    from torchtitan.components.loss import BaseLoss, CrossEntropyLoss

    class NITPLoss(BaseLoss):
        @dataclass(kw_only=True, slots=True)
        class Config(CrossEntropyLoss.Config):
            weight: float = 1.0

        def __init__(self, config: Config, *, term: NITPTerm, compile_config=None):
            self.ce = CrossEntropyLoss(config, compile_config=compile_config)
            self.term, self.weight = term, config.weight

        def __call__(self, pred, labels, global_valid_tokens=None, **kwargs):
            ce, metrics = self.ce(pred, labels, global_valid_tokens)
            nitp_sum, pairs = self.term(labels, kwargs.get("positions"))
            mean = nitp_sum / pairs.clamp(min=1)
            nitp = nitp_sum / global_valid_tokens if global_valid_tokens is not None else mean
            metrics = {**metrics, "loss_ntp": ce.detach(), "loss_nitp": mean.detach()}
            return ce + self.weight * nitp, metrics

    return NITPLoss
