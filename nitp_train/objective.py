"""The NITP term, defined once: which (t, t+s) pairs count, and the loss summed over them.

Every integration calls these two functions through one :class:`nitp_train.nitp_module.NITPModule`
(settings, projector, hooks) and adds only its own normalisation:

- ``nitp-train`` (:class:`nitp_train.loss.NITPObjective`): ``sum / count`` of the micro-batch;
- ``wrap_model`` (:class:`nitp_train.dropin.NITPWrapped`): ``sum / num_items_in_batch`` (HF ``Trainer``);
- torchtitan (:class:`nitp_train.dropin.titan.NITPTerm`): ``sum / global_valid_tokens``;
- :func:`nitp_train.loss.nitp_loss`: ``sum / count`` (the public one-call version).

The pair rule (:func:`nitp_pairs`). Position t of a row pairs h_t (last hidden state) with
z_{t+s} (target layer) when

1. t predicts a real token: t + 1 < T and its next-token label exists (``labels[t+1] != -100``;
   without labels: ``attention_mask[t+1] == 1``);
2. t and t + s are real tokens (``attention_mask``) and, for s >= 1, the target token t + s is not
   an ignored label (``labels[t+s] != -100``);
3. t and t + s lie in the same document (``document_ids``, or a ``position_ids`` restart), unless
   ``cross_documents=True`` (the every-position variant).

The NITP paper packs documents and says nothing about boundaries; "predict the next token's
representation" implies the next token of the same document, which is the default here.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .choices import LOSS_KINDS as LOSS_KINDS  # re-exported: nitp_train.objective.LOSS_KINDS

IGNORE_INDEX = -100


def documents_from_positions(position_ids: torch.Tensor) -> torch.Tensor:
    """Document index of each token of packed rows: a new document starts where ``position_ids``
    does not continue (p_t != p_{t-1} + 1, e.g. a restart at 0).

    >>> documents_from_positions(torch.tensor([[0, 1, 2, 0, 1, 0]])).tolist()
    [[1, 1, 1, 2, 2, 3]]
    """
    pos = position_ids if position_ids.dim() == 2 else position_ids.reshape(1, -1)
    restart = torch.ones_like(pos, dtype=torch.bool)
    restart[:, 1:] = pos[:, 1:] != pos[:, :-1] + 1
    return restart.long().cumsum(1)


def nitp_pairs(
    shape: tuple[int, int],
    shift: int = 1,
    *,
    labels: torch.Tensor | None = None,
    attention_mask: torch.Tensor | None = None,
    position_ids: torch.Tensor | None = None,
    document_ids: torch.Tensor | None = None,
    cross_documents: bool = False,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    r"""The valid NITP pairs (h_t, z_{t+s}): a bool mask ``[B, M]`` over t, M = T - max(s, 1).

    .. math::
        V = \{(b, t) : t + \max(s, 1) < T,\ y_{b,t+1} \ne -100,\ m_{b,t} = m_{b,t+s} = 1,\
              (s = 0 \lor y_{b,t+s} \ne -100),\ d_{b,t} = d_{b,t+s}\}

    with y the labels (HF layout: ``labels[t]`` is token t's own id, -100 = not a target), m the
    attention mask and d the document ids (dropped with ``cross_documents=True``). Any subset of
    the inputs may be given; a missing one constrains nothing.

    Parameters
    ----------
    shape : (B, T)
        Batch size and sequence length.
    shift : int
        s >= 0; 1 is NITP, 0 the same-position ablation (t still needs a next-token label).
    labels : Tensor [B, T] (int) or None
        HF-style labels (unshifted). torchtitan's shifted labels: ``labels_hf[:, 1:] = shifted[:, :-1]``.
    attention_mask : Tensor [B, T] or None
        1 = real token, 0 = padding (4-D attention masks are ignored).
    position_ids : Tensor [B, T] / [T] or None
        Packed rows restart their positions at each document (:func:`documents_from_positions`); used only
        when ``document_ids`` is not given.
    document_ids : Tensor [B, T] or None
        Any per-token document label; pairs need equal labels at t and t + s.
    cross_documents : bool
        True: ignore document boundaries (pairs may cross them).
    device : device or None
        Where the mask lives when no input tensor tells.

    Returns
    -------
    Tensor [B, M] (bool)

    Examples
    --------
    >>> nitp_pairs((1, 4), labels=torch.tensor([[5, 6, 7, 8]]), position_ids=torch.tensor([[0, 1, 0, 1]])).tolist()
    [[True, False, True]]
    """
    if not isinstance(shift, int) or shift < 0:
        raise ValueError(f"shift must be an integer >= 0, got {shift!r}")
    B, T = shape
    m = max(T - max(shift, 1), 0)
    given = [x for x in (labels, attention_mask, document_ids, position_ids) if x is not None]
    dev = given[0].device if given else device
    valid = torch.ones(B, m, dtype=torch.bool, device=dev)
    if labels is not None:
        valid = valid & (labels[..., 1 : 1 + m] != IGNORE_INDEX)  # t predicts a real token
        if shift >= 1:
            valid = valid & (labels[..., shift : shift + m] != IGNORE_INDEX)
    if attention_mask is not None and attention_mask.dim() == 2:
        real = attention_mask.to(dev).bool()
        valid = valid & real[:, :m] & real[:, shift : shift + m]
        if labels is None:
            valid = valid & real[:, 1 : 1 + m]
    if not cross_documents:
        doc = document_ids
        if doc is None and position_ids is not None and position_ids.dim() <= 2:
            doc = documents_from_positions(position_ids)
        if doc is not None:
            doc = doc.to(dev).reshape(-1, T)
            valid = valid & (doc[:, :m] == doc[:, shift : shift + m])
    return valid


def nitp_sum(
    last_hidden: torch.Tensor,
    target_hidden: torch.Tensor,
    pairs: torch.Tensor,
    head: nn.Module | None = None,
    shift: int = 1,
    kind: str = "cosine",
    stop_grad: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""``(sum, count)`` of the NITP loss over the pairs chosen by :func:`nitp_pairs`.

    .. math::
        S = \sum_{(b,t) \in V} \ell\big(P(h_{b,t}),\ \mathrm{sg}(z_{b,t+s})\big), \qquad
        \ell_\text{cosine}(p, z) = 1 - \frac{p \cdot z}{\lVert p\rVert \lVert z\rVert}

    ``mse`` / ``smooth_l1``: mean over features; ``kl``: KL(softmax(z) || softmax(P(h))) over
    the feature axis. Computed in float32; ``S`` keeps a graph (0 when no pair is valid).

    Parameters
    ----------
    last_hidden : Tensor [B, T, d]
        h, the final-norm output.
    target_hidden : Tensor [B, T, d]
        z, the target layer's output in the same forward pass.
    pairs : Tensor [B, M] (bool)
        From :func:`nitp_pairs` with the same ``shift``.
    head : Module or None
        Projector P (``None`` = identity).
    shift : int
        s, as given to :func:`nitp_pairs`.
    kind : {"cosine", "mse", "smooth_l1", "kl"}
    stop_grad : bool
        Detach z (the paper's setting).

    Returns
    -------
    (Tensor [] float32, Tensor [] int64)

    Examples
    --------
    >>> h = torch.tensor([[[1., 0.], [0., 1.]]]); z = torch.tensor([[[9., 9.], [0., 2.]]])
    >>> s, n = nitp_sum(h, z, nitp_pairs((1, 2)))
    >>> float(s), int(n)   # 1 - cos(h_0, z_1) = 1
    (1.0, 1)
    """
    if kind not in LOSS_KINDS:
        raise ValueError(f"kind must be one of {LOSS_KINDS}, got {kind!r}")
    m = pairs.shape[1]
    pairs = pairs.to(last_hidden.device)
    pred, tgt = last_hidden[:, :m][pairs], target_hidden[:, shift : shift + m][pairs]  # [N, d]
    if stop_grad:
        tgt = tgt.detach()
    if head is not None:
        pred = head(pred)
    return _per_pair_loss(pred.float(), tgt.float(), kind).sum(), pairs.sum()


def _per_pair_loss(pred: torch.Tensor, tgt: torch.Tensor, kind: str) -> torch.Tensor:
    """[N] loss of each (prediction, target) row pair."""
    if kind == "cosine":
        return 1.0 - F.cosine_similarity(pred, tgt, dim=-1, eps=1e-8)
    if kind == "mse":
        return (pred - tgt).pow(2).mean(-1)
    if kind == "smooth_l1":
        return F.smooth_l1_loss(pred, tgt, reduction="none").mean(-1)
    log_p, log_q = F.log_softmax(pred, -1), F.log_softmax(tgt, -1)
    return F.kl_div(log_p, log_q, log_target=True, reduction="none").sum(-1)
