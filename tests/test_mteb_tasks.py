"""MTEB tasks through mteb's own code: the paper suite's scope, the offline suite's data, and one
fixture task per paper task type (STS, Classification, PairClassification, Reranking) loaded from
a local mirror in the hub layout (tests/fixtures/mteb, see make_fixtures.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nitp.errors import UserError
from nitp.records import read_record
from nitp_eval.mteb.results import missing_tasks
from nitp_eval.mteb.run import run_mteb
from nitp_eval.mteb.settings import MtebSettings
from nitp_eval.mteb.tasks import PAPER_GROUPS, PAPER_TASKS, apply_data_dir, mteb_dataset_repos, resolve_tasks

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "mteb"
FIXTURE_TASKS = {  # task -> (mteb type, main score, paper group)
    "BIOSSES": ("STS", "cosine_spearman", "STS"),
    "Banking77Classification": ("Classification", "accuracy", "Classification"),
    "SprintDuplicateQuestions": ("PairClassification", "max_ap", "Retrieval/dup"),
    "AskUbuntuDupQuestions": ("Reranking", "map_at_1000", "Retrieval/dup"),
}


@pytest.fixture(scope="module", autouse=True)
def mteb_cache(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MTEB_CACHE", str(tmp_path_factory.mktemp("mteb-cache")))
        mp.setenv("NITP_CACHE_DIR", str(tmp_path_factory.mktemp("nitp-cache")))  # per-task score cache
        yield


# ----------------------------------------------------------------------------- paper suite scope
@pytest.mark.slow  # seconds: out of the fast subset
def test_paper_suite_is_the_25_tasks_with_english_test_scope():
    tasks = resolve_tasks("paper")
    assert [t.metadata.name for t in tasks] == PAPER_TASKS and len(tasks) == 25
    assert {g: len(n) for g, n in PAPER_GROUPS.items()} == {
        "Classification": 10,
        "STS": 9,
        "Retrieval/dup": 6,
    }
    by_name = {t.metadata.name: t for t in tasks}
    assert all(list(t.eval_splits) == ["test"] for t in tasks)
    assert by_name["AmazonCounterfactualClassification"].hf_subsets == ["en"]
    assert by_name["STS17"].hf_subsets == ["en-en"]
    for name in (
        "AmazonReviewsClassification",
        "MTOPDomainClassification",
        "MTOPIntentClassification",
        "MassiveIntentClassification",
        "MassiveScenarioClassification",
    ):
        assert by_name[name].hf_subsets == ["en"], name
    # the classes themselves keep all languages: the scope is the benchmark's, per object
    assert len(type(by_name["STS17"]).metadata.hf_subsets) > 1


@pytest.mark.slow  # seconds (mteb builds every paper task): out of the fast subset
def test_dataset_repos_for_the_mirror():
    repos = {r["task"]: r for r in mteb_dataset_repos(PAPER_TASKS + ["WordSim353"])}
    assert set(repos) == set(PAPER_TASKS)  # offline tasks ship their data: no repository
    assert repos["STS17"]["repo"] == "mteb/sts17-crosslingual-sts" and repos["STS17"]["subsets"] == ["en-en"]
    assert all(len(r["revision"]) == 40 for r in repos.values())


@pytest.mark.slow  # seconds: out of the fast subset
def test_unknown_task_names_the_closest_match():
    with pytest.raises(UserError, match=r"unknown MTEB task 'STSBenchmarks'.*did you mean 'STSBenchmark'"):
        resolve_tasks(tasks=["STSBenchmarks"])


@pytest.mark.slow  # seconds (imports mteb): out of the fast subset
def test_data_dir_override_points_the_task_at_its_folder_only():
    tasks = resolve_tasks(tasks=["BIOSSES", "STS12", "WordSim353"])
    ready, problems = apply_data_dir(tasks, FIXTURES)
    assert [t.metadata.name for t in ready] == ["BIOSSES", "WordSim353"]
    assert ready[0].metadata.dataset["path"] == str(FIXTURES / "mteb" / "biosses-sts")
    assert ready[0].metadata.dataset["revision"] == type(ready[0]).metadata.dataset["revision"]
    assert type(ready[0]).metadata.dataset["path"] == "mteb/biosses-sts"  # the class is untouched
    assert len(problems) == 1 and problems[0].startswith("STS12: no data in")
    assert "nitp-eval mirror export --tasks STS12" in problems[0]


# ----------------------------------------------------------------------------- offline suite data
def test_offline_suite_reads_the_shipped_data():
    sizes = {}
    for task in resolve_tasks("offline"):
        task.load_data()
        sizes[task.metadata.name] = {split: len(ds) for split, ds in task.dataset.items()}
        if task.metadata.type == "Classification":
            for ds in task.dataset.values():  # balanced, both labels
                assert sorted(set(ds["label"])) == [0, 1] and sum(ds["label"]) * 2 == len(ds)
            assert not any(
                t.startswith(("From:", "Newsgroups:", "Path:")) for t in task.dataset["test"]["text"]
            )
    assert sizes == {
        "WordSim353": {"test": 353},
        "SimLex999": {"test": 999},
        "LeeDocumentSimilarity": {"test": 1225},
        "PangLeePolarity": {"train": 100, "test": 100},
        "MiniNewsgroups": {"train": 100, "test": 100},
    }


# ----------------------------------------------------------------------------- fixture tasks via mteb
@pytest.fixture(scope="module")
def fixture_run(tiny_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("records") / "fixture.json"
    log: list[str] = []
    records = run_mteb(
        tiny_checkpoint,
        MtebSettings(tasks=[*FIXTURE_TASKS, "STS12"], data_dir=FIXTURES),
        out=out,
        log=log.append,
    )
    return records[0], out, log


def test_each_paper_task_type_runs_through_mteb_from_the_mirror(fixture_run):
    record, out, _ = fixture_run
    scores = record["scores"]["tasks"]
    assert set(scores) == set(FIXTURE_TASKS)
    for name, (ttype, metric, group) in FIXTURE_TASKS.items():
        s = scores[name]
        assert (s["type"], s["metric"], s["group"]) == (ttype, metric, group)
        assert -1.0 <= s["main_score"] <= 1.0
    # group averages are macro averages of the tasks present; overall is the mean over tasks
    groups = record["scores"]["groups"]
    dup = [scores["SprintDuplicateQuestions"]["main_score"], scores["AskUbuntuDupQuestions"]["main_score"]]
    assert groups["Retrieval/dup"] == pytest.approx(sum(dup) / 2)
    assert record["scores"]["overall"] == pytest.approx(sum(s["main_score"] for s in scores.values()) / 4)
    assert list(groups) == ["Classification", "STS", "Retrieval/dup"]


def test_a_task_without_data_is_named_with_the_export_command_and_the_others_run(fixture_run):
    record, out, log = fixture_run
    assert missing_tasks(record) == ["STS12"]
    lines = [line for line in log if "STS12" in line]
    assert len(lines) == 1 and "nitp-eval mirror export --tasks STS12" in lines[0]
    assert read_record(out)["scores"]["tasks"].keys() == record["scores"]["tasks"].keys()


def test_record_follows_the_contract(fixture_run, tiny_checkpoint):
    record, out, _ = fixture_run
    assert record["kind"] == "mteb" and record["schema"] == "nitp.record/1"
    assert (
        record["model"]["path"] == str(Path(tiny_checkpoint).resolve()) and len(record["model"]["hash"]) == 64
    )
    settings = record["settings"]
    assert settings["pooling"] == "mean" and settings["layer"] == -1 and settings["batch_size"] == 32
    assert settings["tasks"] == list(FIXTURE_TASKS) + ["STS12"] and settings["suite"] is None
    assert "mteb" in record["versions"]
    json.dumps(record)  # plain JSON


def test_data_dir_without_any_task_data_fails_at_once(tiny_checkpoint, tmp_path):
    with pytest.raises(UserError, match=r"none of the 1 tasks has data there.*mirror export --tasks STS12"):
        run_mteb(
            tiny_checkpoint,
            MtebSettings(tasks=["STS12"], data_dir=tmp_path),
            out=tmp_path / "r.json",
            log=lambda _: None,
        )
