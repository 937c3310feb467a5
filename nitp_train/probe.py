"""Diagnostics on one fixed held-out batch: geometry and the gradient probe (``log.geom_batch``,
``log.probe_every``).

The held-out batch is the first validation windows of the prepared data (no run seed, no step
in its choice), so ``erank`` / ``mean_cos`` curves compare across steps, seeds and objectives of
runs on the same data. Nothing here changes training: no RNG is drawn, no ``.grad`` is written
(``torch.autograd.grad``), the model is put back in training mode.

The gradient probe separates what CE and NITP ask of the backbone. With :math:`g_{CE}` and
:math:`g_N` the gradients of :math:`L_{NTP}` and of :math:`\\lambda L_{NITP}` with respect to the
parameters of one group (the embeddings, block k, the final norm), it logs per group
``probe_grad_ce_G``, ``probe_grad_nitp_G`` (L2 norms), ``probe_ratio_G`` = |g_N| / |g_CE| and
``probe_cos_G`` = cos(g_CE, g_N), the same over the whole backbone (no suffix), and
``nitp_grad_share`` = |g_N(h)| / (|g_CE(h)| + |g_N(h)|) at the last hidden state h, the share the
Hugging Face drop-in logs (:func:`grad_share`, one definition for both).
"""

from __future__ import annotations

import math

import numpy as np
import torch

# the held-out sample: at most this many token vectors from at least this many sequences
HELDOUT_TOKENS = 8192
HELDOUT_MIN_SEQUENCES = 8
HELDOUT_SEED = 0  # positions sampled from long windows: fixed, the same in every run


def grad_share(norm_ntp: float, norm_nitp: float) -> float:
    """NITP's share of the gradient at h: ``|g_NITP| / (|g_NTP| + |g_NITP|)`` (0 when both are 0).

    >>> grad_share(3.0, 1.0)
    0.25
    """
    total = norm_ntp + norm_nitp
    return norm_nitp / total if total > 0 else 0.0


def heldout_batch(shards, seq_len: int) -> tuple[np.ndarray, np.ndarray]:
    """``(tokens, document ids)``, both int64 [n, seq_len]: n validation windows spread evenly over
    the validation split (so they come from many held-out documents), the same in every run.

    n = max(HELDOUT_MIN_SEQUENCES, ceil(HELDOUT_TOKENS / seq_len)) windows, fewer when the
    validation split is shorter (at least 2 are needed for a cross-sequence cosine).
    """
    from nitp.errors import UserError

    available = len(shards.val) // seq_len
    n = min(available, max(HELDOUT_MIN_SEQUENCES, math.ceil(HELDOUT_TOKENS / seq_len)))
    if n < 2:
        raise UserError(
            f"log.geom_batch=val needs at least 2 validation windows of {seq_len} tokens, the data in "
            f"{shards.dir} has {available}: raise data.val_fraction or set log.geom_batch=train"
        )
    first = np.linspace(0, available - 1, n).round().astype(np.int64) * seq_len  # spread over the split
    where = first[:, None] + np.arange(seq_len)[None, :]
    tokens = np.asarray(shards.val[where.reshape(-1)], dtype=np.int64).reshape(n, seq_len)
    starts = shards.doc_starts("val").astype(np.int64)
    docs = np.searchsorted(starts, where, side="right")
    return tokens, docs


def batch_id(batch: tuple[np.ndarray, np.ndarray]) -> str:
    """``val-<12 hex>``: a hash of the held-out tokens, logged as ``geom_batch`` with each
    measurement so a report can check two runs' curves were measured on the same tokens."""
    import hashlib

    return "val-" + hashlib.sha256(np.ascontiguousarray(batch[0]).tobytes()).hexdigest()[:12]


def _sample_rows(h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows [N, d] and their sequence ids from ``h`` [n, T, d]: every position when n x T fits
    HELDOUT_TOKENS, else the same random positions per sequence in every run."""
    n, t, d = h.shape
    k = max(1, min(t, HELDOUT_TOKENS // n))
    if k < t:
        gen = torch.Generator().manual_seed(HELDOUT_SEED)
        pos = torch.rand(n, t, generator=gen).argsort(dim=1)[:, :k].to(h.device)
        h = torch.gather(h, 1, pos[:, :, None].expand(-1, -1, d))
    return h.reshape(n * k, d).float().cpu(), torch.arange(n).repeat_interleave(k)


@torch.no_grad()
def heldout_geometry(
    forward, objective, batch: tuple[np.ndarray, np.ndarray], device, amp, micro: int
) -> dict:
    """``erank``, ``mean_cos`` (``nitp.geometry.logged_geometry``: every registry row the trainer
    logs) and ``proj_erank`` for NITP (the projector output P(h)) of the last hidden states of the
    held-out ``batch``, run through ``forward`` in chunks of ``micro`` rows.

    ``forward`` is the (possibly DDP / FSDP wrapped) objective: every rank calls this (a collective
    under FSDP) on the same batch; ``objective`` is the bare :class:`NITPObjective`.
    """
    from nitp.geometry import effective_rank, logged_geometry

    tokens = torch.from_numpy(batch[0])
    was_training = forward.training
    forward.eval()
    try:
        with amp:
            parts = [
                forward(chunk.to(device), nitp_weight=0.0, keep_last_hidden=True)["last_hidden"]
                for chunk in tokens.split(max(1, micro))
            ]
    finally:
        forward.train(was_training)
    x, groups = _sample_rows(torch.cat(parts))
    out = {
        **logged_geometry(x, groups.numpy()),
        "geom_tokens": int(x.shape[0]),
        "geom_sequences": int(tokens.shape[0]),
        "geom_batch": batch_id(batch),
    }
    head = getattr(objective, "head", None)
    if head is not None:
        p = head(x.to(device=next(head.parameters()).device, dtype=next(head.parameters()).dtype))
        out["proj_erank"] = float(effective_rank(p.float().cpu()))
    return out


def parameter_groups(model) -> dict[str, list[torch.nn.Parameter]]:
    """Backbone parameters by group: ``embed`` (input embeddings), ``block1`` ... ``blockL``
    (layer numbering of ``nitp.layers``), ``norm`` (the final norm). The LM head is left out: with
    tied embeddings it is ``embed``, untied it gets no NITP gradient."""
    from nitp.layers import final_norm, transformer_blocks

    groups = {"embed": list(model.get_input_embeddings().parameters())}
    for k, block in enumerate(transformer_blocks(model), start=1):
        groups[f"block{k}"] = list(block.parameters())
    norm = final_norm(model)
    if norm is not None:
        groups["norm"] = list(norm.parameters())
    return groups


def gradient_probe(objective, batch: tuple[np.ndarray, np.ndarray], device, nitp_weight: float) -> dict:
    """CE and ``nitp_weight`` x NITP gradients of the bare ``objective`` on the held-out ``batch``
    (two ``autograd.grad`` calls on one forward pass; ``.grad`` untouched). See the module docstring
    for the logged names. NTP runs log the CE norms only."""
    from nitp.layers import capture

    model = objective.model
    groups = parameter_groups(model)
    params = [p for ps in groups.values() for p in ps]
    x = torch.from_numpy(batch[0]).to(device)
    docs = torch.from_numpy(batch[1]).to(device)
    with capture(model, [-1]) as states:
        out = objective(x, nitp_weight=nitp_weight, document_ids=docs)
        h = states[-1]
    has_nitp = "loss_nitp" in out and nitp_weight > 0
    g_ce = torch.autograd.grad(out["loss_ntp"], params + [h], retain_graph=has_nitp, allow_unused=True)
    row = _group_norms("ce", g_ce[:-1], groups)
    if not has_nitp:
        return row
    g_n = torch.autograd.grad(nitp_weight * out["loss_nitp"], params + [h], allow_unused=True)
    row.update(_group_norms("nitp", g_n[:-1], groups))
    for name, (a, b) in _by_group(g_ce[:-1], g_n[:-1], groups).items():
        suffix = "" if name == "all" else f"_{name}"
        na, nb = float(a.norm()), float(b.norm())
        row[f"probe_ratio{suffix}"] = nb / na if na > 0 else math.inf
        row[f"probe_cos{suffix}"] = (
            float(torch.nn.functional.cosine_similarity(a, b, dim=0)) if na * nb > 0 else 0.0
        )
    row["nitp_grad_share"] = grad_share(_norm(g_ce[-1]), _norm(g_n[-1]))
    return row


def _norm(g) -> float:
    return float(g.float().norm()) if g is not None else 0.0


def _flat(grads, params) -> torch.Tensor:
    return torch.cat(
        [(g if g is not None else torch.zeros_like(p)).reshape(-1).float() for g, p in zip(grads, params)]
    )


def _split(grads, groups: dict) -> dict[str, list]:
    """``grads`` (one per parameter, in the order of ``groups``' lists) by group name."""
    it = iter(grads)
    return {name: [next(it) for _ in ps] for name, ps in groups.items()}


def _by_group(grads_a, grads_b, groups: dict) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Flattened gradient pairs per group and over ``all`` groups."""
    a, b = _split(grads_a, groups), _split(grads_b, groups)
    out = {name: (_flat(a[name], ps), _flat(b[name], ps)) for name, ps in groups.items()}
    out["all"] = (torch.cat([a for a, _ in out.values()]), torch.cat([b for _, b in out.values()]))
    return out


def _group_norms(kind: str, grads, groups: dict) -> dict[str, float]:
    sq = {name: sum(_norm(g) ** 2 for g in gs) for name, gs in _split(grads, groups).items()}
    row = {f"probe_grad_{kind}_{name}": math.sqrt(v) for name, v in sq.items()}
    row[f"probe_grad_{kind}"] = math.sqrt(sum(sq.values()))
    return row
