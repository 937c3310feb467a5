"""The settings of an MTEB run: every input but the checkpoints that changes its scores.

Each field is defined (type, default, check) once here: ``run_mteb`` takes the settings whole,
``nitp-eval mteb`` reads its option defaults from them, and a new embedding field is part of a
task's cache key by itself (``nitp_eval.mteb.run.task_cache_settings``). A bad value is one
``UserError`` naming the option. No mteb, torch or sentence-transformers import: the CLI's
``--help`` reads the defaults here.

Example
-------
>>> MtebSettings(tasks=["STS12"], pooling="last").suite is None
True
>>> MtebSettings(batch_tokens=0)
Traceback (most recent call last):
nitp.errors.UserError: --batch-tokens and --batch-size must be at least 1 (got 0, 32)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from nitp import layers as layers_lib
from nitp.errors import UserError

from . import POOLINGS

DEFAULT_MAX_LENGTH = 512  # MTEB's usual limit; the paper states none
DEFAULT_BATCH_TOKENS = 8192  # padded tokens per forward pass (SmolLM2-135M: peak RSS < 2 GB)
SUITES = ("paper", "offline")  # tasks.SUITES's names (that module imports mteb)


@dataclass(frozen=True)
class EmbedSettings:
    """How token states become one vector per text, and how the model runs.

    ``pooling``: mean | last | eos. ``layer``: -1 (None) = last hidden state, 0 = embeddings,
    k = block k. ``max_length``: tokens per text; ``batch_size`` / ``batch_tokens``: at most
    that many texts / padded tokens per forward pass. ``device`` / ``dtype`` None: chosen by
    ``nitp.runtime`` (a GPU when visible; bfloat16 on a bf16 GPU, else float32).
    """

    pooling: str = "mean"
    layer: int | None = None
    max_length: int = DEFAULT_MAX_LENGTH
    batch_size: int = 32
    batch_tokens: int = DEFAULT_BATCH_TOKENS
    device: str | None = None
    dtype: str | None = None

    def __post_init__(self):
        check_pooling(self.pooling)
        check_sizes(self.max_length, self.batch_tokens, self.batch_size)
        for name in ("max_length", "batch_size", "batch_tokens"):  # numpy ints, "64": plain ints
            object.__setattr__(self, name, int(getattr(self, name)))


@dataclass(frozen=True)
class MtebSettings(EmbedSettings):
    """:class:`EmbedSettings` plus what is scored.

    ``suite``: "paper" | "offline" (the default when ``tasks`` is empty). ``tasks``: mteb task
    names instead (kept as a tuple). ``layers``: a layer sweep instead of ``layer`` (``"all"``,
    ``"0,3,-1"`` or ints; ``nitp_eval.mteb.sweep``). ``data_dir``: local mirror of the tasks'
    datasets (implies HF_HUB_OFFLINE).
    """

    suite: str | None = None
    tasks: tuple[str, ...] | None = None
    layers: str | tuple[int, ...] | None = None
    data_dir: str | Path | None = None

    def __post_init__(self):
        super().__post_init__()
        if self.suite is not None and self.suite not in SUITES:
            raise UserError(f"unknown suite {self.suite!r} (choose one of: {', '.join(SUITES)})")
        if self.layer is not None and self.layers is not None:
            raise UserError(
                "--layer and --layers are mutually exclusive: give one (--layers all scores every layer)"
            )
        tasks = tuple(self.tasks) if self.tasks else None
        object.__setattr__(self, "tasks", tasks)
        object.__setattr__(self, "suite", None if tasks else (self.suite or "offline"))
        if self.layers is not None and not isinstance(self.layers, str):
            object.__setattr__(self, "layers", tuple(int(k) for k in self.layers))


def embedding_fields(settings: EmbedSettings) -> dict:
    """The :class:`EmbedSettings` fields of ``settings`` (or of a subclass: ``MtebSettings``,
    ``encoder.EncoderSpec``) as a dict, in their order; what a task's cache key holds of them."""
    return {f.name: getattr(settings, f.name) for f in dataclasses.fields(EmbedSettings)}


def check_pooling(pooling: str) -> str:
    if pooling not in POOLINGS:
        raise UserError(f"unknown pooling {pooling!r} (choose one of: {', '.join(POOLINGS)})")
    return pooling


def check_sizes(max_length: int, batch_tokens: int, batch_size: int) -> None:
    """``UserError`` for a length limit, token budget or batch size below 1."""
    if max_length < 1:
        raise UserError(f"--max-length must be at least 1 (got {max_length})")
    if batch_tokens < 1 or batch_size < 1:
        raise UserError(
            f"--batch-tokens and --batch-size must be at least 1 (got {batch_tokens}, {batch_size})"
        )


def parse_layers(text: str | Sequence[int], num_layers: int) -> list[int]:
    """``--layers`` -> checked layer numbers in depth order (0..L, then -1), without repeats.

    ``"all"`` is every layer: 0 (embeddings), 1..L (block outputs) and -1 (the last hidden state,
    after the final norm). A list is comma-separated integers, each checked by
    ``nitp.layers.check_layer``.

    >>> parse_layers("all", 3)
    [0, 1, 2, 3, -1]
    >>> parse_layers("-1,2,0,2", 4)
    [0, 2, -1]
    """
    if isinstance(text, str):
        if text.strip().lower() == "all":
            return [*range(num_layers + 1), -1]
        items = [t.strip() for t in text.split(",") if t.strip()]
        if not items:
            raise UserError("--layers: give `all` or comma-separated layer numbers, e.g. --layers 0,3,-1")
    else:
        items = list(text)
    try:
        numbers = [int(t) for t in items]
    except ValueError:
        raise UserError(
            f"--layers {text!r}: give `all` or comma-separated integers, e.g. --layers 0,3,-1"
        ) from None
    checked = {layers_lib.check_layer(k, num_layers, name="--layers") for k in numbers}
    return sorted(checked, key=depth_order)


def depth_order(layer: int) -> float:
    """Sort key of a layer number by depth: 0, 1, ..., L, then -1 (after the final norm)."""
    return float("inf") if layer == -1 else float(layer)
