"""Experiment trackers (log.trackers): stable names, the stores hold the logged scalars at the right
steps, and a resume continues the same tracker run (TensorBoard purges the re-run steps)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nitp.errors import UserError
from nitp_train.trackers import STATE_FILE, Trackers, require, scalars, tracker_name
from tests.helpers import tiny_cli_args

ROOT = Path(__file__).resolve().parent.parent
CONFIG = {"run_name": "t", "train": {"lr": 0.001, "betas": [0.9, 0.95]}, "log": {"trackers": ["tensorboard"]}}


def _tb_scalars(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_names_are_stable_and_only_finite_numbers_go_out():
    row = {
        "step": 5,
        "tokens": 640,
        "loss_ntp": 3.5,
        "lr": 1e-3,
        "erank": 12.0,
        "val_loss": 4.0,
        "val_loss_batches": [4.0, 4.1],
        "loss_impl": "plain",
        "fused_adamw": False,
        "eval/bench/next_word": 0.25,
        "mfu": float("nan"),
    }
    assert scalars(row) == {
        "progress/tokens": 640.0,
        "train/loss_ntp": 3.5,
        "train/lr": 1e-3,
        "geometry/erank": 12.0,
        "val/val_loss": 4.0,
        "train/fused_adamw": 0.0,
        "eval/bench/next_word": 0.25,
    }
    assert tracker_name("nitp_grad_share") == "train/nitp_grad_share"


def test_a_missing_tracker_names_the_extra_and_an_unknown_one_the_choices():
    if __import__("importlib").util.find_spec("wandb") is None:
        with pytest.raises(UserError, match=r"pip install 'nitp\[wandb\]'"):
            require("wandb")
    with pytest.raises(UserError, match="choose from tensorboard, trackio, wandb, mlflow"):
        require("neptune")


def test_tensorboard_logs_each_step_once_and_a_resume_purges_the_rerun_steps(tmp_path):
    run = Trackers(tmp_path, ["tensorboard"], "t", CONFIG)
    for step in range(1, 7):
        run.log({"step": step, "loss_ntp": float(step)})
    run.close()
    run = Trackers(tmp_path, ["tensorboard"], "t", CONFIG, resume_step=3)  # killed after step 6, ckpt 3
    for step in range(4, 9):
        run.log({"step": step, "loss_ntp": 100.0 + step})
    run.close()
    got = _tb_scalars(tmp_path / "tensorboard")["train/loss_ntp"]
    assert got == [(1, 1.0), (2, 2.0), (3, 3.0)] + [(s, 100.0 + s) for s in range(4, 9)]
    state = json.loads((tmp_path / STATE_FILE).read_text())
    assert state == {"run_name": "t", "tensorboard": {"log_dir": "tensorboard"}}


TRACKIO_SCRIPT = """
import json, sys
from nitp_train.trackers import Trackers
run_dir = sys.argv[1]
cfg = {"run_name": "t", "train": {"lr": 0.001}}
run = Trackers(run_dir, ["trackio"], "t", cfg)
for step in (1, 2, 3):
    run.log({"step": step, "loss_ntp": float(step)})
run.close()
first = json.load(open(run_dir + "/trackers.json"))["trackio"]
run = Trackers(run_dir, ["trackio"], "t", cfg, resume_step=3)
for step in (4, 5):
    run.log({"step": step, "loss_ntp": float(step)})
run.close()
from trackio.sqlite_storage import SQLiteStorage
state = json.load(open(run_dir + "/trackers.json"))["trackio"]
logs = SQLiteStorage.get_logs(state["project"], state["name"])
print(json.dumps({"first": first, "state": state, "runs": SQLiteStorage.get_runs(state["project"]),
                  "points": [[r["step"], r["train/loss_ntp"]] for r in logs if "train/loss_ntp" in r]}))
"""


def test_trackio_local_store_holds_the_steps_and_a_resume_continues_the_same_run(tmp_path):
    pytest.importorskip("trackio")
    env = {**os.environ, "TRACKIO_DIR": str(tmp_path / "store")}
    out = subprocess.run(
        [sys.executable, "-c", TRACKIO_SCRIPT, str(tmp_path / "run")],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["state"] == got["first"] and got["state"]["dir"] == str(tmp_path / "store")
    assert got["runs"] == [got["state"]["name"]]  # one run, continued
    assert got["points"] == [[s, float(s)] for s in range(1, 6)]


@pytest.mark.slow
def test_a_killed_run_resumes_into_the_same_tracker_runs(tmp_path):
    """nitp-train with tensorboard + trackio + eval.every, SIGKILLed after a checkpoint, resumed."""
    pytest.importorskip("trackio")
    run_dir = tmp_path / "run"
    sets = ["log.trackers=[tensorboard,trackio]", "eval.every=6", "eval.limit=4", "train.steps=12"]
    sets += ["checkpoint.every=6", "log.every=2"]
    args = [sys.executable, "-m", "nitp_train", "run", "--run-dir", str(run_dir), *tiny_cli_args()]
    args += [a for s in sets for a in ("--set", s)]
    env = {**os.environ, "TRACKIO_DIR": str(tmp_path / "store")}
    proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 400
    while not (run_dir / "checkpoints" / "step_000006" / "nitp_meta.json").exists():
        assert proc.poll() is None and time.time() < deadline, "training ended before its first checkpoint"
        time.sleep(0.5)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    first = json.loads((run_dir / STATE_FILE).read_text())
    out = subprocess.run(args + ["--resume"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads((run_dir / STATE_FILE).read_text()) == first
    tb = _tb_scalars(run_dir / "tensorboard")
    steps = [s for s, _ in tb["train/loss_ntp"]]
    assert steps == sorted(set(steps)) and steps[-1] == 12  # each step once, to the end
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    jsonl = {r["step"]: r["loss_ntp"] for r in rows if "loss_ntp" in r}
    assert dict(tb["train/loss_ntp"]) == pytest.approx(jsonl)
    assert [s for s, _ in tb["eval/bench/next_word"]] == [6, 12]
    code = "from trackio.sqlite_storage import SQLiteStorage as S; import sys; print(S.get_runs('nitp'))"
    runs = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=ROOT)
    assert runs.stdout.strip() == repr([first["trackio"]["name"]])


def test_nitp_report_track_replays_metrics_jsonl_into_tensorboard(tmp_path, monkeypatch, capsys):
    from reports.cli import main
    from tests.helpers import make_tiny_run, run_main

    run = make_tiny_run(tmp_path / "run", steps=4)
    code, out, _ = run_main(main, "nitp-report", ["track", run, "--to", "tensorboard"], monkeypatch, capsys)
    assert code == 0 and out.strip() == str(run / "replay")
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    got = _tb_scalars(run / "replay" / "tensorboard")
    assert dict(got["train/loss_total"]) == pytest.approx(
        {r["step"]: r["loss_total"] for r in rows if "loss_total" in r}
    )
    assert [s for s, _ in got["val/val_loss"]] == [r["step"] for r in rows if "val_loss" in r]
    code, _, err = run_main(main, "nitp-report", ["track", run, "--to", "neptune"], monkeypatch, capsys)
    assert code == 2 and err.strip().startswith("error: --to: unknown tracker 'neptune'")


def _two_starts(tmp_path, name: str) -> dict:
    """Steps 1-3, then a resume from step 3 logging 4-5, through the real library (in-process)."""
    run = Trackers(tmp_path, [name], "t", CONFIG)
    for step in (1, 2, 3):
        run.log({"step": step, "loss_ntp": float(step)})
    run.close()
    first = json.loads((tmp_path / STATE_FILE).read_text())[name]
    run = Trackers(tmp_path, [name], "t", CONFIG, resume_step=3)
    for step in (4, 5):
        run.log({"step": step, "loss_ntp": float(step)})
    run.close()
    assert json.loads((tmp_path / STATE_FILE).read_text())[name] == first  # the same tracker run
    return first


def test_mlflow_file_store_holds_the_steps_and_a_resume_continues_the_same_run(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    state = _two_starts(tmp_path, "mlflow")
    client = MlflowClient(tracking_uri=state["tracking_uri"])
    assert state["tracking_uri"] == (tmp_path / "mlruns").resolve().as_uri()  # offline: a file store in RUN/
    history = client.get_metric_history(state["run_id"], "train/loss_ntp")
    assert [(m.step, m.value) for m in history] == [(s, float(s)) for s in range(1, 6)]
    run = client.get_run(state["run_id"])
    assert run.data.params["train.lr"] == "0.001" and run.info.status == "FINISHED"
    assert len(client.search_runs([run.info.experiment_id])) == 1


@pytest.mark.slow  # seconds: out of the fast subset
def test_wandb_offline_run_keeps_its_id_across_a_resume(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_MODE", raising=False)
    state = _two_starts(tmp_path, "wandb")
    assert state["mode"] == "offline"
    runs = sorted((tmp_path / "wandb").glob(f"offline-run-*-{state['id']}"))
    assert runs and all((r / f"run-{state['id']}.wandb").stat().st_size > 0 for r in runs)
    assert not list((tmp_path / "wandb").glob("run-*"))  # nothing synced online


def test_a_deleted_mlflow_store_on_resume_is_one_line_naming_mlflow(tmp_path, monkeypatch):
    """The MLflow file store deleted between two starts: the resume's first use of it fails in one
    line naming the tracker and the fix (the trainer has checkpointed before it logs)."""
    pytest.importorskip("mlflow")
    import shutil

    from nitp.errors import UserError

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    _two_starts(tmp_path, "mlflow")
    shutil.rmtree(tmp_path / "mlruns")
    with pytest.raises(UserError) as e:
        run = Trackers(tmp_path, ["mlflow"], "t", CONFIG, resume_step=5)
        run.log({"step": 6, "loss_ntp": 6.0})
    message = str(e.value)
    assert "\n" not in message and message.startswith("log.trackers: mlflow") and "drop mlflow" in message
    assert "a deleted store: remove the 'mlflow' entry of trackers.json" in message
