"""The settings of a nitp-geom measurement: every input but the models that changes its result.

One frozen dataclass per kind of record, each field defined (type, default, check) once here:
the library functions take it whole, ``nitp-geom`` reads its option defaults from it, and the
record cache keys on ``dataclasses.asdict(settings)`` (``analysis.measure.geom_cache_key``), so a
new field is part of the key by itself.

:class:`GeomSettings` (``geom_record``: layers / rank / anisotropy / trajectory),
:class:`CompareSettings` (``compare_record``) and :class:`DiffErankSettings` (``diff_erank_record``)
each add their own fields to :class:`SampleSettings`, what every measurement shares.

A bad value is one ``UserError`` naming the option when the settings are made. This module
imports no numpy or torch: the CLI's ``--help`` reads the defaults from it.

Example
-------
>>> GeomSettings(n_tokens=20_000, layers="0,4,-1").layers
(0, 4, -1)
>>> GeomSettings(batch_size=0)
Traceback (most recent call last):
nitp.errors.UserError: --batch-size 0: must be a whole number of at least 1
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

from nitp.errors import UserError


@dataclass(frozen=True)
class SampleSettings:
    """The token sample, the layers and the run of one measurement (shared by every record kind).

    ``layers``: None for every layer (0..L and -1), else layer numbers (0 = embeddings, k = block
    k, -1 = last hidden state); ``"0,2,-1"`` / ``"all"`` / a list are accepted and kept as a
    tuple. ``seq_len`` None: 512, capped by the model. ``device`` / ``dtype`` None: chosen by
    ``nitp.runtime`` (:meth:`resolved`).
    """

    corpus: str = "builtin"  # "builtin", a .txt/.jsonl/.parquet file or folder (keyed by contents)
    n_tokens: int = 50_000
    layers: tuple[int, ...] | None = None
    seed: int = 0  # of the corpus sample (and of every sampled estimator)
    seq_len: int | None = None
    batch_size: int = 8
    device: str | None = None
    dtype: str | None = None

    def __post_init__(self):
        check_counts(1, batch_size=self.batch_size, n_tokens=self.n_tokens, seq_len=self.seq_len)
        layers = parse_layers(self.layers)
        object.__setattr__(self, "layers", None if layers is None else tuple(layers))

    def resolved(self):
        """The same settings with the device and dtype chosen (``nitp.runtime``: a GPU when one
        is visible, bfloat16 on a bf16 GPU, else float32); ``UserError`` for an unknown one."""
        from nitp.runtime import pick_device, pick_dtype

        device = pick_device(self.device)
        return dataclasses.replace(self, device=device, dtype=pick_dtype(device, self.dtype))


@dataclass(frozen=True)
class GeomSettings(SampleSettings):
    """:class:`SampleSettings` plus the statistics of ``analysis.layers`` and ``analysis.depth``.

    ``exclude_first``: report metrics without each sequence's first position. ``ridge`` None:
    strength chosen by GCV on the fit pairs. ``heldout_fraction``: share of the tokens (whole
    documents) held out to score the ridge maps. ``n_pairs``: sampled cross-document pairs.
    ``spectrum``: store every layer's eigenvalues. ``id_tokens``, ``entropy_sequences`` (0 skips
    each) and ``lens``: the depth measures' samples and the logit lens.
    """

    exclude_first: bool = False
    ridge: float | None = None
    heldout_fraction: float = 0.2
    n_pairs: int = 4096
    spectrum: bool = False
    id_tokens: int = 2000  # token states per layer for the intrinsic dimension (O(n^2 d))
    entropy_sequences: int = 16  # sequences whose token Gram matrix gives the prompt entropy
    lens: bool = True

    def __post_init__(self):
        super().__post_init__()
        check_counts(1, n_pairs=self.n_pairs)
        check_counts(0, id_tokens=self.id_tokens, entropy_sequences=self.entropy_sequences)


@dataclass(frozen=True)
class CompareSettings(SampleSettings):
    """:class:`SampleSettings` of ``nitp-geom compare``; ``self_maps``: with two models, also
    each against itself."""

    n_tokens: int = 8192
    exclude_first: bool = False
    self_maps: bool = True


@dataclass(frozen=True)
class DiffErankSettings(SampleSettings):
    """:class:`SampleSettings` of ``nitp-geom diff-erank``: the paper's last layer by default
    (``layers=None`` is every layer); ``init_seed`` seeds the random copy's weights."""

    n_tokens: int = 4096
    layers: tuple[int, ...] | None = (-1,)
    init_seed: int = 0
    exclude_first: ClassVar[bool] = False  # Diff-eRank keeps every position (the record name says so)


def parse_layers(layers) -> list[int] | None:
    """None / "all" -> None (every layer); "0,2,-1" or a list of ints -> list of ints."""
    if layers is None or (isinstance(layers, str) and layers.strip().lower() == "all"):
        return None
    if isinstance(layers, str):
        try:
            return [int(v) for v in layers.replace(" ", "").split(",") if v]
        except ValueError:
            raise UserError(
                f"--layers {layers!r}: give comma-separated integers (0 = embeddings, -1 = last hidden state) or 'all'"
            ) from None
    return [int(k) for k in layers]


def check_counts(least: int, **counts) -> None:
    """Counts the user gives are whole numbers of at least ``least`` (1: ``--batch-size``,
    ``--tokens``, ``--seq-len``, ``--pairs``; 0 = skip that measure: ``--id-tokens``,
    ``--entropy-sequences``); ``UserError`` naming the option otherwise. None means "the default"
    where ``least`` is 1; a count that may be 0 has no default to fall back on."""
    for name, value in counts.items():
        if value is None and least:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            option = "--" + {"n_tokens": "tokens", "n_pairs": "pairs"}.get(name, name).replace("_", "-")
            rule = f"of at least {least}" if least else ">= 0 (0 skips it)"
            raise UserError(f"{option} {value!r}: must be a whole number {rule}")
