"""Evaluation during training (eval.every): plugins found through entry points, RNG and weights
untouched (the run is bit for bit the run without it), and the in-loop numbers equal
`nitp-eval bench` on the checkpoint of the same step."""

import json
import random

import numpy as np
import pytest
import torch

from nitp.errors import UserError
from nitp_train.evaluators import load_evaluators, preserved_rng
from tests.helpers import make_tiny_run, tiny_config

EVAL = ["eval.every=4", "eval.bench=[sentiment]", "eval.limit=6"]


def test_preserved_rng_restores_every_generator():
    before = (random.random(), np.random.rand(), torch.rand(1))
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    with preserved_rng():
        random.seed(7), np.random.seed(7), torch.manual_seed(7)
        random.random(), np.random.rand(), torch.rand(3)
    after = (random.random(), np.random.rand(), torch.rand(1))
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    expected = (random.random(), np.random.rand(), torch.rand(1))
    assert after[:2] == expected[:2] and torch.equal(after[2], expected[2]) and after != before


@pytest.mark.slow  # lm-eval / subprocess heavy: keeps the fast subset under a minute
def test_the_evaluators_come_from_the_entry_points_and_follow_the_plan():
    assert load_evaluators(tiny_config(extra=["eval.every=0"])) == []
    made = load_evaluators(tiny_config(extra=["eval.every=5", "eval.bench=[next_word]", "eval.geom=true"]))
    assert sorted(type(e).__name__ for e in made) == ["BenchEvaluator", "GeomEvaluator"]
    assert [
        type(e).__name__ for e in load_evaluators(tiny_config(extra=["eval.every=5", "eval.bench=[]"]))
    ] == []
    with pytest.raises(UserError, match="train.parallel=fsdp"):
        load_evaluators(tiny_config(extra=["eval.every=5", "train.parallel=fsdp"]))


@pytest.mark.slow  # seconds: out of the fast subset
def test_an_unknown_bench_task_fails_before_training(tmp_path):
    with pytest.raises(UserError, match="nope"):
        make_tiny_run(tmp_path / "run", extra=["eval.every=4", "eval.bench=[nitp_no_such_task_nope]"])
    assert not (tmp_path / "run" / "config.yaml").exists()


@pytest.mark.slow
def test_in_loop_eval_leaves_the_run_bit_for_bit_and_equals_nitp_eval_bench(tmp_path):
    from safetensors.torch import load_file

    from nitp_eval.bench.run import run_bench
    from nitp_eval.bench.settings import BenchSettings

    plain = make_tiny_run(tmp_path / "plain", steps=8, extra=["checkpoint.every=4"])
    evald = make_tiny_run(tmp_path / "eval", steps=8, extra=["checkpoint.every=4", *EVAL])
    for step in ("step_000004", "step_000008"):
        a = load_file(plain / "checkpoints" / step / "model.safetensors")
        b = load_file(evald / "checkpoints" / step / "model.safetensors")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), step
    rows = [json.loads(line) for line in (evald / "metrics.jsonl").read_text().splitlines()]
    logged = {r["step"]: r["eval/bench/sentiment"] for r in rows if "eval/bench/sentiment" in r}
    assert sorted(logged) == [4, 8]
    plain_rows = [json.loads(line) for line in (plain / "metrics.jsonl").read_text().splitlines()]
    assert [r.get("loss_total") for r in rows] == [r.get("loss_total") for r in plain_rows]
    record = json.loads((evald / "results/bench/step_000004-inloop-sentiment-limit6.json").read_text())
    assert record["kind"] == "bench" and record["model"]["step"] == 4
    [offline] = run_bench(
        [evald / "checkpoints" / "step_000004"],
        BenchSettings(tasks="sentiment", limit=6, device="cpu"),
        redo=True,
        out=tmp_path / "offline.json",
    )
    ours, theirs = record["scores"]["tasks"]["sentiment"], offline["scores"]["tasks"]["sentiment"]
    assert ours["value"] == theirs["value"] == logged[4]
    assert ours["items"] == theirs["items"]  # item by item, not only the mean


@pytest.mark.slow
def test_in_loop_mteb_and_geometry_write_records_and_metrics(tmp_path, monkeypatch):
    """eval.mteb and eval.geom: step records beside the checkpoint's, the last layer's erank,
    anisotropy and intrinsic dimension in metrics.jsonl, and no temporary folder left behind."""
    import json

    from nitp_train.config import load_config
    from nitp_train.trainer import train

    monkeypatch.setenv("NITP_CACHE_DIR", str(tmp_path / "cache"))
    sets = [
        "train.steps=4",
        "eval.every=4",
        "eval.bench=[]",
        "eval.mteb=[WordSim353]",
        "eval.geom=true",
        "checkpoint.every=4",
        "data.seq_len=64",
        "train.batch_size=4",
        "log.geom_every=0",
    ]
    run = train(load_config("configs/tiny-nitp.yaml", sets), tmp_path / "run", log=lambda *a, **k: None)
    [line] = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if "eval/seconds" in x]
    assert line["step"] == 4 and {
        "eval/geom/erank",
        "eval/geom/anisotropy",
        "eval/geom/intrinsic_dim",
    } <= set(line)
    assert "eval/mteb/WordSim353" in line
    geom = json.loads(next((run / "results" / "geom").glob("step_000004-inloop-*.json")).read_text())
    last = next(r for r in geom["scores"]["layers"] if r["layer"] == -1)
    assert line["eval/geom/erank"] == last["effective_rank_covariance"]
    assert geom["model"]["step"] == 4 and next((run / "results" / "mteb").glob("step_000004-inloop-*.json"))
    assert not (run / "inloop").exists()


@pytest.mark.slow  # trains a tiny model and runs lm-eval once
def test_an_evaluator_failure_never_costs_the_checkpoint_of_its_step(tmp_path):
    """The checkpoint of a step is written before that step's in-training evaluation (an evaluated
    step is always a checkpoint step): an evaluator that cannot write its results stops the run
    with the checkpoint on disk and the step's metrics line written; once fixed, ``--resume``
    evaluates that step before training on, and adds the results to its line."""
    from nitp.runs import list_checkpoints
    from nitp_train.trainer import train
    from tests.helpers import tiny_config

    run = tmp_path / "run"
    run.mkdir()
    (run / "results").write_text("a file where the evaluator's folder goes")
    extra = [*EVAL, "checkpoint.every=100", "log.every=2"]
    with pytest.raises(UserError) as e:
        make_tiny_run(run, steps=8, extra=extra)
    assert "\n" not in str(e.value) and "step 4" in str(e.value) and "--resume" in str(e.value)
    assert [p.name for p in list_checkpoints(run)] == ["step_000004"]
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps[-1] == 4
    (run / "results").unlink()  # the fix
    train(tiny_config("nitp", "tiny-dense", 8, extra), run, resume=True, log=lambda *_: None)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [2, 4, 6, 8]  # each step once, the resumed one included
    for step in (4, 8):
        row = rows[[r["step"] for r in rows].index(step)]
        assert "loss_total" in row and "eval/bench/sentiment" in row, row
        assert next((run / "results" / "bench").glob(f"step_{step:06d}-inloop-*.json"))
