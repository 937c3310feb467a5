"""`nitp-eval mirror import bigbench`: BIG-bench JSON tasks -> the rows of hails/bigbench.

The fixture holds real examples of the bigbench 1.0.0 sdist (``benchmark_tasks/<task>/task.json``,
every key but ``examples`` unchanged, the first three examples of each task; sports_understanding
keeps one of its real repeated examples). The tests pack it as the sdist is packed.
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest

from nitp_eval.data import bigbench

FIXTURE = Path(__file__).parent / "fixtures" / "bigbench" / "tasks.json"
TASKS = json.loads(FIXTURE.read_text(encoding="utf-8"))
SDIST = "bigbench-1.0.0.tar.gz"


def pack_sdist(path: Path) -> Path:
    """A .tar.gz laid out like the sdist (other members around the task files)."""
    with tarfile.open(path, "w:gz") as tar:

        def add(name: str, data: bytes) -> None:
            info = tarfile.TarInfo(f"bigbench-1.0.0/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))

        add("setup.py", b"# not read\n")
        add("bigbench/benchmark_tasks/other_task/task.json", b'{"examples": []}')
        for task, data in TASKS.items():
            add(f"bigbench/benchmark_tasks/{task}/task.json", json.dumps(data).encode())
            add(f"bigbench/benchmark_tasks/{task}/README.md", b"# task\n")
    return path


def test_format_follows_bigbench_json_task():
    """BIG-bench's default_format_fn + the hub builder's strip, on every branch the tasks use."""
    task = {
        "task_prefix": "Answer these.\n",
        "example_input_prefix": "\nSentence: ",
        "example_output_prefix": "\nAnswer: ",
        "append_choices_to_input": False,
        "examples": [
            {"input": "Is it? ", "target_scores": {"no": 0, "yes": 1}},
            {"input": "Is it? ", "target_scores": {"no": 0, "yes": 1}},  # repeated: dropped
            {"input": "Both?", "target_scores": {"a": 1, "b": 1}},  # no single best: left out
            {"input": "Which?", "target_scores": {" left": 1.0, "right ": 0.0}, "comment": "x"},
        ],
    }
    rows, skipped = bigbench.format_examples(task)
    assert rows == [
        {
            "idx": 0,
            "inputs": "Answer these.\n\nSentence: Is it? \nAnswer:",
            "targets": ["yes"],
            "multiple_choice_targets": ["no", "yes"],
            "multiple_choice_scores": [0, 1],
        },
        {
            "idx": 2,
            "inputs": "Answer these.\n\nSentence: Which?\nAnswer:",
            "targets": ["left"],
            "multiple_choice_targets": ["left", "right"],
            "multiple_choice_scores": [1, 0],
        },
    ]
    assert len(skipped) == 1 and skipped[0].startswith("example 1:")
    # defaults ("\nQ: ", "\nA: ") and the choices appended in RandomState(42)'s order of the sorted keys
    (row,), _ = bigbench.format_examples(
        {"examples": [{"input": "Pick", "target_scores": {"d": 0, "c": 0, "a": 0, "b": 1}}]}
    )
    assert row["inputs"] == "Q: Pick\n  choice: b\n  choice: d\n  choice: a\n  choice: c\nA:"
    assert row["multiple_choice_targets"] == ["d", "c", "a", "b"] and row["targets"] == ["b"]


@pytest.fixture(scope="module")
def imported(tmp_path_factory) -> tuple[Path, list[dict]]:
    root = tmp_path_factory.mktemp("bb")
    out = root / "mirror"
    return out, bigbench.import_bigbench(out, pack_sdist(root / SDIST), log=lambda _: None)


def test_rows_and_answer_balance(imported):
    out, summary = imported
    by_task = {r["task"]: r for r in summary}
    assert list(by_task) == [f"bb_{t}" for t in bigbench.TASKS]
    assert {t: (r["rows"], r["examples"], r["skipped"]) for t, r in by_task.items()} == {
        "bb_causal_judgment": (3, 3, 0),
        "bb_navigate": (3, 3, 0),
        "bb_sports_understanding": (3, 4, 0),  # the repeated example is dropped, as BIG-bench does
        "bb_snarks": (3, 3, 0),
        "bb_anachronisms": (3, 3, 0),
        "bb_implicatures": (3, 3, 0),
    }
    assert by_task["bb_sports_understanding"]["answers"] == {0: 2, 1: 1}
    assert by_task["bb_causal_judgment"]["answers"] == {0: 2, 1: 1}


def test_rows_follow_the_hub_schema(imported):
    import datasets
    import pyarrow.parquet as pq

    out, _ = imported
    repo = out / "hails" / "bigbench"
    sports = datasets.load_dataset(str(repo), "sports_understanding_zero_shot", split="default")
    assert sports.column_names == [
        "idx",
        "inputs",
        "targets",
        "multiple_choice_targets",
        "multiple_choice_scores",
    ]
    assert sports[0] == {
        "idx": 0,
        "inputs": "Determine whether the following statement or statements are plausible or "
        "implausible:\nStatement: Jamal Murray was perfect from the line\nPlausible/implausible?",
        "targets": ["plausible"],
        "multiple_choice_targets": ["plausible", "implausible"],
        "multiple_choice_scores": [1, 0],
    }
    causal = datasets.load_dataset(str(repo), "causal_judgment_zero_shot", split="default")
    assert causal[0]["inputs"].startswith(
        "How would a typical person answer each of the following questions about causation?\n\n\nQ: "
    )
    assert causal[0]["inputs"].endswith("\nA:")
    (parquet,) = (repo / "navigate_zero_shot").glob("default-*.parquet")
    schema = pq.read_schema(parquet)
    assert str(schema.field("idx").type) == "int32"
    assert str(schema.field("multiple_choice_scores").type) == "list<element: int32>"


def test_folder_and_partial_imports(imported, tmp_path):
    from nitp_eval.data.mirror import readme_configs

    out, from_tar = imported
    folder = tmp_path / "bigbench-1.0.0" / "bigbench" / "benchmark_tasks"
    for task, data in TASKS.items():
        (folder / task).mkdir(parents=True)
        (folder / task / "task.json").write_text(json.dumps(data))
    assert (
        bigbench.import_bigbench(tmp_path / "m", tmp_path / "bigbench-1.0.0", log=lambda _: None) == from_tar
    )
    # re-importing one task replaces its config and keeps the others in the card
    (row,) = bigbench.import_bigbench(tmp_path / "m", folder, names=["navigate"], log=lambda _: None)
    assert row["task"] == "bb_navigate"
    configs = readme_configs(tmp_path / "m" / "hails" / "bigbench")
    assert sorted(configs) == sorted(bigbench.config_name(t) for t in bigbench.TASKS)


def test_bad_sources_are_one_line(tmp_path, monkeypatch, capsys):
    from nitp_eval.cli import main
    from tests.helpers import run_main

    not_tar = tmp_path / SDIST
    not_tar.write_bytes(b"not a tar archive")
    partial = tmp_path / "partial.tar.gz"
    with tarfile.open(partial, "w:gz") as tar:
        data = json.dumps(TASKS["navigate"]).encode()
        info = tarfile.TarInfo("bigbench-1.0.0/bigbench/benchmark_tasks/navigate/task.json")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    cases = [
        (["--source", not_tar], "not a readable tar archive"),
        (["--source", tmp_path / "absent.tar.gz"], "no such file"),
        (["--source", tmp_path], "no benchmark_tasks/causal_judgment/task.json below it"),
        (["--source", partial], "no bigbench/benchmark_tasks/causal_judgment/task.json in it"),
        ([], "needs --source"),
    ]
    for extra, message in cases:
        code, _, err = run_main(
            main,
            "nitp-eval",
            ["mirror", "import", "bigbench", "--out", tmp_path / "m", *extra],
            monkeypatch,
            capsys,
        )
        assert code == 2 and message in err and "Traceback" not in err, (extra, err)
        assert len(err.strip().splitlines()) == 1 and "bigbench-1.0.0.tar.gz" in err
    assert not (tmp_path / "m").exists()


@pytest.mark.slow  # lm-eval / subprocess heavy: keeps the fast subset under a minute
def test_lm_eval_builds_docs_and_targets_with_its_own_tasks(imported, tmp_path):
    """lm-eval's bigbench_<task>_multiple_choice YAMLs, unchanged, read the mirror via --data-dir."""
    from lm_eval.tasks import get_task_dict

    from nitp_eval.data import mirror
    from nitp_eval.tasks import BENCHMARKS, SUITES

    out, _ = imported
    names = [BENCHMARKS[n].lm_eval_task for n in SUITES["bigbench"]]
    assert names == [bigbench.lm_eval_task(t) for t in bigbench.TASKS]
    needs = mirror.data_needs(mirror.task_manager(), names)
    assert {(n.repo, n.config, n.splits) for n in needs} == {
        ("hails/bigbench", bigbench.config_name(t), ("default",)) for t in bigbench.TASKS
    }
    assert all(mirror.missing_reason(out, n) is None for n in needs)
    tm = mirror.task_manager(mirror.write_overrides(needs, out, tmp_path / "overrides"))
    tasks = get_task_dict(names, tm)
    sports = tasks["bigbench_sports_understanding_multiple_choice"]
    docs = list(sports.eval_docs)
    assert len(docs) == 3
    assert sports.doc_to_text(docs[2]).endswith(
        "Statement: Jamal Murray walked on ball four\nPlausible/implausible?"
    )
    assert sports.doc_to_choice(docs[2]) == ["plausible", "implausible"]
    assert sports.doc_to_target(docs[2]) == 1
    navigate = tasks["bigbench_navigate_multiple_choice"]
    first = next(iter(navigate.eval_docs))
    assert navigate.doc_to_text(first).startswith("If you follow these instructions, do you return")
    assert navigate.doc_to_choice(first) == first["multiple_choice_targets"]
    assert navigate.doc_to_target(first) == first["multiple_choice_scores"].index(1)
    assert {name: len(list(t.eval_docs)) for name, t in tasks.items()} == {n: 3 for n in names}


# ----------------------------------------------------------------------------- the real sdist
HUB_SIZES = {  # the hub builder's dataset card: rows and Arrow bytes of split "default"
    "causal_judgment": (190, 204974),
    "navigate": (1000, 226212),
    "sports_understanding": (986, 227049),
    "snarks": (181, 45810),
    "anachronisms": (230, 48937),
    "implicatures": (492, 91892),
}


@pytest.fixture(scope="module")
def real_sdist() -> Path:
    """``$NITP_CACHE_DIR/test-models/bigbench-1.0.0.tar.gz`` (358 MB, not fetched by the tests)."""
    from nitp.records import cache_dir

    path = cache_dir() / "test-models" / SDIST
    if not path.is_file():
        pytest.skip(f"no {path}: put the bigbench 1.0.0 sdist there to run this test")
    return path


@pytest.mark.slow
def test_real_sdist_gives_the_hub_rows(real_sdist, tmp_path):
    """Row counts equal the hub's, and the bytes too up to the Arrow validity bitmaps the hub's
    writer kept (3 per table, n/8 bytes each, plus 24 bytes; measured on every split of these
    tasks): the inputs, choices and targets have the hub's exact lengths."""
    import math

    import pyarrow as pa
    import pyarrow.parquet as pq

    summary = bigbench.import_bigbench(tmp_path, real_sdist, log=lambda _: None)
    assert {r["bigbench_task"]: r["rows"] for r in summary} == {t: n for t, (n, _) in HUB_SIZES.items()}
    assert {r["task"]: r["answers"] for r in summary} == {
        "bb_causal_judgment": {0: 99, 1: 91},
        "bb_navigate": {0: 500, 1: 500},
        "bb_sports_understanding": {0: 490, 1: 496},
        "bb_snarks": {0: 84, 1: 97},
        "bb_anachronisms": {0: 115, 1: 115},
        "bb_implicatures": {0: 246, 1: 246},
    }
    for task, (n, hub_bytes) in HUB_SIZES.items():
        (parquet,) = (tmp_path / "hails" / "bigbench" / bigbench.config_name(task)).glob("*.parquet")
        rows = pq.read_table(parquet).to_pylist()  # rebuilt as the hub's writer built its table
        ours = pa.Table.from_pylist(rows, schema=bigbench.hub_schema()).nbytes
        assert abs(hub_bytes - ours - 3 * math.ceil(n / 8) - 24) <= 1, (task, hub_bytes, ours)
