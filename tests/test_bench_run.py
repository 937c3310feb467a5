"""`nitp-eval bench` end to end: the 13 paper benchmarks from a local mirror, scored by lm-eval.

The mirror (tests/fixtures/bench/hub_fixtures.py) holds a few rows per split in each real
dataset's layout and schema; the checkpoint is the tiny model the real trainer makes.
"""

from __future__ import annotations

import math

import pytest

from nitp_eval.bench.settings import BenchSettings
from nitp_eval.tasks import BENCHMARKS, SUITES

# leaves (lm-eval subtasks) per benchmark: with limit=1 each scores one document
LEAVES = {
    "mmlu": 57,
    "mmlu_pro": 1,
    "ceval": 52,
    "xiezhi": 4,
    "lambada": 1,
    "bbh": 27,
    "arc_challenge": 1,
    "commonsense_qa": 1,
    "balanced_copa": 1,
    "c3": 2,
    "agieval": 21,
    "gsm8k": 1,
    "lcbench": 2,
}
# documents the fixture holds in each benchmark's evaluation split(s)
FIXTURE_DOCS = {
    "mmlu": 57 * 2,
    "mmlu_pro": 3,
    "ceval": 52 * 2,
    "xiezhi": 4 * 2,
    "lambada": 3,
    "bbh": 27 * 2,
    "arc_challenge": 3,
    "commonsense_qa": 3,
    "balanced_copa": 3,
    "c3": 2 * 2 * 2,
    "agieval": 21 * 2,
    "gsm8k": 2,
    "lcbench": 2 * 2,
}


pytestmark = pytest.mark.usefixtures("bench_cache")


@pytest.fixture(scope="module")
def paper_run(tiny_checkpoint, mirror, tmp_path_factory):
    from nitp_eval.bench import run_bench

    out = tmp_path_factory.mktemp("bench") / "paper.json"
    logs: list[str] = []
    # zero-shot keeps the prompts (and the test) short; default shots are covered by the rerun test
    [record] = run_bench(
        [tiny_checkpoint],
        BenchSettings(
            suite="paper", limit=1, num_fewshot=0, data_dir=mirror, allow_unsafe_code=True, max_gen_toks=2
        ),
        out=out,
        log=logs.append,
    )
    return record, out, logs


def test_all_thirteen_benchmarks_score_from_the_mirror(paper_run, mirror):
    record, out, _ = paper_run
    scores = record["scores"]
    assert "failed" not in scores
    assert list(scores["tasks"]) == list(SUITES["paper"])
    for name, s in scores["tasks"].items():
        b = BENCHMARKS[name]
        assert s["lm_eval_task"] == b.lm_eval_task
        assert s["metric"] == b.metric
        assert 0.0 <= s["value"] <= 1.0
        assert s["n"] == LEAVES[name], name
        assert s["n_total"] == FIXTURE_DOCS[name], name  # the documents came from the fixture mirror
        assert s["shots"] == 0, name
        assert s["version"] is not None
    assert scores["tasks"]["gsm8k"]["filter"] == "strict-match"
    assert math.isclose(scores["average"], sum(s["value"] for s in scores["tasks"].values()) / 13)
    assert record["settings"]["data_dir"] == str(mirror.resolve())
    assert record["model"]["hash"] and record["model"]["step"] is not None


def test_record_is_written_where_out_says(paper_run):
    from nitp.records import read_record

    record, out, _ = paper_run
    on_disk = read_record(out)
    assert on_disk["kind"] == "bench"
    assert on_disk["scores"] == record["scores"]
    assert on_disk["versions"]["lm_eval"]


def test_scores_equal_direct_lm_eval_calls(paper_run, tiny_checkpoint, mirror, tmp_path):
    """The same tasks through plain lm_eval.simple_evaluate, pointed at the same local data by
    override files written here by hand, give the same numbers."""
    import lm_eval
    import yaml
    from lm_eval.tasks import TaskManager

    from nitp_eval.bench import run_bench
    from nitp_eval.data.mirror import task_manager
    from nitp_eval.tasks import TASKS_DIR

    [record] = run_bench(
        [tiny_checkpoint],
        BenchSettings(tasks="arc,c3,gsm8k", limit=3, num_fewshot=0, data_dir=mirror, max_gen_toks=2),
        out=tmp_path / "r.json",
        log=lambda _: None,
    )
    plain = task_manager()  # only used to find the tasks' own YAML files
    local = {
        "arc_challenge": "allenai/ai2_arc",
        "gsm8k": "openai/gsm8k",
        "nitp_c3_mixed": "dataset-org/c3",
        "nitp_c3_dialog": "dataset-org/c3",
    }
    for task, repo in local.items():
        (tmp_path / f"{task}.yaml").write_text(
            yaml.safe_dump(
                {"include": str(plain.task_index[task].yaml_path), "dataset_path": str(mirror / repo)}
            )
        )
    tm = TaskManager(include_path=[str(TASKS_DIR), str(tmp_path)])
    direct = lm_eval.simple_evaluate(
        model="hf",
        model_args={"pretrained": str(tiny_checkpoint)},
        tasks=["arc_challenge", "nitp_c3", "gsm8k"],
        num_fewshot=0,
        limit=3,
        batch_size=8,
        device="cpu",
        task_manager=tm,
        gen_kwargs={"max_gen_toks": 2},
        log_samples=False,
    )
    for name, task in (("arc_challenge", "arc_challenge"), ("c3", "nitp_c3"), ("gsm8k", "gsm8k")):
        ours = record["scores"]["tasks"][name]
        suffix = f",{ours.get('filter', 'none')}"
        assert direct["results"][task][ours["metric"] + suffix] == ours["value"], name
        assert direct["results"][task][ours["metric"] + "_stderr" + suffix] == ours["stderr"], name
    assert record["scores"]["tasks"]["c3"]["n"] == 6  # 3 questions from each of the two parts


def test_default_shots_cache_and_redo(paper_run, tiny_checkpoint, mirror, monkeypatch):
    """Default shots (ARC 25, CSQA 7); a rerun is served from the cache without loading the model;
    --redo evaluates again and gets the same numbers."""
    import nitp_eval.bench.run as bench

    loads = []
    real_load = bench.load_lm
    monkeypatch.setattr(bench, "load_lm", lambda *a, **k: loads.append(1) or real_load(*a, **k))
    [first] = bench.run_bench(
        [tiny_checkpoint], BenchSettings(tasks="arc,csqa", limit=2, data_dir=mirror), log=lambda _: None
    )
    assert {n: s["shots"] for n, s in first["scores"]["tasks"].items()} == {
        "arc_challenge": 25,
        "commonsense_qa": 7,
    }
    assert loads == [1]
    logs: list[str] = []
    [again] = bench.run_bench(
        [tiny_checkpoint],
        BenchSettings(tasks="arc_challenge,commonsense_qa", limit=2, data_dir=mirror),
        log=logs.append,
    )
    assert loads == [1], "cached tasks must not load the model"
    assert sum("cached" in line for line in logs) == 2
    assert again["scores"] == first["scores"]
    [redone] = bench.run_bench(
        [tiny_checkpoint],
        BenchSettings(tasks="csqa", limit=2, data_dir=mirror),
        redo=True,
        log=lambda _: None,
    )
    assert loads == [1, 1]
    assert redone["scores"]["tasks"]["commonsense_qa"] == first["scores"]["tasks"]["commonsense_qa"]


def test_offline_suite_matches_direct_lm_eval(tiny_checkpoint, tmp_path):
    """--suite offline needs nothing but the install; its numbers are lm-eval's own."""
    import lm_eval

    from nitp_eval.bench import run_bench
    from nitp_eval.data.mirror import task_manager

    [record] = run_bench(
        [tiny_checkpoint],
        BenchSettings(suite="offline", limit=8),
        out=tmp_path / "offline.json",
        log=lambda _: None,
    )
    assert list(record["scores"]["tasks"]) == ["analogies", "next_word", "sentiment"]
    assert record["scores"]["tasks"]["analogies"]["n_total"] == 560
    tm = task_manager()  # lm-eval's TaskManager over its tasks and the generated offline tasks
    direct = lm_eval.simple_evaluate(
        model="hf",
        model_args={"pretrained": str(tiny_checkpoint)},
        tasks=["nitp_offline_sentiment"],
        num_fewshot=4,
        limit=8,
        batch_size=8,
        device="cpu",
        task_manager=tm,
        log_samples=False,
    )
    assert (
        direct["results"]["nitp_offline_sentiment"]["acc,none"]
        == record["scores"]["tasks"]["sentiment"]["value"]
    )


def test_a_killed_run_resumes_with_the_benchmarks_it_had_not_finished(
    paper_run, tiny_checkpoint, mirror, monkeypatch
):
    """Interrupted on its second benchmark (as by Ctrl-C or a kill), a rerun evaluates only that one."""
    import nitp_eval.bench.run as bench

    real_evaluate = bench.evaluate
    seen: list[str] = []

    def interrupted(lm, b, *args, **kwargs):
        seen.append(b.name)
        if len(seen) == 2:
            raise KeyboardInterrupt
        return real_evaluate(lm, b, *args, **kwargs)

    monkeypatch.setattr(bench, "evaluate", interrupted)
    with pytest.raises(KeyboardInterrupt):
        bench.run_bench(
            [tiny_checkpoint],
            BenchSettings(tasks="csqa,arc", limit=2, num_fewshot=1, data_dir=mirror),
            log=lambda _: None,
        )
    assert seen == ["commonsense_qa", "arc_challenge"]
    seen.clear()
    monkeypatch.setattr(
        bench, "evaluate", lambda lm, b, *a, **k: seen.append(b.name) or real_evaluate(lm, b, *a, **k)
    )
    [record] = bench.run_bench(
        [tiny_checkpoint],
        BenchSettings(tasks="csqa,arc", limit=2, num_fewshot=1, data_dir=mirror),
        log=lambda _: None,
    )
    assert seen == ["arc_challenge"]  # commonsense_qa came from the cache
    assert set(record["scores"]["tasks"]) == {"commonsense_qa", "arc_challenge"}
