"""``HiddenStateEncoder``: mteb's sentence-transformers wrapper around a checkpoint, the encoder
that mteb scores (its model from :func:`nitp_eval.mteb.encoder.build_sentence_transformer`).

Apart from :mod:`nitp_eval.mteb.encoder` because it subclasses mteb's wrapper: importing mteb
takes seconds, which the settings checks and ``preflight`` do not need.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path
from typing import Callable, Sequence

from mteb.models.sentence_transformer_wrapper import SentenceTransformerEncoderWrapper

from nitp import layers as layers_lib

from .. import log_stderr
from .encoder import EncoderSpec, build_sentence_transformer, preflight, token_batches
from .settings import EmbedSettings


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
        log: Callable[[str], None] = log_stderr,
        **fields,
    ) -> None:
        spec = model if isinstance(model, EncoderSpec) else preflight(model, settings, **fields)
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
        embed = lambda batch, batch_texts: self._embed_layers(batch, batch_texts, [-1])  # noqa: E731
        return self._encode_batches(texts, encodings, batch_size, show_progress_bar, embed)[0]

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
