"""nitp: nitp_train.

``from nitp_train import wrap_model`` gives the NITP drop-in wrapper (the ``nitp_train.dropin``
package); it is imported on first use so that ``nitp-train --help`` stays instant.
"""

_LAZY = ("wrap_model", "NITPWrapped", "unwrap", "add_nitp_callback")  # from nitp_train.dropin


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module("nitp_train.dropin"), name)
    raise AttributeError(f"module 'nitp_train' has no attribute {name!r}")
