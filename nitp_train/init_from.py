"""Continued pre-training: ``model.init_from: PATH`` starts a run from an existing model.

PATH is anything ``nitp.loading.model_folder`` accepts: a Hugging Face model folder, a run
directory (its latest checkpoint), a checkpoint, or a ``.gguf`` file (dequantised once to a
cached float32 folder). The run then

- keeps the model's architecture and weights (no preset; ``model.*`` fields other than
  ``init_from`` are refused, since they would silently change nothing),
- tokenizes the corpus with the model's own tokenizer (``data.tokenizer`` defaults to the folder),
- puts the NITP target at ``nitp.layers.default_target_layer(L)`` = round(0.21 L) unless set,
- starts a fresh projector (the source's ``nitp_head`` is not reused: the backbone moved on),
- uses a continued-pre-training schedule unless the config sets its own: peak lr 1e-4,
  warm-up 2 % of the steps (at least 1), constant, then linear decay over the last 20 % to 10 %.

Example
-------
``nitp-train run --set model.init_from=SmolLM2-135M-Instruct.Q4_1.gguf --set data.corpus=prose.jsonl
--steps 40 --set data.seq_len=256 --set train.batch_size=4``
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from nitp.errors import UserError
from nitp.layers import default_target_layer

if TYPE_CHECKING:
    from .config_model import Config

CPT_LR = 1.0e-4
CPT_WARMUP_FRACTION = 0.02
CPT_DECAY_TYPE = "linear"
# config fields of the source model copied into the resolved config (informative; the
# weights and config.json of the source are what the trainer loads)
SPEC_FIELDS = ("model_type", "num_hidden_layers", "hidden_size", "vocab_size", "max_position_embeddings")


def model_spec(model_cfg: dict[str, Any]) -> dict[str, Any]:
    """The resolved ``model`` section for ``model.init_from``.

    Returns ``{"init_from": <model folder>, "source": PATH, "model_type", "num_hidden_layers",
    "hidden_size", "vocab_size", "max_position_embeddings", "target_layer", "lambda", "lr"}``.
    """
    from nitp.loading import check_safe_weights, load_config, model_folder

    source = model_cfg["init_from"]
    extra = sorted(k for k in model_cfg if k not in ("init_from", "preset"))
    if extra:
        raise UserError(
            f"model.{extra[0]}: cannot be combined with model.init_from (the architecture is the source "
            "model's); remove it"
        )
    folder = model_folder(source)
    check_safe_weights(folder)  # at config time: before the corpus is prepared, never unpickled
    config = load_config(folder)
    spec: dict[str, Any] = {"init_from": str(folder), "source": str(source)}
    spec.update({k: getattr(config, k, None) for k in SPEC_FIELDS})
    if not spec["max_position_embeddings"]:
        spec["max_position_embeddings"] = 1 << 20
    spec["target_layer"] = default_target_layer(int(spec["num_hidden_layers"]))
    spec["lambda"] = 1.0
    spec["lr"] = CPT_LR
    return spec


def fill_cpt_defaults(cfg: Config, spec: dict[str, Any]) -> None:
    """The data and schedule defaults of continued pre-training, filled into ``cfg`` in place where
    it keeps the general defaults: the source's tokenizer, warm-up = max(1, round(0.02 x steps))
    (with a step count; a token budget keeps ``train.warmup_steps``), linear decay.

    Example: 50 steps -> ``train.warmup_steps`` 1, ``train.decay_type`` "linear".
    """
    from .config_model import DEFAULTS

    data, train = cfg.data, cfg.train
    if data.tokenizer is None:
        data.tokenizer = spec["init_from"]
    if train.warmup_steps == DEFAULTS["train"]["warmup_steps"] and train.steps is not None:
        train.warmup_steps = max(1, round(CPT_WARMUP_FRACTION * train.steps))
    if train.decay_type == DEFAULTS["train"]["decay_type"]:
        train.decay_type = CPT_DECAY_TYPE


def load_init_model(spec: dict[str, Any]):
    """The source model (float32, train mode) for a resolved ``model`` section with ``init_from``."""
    from nitp.loading import load_model

    return load_model(spec["init_from"], causal=True, dtype="float32").train()


def validation_loss(model_path, prepared_dir, seq_len: int, batch_size: int, max_batches: int) -> float:
    """Mean next-token cross-entropy (nats/token) of a model on a prepared folder's validation
    windows, the same batches the trainer's ``val_loss`` uses: the "before" of a continued run.

    Example: ``validation_loss(src_gguf, "RUN/data", 128, 2, 4)`` beside the run's final ``val_loss``.
    """
    import torch

    from nitp.loading import load_model

    from .data import TokenShards

    model = load_model(model_path)
    losses = []
    with torch.no_grad():
        for batch in TokenShards(prepared_dir).val_batches(seq_len, batch_size, max_batches):
            x = torch.from_numpy(batch)
            losses.append(float(model(input_ids=x, labels=x, use_cache=False).loss))
    if not losses:
        raise UserError(f"{prepared_dir}: fewer validation tokens than one batch of {batch_size} x {seq_len}")
    return sum(losses) / len(losses)
