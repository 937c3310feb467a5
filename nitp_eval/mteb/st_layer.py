"""A sentence-transformers ``Transformer`` module that emits layer k's token states (``--layer k``).

sentence-transformers' ``Transformer`` emits the last hidden state as ``token_embeddings``; this
subclass emits layer ``k`` of the project's numbering instead (``nitp.layers``: 0 = embeddings,
k = output of block k, -1 = the last hidden state). A forward hook (``nitp.layers.capture``)
stores layer k and stops the forward pass there, so later blocks are never run and no other
layer is kept. Loading, tokenizing and saving are the parent's.

Why a subclass rather than a module placed after ``Transformer``: a sentence-transformers module
sees only the features dict, never its siblings, so a separate module could neither hook the
backbone nor stop its forward pass; and ``SentenceTransformer(DIR)`` builds each saved module on
its own. The layer number is saved in ``sentence_bert_config.json`` (config key ``layer``).
A saved encoder with this module reloads with ``SentenceTransformer(DIR, trust_remote_code=True)``
(sentence-transformers 6 asks for that flag before importing any module class of another package).

Example
-------
>>> from nitp_eval.mteb.st_layer import LayerTransformer                     # doctest: +SKIP
>>> module = LayerTransformer.load("runs/tiny/checkpoints/step_000500", init_defaults={"layer": 2})
"""

from __future__ import annotations

from typing import Any

from sentence_transformers.base.modules.transformer import Transformer

from nitp import layers as layers_lib


class LayerTransformer(Transformer):
    """``Transformer`` whose ``token_embeddings`` are layer ``layer`` ([B, T, D], the backbone's dtype).

    Parameters
    ----------
    model_name_or_path : a Hugging Face model folder
    layer : 0..L or -1 (already validated by ``nitp.layers.check_layer``; see ``encoder.preflight``)
    **kwargs : ``Transformer``'s own arguments
    """

    config_keys = [*Transformer.config_keys, "layer"]

    def __init__(self, model_name_or_path: str, *, layer: int = -1, **kwargs: Any) -> None:
        super().__init__(model_name_or_path, **kwargs)
        self.layer = int(layer)

    def forward(self, features: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        if self.layer == -1:
            return super().forward(features, **kwargs)
        states = layers_lib.run_until(
            self.auto_model, self.layer, lambda: super(LayerTransformer, self).forward(features, **kwargs)
        )
        features["token_embeddings"] = states
        return features
