"""Hugging Face ``Trainer`` / TRL ``SFTTrainer`` support for a :func:`nitp_train.dropin.wrap_model` model.

``add_nitp_callback(trainer)`` is the one line to add: it puts :class:`NITPCallback` first among
the trainer's callbacks (so TensorBoard / W&B / the printer see its numbers) which then

* logs ``loss_ntp``, ``loss_nitp``, ``nitp_grad_share`` (and the two gradient norms at h) with
  every training log line, means over the steps since the previous one;
* every ``geometry_every`` optimizer steps, logs ``erank`` (covariance effective rank) and
  ``anisotropy`` (exact mean cosine over token pairs from different sequences) of the last
  hidden states of one micro-batch (``nitp.geometry``);
* on ``resume_from_checkpoint``, reloads the projector (the Trainer itself reloads only the LM).

It also routes the trainer's saving (``checkpoint-N`` folders and ``trainer.save_model``) through
``NITPWrapped.save_pretrained`` (plain model + ``nitp_head.safetensors``): a ``Trainer`` saves a
model that is not a ``PreTrainedModel`` as one raw state dict, which neither loads with
``from_pretrained`` nor survives tied embeddings.

The Trainer's own tracker integrations (``report_to=["tensorboard", "trackio", "wandb", "mlflow"]``)
get these numbers; ``nitp_train.trackers.tracker_name`` gives the names nitp-train uses
(``train/loss_nitp``, ``geometry/erank``, ...) for side-by-side curves.

This module imports transformers at import time; ``nitp_train.dropin`` imports it on first use of
``add_nitp_callback``.
"""

from __future__ import annotations

import os
import types

from transformers import TrainerCallback

from nitp_train.dropin.core import HEAD_FILE, unwrap


def add_nitp_callback(trainer, geometry_every: int = 50) -> NITPCallback:
    """Insert an :class:`NITPCallback` at the front of ``trainer``'s callbacks and return it."""
    callback = NITPCallback(geometry_every)
    trainer.callback_handler.callbacks.insert(0, callback)
    trainer._save = types.MethodType(save_wrapped, trainer)  # the Trainer's documented override point
    _move_fused_head(_wrapped(trainer.model))
    return callback


def _move_fused_head(wrapped) -> None:
    """TRL ``SFTTrainer`` replaces ``model.forward`` (here: the wrapper's, which would skip NITP)
    with its fused-LM-head forward; put that patch on the inner LM instead, so the wrapper's
    forward runs and passes ``fused_lm_head=True`` through."""
    if "forward" not in vars(wrapped):
        return
    from trl.trainer.utils import add_fused_lm_head

    del wrapped.forward
    add_fused_lm_head(wrapped.model, outputs=("log_probs", "entropy", "is_top1"))


def save_wrapped(trainer, output_dir: str | None = None, state_dict: dict | None = None) -> None:
    """``Trainer._save`` for a wrapped model: the export layout, plus what the Trainer saves beside it
    (tokenizer / processor and ``training_args.bin``)."""
    import torch
    from transformers.trainer import TRAINING_ARGS_NAME

    output_dir = output_dir if output_dir is not None else trainer.args.output_dir
    if not trainer.args.should_save:
        return
    os.makedirs(output_dir, exist_ok=True)
    _wrapped(trainer.model).save_pretrained(output_dir, state_dict=state_dict)
    if trainer.processing_class is not None:
        trainer.processing_class.save_pretrained(output_dir)
    elif getattr(trainer.data_collator, "tokenizer", None) is not None:
        trainer.data_collator.tokenizer.save_pretrained(output_dir)
    torch.save(trainer.args, os.path.join(output_dir, TRAINING_ARGS_NAME))


class NITPCallback(TrainerCallback):
    """See the module docstring. ``geometry_every=0`` turns the geometry off."""

    def __init__(self, geometry_every: int = 50):
        self.geometry_every = int(geometry_every)
        self.pending: dict[str, float] = {}

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        wrapped = _wrapped(model)
        wrapped.stats.reset()
        head = os.path.join(args.output_dir, f"checkpoint-{state.global_step}", HEAD_FILE)
        if state.global_step > 0 and os.path.isfile(head):  # resumed: the Trainer reloaded the LM only
            wrapped.load_head(head)

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        if self.geometry_every > 0 and state.global_step % self.geometry_every == 0:
            _wrapped(model).geometry_wanted = True

    def on_step_end(self, args, state, control, model=None, **kwargs):
        wrapped = _wrapped(model)
        if wrapped.geometry_sample is not None:
            self.pending.update(batch_geometry(*wrapped.geometry_sample))
            wrapped.geometry_sample = None

    def on_log(self, args, state, control, logs=None, model=None, **kwargs):
        if logs is None or "loss" not in logs:  # evaluation / final summary lines
            return
        extra = {**_wrapped(model).stats.read(), **self.pending}
        self.pending = {}
        logs.update(extra)
        if state.log_history and state.log_history[-1].get("step") == state.global_step:
            state.log_history[-1].update(extra)  # the Trainer appended a copy of logs before this call


def batch_geometry(states, sequence_ids) -> dict[str, float]:
    """``erank`` (covariance effective rank, the paper's) and ``anisotropy`` (exact mean cosine of
    token pairs from different sequences) of one batch's last hidden states [N, d]; {} when the
    batch has too few tokens or a single sequence."""
    from nitp.geometry import anisotropy, effective_rank

    out = {}
    if states.shape[0] >= 2:
        out["erank"] = effective_rank(states)
    if sequence_ids.unique().numel() >= 2:
        out["anisotropy"] = anisotropy(states, sequence_ids.cpu().numpy())
    return out


def _wrapped(model):
    wrapped = unwrap(model)
    if wrapped is None:
        from nitp.errors import UserError

        raise UserError(f"{type(model).__name__}: NITPCallback needs a model made by nitp_train.wrap_model")
    return wrapped
