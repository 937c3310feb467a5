"""The NITP objective: next-token CE + lambda * (1 - cos(P(h_t), sg[z_{t+1}])).

h_t is the last hidden state at position t (the vector fed to the LM head); z_{t+1} is the
output of block k at position t+1 of the same forward pass (k = 0: the token embeddings),
captured with a forward hook; P is a projector used only in training (SwiGLU d -> 4d -> d).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from nitp.layers import register_layer_hook

LOSS_KINDS = ("cosine", "mse", "smooth_l1", "kl")
PROJECTORS = ("swiglu", "linear", "none")
# cos_reg.kind: "hidden" = the NITP paper's baseline (final hidden states of the batch);
# "embedding" = Gao et al. (2019)'s regulariser of the output word-embedding matrix rows
COS_REG_KINDS = ("hidden", "embedding")


def nitp_loss(
    last_hidden: torch.Tensor,
    target_hidden: torch.Tensor,
    head: nn.Module | None = None,
    attention_mask: torch.Tensor | None = None,
    shift: int = 1,
    kind: str = "cosine",
    stop_grad: bool = True,
) -> torch.Tensor:
    r"""Mean loss between projected last hidden states and shifted target hidden states.

    .. math::
        L = \frac{1}{|V|} \sum_{(b,t) \in V} \ell\big(P(h_{b,t}),\ \mathrm{sg}(z_{b,t+s})\big),
        \qquad \ell_\text{cosine}(p, z) = 1 - \frac{p \cdot z}{\lVert p\rVert \lVert z\rVert}

    where V holds the positions t whose own and shifted positions t+s are both valid (so
    padding and the last s positions of each sequence are excluded).

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

    Returns
    -------
    Tensor, scalar (0 with a graph when no position is valid).

    Examples
    --------
    >>> h = torch.tensor([[[1., 0.], [0., 1.]]]); z = torch.tensor([[[9., 9.], [0., 2.]]])
    >>> float(nitp_loss(h, z))   # cos(h_0, z_1) = 0  -> 1 - 0
    1.0
    """
    if kind not in LOSS_KINDS:
        raise ValueError(f"kind must be one of {LOSS_KINDS}, got {kind!r}")
    T = last_hidden.shape[1]
    pred, tgt = last_hidden[:, : T - shift], target_hidden[:, shift:]
    if stop_grad:
        tgt = tgt.detach()
    if attention_mask is not None:
        valid = attention_mask[:, : T - shift].bool() & attention_mask[:, shift:].bool()
        pred, tgt = pred[valid], tgt[valid]  # [N, d]
    else:
        pred, tgt = pred.reshape(-1, pred.shape[-1]), tgt.reshape(-1, tgt.shape[-1])
    if pred.shape[0] == 0:
        return last_hidden.sum() * 0.0
    if head is not None:
        pred = head(pred)
    pred, tgt = pred.float(), tgt.float()
    if kind == "cosine":
        per_pos = 1.0 - F.cosine_similarity(pred, tgt, dim=-1, eps=1e-8)
    elif kind == "mse":
        per_pos = (pred - tgt).pow(2).mean(-1)
    elif kind == "smooth_l1":
        per_pos = F.smooth_l1_loss(pred, tgt, reduction="none").mean(-1)
    else:  # kl
        per_pos = F.kl_div(
            F.log_softmax(pred, -1), F.log_softmax(tgt, -1), log_target=True, reduction="none"
        ).sum(-1)
    return per_pos.mean()


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
    u = F.normalize(h.float(), dim=-1, eps=1e-8)
    s = u.sum(0)
    return (s.dot(s) - (u * u).sum()) / (n * (n - 1))


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
    u = F.normalize(weight.float(), dim=-1, eps=1e-8)
    s = u.sum(0)
    return (s.dot(s) - (u * u).sum()) / (v * v)


def cos_regulariser(kind: str, last_hidden: torch.Tensor, output_embeddings: torch.Tensor) -> torch.Tensor:
    """The baseline regulariser chosen by ``cos_reg.kind`` (see ``COS_REG_KINDS``).

    ``hidden``: :func:`mean_pairwise_cosine` of the valid final hidden states [N, d];
    ``embedding``: :func:`embedding_cosine_regulariser` of the LM head's weight [V, d].
    """
    if kind == "hidden":
        return mean_pairwise_cosine(last_hidden)
    if kind == "embedding":
        return embedding_cosine_regulariser(output_embeddings)
    raise ValueError(f"cos_reg.kind must be one of {COS_REG_KINDS}, got {kind!r}")


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
    if kind == "swiglu":
        return SwiGLUHead(d_in, d_out)
    if kind == "linear":
        return nn.Linear(d_in, d_out, bias=False)
    if kind == "none":
        return None
    raise ValueError(f"projector must be one of {PROJECTORS}, got {kind!r}")


class NITPObjective(nn.Module):
    """Causal LM + projector; ``forward(input_ids)`` returns every loss term in one forward pass.

    Two forward hooks capture the final-norm output (h) and the target layer's output (z) while
    the model computes its logits; nothing else is kept. Wrapping this module (not the bare LM)
    in DDP/FSDP keeps the projector's gradients synchronised.
    """

    def __init__(
        self,
        model: nn.Module,
        objective: str,
        nitp_cfg: dict,
        cos_reg_weight: float = 0.0,
        cos_reg_kind: str = "hidden",
        loss_chunk: int = 0,
    ):
        super().__init__()
        self.model = model
        self.objective = objective
        self.cfg = dict(nitp_cfg)
        self.cos_reg_weight = float(cos_reg_weight)
        if cos_reg_kind not in COS_REG_KINDS:
            raise ValueError(f"cos_reg.kind must be one of {COS_REG_KINDS}, got {cos_reg_kind!r}")
        self.cos_reg_kind = cos_reg_kind
        self.loss_chunk = int(loss_chunk)  # > 0: chunked CE over the captured h, no [B, T, V] logits
        d = model.config.hidden_size
        self.head = make_head(self.cfg["projector"], d, d) if objective == "nitp" else None
        self._captured: dict[str, torch.Tensor] = {}
        # h = layer -1 (final-norm output), z = layer k (nitp.layers numbering), same forward pass
        register_layer_hook(model, -1, self._capture("last"))
        if objective == "nitp":
            register_layer_hook(model, self.cfg["target_layer"], self._capture("target"))

    def _capture(self, name):
        def store(tensor):
            self._captured[name] = tensor

        return store

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        nitp_weight: float = 1.0,
        keep_last_hidden: bool = False,
    ) -> dict[str, torch.Tensor]:
        self._captured.clear()
        labels = input_ids[:, 1:]
        if attention_mask is not None:
            labels = labels.masked_fill(attention_mask[:, 1:] == 0, -100)
        # chunked: the LM head runs on the last position only (keeps MoE aux loss etc. in one call)
        keep = {"logits_to_keep": 1} if self.loss_chunk > 0 else {}
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, **keep)
        h = self._captured.pop("last")
        if self.loss_chunk > 0:
            loss_ntp = chunked_next_token_ce(
                h[:, :-1], self.model.get_output_embeddings(), labels, self.loss_chunk
            )
        else:
            logits = out.logits[:, :-1].float()
            loss_ntp = F.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100
            )
        losses = {"loss_ntp": loss_ntp}
        total = losses["loss_ntp"]
        if getattr(out, "aux_loss", None) is not None:
            losses["aux_loss"] = out.aux_loss
            total = total + self.model.config.router_aux_loss_coef * out.aux_loss
        if self.objective == "nitp":
            z = self._captured.pop("target")
            losses["loss_nitp"] = nitp_loss(
                h, z, self.head, attention_mask, self.cfg["shift"], self.cfg["loss"], self.cfg["stop_grad"]
            )
            total = total + nitp_weight * losses["loss_nitp"]
        if self.cos_reg_weight > 0:
            flat = h[attention_mask.bool()] if attention_mask is not None else h.reshape(-1, h.shape[-1])
            head_w = self.model.get_output_embeddings().weight
            losses["loss_cos_reg"] = cos_regulariser(self.cos_reg_kind, flat, head_w)
            total = total + self.cos_reg_weight * losses["loss_cos_reg"]
        losses["loss_total"] = total
        if keep_last_hidden:
            losses["last_hidden"] = h.detach()
        self._captured.clear()
        return losses
