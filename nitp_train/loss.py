"""The NITP objective: next-token CE + lambda * (1 - cos(P(h_t), sg[z_{t+1}])).

h_t is the last hidden state at position t (the vector fed to the LM head); z_{t+1} is the
output of block k at position t+1 of the same forward pass (k = 0: the token embeddings),
captured with a forward hook; P is a projector used only in training (SwiGLU d -> 4d -> d).
"""

from __future__ import annotations

from typing import Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import BaseModel
from torch.utils.checkpoint import checkpoint

from nitp.errors import UserError

from .choices import COS_REG_KINDS as COS_REG_KINDS  # re-exported: nitp_train.loss.COS_REG_KINDS
from .choices import LOSS_IMPLS as LOSS_IMPLS
from .choices import parse_loss_impl as parse_loss_impl
from .choices import resolve_loss_impl
from .nitp_module import PROJECTORS as PROJECTORS  # re-exported: nitp_train.loss.PROJECTORS
from .nitp_module import LayerCapture, NITPModule, NITPSettings
from .nitp_module import SwiGLUHead as SwiGLUHead
from .nitp_module import make_head as make_head
from .objective import LOSS_KINDS as LOSS_KINDS  # re-exported: nitp_train.loss.LOSS_KINDS
from .objective import nitp_pairs, nitp_sum


def nitp_loss(
    last_hidden: torch.Tensor,
    target_hidden: torch.Tensor,
    head: nn.Module | None = None,
    attention_mask: torch.Tensor | None = None,
    shift: int = 1,
    kind: str = "cosine",
    stop_grad: bool = True,
    document_ids: torch.Tensor | None = None,
) -> torch.Tensor:
    r"""Mean loss between projected last hidden states and shifted target hidden states.

    .. math::
        L = \frac{1}{|V|} \sum_{(b,t) \in V} \ell\big(P(h_{b,t}),\ \mathrm{sg}(z_{b,t+s})\big),
        \qquad \ell_\text{cosine}(p, z) = 1 - \frac{p \cdot z}{\lVert p\rVert \lVert z\rVert}

    where V is :func:`nitp_train.objective.nitp_pairs`'s rule: t predicts a real next token,
    t and t+s are real tokens of the same document (so padding and the last max(s, 1) positions
    of each row are excluded). ``= sum / count`` of :func:`nitp_train.objective.nitp_sum`.

    Parameters
    ----------
    last_hidden : Tensor [B, T, d]
        Last hidden states h (after the final norm).
    target_hidden : Tensor [B, T, d]
        Hidden states z of the target layer, same forward pass.
    head : Module or None
        Projector P applied to h; ``None`` = identity.
    attention_mask : Tensor [B, T] or None
        1 for real tokens, 0 for padding; ``None`` = all valid.
    shift : int
        s = 1 predicts the next token's state (NITP); 0 is the same-position ablation.
    kind : {"cosine", "mse", "smooth_l1", "kl"}
        ``mse`` / ``smooth_l1``: mean over features; ``kl``: KL(softmax(z) || softmax(P(h)))
        over the feature axis.
    stop_grad : bool
        Detach z (the paper's setting); ``False`` is the co-adaptation ablation.
    document_ids : Tensor [B, T] or None
        Per-token document index of packed rows; no pair crosses a change. ``None`` = one document.

    Returns
    -------
    Tensor, scalar (0 with a graph when no position is valid).

    Examples
    --------
    >>> h = torch.tensor([[[1., 0.], [0., 1.]]]); z = torch.tensor([[[9., 9.], [0., 2.]]])
    >>> float(nitp_loss(h, z))   # cos(h_0, z_1) = 0  -> 1 - 0
    1.0
    """
    pairs = nitp_pairs(
        last_hidden.shape[:2],
        shift,
        attention_mask=attention_mask,
        document_ids=document_ids,
        device=last_hidden.device,
    )
    total, count = nitp_sum(last_hidden, target_hidden, pairs, head, shift, kind, stop_grad)
    return total / count.clamp(min=1)


def _chunk_ce_sum(hidden: torch.Tensor, lm_head: nn.Module, labels: torch.Tensor) -> torch.Tensor:
    """Summed CE of one chunk; its float32 logits live only inside this call (recomputed in backward)."""
    logits = lm_head(hidden).float()
    return F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100, reduction="sum"
    )


def chunked_next_token_ce(
    hidden: torch.Tensor, lm_head: nn.Module, labels: torch.Tensor, chunk: int
) -> torch.Tensor:
    r"""Mean next-token cross-entropy without materialising the ``[B, T, V]`` logits.

    .. math::
        L = \frac{1}{N} \sum_{c} \sum_{(b,t) \in c,\ y_{b,t} \ne -100}
            -\log \mathrm{softmax}(W h_{b,t})_{y_{b,t}}

    The positions are cut into chunks of ``chunk`` along T; each chunk's logits are computed,
    reduced to a summed loss and freed, under ``torch.utils.checkpoint`` so the backward pass
    recomputes one chunk at a time instead of keeping all of them. Peak extra memory is about
    ``B * chunk * V`` float32 values instead of ``B * T * V`` (plus the same for the gradient).
    Equal to ``F.cross_entropy(lm_head(hidden).float(), labels)`` within float32 rounding.

    Parameters
    ----------
    hidden : Tensor [B, T, d]
        Final-norm output at the predicting positions (already shifted: ``h[:, :-1]``).
    lm_head : Module
        The model's output embedding (``model.get_output_embeddings()``), d -> V.
    labels : Tensor [B, T] (int64)
        Next-token ids; -100 marks positions left out of the mean.
    chunk : int
        Positions per chunk along T (> 0).

    Returns
    -------
    Tensor, scalar float32: the mean over positions with a label.

    Examples
    --------
    >>> head = nn.Linear(4, 10, bias=False); h = torch.randn(2, 6, 4); y = torch.randint(0, 10, (2, 6))
    >>> plain = F.cross_entropy(head(h).reshape(-1, 10), y.reshape(-1))
    >>> bool(torch.allclose(chunked_next_token_ce(h, head, y, chunk=4), plain, atol=1e-6))
    True
    """
    total = hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, hidden.shape[1], chunk):
        part = slice(start, start + chunk)
        total = total + checkpoint(
            _chunk_ce_sum, hidden[:, part], lm_head, labels[:, part], use_reentrant=False
        )
    return total / (labels != -100).sum().clamp(min=1)


class _LinearCrossEntropyGIF(torch.autograd.Function):
    """Chunked linear + cross-entropy whose gradients are computed in the forward pass."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, labels, chunk, need_grads):
        count = (labels != -100).sum().clamp(min=1)
        total = hidden.new_zeros((), dtype=torch.float32)
        grad_h = torch.zeros_like(hidden) if need_grads else None
        grad_w = torch.zeros_like(weight, dtype=torch.float32) if need_grads else None
        grad_b = None if bias is None or not need_grads else torch.zeros_like(bias, dtype=torch.float32)
        for start in range(0, hidden.shape[1], chunk):
            part = slice(start, start + chunk)
            h = hidden[:, part].reshape(-1, hidden.shape[-1])
            ce_sum, grad_logits = _chunk_ce_and_logit_grad(
                h, weight, bias, labels[:, part].reshape(-1), count
            )
            total = total + ce_sum
            if need_grads:
                g = grad_logits.to(h.dtype)
                grad_h[:, part] = (g @ weight.to(h.dtype)).view_as(grad_h[:, part])
                grad_w += (g.t() @ h).float()
                if grad_b is not None:
                    grad_b += grad_logits.sum(0)
        ctx.save_for_backward(grad_h, grad_w, grad_b)
        ctx.dtypes = (weight.dtype, None if bias is None else bias.dtype)
        return total / count

    @staticmethod
    def backward(ctx, grad_output):
        grad_h, grad_w, grad_b = ctx.saved_tensors
        if grad_h is None:
            raise RuntimeError("chunked_gif loss: backward of a forward run without gradients")
        w_dtype, b_dtype = ctx.dtypes
        grad_h = grad_h * grad_output.to(grad_h.dtype)
        grad_w = (grad_w * grad_output).to(w_dtype)
        grad_b = None if grad_b is None else (grad_b * grad_output).to(b_dtype)
        return grad_h, grad_w, grad_b, None, None, None


def _chunk_ce_and_logit_grad(h, weight, bias, labels, count):
    r"""Summed CE of one chunk and its gradient w.r.t. the logits, ``(softmax - onehot) / count``.

    ``h`` [n, d], ``labels`` [n] (-100 = no label: zero gradient row); the float32 logits [n, V]
    are overwritten in place by the gradient, so one [n, V] buffer is alive at a time.
    """
    logits = F.linear(h, weight, bias).float()
    valid = labels != -100
    safe = labels.clamp(min=0)
    lse = torch.logsumexp(logits, dim=-1)
    picked = logits.gather(1, safe[:, None]).squeeze(1)
    ce_sum = ((lse - picked) * valid).sum()
    grad = logits.sub_(lse[:, None]).exp_()
    grad.scatter_add_(1, safe[:, None], -valid[:, None].to(grad.dtype))
    grad.mul_((valid.to(grad.dtype) / count)[:, None])
    return ce_sum, grad


def chunked_gif_next_token_ce(
    hidden: torch.Tensor, lm_head: nn.Module, labels: torch.Tensor, chunk: int
) -> torch.Tensor:
    r"""Mean next-token CE in chunks, gradients computed in the forward pass (no recompute).

    .. math::
        L = \frac{1}{N} \sum_{(b,t):\ y_{b,t} \ne -100} -\log \mathrm{softmax}(W h_{b,t} + b)_{y_{b,t}},
        \qquad \frac{\partial L}{\partial \ell_{b,t}} = \frac{\mathrm{softmax}(\ell_{b,t}) - e_{y_{b,t}}}{N}

    For each chunk of ``chunk`` positions along T the float32 logits [B, chunk, V] are computed
    once, reduced to the CE sum and turned in place into the gradient above, from which
    :math:`\partial L / \partial h = g W` and :math:`\partial L / \partial W \mathrel{+}= g^\top h`
    are accumulated; then the chunk is freed. Backward only scales the stored gradients
    [B, T, d] and [V, d] (float32) by the incoming gradient, so the LM head matmul runs 3 times
    per token (2 V d FLOPs each) instead of 4 for :func:`chunked_next_token_ce` (checkpointed:
    forward, recomputed forward, two backward matmuls). As in torchtitan's / Liger's fused linear
    cross-entropy. Tied embeddings work: the gradient reaches the shared weight through autograd.
    Equal to ``F.cross_entropy(lm_head(hidden).float(), labels)`` and its gradients within
    float32 rounding (``tests/test_train_loss_chunked.py``). Parameters and return value as
    :func:`chunked_next_token_ce`; ``lm_head`` is ``nn.Linear``-like: ``weight`` [V, d] (and
    ``bias`` [V] or ``None``).

    Examples
    --------
    >>> head = nn.Linear(4, 10, bias=False); h = torch.randn(2, 6, 4); y = torch.randint(0, 10, (2, 6))
    >>> plain = F.cross_entropy(head(h).reshape(-1, 10), y.reshape(-1))
    >>> bool(torch.allclose(chunked_gif_next_token_ce(h, head, y, chunk=4), plain, atol=1e-6))
    True
    """
    bias = getattr(lm_head, "bias", None)
    tensors = [hidden, lm_head.weight] + ([bias] if bias is not None else [])
    need_grads = torch.is_grad_enabled() and any(t.requires_grad for t in tensors)
    return _LinearCrossEntropyGIF.apply(hidden, lm_head.weight, bias, labels, chunk, need_grads)


def liger_next_token_ce(hidden: torch.Tensor, lm_head: nn.Module, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token CE by Liger Kernel's fused linear cross-entropy (``pip install liger-kernel``).

    Same formula and shapes as :func:`chunked_gif_next_token_ce` (``hidden`` [B, T, d], ``labels``
    [B, T]), computed by ``liger_kernel``'s Triton kernel (CUDA only).
    """
    liger_loss = require_liger()
    flat = hidden.reshape(-1, hidden.shape[-1])
    bias = getattr(lm_head, "bias", None)
    return liger_loss(ignore_index=-100)(lm_head.weight, flat, labels.reshape(-1), bias)


def require_liger():
    """Liger Kernel's ``LigerFusedLinearCrossEntropyLoss`` class, or a one-line ``UserError``."""
    try:
        from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss
    except ImportError:
        raise UserError(
            "train.loss_impl=liger needs the liger-kernel package: pip install liger-kernel, or use loss_impl chunked_gif"
        ) from None
    return LigerFusedLinearCrossEntropyLoss


def mean_pairwise_cosine(h: torch.Tensor) -> torch.Tensor:
    r"""Mean cosine over all pairs i != j of the rows of ``h`` [N, d], in O(N d).

    With unit vectors u_i: :math:`\sum_{i \ne j} u_i \cdot u_j = \lVert \sum_i u_i \rVert^2 - N`,
    so the mean is :math:`(\lVert \sum u \rVert^2 - N) / (N (N - 1))`. Differentiable: on the
    batch's final hidden states it is the NITP paper's generic baseline (``cos_reg.kind: hidden``,
    a cosine penalty between different tokens' hidden states).
    """
    n = h.shape[0]
    if n < 2:
        return h.sum() * 0.0
    return _off_diagonal_cos_sum(h) / (n * (n - 1))


def _off_diagonal_cos_sum(x: torch.Tensor) -> torch.Tensor:
    """Sum of cos(x_i, x_j) over the ordered pairs i != j of the rows of ``x``, in O(N d)."""
    u = F.normalize(x.float(), dim=-1, eps=1e-8)
    s = u.sum(0)
    return s.dot(s) - (u * u).sum()


def embedding_cosine_regulariser(weight: torch.Tensor) -> torch.Tensor:
    r"""Gao et al. (2019)'s cosine regulariser of the output word-embedding matrix ``W`` [V, d].

    .. math::
        R = \frac{1}{V^2} \sum_{i} \sum_{j \ne i} \hat w_i \cdot \hat w_j
          = \frac{\lVert \sum_i \hat w_i \rVert^2 - \sum_i \lVert \hat w_i \rVert^2}{V^2},
        \qquad \hat w_i = w_i / \lVert w_i \rVert

    (their normalisation, ``1/V^2``, not ``1/(V(V-1))``), in O(V d) time and O(d) extra memory
    through the sum identity instead of the V x V Gram matrix. Zero rows count as zero vectors.

    Parameters
    ----------
    weight : Tensor [V, d]
        Rows w_i of the LM head (the output word embeddings; the input ones too when tied).

    Returns
    -------
    Tensor, scalar, differentiable with respect to ``weight``.

    Examples
    --------
    >>> float(embedding_cosine_regulariser(torch.tensor([[1.0, 0.0], [2.0, 0.0]])))  # cos = 1, 2 ordered pairs / 4
    0.5
    """
    v = weight.shape[0]
    return _off_diagonal_cos_sum(weight) / (v * v)


class NITPObjective(nn.Module):
    """Causal LM + projector; ``forward(input_ids)`` returns every loss term in one forward pass.

    The :class:`nitp_train.nitp_module.NITPModule` (``.nitp_module``; ``None`` for NTP) holds the
    settings, the projector (``.head``) and the hooks that capture h and z while the model
    computes its logits. Wrap this module (not the bare LM) in DDP/FSDP so the projector's
    gradients are synchronised.
    """

    def __init__(
        self,
        model: nn.Module,
        objective: str,
        nitp_cfg: Mapping | BaseModel,
        cos_reg_weight: float = 0.0,
        cos_reg_kind: str = "hidden",
        loss_chunk: int = 0,
        cross_documents: bool = False,
        loss_impl: str = "auto",
    ):
        super().__init__()
        self.model, self.objective = model, objective
        self.cos_reg_weight = float(cos_reg_weight)
        if cos_reg_kind not in COS_REG_KINDS:
            raise ValueError(f"cos_reg.kind must be one of {COS_REG_KINDS}, got {cos_reg_kind!r}")
        self.cos_reg_kind = cos_reg_kind
        # plain: the model's logits; else a chunked CE over the captured h, no [B, T, V] logits
        self.loss_impl, self.loss_chunk = resolve_loss_impl(loss_impl, int(loss_chunk))
        self.nitp_module = self.head = None
        # h = layer -1 (final-norm output; the CE and cos_reg read it too), z = layer k, one pass
        if objective != "nitp":
            self._capture = LayerCapture(model, {"last": -1})
            return
        # the ``nitp:`` section: a validated ``config_model.Nitp`` or a mapping of its keys
        cfg = nitp_cfg.model_dump(by_alias=True) if isinstance(nitp_cfg, BaseModel) else dict(nitp_cfg)
        self.nitp_module = NITPModule(
            NITPSettings.from_config(cfg, cross_documents), model.config.hidden_size
        )
        self.head = self.nitp_module.head
        self._capture = self.nitp_module.attach(model)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        nitp_weight: float = 1.0,
        keep_last_hidden: bool = False,
        document_ids: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Every loss term of one micro-batch ``input_ids`` [B, T] (one forward pass).

        ``document_ids`` [B, T] (optional) marks the documents packed in each row: it enters the
        NITP pair rule only (no pair crosses a document boundary), not the model's attention or
        positions. ``loss_nitp`` is the mean over the micro-batch's pairs.
        """
        self._capture.take()  # drop what a recomputation (activation checkpointing) stored
        labels = input_ids[:, 1:]
        if attention_mask is not None:
            labels = labels.masked_fill(attention_mask[:, 1:] == 0, -100)
        # not plain: the LM head runs on the last position only (keeps MoE aux loss etc. in one call)
        keep = {"logits_to_keep": 1} if self.loss_impl != "plain" else {}
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, **keep)
        captured = self._capture.take()
        h = captured["last"]
        losses = {"loss_ntp": self._next_token_ce(out, h, labels)}
        total = losses["loss_ntp"]
        if getattr(out, "aux_loss", None) is not None:
            losses["aux_loss"] = out.aux_loss
            total = total + self.model.config.router_aux_loss_coef * out.aux_loss
        if self.objective == "nitp":
            z = captured["target"]
            pair_sum, pairs = self.nitp_module.term(
                h, z, attention_mask=attention_mask, document_ids=document_ids
            )
            losses["loss_nitp"] = pair_sum / pairs.clamp(min=1)  # mean over the micro-batch's pairs
            total = total + nitp_weight * losses["loss_nitp"]
        if self.cos_reg_weight > 0:
            flat = h[attention_mask.bool()] if attention_mask is not None else h.reshape(-1, h.shape[-1])
            losses["loss_cos_reg"] = (
                mean_pairwise_cosine(flat)
                if self.cos_reg_kind == "hidden"
                else embedding_cosine_regulariser(self.model.get_output_embeddings().weight)
            )
            total = total + self.cos_reg_weight * losses["loss_cos_reg"]
        losses["loss_total"] = total
        if keep_last_hidden:
            losses["last_hidden"] = h.detach()
        return losses

    def _next_token_ce(self, out, h: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mean next-token CE of ``labels`` [B, T-1] by ``self.loss_impl`` (``h`` [B, T, d])."""
        head = self.model.get_output_embeddings()
        if self.loss_impl == "chunked":
            return chunked_next_token_ce(h[:, :-1], head, labels, self.loss_chunk)
        if self.loss_impl == "chunked_gif":
            return chunked_gif_next_token_ce(h[:, :-1], head, labels, self.loss_chunk)
        if self.loss_impl == "liger":
            return liger_next_token_ce(h[:, :-1], head, labels)
        logits = out.logits[:, :-1].float()
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100)
