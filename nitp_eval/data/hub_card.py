"""The dataset card of a mirrored repository: the hub's ``configs:`` header that ``datasets`` reads."""

from __future__ import annotations

from pathlib import Path

import yaml

from nitp.io import atomic_write_text


def write_card(root: Path, configs: dict[str, dict[str, str]], title: str) -> None:
    """A README.md whose YAML header maps config -> split -> file (the hub's `configs:` format).

    >>> write_card(Path("mirror/tau/commonsense_qa"), {"default": {"validation": "val.parquet"}},
    ...            "# CSQA")                                                    # doctest: +SKIP
    """
    header = {
        "configs": [
            {"config_name": name, "data_files": [{"split": s, "path": p} for s, p in splits.items()]}
            for name, splits in configs.items()
        ]
    }
    atomic_write_text(
        root / "README.md", "---\n" + yaml.safe_dump(header, sort_keys=False) + "---\n\n" + title + "\n"
    )
