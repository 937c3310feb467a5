"""A checkpoint as a real ``SentenceTransformer``: the frozen-embedding encoder that mteb scores.

The model is sentence-transformers' own module chain::

    Transformer (or LayerTransformer for --layer k != -1)  ->  Pooling  ->  Normalize

Pooling, for layer k's hidden states ``h`` [B, T, D] and attention mask ``m`` [B, T]::

    mean:  e_b = sum_t m_bt h_bt / max(sum_t m_bt, 1e-9)         Pooling("mean")
    last:  e_b = h_{b, n_b - 1}, n_b valid tokens                 Pooling("lasttoken")
    eos:   the tokenizer appends EOS to every text, then as last  (tokenizer.add_eos_token)
    then   e_b <- e_b / max(||e_b||_2, 1e-12)                     Normalize()

Texts are truncated to ``max_length`` tokens (default 512, MTEB's usual; the paper states none),
and also to the model's own limit; batches are bounded by a token budget (:func:`token_batches`).

Example
-------
>>> from nitp_eval.mteb.hidden_encoder import HiddenStateEncoder  # imports mteb
>>> enc = HiddenStateEncoder("runs/tiny/checkpoints/step_000500", layer=2)  # doctest: +SKIP
>>> enc.encode_texts(["a cat", "a dog"]).shape                            # doctest: +SKIP
(2, 128)
>>> enc.model.save("encoders/tiny-layer2")   # SentenceTransformer(dir, trust_remote_code=True)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from nitp import layers as layers_lib
from nitp.errors import UserError
from nitp.io import atomic_folder
from nitp.loading import check_model_files, load_config
from nitp.runtime import pick_device, pick_dtype

from .. import log_stderr
from .settings import EmbedSettings, check_pooling, embedding_fields

ST_POOLING_MODE = {"mean": "mean", "last": "lasttoken", "eos": "lasttoken"}


@dataclass(frozen=True, kw_only=True)
class EncoderSpec(EmbedSettings):
    """:class:`~nitp_eval.mteb.settings.EmbedSettings` checked against a model: a loadable
    folder, a layer in range (of ``num_layers`` blocks), and the device and dtype it runs in
    (chosen once, by :func:`preflight`)."""

    folder: Path
    num_layers: int
    layer: int = -1
    device: str = "cpu"
    dtype: str = "float32"


def preflight(model_path: str | Path, settings: EmbedSettings | None = None, **fields) -> EncoderSpec:
    """Every check before any weights are loaded; the one place ``--layer``, the device and the
    dtype (bfloat16 on a bf16 GPU, else float32, unless ``settings.dtype``) are checked and chosen.

    ``model_path``: checkpoint, run directory, Hugging Face folder or ``.gguf`` file (converted
    once by ``nitp.loading.model_folder``). Its tokenizer is loaded and its weight files opened
    (a garbage or missing file is one line now), and its parameters must fit in memory.
    ``settings``: pooling, layer, sizes, device, dtype (an ``MtebSettings`` too); ``fields``:
    those of ``EmbedSettings`` instead of (or replacing some of) ``settings``.

    >>> preflight("runs/tiny", pooling="last", layer=2).layer   # doctest: +SKIP
    2
    """
    settings = dataclasses.replace(settings or EmbedSettings(), **fields)  # checks pooling, sizes
    device = pick_device(settings.device)
    dtype = pick_dtype(device, settings.dtype)
    folder = check_model_files(model_path, device=device, dtype=dtype)
    n_layers = int(load_config(folder).num_hidden_layers)
    layer = layers_lib.check_layer(-1 if settings.layer is None else settings.layer, n_layers, name="--layer")
    checked = {"layer": layer, "device": device, "dtype": dtype}
    return EncoderSpec(**{**embedding_fields(settings), **checked}, folder=folder, num_layers=n_layers)


def pooling_modules(pooling: str, dim: int) -> list:
    """``[Pooling, Normalize]`` of sentence-transformers for ``pooling`` (mean | last | eos)."""
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling

    return [Pooling(dim, ST_POOLING_MODE[check_pooling(pooling)]), Normalize()]


def pool_hidden_states(hidden, mask, pooling: str = "mean"):
    """Pool token states into one L2-normalised vector per text, with the encoder's own modules.

    Parameters
    ----------
    hidden : torch.Tensor [B, T, D]
    mask : torch.Tensor [B, T], 1 for valid tokens (right padding)
    pooling : "mean" | "last" | "eos" (the last valid token)

    Returns
    -------
    torch.Tensor [B, D], unit L2 norm per row.
    """
    features = {"token_embeddings": hidden, "attention_mask": mask}
    for module in pooling_modules(pooling, hidden.shape[-1]):
        features = module(features)
    return features["sentence_embedding"]


def build_sentence_transformer(spec: EncoderSpec, *, log: Callable[[str], None] = log_stderr):
    """The ``SentenceTransformer`` of a checked spec, on its device in its dtype, eval mode.

    The token limit is the smallest of ``max_length``, sentence-transformers' ``max_seq_length``
    (a folder's sentence_bert_config.json), the tokenizer's and the model's position limit.
    """
    import torch
    import transformers
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Transformer

    from .st_layer import LayerTransformer

    transformers.utils.logging.disable_progress_bar()  # a bar per checkpoint load is noise in logs
    dtype = getattr(torch, spec.dtype)
    cls, extra = (Transformer, {}) if spec.layer == -1 else (LayerTransformer, {"layer": spec.layer})
    try:
        transformer = cls.load(str(spec.folder), model_kwargs={"dtype": dtype}, init_defaults=extra)
    except (OSError, ValueError) as e:
        raise UserError(
            f"{spec.folder}: cannot load the model ({type(e).__name__}: {str(e).splitlines()[0][:200]})"
        ) from None
    _prepare_tokenizer(transformer.tokenizer, spec, log)
    transformer.max_seq_length = min(spec.max_length, transformer.max_seq_length or spec.max_length)
    modules = [transformer, *pooling_modules(spec.pooling, transformer.get_embedding_dimension())]
    return SentenceTransformer(modules=modules, device=spec.device).eval()


def _prepare_tokenizer(tok, spec: EncoderSpec, log) -> None:
    """Right padding (pooling and causal models read valid tokens first), a pad token, EOS appending."""
    tok.padding_side = "right"
    if tok.pad_token_id is None:
        if tok.eos_token_id is None:
            raise UserError(
                f"{spec.folder}: tokenizer has neither a pad nor an EOS token; set one "
                "(tokenizer.pad_token = ...) and save it"
            )
        tok.pad_token = tok.eos_token
        log(
            f"note: {spec.folder}: tokenizer has no pad token; padding with EOS {tok.eos_token!r} "
            "(padding is masked out, embeddings do not change)"
        )
    if spec.pooling == "eos":
        if tok.eos_token_id is None:
            raise UserError(
                f"{spec.folder}: --pooling eos needs an EOS token and this tokenizer has none "
                "(use --pooling mean or last)"
            )
        # a tokenizer post-processor: saved with the tokenizer, counted in truncation
        tok.add_eos_token = True


def token_batches(
    lengths: Sequence[int], batch_tokens: int, batch_size: int, order: Sequence[int] | None = None
) -> list[list[int]]:
    """Indices grouped into batches along ``order`` (default: longest first), each batch with
    ``rows x longest row <= batch_tokens`` and at most ``batch_size`` rows.

    A text longer than the budget gets a batch of its own. Example: lengths [5, 1, 3, 3] with a
    budget of 6 tokens -> [[0], [2, 3], [1]]. The sizes are checked once, by :func:`preflight`.
    """
    if order is None:
        order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    width = 0
    for i in order:
        if (
            batches
            and len(batches[-1]) < batch_size
            and (len(batches[-1]) + 1) * max(width, lengths[i]) <= batch_tokens
        ):
            batches[-1].append(i)
            width = max(width, lengths[i])
        else:
            batches.append([i])
            width = lengths[i]
    return batches


def save_encoder(encoder, out: str | Path) -> Path:
    """Save a ``HiddenStateEncoder``'s ``SentenceTransformer`` to a new folder (written aside, then renamed).

    ``SentenceTransformer(out)`` reloads it (``trust_remote_code=True`` for ``--layer k != -1``)
    and gives the same embeddings.
    """

    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise UserError(f"--save-encoder {out}: folder exists and is not empty; choose a new folder")
    with atomic_folder(out) as tmp:
        encoder.model.save(str(tmp))
    return out
