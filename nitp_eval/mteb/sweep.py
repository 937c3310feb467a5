"""The MTEB layer sweep (``--layers all | 0,3,-1``): every layer scored from one pass over the texts.

mteb scores one model per ``mteb.evaluate`` call, so each layer gets its own encoder
(:class:`LayerView`, with the cache key of ``--layer k``) serving embeddings from one
:class:`LayerSweep`: the first view asked for a text list runs it once through the full model
(``HiddenStateEncoder.encode_layers``, every layer from the same pass), the others find it in the
sweep's cache ``{sha256(texts, batch size): float32 [n_layers, N, D]}``, cleared after each task.
Each layer's vectors, and so its scores, equal a ``--layer k`` run's. Memory: one task's texts x
layers x D x 4 bytes (SmolLM2-135M, all 32 layers, 10,000 texts: 0.7 GB).

Example
-------
>>> sweep = LayerSweep(spec, [0, 2, -1])                         # doctest: +SKIP
>>> views = sweep.views(name="nitp-local/tiny", revision=key)   # doctest: +SKIP
>>> [v.spec.layer for v in views]                               # doctest: +SKIP
[0, 2, -1]
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Callable, Sequence

from .. import log_stderr
from .hidden_encoder import HiddenStateEncoder


class LayerSweep:
    """One full-depth encoder and the per-task cache of every requested layer's embeddings.

    Parameters
    ----------
    spec : an ``EncoderSpec`` from ``encoder.preflight`` (its layer is ignored: the full pass runs)
    layers : layer numbers from :func:`nitp_eval.mteb.settings.parse_layers`
    """

    def __init__(self, spec, layers: Sequence[int], *, log: Callable[[str], None] = log_stderr):
        self.layers = list(layers)
        self.encoder = HiddenStateEncoder(dataclasses.replace(spec, layer=-1), log=log)
        self._cache: dict[str, object] = {}

    def embeddings(self, texts: Sequence[str], layer: int, batch_size: int | None, show: bool = False):
        """float32 [N, D] of ``layer`` for ``texts``; one pass over texts not seen since :meth:`clear`."""
        key = _texts_key(texts, batch_size)
        if key not in self._cache:
            self._cache[key] = self.encoder.encode_layers(
                texts, self.layers, batch_size=batch_size, show_progress_bar=show
            )
        return self._cache[key][self.layers.index(layer)]

    def clear(self) -> None:
        """Forget the cached embeddings (after each task: memory stays one task's worth)."""
        self._cache.clear()

    def views(self, *, name: str, revision: str) -> list[LayerView]:
        """One mteb encoder per layer, in the order of ``self.layers``."""
        return [LayerView(self, k, name=name, revision=revision) for k in self.layers]


class LayerView(HiddenStateEncoder):
    """The encoder of one layer of a :class:`LayerSweep`, for ``mteb.evaluate``.

    It shares the sweep's model and differs from ``HiddenStateEncoder(..., layer=k)`` only in
    where its vectors come from; its mteb model meta (name, revision, experiment kwargs) is that
    of ``--layer k``, so mteb's result cache is shared with single-layer runs.
    """

    def __init__(self, sweep: LayerSweep, layer: int, *, name: str, revision: str) -> None:
        self.__dict__.update(sweep.encoder.__dict__)  # the model, prompts and sizes, not a copy
        self.sweep = sweep
        self.spec = dataclasses.replace(sweep.encoder.spec, layer=layer)
        self.mteb_model_meta = self._model_meta(name, revision)

    def encode_texts(self, texts: Sequence[str], *, batch_size: int | None = None, show_progress_bar=False):
        """This layer's embeddings [len(texts), hidden_size] from the sweep's shared pass."""
        return self.sweep.embeddings(texts, self.spec.layer, batch_size or self.batch_size, show_progress_bar)


def _texts_key(texts: Sequence[str], batch_size: int | None) -> str:
    digest = hashlib.sha256(f"{batch_size}|{len(texts)}".encode())
    for text in texts:
        digest.update(b"\x00" + str(text).encode("utf-8", "surrogatepass"))
    return digest.hexdigest()
