"""The wheel built from the tree carries what an installed toolkit needs: configs and task tables."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_wheel_holds_configs_task_tables_and_suites(tmp_path):
    build = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert build.returncode == 0, build.stderr[-2000:]
    (wheel,) = tmp_path.glob("nitp-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {f"nitp/configs/{p.relative_to(ROOT / 'configs')}" for p in (ROOT / "configs").rglob("*.yaml")}
    assert "nitp/configs/tiny-nitp.yaml" in shipped and shipped <= names
    assert {"nitp_eval/tasks/benchmarks.yaml", "nitp_eval/tasks/suites/nitp_suite_paper.yaml"} <= names
    assert not any(n.startswith(("tests/", "runs/")) for n in names)


def test_configs_are_found_from_any_folder(tmp_path, monkeypatch):
    from nitp_train.config import config_path, configs_dir

    monkeypatch.chdir(tmp_path)
    for name in ("configs/tiny-nitp.yaml", "tiny-nitp.yaml", "tiny-nitp"):
        assert config_path(name) == configs_dir() / "tiny-nitp.yaml"
    assert config_path("ablations/shift-0") == configs_dir() / "ablations" / "shift-0.yaml"


def test_pyproject_finds_every_package_of_the_tree():
    """``packages.find`` (pyproject.toml) ships every package folder, ``configs/`` included: it is
    reached as ``nitp.configs`` through the ``nitp/configs`` link, so no package list can go stale."""
    import tomllib
    from setuptools import find_packages

    find = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    found = find_packages(ROOT, include=find["include"], exclude=find["exclude"])
    configs = [f"nitp.{p}" for p in find_packages(ROOT, include=["configs*"])]
    assert (ROOT / "nitp" / "configs").resolve() == (ROOT / "configs").resolve()
    assert set(configs) <= set(found)
    assert not [p for p in found if p.split(".")[0] in ("tests", "benchmarks", "build", "docs")]
