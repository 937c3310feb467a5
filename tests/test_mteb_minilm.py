"""The whole pipeline against a real trained model: all-MiniLM-L6-v2 scored by `run_mteb` must get
the same mteb scores as mteb run on the plain SentenceTransformer of the same folder.

By default: the four fixture tasks (one per paper task type) and the offline WordSim353.
``NITP_MTEB_FULL_CHECK=1`` adds the whole offline suite (several minutes on CPU); docs/mteb.md
reports that run.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from nitp_eval.mteb.results import summarise
from nitp_eval.mteb.run import run_mteb
from nitp_eval.mteb.settings import MtebSettings
from nitp_eval.mteb.tasks import apply_data_dir, resolve_tasks, suite_task_names

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "mteb"
FIXTURE_TASKS = ["BIOSSES", "Banking77Classification", "SprintDuplicateQuestions", "AskUbuntuDupQuestions"]
OFFLINE = suite_task_names("offline") if os.environ.get("NITP_MTEB_FULL_CHECK") == "1" else ["WordSim353"]


@pytest.fixture(scope="module", autouse=True)
def mteb_cache(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MTEB_CACHE", str(tmp_path_factory.mktemp("mteb-cache")))
        mp.setenv("NITP_CACHE_DIR", str(tmp_path_factory.mktemp("nitp-cache")))  # per-task score cache
        yield


def _sentence_transformer_scores(minilm_dir, names):
    import mteb
    from sentence_transformers import SentenceTransformer

    tasks, problems = apply_data_dir(resolve_tasks(tasks=names), FIXTURES)
    assert not problems
    model = SentenceTransformer(str(minilm_dir), device="cpu")
    result = mteb.evaluate(
        model, tasks, cache=None, encode_kwargs={"batch_size": 32}, show_progress_bar=False
    )
    assert not result.exceptions, result.exceptions
    return summarise(tasks, result.task_results)


def test_minilm_scores_equal_mteb_on_the_plain_sentence_transformer(minilm_dir, tmp_path):
    names = FIXTURE_TASKS + OFFLINE
    ours = run_mteb(
        minilm_dir,
        MtebSettings(tasks=names, data_dir=FIXTURES),
        out=tmp_path / "minilm.json",
        log=lambda _: None,
    )[0]["scores"]
    reference = _sentence_transformer_scores(minilm_dir, names)
    assert set(ours["tasks"]) == set(names) == set(reference["tasks"])
    for name in names:  # shown with `pytest -s`: the numbers docs/mteb.md reports
        a, b = ours["tasks"][name]["main_score"], reference["tasks"][name]["main_score"]
        print(f"{name:<28} nitp {a:.6f}  sentence-transformers {b:.6f}  diff {a - b:+.1e}")
    for name in names:
        assert ours["tasks"][name]["main_score"] == pytest.approx(
            reference["tasks"][name]["main_score"], abs=2e-6
        ), name
    assert ours["overall"] == pytest.approx(reference["overall"], abs=2e-6)
    # a trained encoder is far from chance on human similarity and polarity
    assert ours["tasks"]["WordSim353"]["main_score"] > 0.5
    assert ours["tasks"]["Banking77Classification"]["main_score"] > 0.6
