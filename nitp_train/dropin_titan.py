"""NITP for torchtitan (checked against torchtitan main at commit b5bcd76, Aug 2026).

torchtitan's loss extension point is ``torchtitan.components.loss.BaseLoss``: a ``Configurable``
whose ``__call__(pred, labels, global_valid_tokens, **kwargs)`` returns ``(scaled_loss, metrics)``,
where ``pred`` are the logits [B, T, V], ``labels`` are already shifted (labels[t] = token t+1) and
the loss is a *sum* divided by ``global_valid_tokens``; the trainer passes ``positions`` for packed
documents. The logits alone carry no hidden states, so :class:`NITPTerm` hooks the model (final
norm and block k, same forward pass) and the projector is registered on the model as
``nitp_head`` (so FSDP shards it and the optimizer sees it); :func:`drop_nitp_head` is the
state-dict filter that keeps it out of the exported model.

``NITPTerm`` imports nothing from torchtitan (tested here on CPU); :func:`nitp_loss_class`
builds the ``BaseLoss`` subclass when torchtitan is installed.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from nitp_train.loss import make_head, nitp_loss

HEAD_PREFIX = "nitp_head."


class NITPTerm:
    """The NITP sum of one micro-batch, read from hooks on ``last`` (final norm) and ``target`` (block k).

    ``attach(model, last_module, target_module)`` registers the hooks and the projector
    (``model.nitp_head``, SwiGLU d -> 4d -> d); ``__call__(labels, positions)`` returns
    ``(sum over valid pairs of 1 - cos(P(h_t), sg[z_{t+1}]), number of pairs)``. A pair is valid when
    labels[t] != -100 (t+1 is a supervised token), t+1 < T and, with ``positions``, t and t+1 are in
    the same document.
    """

    def __init__(self, dim: int, projector: str = "swiglu", loss: str = "cosine", stop_grad: bool = True):
        self.dim, self.projector, self.kind, self.stop_grad = dim, projector, loss, stop_grad
        self.captured: dict[str, torch.Tensor] = {}
        self.head: nn.Module | None = None

    def attach(self, model: nn.Module, last_module: nn.Module, target_module: nn.Module) -> nn.Module:
        def store(name):
            def hook(_module, _args, output):
                self.captured[name] = output[0] if isinstance(output, (tuple, list)) else output

            return hook

        last_module.register_forward_hook(store("last"))
        target_module.register_forward_hook(store("target"))
        ref = next(model.parameters())
        self.head = make_head(self.projector, self.dim, self.dim).to(device=ref.device, dtype=ref.dtype)
        model.nitp_head = self.head
        return model

    def __call__(self, labels: torch.Tensor, positions: torch.Tensor | None = None):
        from nitp_train.dropin import document_ids

        h, z = self.captured.pop("last"), self.captured.pop("target")
        T = labels.shape[1]
        valid = labels[:, : T - 1] != -100
        if positions is not None:
            doc = document_ids(positions).to(valid.device)
            valid = valid & (doc[:, :-1] == doc[:, 1:])
        pred, tgt = h[:, :-1][valid], z[:, 1:][valid]
        n = valid.sum()
        mean = nitp_loss(pred[None], tgt[None], self.head, None, 0, self.kind, self.stop_grad)
        return mean * n, n


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
            nitp = (
                nitp_sum / global_valid_tokens
                if global_valid_tokens is not None
                else nitp_sum / pairs.clamp(min=1)
            )
            metrics = {
                **metrics,
                "loss_ntp": ce.detach(),
                "loss_nitp": (nitp_sum / pairs.clamp(min=1)).detach(),
            }
            return ce + self.weight * nitp, metrics

    return NITPLoss
