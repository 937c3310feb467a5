"""What the objective's settings accept: the names of each choice and the ``train.loss_impl`` syntax.

Torch-free, so that the config model (``nitp_train.config_model``) and the reports that read it
import without torch; ``nitp_train.loss`` and friends re-export these names.

Example
-------
>>> parse_loss_impl("chunked:512")
('chunked', 512)
"""

from __future__ import annotations

import re

from nitp.errors import UserError

LOSS_KINDS = ("cosine", "mse", "smooth_l1", "kl")  # nitp.loss: distance of prediction and target
PROJECTORS = ("swiglu", "linear", "none")  # nitp.projector
# cos_reg.kind: "hidden" = the NITP paper's baseline (final hidden states of the batch);
# "embedding" = Gao et al. (2019)'s regulariser of the output word-embedding matrix rows
COS_REG_KINDS = ("hidden", "embedding")

LOSS_IMPLS = ("plain", "chunked", "chunked_gif", "liger")
CHUNKED_IMPLS = ("chunked", "chunked_gif")  # the kinds that take a chunk size: ``chunked:512``
DEFAULT_LOSS_CHUNK = 1024  # positions per chunk when a chunked kind names no size
MAX_LOSS_CHUNK = 1 << 24
LOSS_IMPL_NEED = (
    "use plain, chunked, chunked_gif or liger; a chunked kind may name its positions per chunk, "
    "e.g. chunked:512"
)


def parse_loss_impl(text: str) -> tuple[str, int]:
    """``(implementation, chunk size)`` of a ``train.loss_impl`` value (chunk 0 for plain, liger).

    Raises a one-line ``UserError`` for anything else.

    Examples
    --------
    >>> parse_loss_impl("plain"), parse_loss_impl("chunked"), parse_loss_impl("chunked_gif:512")
    (('plain', 0), ('chunked', 1024), ('chunked_gif', 512))
    """
    impl, _, size = str(text).partition(":")
    if impl not in LOSS_IMPLS or (size and impl not in CHUNKED_IMPLS):
        raise UserError(f"train.loss_impl={text!r}: {LOSS_IMPL_NEED}")
    if not size:
        return impl, DEFAULT_LOSS_CHUNK if impl in CHUNKED_IMPLS else 0
    if not re.fullmatch(r"[1-9][0-9]*", size) or int(size) > MAX_LOSS_CHUNK:
        raise UserError(
            f"train.loss_impl={text!r}: the chunk size must be an integer from 1 to {MAX_LOSS_CHUNK:,}"
        )
    return impl, int(size)


def resolve_loss_impl(loss_impl: str, loss_chunk: int = 0) -> tuple[str, int]:
    """``(implementation, chunk size)`` of ``train.loss_impl``, with the deprecated ``loss_chunk``.

    ``loss_chunk`` is the knob from before the chunk size was part of ``loss_impl``: ``auto``
    (its old default) is ``plain`` when ``loss_chunk == 0``, else ``chunked``; a chunked kind takes
    it as its size. A pair that disagrees (``plain`` or ``liger`` with a chunk size, two different
    sizes) is a one-line ``UserError``.

    Examples
    --------
    >>> resolve_loss_impl("auto", 0), resolve_loss_impl("auto", 512), resolve_loss_impl("chunked_gif", 0)
    (('plain', 0), ('chunked', 512), ('chunked_gif', 1024))
    """
    if loss_impl == "auto":
        return ("chunked", loss_chunk) if loss_chunk > 0 else ("plain", 0)
    impl, chunk = parse_loss_impl(loss_impl)
    if loss_chunk == 0 or (impl in CHUNKED_IMPLS and ":" not in loss_impl):
        return (impl, loss_chunk or chunk)
    if impl not in CHUNKED_IMPLS:
        raise UserError(
            f"train.loss_impl={loss_impl} with train.loss_chunk={loss_chunk}: remove train.loss_chunk "
            f"(deprecated), or write train.loss_impl=chunked:{loss_chunk}"
        )
    if chunk != loss_chunk:
        raise UserError(
            f"train.loss_impl={loss_impl} with train.loss_chunk={loss_chunk}: two chunk sizes; "
            f"remove train.loss_chunk (deprecated)"
        )
    return impl, chunk


def loss_impl_text(impl: str, chunk: int) -> str:
    """The ``train.loss_impl`` value of ``(implementation, chunk size)``: ``chunked:512``, ``plain``."""
    return f"{impl}:{chunk}" if impl in CHUNKED_IMPLS else impl
