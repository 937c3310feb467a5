"""Regenerate every generated part of the docs that a test keeps equal to its source (`make docs`).

- README.md's benchmark table      <- nitp_eval/tasks/benchmarks.yaml (``markdown_table``)
- nitp_eval/tasks/suites/*.yaml    <- the same table (``suite_group_yaml``)
- docs/contracts.md's key table    <- the config model (``keys_table``)
- docs/geometry.md's metric table  <- the metric registry (``nitp.metrics_registry.markdown_table``)
- docs/architecture.md's folder map <- the tree (``tests.test_architecture.folder_map``)
- nitp_eval/tasks/lm_eval_task_names.json.gz <- lm-eval's task index, for the installed lm-eval

Run it after changing any of those sources (the tests name this command when one is stale).
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _replace_table(text: str, table: str) -> str:
    """``text`` with the Markdown table that starts with ``table``'s header line replaced."""
    header = table.splitlines()[0]
    lines = text.splitlines(keepends=True)
    start = next(i for i, line in enumerate(lines) if line.rstrip("\n") == header)
    end = start
    while end < len(lines) and lines[end].startswith("|"):
        end += 1
    return "".join(lines[:start]) + table.rstrip("\n") + "\n" + "".join(lines[end:])


def _write_if_changed(path: Path, text: str) -> None:
    from nitp.io import atomic_write_text

    if path.read_text(encoding="utf-8") != text:
        atomic_write_text(path, text)
        print(f"wrote {path.relative_to(ROOT)}")


GEOMETRY_DOC = ROOT / "docs" / "geometry.md"
METRICS_START, METRICS_END = "<!-- metrics:start -->\n", "<!-- metrics:end -->"


def metric_table_in(text: str) -> str:
    """``text`` (docs/geometry.md) with the registry's metric table between its markers."""
    from nitp.metrics_registry import markdown_table

    head, rest = text.split(METRICS_START)
    _, tail = rest.split(METRICS_END)
    return f"{head}{METRICS_START}{markdown_table()}{METRICS_END}{tail}"


def _write_task_names() -> None:
    """The shipped names of lm-eval's task index, listed again only for another lm-eval version
    (listing takes tens of seconds)."""
    import gzip
    import json

    from nitp.io import atomic_write_bytes
    from nitp_eval.bench.plan import SHIPPED_TASK_NAMES, list_lm_eval_task_names, shipped_task_names

    if shipped_task_names() is None:
        listed = json.dumps(list_lm_eval_task_names()).encode()
        atomic_write_bytes(SHIPPED_TASK_NAMES, gzip.compress(listed, 9, mtime=0))
        print(f"wrote {SHIPPED_TASK_NAMES.relative_to(ROOT)}")


def main() -> None:
    from nitp_eval.tasks import TASKS_DIR, markdown_table, suite_group_yaml
    from nitp_train.config_model import keys_table
    from tests import test_architecture as arch

    readme = ROOT / "README.md"
    _write_if_changed(readme, _replace_table(readme.read_text(encoding="utf-8"), markdown_table()))
    for path in sorted((TASKS_DIR / "suites").glob("nitp_suite_*.yaml")):
        _write_if_changed(path, suite_group_yaml(path.stem.removeprefix("nitp_suite_")))
    contracts = ROOT / "docs" / "contracts.md"
    head, rest = contracts.read_text(encoding="utf-8").split("<!-- config-keys:start -->\n")
    _, tail = rest.split("<!-- config-keys:end -->")
    _write_if_changed(
        contracts, f"{head}<!-- config-keys:start -->\n{keys_table()}<!-- config-keys:end -->{tail}"
    )
    _write_if_changed(GEOMETRY_DOC, metric_table_in(GEOMETRY_DOC.read_text(encoding="utf-8")))
    _write_task_names()
    head, _, tail = arch._map_in_doc()
    _write_if_changed(arch.MAP_DOC, head + arch.folder_map() + tail)


if __name__ == "__main__":
    main()
