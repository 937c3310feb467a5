"""A checkpoint as a real ``SentenceTransformer``: the frozen-embedding encoder that mteb scores.

The model is sentence-transformers' own module chain::

    Transformer (or LayerTransformer for --layer k != -1)  ->  Pooling  ->  Normalize

Pooling, for layer k's hidden states ``h`` [B, T, D] and attention mask ``m`` [B, T]::

    mean:  e_b = sum_t m_bt h_bt / max(sum_t m_bt, 1e-9)         Pooling("mean")
    last:  e_b = h_{b, n_b - 1}, n_b valid tokens                 Pooling("lasttoken")
    eos:   the tokenizer appends EOS to every text, then as last  (tokenizer.add_eos_token)
    then   e_b <- e_b / max(||e_b||_2, 1e-12)                     Normalize()

Texts are truncated to ``max_length`` tokens (default 512, MTEB's usual; the paper states none),
and also to the model's own limit. Encoding batches by a token budget: texts sorted by length,
each batch filled while ``rows x longest row <= batch_tokens`` (and at most ``batch_size`` rows),
so memory is bounded whatever the texts' lengths. Every text is tokenized once: the token ids
that size the batches are padded into the features the model runs on.

Example
-------
>>> enc = HiddenStateEncoder("runs/tiny/checkpoints/step_000500", layer=2)  # doctest: +SKIP
>>> enc.encode_texts(["a cat", "a dog"]).shape                            # doctest: +SKIP
(2, 128)
>>> enc.model.save("encoders/tiny-layer2")   # SentenceTransformer(dir, trust_remote_code=True)
"""

from __future__ import annotations

import dataclasses
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from mteb.models.sentence_transformer_wrapper import SentenceTransformerEncoderWrapper

from nitp import layers as layers_lib
from nitp.errors import UserError
from nitp.io import atomic_folder
from nitp.loading import check_model_files, load_config
from nitp.runtime import pick_device, pick_dtype

from .settings import EmbedSettings, check_pooling, embedding_fields

ST_POOLING_MODE = {"mean": "mean", "last": "lasttoken", "eos": "lasttoken"}


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


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


def build_sentence_transformer(spec: EncoderSpec, *, log: Callable[[str], None] = _stderr):
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


class HiddenStateEncoder(SentenceTransformerEncoderWrapper):
    """mteb's sentence-transformers wrapper around the checkpoint's ``SentenceTransformer``.

    ``self.model`` is the ``SentenceTransformer`` (save it with ``self.model.save(dir)``).
    Encoding batches texts by a token budget, runs each distinct text of a batch once and returns
    float32 rows in the input order.

    Parameters
    ----------
    model : a checkpoint / run dir / HF folder / .gguf path, or an ``EncoderSpec`` from ``preflight``
    settings, fields : passed to :func:`preflight` (ignored when ``model`` is an ``EncoderSpec``,
        which holds them): ``EmbedSettings`` and/or its fields, e.g. ``layer=2, device="cpu"``;
        at most ``batch_size`` texts (mteb's ``encode_kwargs`` wins) and ``batch_tokens`` padded
        tokens per forward pass; ``max_length`` tokens per text (default 512)
    name, revision : mteb's cache key of this model (``run_mteb`` passes the model key)
    """

    def __init__(
        self,
        model: str | Path | EncoderSpec,
        settings: EmbedSettings | None = None,
        *,
        name: str | None = None,
        revision: str | None = None,
        log: Callable[[str], None] = _stderr,
        **fields,
    ) -> None:
        if not isinstance(model, EncoderSpec):
            model = preflight(model, settings, **fields)
        spec = model
        self.spec, self.batch_size, self.batch_tokens = spec, spec.batch_size, spec.batch_tokens
        st_model = build_sentence_transformer(spec, log=log)
        with warnings.catch_warnings():  # mteb's deprecation notes about its own defaults
            warnings.simplefilter("ignore")
            super().__init__(st_model)
        self._features_match = self._own_features_match_sentence_transformers()
        self.mteb_model_meta = self._model_meta(name or f"nitp-local/{spec.folder.name}", revision)

    # --- what tests, benchmarks and notebooks read --------------------------------------------
    @property
    def transformer(self):
        return self.model[0]

    @property
    def tokenizer(self):
        return self.transformer.tokenizer

    @property
    def max_length(self) -> int:
        return int(self.transformer.max_seq_length)

    @property
    def hidden_size(self) -> int:
        return int(self.model.get_embedding_dimension())

    @property
    def dtype(self):
        return self.transformer.auto_model.dtype

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids per text as the model sees them (special tokens, EOS for eos, truncation)."""
        return self._encode_ids([str(t) for t in texts])["input_ids"]

    def hidden_states(self, input_ids, attention_mask):
        """Token states [B, T, D] of the encoder's layer for right-padded ids."""
        import torch

        with torch.inference_mode():
            features = {"input_ids": input_ids, "attention_mask": attention_mask}
            return self.transformer(features)["token_embeddings"]

    # --- encoding --------------------------------------------------------------------------------
    def _features(self, encodings: list[dict]) -> dict:
        """Right-padded model features of already tokenized texts (what ``preprocess`` gives)."""
        features = dict(self.tokenizer.pad(encodings, padding=True, return_tensors="pt"))
        features["modality"] = "text"
        return features

    def _own_features_match_sentence_transformers(self) -> bool:
        """Whether padding our token ids gives exactly sentence-transformers' own features.

        Checked once per encoder on texts that exercise stripping, case, truncation and padding;
        when they differ (a chat-template or packed-input model), encoding falls back to
        ``SentenceTransformer.encode`` per batch, which tokenizes again.
        """
        import torch

        probe = ["  A Mixed-case text.  ", "x", "word " * (self.max_length + 8)]
        theirs = self.model.preprocess(probe)
        ours = self._features(_per_text(self._encode_ids(probe)))
        if set(theirs) != set(ours):
            return False
        return all(
            torch.equal(theirs[k], ours[k]) if isinstance(theirs[k], torch.Tensor) else theirs[k] == ours[k]
            for k in theirs
        )

    def _encode_ids(self, texts: Sequence[str]) -> dict:
        return self.tokenizer(list(texts), truncation=True, max_length=self.max_length)

    def encode_texts(self, texts: Sequence[str], *, batch_size: int | None = None, show_progress_bar=False):
        """Embed texts. Returns a float32 numpy array [len(texts), hidden_size], unit rows.

        Each text is tokenized once; its token count sizes the batches and its ids, padded per
        batch, are the model's input. Batches follow sentence-transformers' own order (longest
        in characters first) and close early when they would pass ``batch_tokens``; within a
        batch each distinct text is run once (STS tasks repeat sentences). While the budget does
        not bind, every batch has the padded width of ``SentenceTransformer.encode``'s batch, so
        the numbers are the same.
        """
        texts, encodings = self._tokenized(texts)
        return self._encode_batches(texts, encodings, batch_size, show_progress_bar, self._embed)[0]

    def _tokenized(self, texts: Sequence[str]) -> tuple[list[str], list[dict]]:
        """Texts as strings and their token ids; a text with no token becomes the filler token."""
        texts = [str(t) for t in texts]
        encodings = _per_text(self._encode_ids(texts))
        # a text with no token at all becomes one BOS (else EOS) token: a defined embedding
        filler = self.tokenizer.bos_token or self.tokenizer.eos_token or self.tokenizer.pad_token
        empty = [i for i, e in enumerate(encodings) if not e["input_ids"]]
        if empty:
            [filler_encoding] = _per_text(self._encode_ids([filler]))
            for i in empty:
                encodings[i], texts[i] = filler_encoding, filler
        return texts, encodings

    def _encode_batches(self, texts, encodings, batch_size, show_progress_bar, embed):
        """``embed(encodings, texts)`` -> [n_out, n, D] per batch, gathered into [n_out, N, D] float32."""
        import numpy as np
        from rich.console import Console
        from rich.progress import track

        lengths = [len(e["input_ids"]) for e in encodings]
        order = np.argsort([-len(t) for t in texts])  # SentenceTransformer.encode's sort
        rows_per_batch = batch_size or self.batch_size
        batches = token_batches(lengths, self.batch_tokens, rows_per_batch, order)
        emb = None
        for rows in track(
            batches,
            description="Encoding",
            disable=not show_progress_bar or len(batches) < 2,
            transient=True,
            console=Console(stderr=True),
        ):
            first = {}  # distinct text -> the row that stands for it
            for i in rows:
                first.setdefault(texts[i], i)
            vectors = embed([encodings[i] for i in first.values()], list(first))
            if emb is None:
                emb = np.zeros((vectors.shape[0], len(texts), self.hidden_size), dtype=np.float32)
            where = {t: k for k, t in enumerate(first)}
            emb[:, rows] = vectors[:, [where[texts[i]] for i in rows]]
        return emb if emb is not None else np.zeros((1, 0, self.hidden_size), dtype=np.float32)

    def _embed(self, encodings: list[dict], texts: list[str]):
        """float32 sentence embeddings [1, len(texts), hidden_size] of one batch."""
        return self._embed_layers(encodings, texts, [-1])

    def encode_layers(
        self, texts: Sequence[str], layers: Sequence[int], *, batch_size=None, show_progress_bar=False
    ):
        """Embed texts at several layers with one forward pass per batch: float32 [len(layers), N, D].

        Row ``j`` equals ``HiddenStateEncoder(..., layer=layers[j]).encode_texts(texts)``: the same
        token ids, batches and padded widths; each layer's token states (``nitp.layers.capture``;
        layer -1 is the transformer's own output) go through this encoder's Pooling and Normalize.
        Needs an encoder built for layer -1 (the whole forward pass runs).

        >>> enc.encode_layers(["a cat", "a dog"], [0, 2, -1]).shape   # doctest: +SKIP
        (3, 2, 128)
        """
        if self.spec.layer != -1:
            raise ValueError("encode_layers needs an encoder of layer -1 (the full forward pass)")
        texts, encodings = self._tokenized(texts)
        embed = lambda batch, batch_texts: self._embed_layers(batch, batch_texts, list(layers))  # noqa: E731
        return self._encode_batches(texts, encodings, batch_size, show_progress_bar, embed)

    def _embed_layers(self, encodings: list[dict], texts: list[str], layers: list[int]):
        """float32 sentence embeddings [len(layers), len(texts), hidden_size] of one batch, one pass."""
        import numpy as np
        import torch
        from sentence_transformers.util import batch_to_device

        if self._features_match:
            features = self._features(encodings)
        else:  # the model's own tokenization, as SentenceTransformer.encode would run it
            features = dict(self.model.preprocess(texts))
        features = batch_to_device(features, self.model.device)
        inner = [k for k in layers if k != -1]
        with torch.inference_mode(), layers_lib.capture(self.transformer.auto_model, inner) as states:
            out = self.transformer(dict(features))
            states[-1] = out["token_embeddings"]
            pooled = [self._pool(states[k], out) for k in layers]
        return np.stack(pooled).astype(np.float32)

    def _pool(self, token_states, features: dict):
        """This encoder's Pooling and Normalize modules applied to one layer's token states."""
        features = {**features, "token_embeddings": token_states}
        for module in list(self.model)[1:]:
            features = module(features)
        return features["sentence_embedding"].float().cpu().numpy()

    def encode(self, inputs, *, task_metadata, hf_split, hf_subset, prompt_type=None, **kwargs):
        """mteb's encoder protocol: every text of the dataloader, embedded by ``encode_texts``."""
        texts = [text for batch in inputs for text in batch["text"]]
        show = kwargs.get("show_progress_bar", True) and sys.stderr.isatty()
        return self.encode_texts(texts, batch_size=kwargs.get("batch_size"), show_progress_bar=show)

    def _model_meta(self, name: str, revision: str | None):
        from mteb.models.model_meta import ModelMeta, ScoringFunction

        return ModelMeta.create_empty(
            overwrites=dict(
                name=name,
                revision=revision or "no_revision_available",
                # part of mteb's cache path: other pooling / layer / precision / length never share scores
                experiment_kwargs={
                    "pooling": self.spec.pooling,
                    "layer": self.spec.layer,
                    "dtype": str(self.dtype).removeprefix("torch."),
                    "max_length": self.max_length,
                },
                similarity_fn_name=ScoringFunction.COSINE,
                embed_dim=self.hidden_size,
                n_parameters=sum(p.numel() for p in self.model.parameters()),
                max_tokens=self.max_length,
                framework=["PyTorch", "Sentence Transformers"],
                open_weights=True,
                reference=None,
            )
        )


def _per_text(batch_encoding) -> list[dict]:
    """One ``{input_ids, attention_mask, ...}`` dict per text of a tokenizer's unpadded output."""
    keys = list(batch_encoding.keys())
    return [dict(zip(keys, values)) for values in zip(*(batch_encoding[k] for k in keys))]


def save_encoder(encoder: HiddenStateEncoder, out: str | Path) -> Path:
    """Save the encoder's ``SentenceTransformer`` to a new folder (written aside, then renamed).

    ``SentenceTransformer(out)`` reloads it (``trust_remote_code=True`` for ``--layer k != -1``)
    and gives the same embeddings.
    """

    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise UserError(f"--save-encoder {out}: folder exists and is not empty; choose a new folder")
    with atomic_folder(out) as tmp:
        encoder.model.save(str(tmp))
    return out
