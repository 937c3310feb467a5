"""The dependency rules of docs/architecture.md, checked on the source (every import, lazy ones too).

- packages import only packages below them: nitp <- nitp_train <- analysis <- nitp_eval <- reports;
- no import circle between files;
- the shared core imports no tool package.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ORDER = ["nitp", "nitp_train", "analysis", "nitp_eval", "reports"]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path, modules: set[str]) -> set[str]:
    """First-party modules imported anywhere in the file (relative imports resolved); for
    ``from pkg import module`` the module, not the package's ``__init__``."""
    mod = _module_name(path)
    package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            submodules = {f"{target}.{a.name}" for a in node.names} & modules
            found.update(submodules or {target})
    return {m for m in found if m.split(".")[0] in ORDER}


def _graph() -> dict[str, set[str]]:
    files = {_module_name(p): p for pkg in ORDER for p in (ROOT / pkg).rglob("*.py")}
    graph = {}
    for name, path in files.items():
        graph[name] = {m for m in _imports(path, set(files)) if m in files and m != name}
    return graph


def test_packages_import_only_packages_below_them():
    wrong = []
    for mod, deps in _graph().items():
        rank = ORDER.index(mod.split(".")[0])
        wrong += [f"{mod} -> {d}" for d in deps if ORDER.index(d.split(".")[0]) > rank]
    assert not wrong, "imports against the package order:\n" + "\n".join(sorted(wrong))


def test_no_import_circle_between_files():
    graph = _graph()
    state: dict[str, int] = {}
    cycles = []

    def visit(node, stack):
        state[node] = 1
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                cycles.append(" -> ".join(stack[stack.index(dep) :] + [dep]))
            elif dep not in state:
                visit(dep, stack + [dep])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not cycles, "import circles:\n" + "\n".join(cycles)


@pytest.mark.parametrize("tool", ORDER[1:])
def test_the_checker_sees_each_tool_importing_the_core(tool):
    deps = {d for mod, ds in _graph().items() if mod.split(".")[0] == tool for d in ds}
    assert any(d.split(".")[0] == "nitp" for d in deps)
