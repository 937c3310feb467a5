"""NITP as a drop-in for any training loop: ``wrap_model(model)`` around a Hugging Face causal LM.

The wrapper's ``forward`` has the causal LM's signature and returns its usual output with

    loss = L_NTP + weight * L_NITP,   L_NITP = mean over valid pairs of 1 - cos(P(h_t), sg[z_{t+s}])

plus ``loss_ntp`` and ``loss_nitp`` (per-pair mean). The term is the one ``nitp-train`` trains
(``nitp_train.nitp_module.NITPModule``: settings, projector, hooks; the pair rule and sum of
``nitp_train.objective``; layers numbered as in ``nitp.layers``), and ``save_pretrained`` writes the checkpoint layout ``nitp-train`` writes: the plain model (same keys
as unwrapped) plus the projector in ``nitp_head.safetensors``. Hooks into HF ``Trainer`` / TRL are in
``nitp_train.dropin.hf``; torchtitan pieces in ``nitp_train.dropin.titan``.

Example
-------
>>> from transformers import AutoModelForCausalLM                      # doctest: +SKIP
>>> lm = AutoModelForCausalLM.from_pretrained("HuggingFaceTB/SmolLM2-135M")  # doctest: +SKIP
>>> model = wrap_model(lm)                                             # doctest: +SKIP
>>> out = model(input_ids=ids, attention_mask=mask, labels=labels)     # doctest: +SKIP
>>> out.loss.backward(); out.loss_ntp, out.loss_nitp                   # doctest: +SKIP
>>> model.save_pretrained("exported")                                  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn as nn

from nitp.errors import UserError
from nitp.io import atomic_write_bytes, atomic_write_json
from nitp.layers import default_target_layer, num_layers
from nitp_train.config_model import check_shift
from nitp_train.nitp_module import PROJECTORS, NITPModule, NITPSettings
from nitp_train.objective import IGNORE_INDEX, LOSS_KINDS, documents_from_positions
from nitp_train.parallel import inner_module
from nitp_train.probe import grad_share

HEAD_FILE = "nitp_head.safetensors"
META_FILE = "nitp_meta.json"


def wrap_model(
    model: nn.Module,
    target_layer: int | None = None,
    weight: float = 1.0,
    *,
    settings: NITPSettings | None = None,
    head_from: str | os.PathLike | None = None,
    **overrides,
) -> NITPWrapped:
    """Add the NITP objective to a Hugging Face causal LM without changing how it is trained.

    Parameters
    ----------
    model : transformers causal LM (``...ForCausalLM``)
        Trained as is; its weights are shared, not copied.
    target_layer : int or None
        k of z = output of block k (0 = embeddings; ``nitp.layers`` numbering). ``None`` =
        ``settings.target_layer`` when ``settings`` is given, else
        ``nitp.layers.default_target_layer(L)``, the paper's depth rule (5 for L = 24, 6 for 28).
    weight : float
        lambda in L = L_NTP + lambda L_NITP (paper: 1.0; 0.8 / 0.6 at the largest sizes).
    settings : NITPSettings or None
        The NITP term whole (``nitp_train.nitp_module.NITPSettings``, as ``nitp-train`` builds it);
        ``None``: its defaults. The keywords below override its fields.
    head_from : path or None
        A folder (checkpoint, run directory or exported model) holding ``nitp_head.safetensors``:
        resume the projector from it.
    **overrides
        Fields of :class:`NITPSettings` (an unknown name is a ``TypeError``): ``shift`` (1 =
        NITP, 0 = same position: the only two, as in the config), ``loss`` / ``projector`` /
        ``stop_grad`` (the paper's ``cosine`` / ``swiglu`` / True), ``cross_documents`` (False: no
        pair crosses a document boundary of packed rows; True: the every-position variant).

    Returns
    -------
    NITPWrapped
        An ``nn.Module`` (``.model`` = the LM, ``.head`` = the projector) that reads every other
        attribute (``config``, ``generation_config``, ...) from the LM.
    """
    _check_wrappable(model)
    if target_layer is None and settings is not None:
        target_layer = settings.target_layer
    # checked against the model (a one-line UserError) when NITPWrapped attaches the NITP module
    k = default_target_layer(num_layers(model)) if target_layer is None else target_layer
    settings = dataclasses.replace(settings or NITPSettings(k), target_layer=k, **overrides)
    for name, allowed in (("loss", LOSS_KINDS), ("projector", PROJECTORS)):
        if getattr(settings, name) not in allowed:
            raise UserError(f"{name} {getattr(settings, name)!r}: unknown; use one of {', '.join(allowed)}")
    settings = dataclasses.replace(
        settings,
        shift=check_shift(settings.shift, "shift"),  # the config's rule: 1 (NITP) or 0 (same position)
        stop_grad=bool(settings.stop_grad),
        cross_documents=bool(settings.cross_documents),
    )
    if not math.isfinite(float(weight)) or float(weight) < 0:
        raise UserError(f"weight {weight!r}: must be a finite number >= 0; use 1.0 (the paper's lambda)")
    wrapped = NITPWrapped(model, settings, float(weight))
    if head_from is not None:
        wrapped.load_head(head_from)
    return wrapped


def _check_wrappable(model) -> None:
    """One-line UserError unless ``model`` is a bare Hugging Face causal LM.

    Causal = it has an LM head (``get_output_embeddings()``), can generate (``can_generate()``:
    False for encoders such as BERT's masked LM) and is not an encoder-decoder.
    """
    name = type(model).__name__
    if unwrap(model) is not None:
        raise UserError(f"{name}: already wrapped by wrap_model; pass it as is (or its .model to rewrap)")
    if not hasattr(model, "config"):
        raise UserError(f"{name}: not a Hugging Face model (no .config); wrap a ...ForCausalLM")
    causal = (
        callable(getattr(model, "get_output_embeddings", None))
        and model.get_output_embeddings() is not None
        and callable(getattr(model, "can_generate", None))
        and model.can_generate()
        and not getattr(model.config, "is_encoder_decoder", False)
    )
    if not causal:
        raise UserError(
            f"{name}: not a causal LM (no LM head, or an encoder / encoder-decoder); "
            "wrap a ...ForCausalLM (AutoModelForCausalLM)"
        )


class NITPWrapped(nn.Module):
    """A causal LM plus the NITP projector; see :func:`wrap_model`.

    State-dict keys are ``model.<LM key>`` and ``head.<projector key>``, the layout of
    ``nitp_train.loss.NITPObjective`` (so ``nitp_train.checkpoint`` splits them alike).
    """

    # HF Trainer: pass num_items_in_batch to forward and trust the loss to be normalised by it
    accepts_loss_kwargs = True

    def __init__(self, model, settings: NITPSettings, weight: float = 1.0):
        super().__init__()
        self.model = model
        d = model.config.get_text_config().hidden_size
        self.nitp_module = NITPModule(settings, d, like=model.get_input_embeddings().weight)
        self.head = self.nitp_module.head
        # gated: nothing kept during gradient-checkpoint recomputation or plain inference
        self._capture = self.nitp_module.attach(model, gated=True)
        self.nitp = dict(asdict(self.nitp_module.settings), weight=weight)
        self.stats = NITPStats()
        self.geometry_wanted = False  # set by a callback for the next forward: keep h for erank
        self.geometry_sample: tuple[torch.Tensor, torch.Tensor] | None = None

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name in ("model", "head") or name.startswith("__"):
                raise
            return getattr(super().__getattr__("model"), name)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        num_items_in_batch: torch.Tensor | int | None = None,
        document_ids: torch.Tensor | None = None,
        **kwargs,
    ):
        r"""The LM's forward; with ``labels`` the loss becomes L_NTP + weight * L_NITP.

        Without ``labels`` this is exactly the wrapped model's forward (no NITP work).

        Gradient accumulation: with ``num_items_in_batch`` (the number of supervised next-token
        targets in the whole accumulated batch, as HF ``Trainer`` counts them) the CE is the
        model's own ``sum / num_items_in_batch`` and the NITP term is its per-pair *sum* divided
        by the same count, so summing micro-batches gives the mean over the full batch. NITP pairs
        follow ``nitp_train.objective.nitp_pairs``: the CE's supervised positions t
        (labels[t+1] != -100), minus pairs that touch padding or ignored labels or cross a document
        boundary (``document_ids`` [B, T] when given, which enters the pair rule only, else a
        ``position_ids`` restart).

        Returns
        -------
        The LM's output (``CausalLMOutputWithPast``) with ``loss`` replaced by the total and
        ``loss_ntp`` (the LM's CE) and ``loss_nitp`` (per-pair mean, [] tensor) added.
        """
        kwargs.update(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids)
        if labels is None:
            return self.model(**kwargs)
        if num_items_in_batch is not None:
            kwargs["num_items_in_batch"] = num_items_in_batch
        kwargs.setdefault("use_cache", False)
        with self._capture.during():
            out = self.model(labels=labels, **kwargs)
        captured = self._capture.take()
        h, z = captured["last"], captured["target"]
        if self.training and torch.is_grad_enabled() and h.requires_grad:
            h = self.stats.probe_gradients(h)
        total, n_pairs = self.nitp_module.term(
            h,
            z,
            labels=labels,
            attention_mask=attention_mask,
            position_ids=position_ids,
            document_ids=document_ids,
        )
        mean = total / n_pairs.clamp(min=1)
        ntp = out.loss
        nitp = total / num_items_in_batch if num_items_in_batch is not None else mean
        out.loss = ntp + self.nitp["weight"] * nitp
        if kwargs.get("fused_lm_head"):
            _fold_into_log_probs(out, self.nitp["weight"] * total)
        out["loss_ntp"], out["loss_nitp"] = ntp, mean
        if self.training:
            n_ce = (labels[..., 1:] != IGNORE_INDEX).sum()
            ntp_mean = ntp * num_items_in_batch / n_ce.clamp(min=1) if num_items_in_batch is not None else ntp
            self.stats.add(ntp_mean, n_ce, mean, n_pairs)
            if self.geometry_wanted:
                self.geometry_sample = _token_states(h, attention_mask, position_ids, document_ids)
                self.geometry_wanted = False
        return out

    # ------------------------------------------------------------------ export / resume
    def save_pretrained(
        self, save_directory, state_dict: dict | None = None, is_main_process: bool = True, **kwargs
    ):
        """Write the plain model (``AutoModelForCausalLM.from_pretrained`` loads it; the keys of
        the unwrapped model) and the projector as ``nitp_head.safetensors`` beside it, plus
        ``nitp_meta.json`` (objective and NITP settings) — the layout of a ``nitp-train`` checkpoint.

        ``state_dict`` (optional) is a full state dict of this wrapper (``model.*`` / ``head.*``),
        e.g. gathered from FSDP; other keyword arguments go to the LM's ``save_pretrained``.
        """
        out = Path(save_directory)
        sd = self.state_dict() if state_dict is None else state_dict
        head_sd = {
            k[len("head.") :]: v.detach().cpu().contiguous() for k, v in sd.items() if k.startswith("head.")
        }
        # state_dict None: the LM's own (its save_pretrained handles tied weights)
        lm_sd = None if state_dict is None else {k[6:]: v for k, v in sd.items() if k.startswith("model.")}
        self.model.save_pretrained(out, state_dict=lm_sd, is_main_process=is_main_process, **kwargs)
        if not is_main_process:
            return
        if head_sd:
            from safetensors.torch import save

            # one metadata key: safetensors orders several differently per process (the projector
            # is in nitp_meta.json), and the same weights must give the same bytes
            atomic_write_bytes(out / HEAD_FILE, save(head_sd, metadata={"format": "pt"}))
        atomic_write_json(out / META_FILE, self.meta())

    def meta(self) -> dict:
        """``nitp_meta.json`` fields (those ``nitp-train`` writes; step/tokens are unknown here)."""
        n = self.nitp
        return {
            "step": None,
            "tokens_seen": None,
            "objective": "nitp",
            "preset": None,
            "target_layer": n["target_layer"],
            "lambda": n["weight"],
            **{key: n[key] for key in ("projector", "shift", "loss", "stop_grad")},
            "cos_reg_weight": 0.0,
            "source": "nitp_train.dropin.wrap_model",
        }

    def load_head(self, path) -> None:
        """Load the projector from ``path``'s ``nitp_head.safetensors`` (a folder, a run dir or the file)."""
        from safetensors.torch import load_file

        from nitp.runs import resolve_checkpoint

        p = Path(path)
        file = p if p.suffix == ".safetensors" else resolve_checkpoint(p) / HEAD_FILE
        if not file.is_file():
            raise UserError(f"{path}: no {HEAD_FILE} there; give a folder saved by wrap_model or nitp-train")
        if self.head is None:
            raise UserError(
                f"{path}: has a projector but this wrapper has projector='none'; wrap with its projector"
            )
        try:
            self.head.load_state_dict(load_file(file))
        except RuntimeError as err:
            first = str(err).splitlines()[1].strip() if "\n" in str(err) else str(err)
            raise UserError(
                f"{file}: projector does not fit this model ({first}); use the head saved with this model"
            ) from None

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """Also accepts the plain LM's keys (a folder written by :meth:`save_pretrained`, as HF
        ``Trainer`` reloads on resume): they go to the LM; the projector is then left as is."""
        own = set(super().state_dict().keys())
        if state_dict and not own.intersection(state_dict):
            return self.model.load_state_dict(state_dict, strict=strict, assign=assign)
        return super().load_state_dict(state_dict, strict=strict, assign=assign)


def _fold_into_log_probs(out, nitp_sum: torch.Tensor) -> None:
    """TRL's fused LM head (``fused_lm_head=True``): ``SFTTrainer`` recomputes its loss as
    ``-log_probs.sum() / n`` (n = ``num_items_in_batch`` or the label count), ignoring ``out.loss``;
    spreading ``-nitp_sum / n_labels`` over the supervised log-probs adds exactly
    ``nitp_sum / n`` to that loss, the same total as ``out.loss``."""
    mask = out.label_mask
    out.log_probs = out.log_probs - mask * (nitp_sum / mask.sum().clamp(min=1))


# ---------------------------------------------------------------------- token states
def _token_states(
    h: torch.Tensor, attention_mask, position_ids, document_ids=None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Real tokens' last hidden states [N, d] (detached) and a sequence id per row [N]."""
    B, T = h.shape[:2]
    rows = torch.arange(B, device=h.device)[:, None].expand(B, T)
    docs = document_ids
    if docs is None and position_ids is not None and position_ids.dim() <= 2:
        docs = documents_from_positions(position_ids)
    seq = rows
    if docs is not None:  # one id per (row, document)
        both = torch.stack([rows, docs.to(h.device).reshape(-1, T).expand(B, T)], -1).reshape(-1, 2)
        seq = torch.unique(both, dim=0, return_inverse=True)[1].reshape(B, T)
    if attention_mask is None or attention_mask.dim() != 2:
        return h.detach().reshape(B * T, -1), seq.reshape(-1)
    return h.detach()[attention_mask.bool()], seq[attention_mask.bool()]


# ---------------------------------------------------------------------- logging statistics
class NITPStats:
    """Running sums since the last :meth:`read`: token-weighted CE and NITP means and the norms of
    the two gradients at the last hidden state h.

    The NITP share of the gradient is measured at h because that is where (with stop-gradient)
    all of NITP's gradient enters the backbone: share = |g_NITP| / (|g_NTP| + |g_NITP|), with
    g_NITP the gradient through the projector branch and g_NTP = g_total - g_NITP at h.
    """

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.sums: dict[str, torch.Tensor | float] = {}

    def _add(self, key, value) -> None:
        self.sums[key] = self.sums.get(key, 0.0) + value.detach().float()

    def add(self, ntp_mean, n_ce, nitp_mean, n_pairs) -> None:
        self._add("ntp_sum", ntp_mean * n_ce)
        self._add("n_ce", n_ce)
        self._add("nitp_sum", nitp_mean * n_pairs)
        self._add("n_pairs", n_pairs)

    def probe_gradients(self, h: torch.Tensor) -> torch.Tensor:
        """Return h's NITP branch (a view of h whose hook records g_NITP); hook h for g_total."""
        record: dict[str, torch.Tensor] = {}

        def total(grad):
            g_nitp = record.pop("nitp", torch.zeros_like(grad))
            self._add("grad_nitp", g_nitp.float().norm())
            self._add("grad_ntp", (grad - g_nitp).float().norm())

        h.register_hook(total)
        branch = h.view_as(h)
        branch.register_hook(lambda grad: record.update(nitp=grad))
        return branch

    def read(self) -> dict[str, float]:
        """Means since the last read (then reset): ``loss_ntp``, ``loss_nitp``, ``nitp_grad_share``."""
        s = {k: float(v) for k, v in self.sums.items()}
        self.reset()
        out = {}
        if s.get("n_ce"):
            out["loss_ntp"] = s["ntp_sum"] / s["n_ce"]
        if s.get("n_pairs"):
            out["loss_nitp"] = s["nitp_sum"] / s["n_pairs"]
        if "grad_nitp" in s and s["grad_nitp"] + s["grad_ntp"] > 0:
            out["grad_norm_h_ntp"], out["grad_norm_h_nitp"] = s["grad_ntp"], s["grad_nitp"]
            out["nitp_grad_share"] = grad_share(s["grad_ntp"], s["grad_nitp"])
        return out


def unwrap(model) -> NITPWrapped | None:
    """The :class:`NITPWrapped` inside DDP / accelerate / torch.compile wrappers, or None."""
    inner = inner_module(model) if isinstance(model, nn.Module) else model
    return inner if isinstance(inner, NITPWrapped) else None
