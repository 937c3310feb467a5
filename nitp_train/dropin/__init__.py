"""NITP as a drop-in for other training loops.

- :mod:`nitp_train.dropin.core`: ``wrap_model`` (any HF causal LM), ``NITPWrapped``, ``unwrap``;
- :mod:`nitp_train.dropin.hf`: ``add_nitp_callback`` for HF ``Trainer`` / TRL ``SFTTrainer``
  (imports transformers' Trainer machinery, so it loads on first use);
- :mod:`nitp_train.dropin.titan`: the torchtitan loss term;
- :mod:`nitp_train.dropin.demo`: ``python -m nitp_train.dropin.demo MODEL OUT``, a short real run.
"""

from .core import HEAD_FILE, META_FILE, NITPWrapped, unwrap, wrap_model

__all__ = ["HEAD_FILE", "META_FILE", "NITPWrapped", "add_nitp_callback", "unwrap", "wrap_model"]


def __getattr__(name):
    if name in ("add_nitp_callback", "NITPCallback"):
        from . import hf

        return getattr(hf, name)
    raise AttributeError(f"module 'nitp_train.dropin' has no attribute {name!r}")
