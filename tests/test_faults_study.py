"""Faults of studies, the run lock and atomic writes (issue 28).

Studies: the study file is typed (``reports.study_schema``): bad values are one line before
anything trains; a cell whose run was trained with another config is refused (or retrained with
``--retrain-changed``), never reused; ``--out`` holding another study, a run or a file is refused;
side-by-side workers die with the study (SIGKILL) and stop at once with it (SIGTERM), and the
rerun resumes. The run lock is taken on the resolved path; lock and temporary names never pass
NAME_MAX; a full disk names the file. Fast tests use no training; the ones that train are slow.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from nitp.errors import UserError
from nitp.runs import list_checkpoints
from reports.study import cells, load_study, run_study
from tests.helpers import run_main

ROOT = Path(__file__).resolve().parent.parent
TINY_SET = [
    "train.steps=8",
    "data.seq_len=32",
    "train.batch_size=4",
    "train.threads=1",
    "train.warmup_steps=2",
    "log.every=2",
    "log.geom_every=0",
    "log.eval_every=0",
    "checkpoint.every=4",
    "checkpoint.keep_last=2",
]


def trained_set(*extra: str) -> list[str]:
    """TINY_SET on the built-in corpus tokenized once per machine (no tokenizer training per study)."""
    from tests.helpers import builtin_prepared_dir

    return [*TINY_SET, "data.seq_len=64", f"data.prepared_dir={builtin_prepared_dir()}", *extra]


ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def write_study(folder: Path, name: str = "tiny", **data) -> Path:
    data = {
        "name": name,
        "config": "tiny-nitp",
        "set": TINY_SET,
        "axes": {"objective": ["ntp", "nitp"]},
        "eval": {"report": False},
        **data,
    }
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
    return path


def one_line_error(call, *fragments: str) -> str:
    with pytest.raises(UserError) as e:
        call()
    message = str(e.value)
    assert "\n" not in message, message
    for fragment in fragments:
        assert fragment in message, message
    return message


def test_unparsable_overlay_names_and_files_are_one_line(tmp_path):
    from reports.study import cell_configs

    broken = tmp_path / "broken.yaml"
    broken.write_text("nitp:\n  lambda: [unclosed\n")
    for overlay, expected in (
        ("[unclosed", "overlay '[unclosed': no such file (shipped: "),
        (str(broken), f"config {broken}: invalid YAML"),
    ):
        study = write_study(tmp_path, axes={"overlay": [overlay], "objective": ["ntp"]})
        one_line_error(lambda s=study: cell_configs(load_study(s), tmp_path / "out"), expected)
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- the typed study file
BAD_STUDIES = [
    ({"eval": {"mteb": {"suite": "offline", "pooling": "max"}}}, "eval.mteb.pooling='max': use one of mean"),
    ({"eval": {"report": "maybe"}}, "eval.report='maybe': must be true or false"),
    ({"eval": {"checkpoints": "first"}}, "eval.checkpoints='first': use last or all"),
    ({"eval": {"bench": "offline"}}, "eval.bench='offline': must be a mapping or a list of them"),
    ({"eval": {"bench": {"suite": "offline", "limit": "x"}}}, "eval.bench.limit='x': must be an integer"),
    ({"eval": {"bench": [{"suite": "offline"}, {"limt": 2}]}}, "eval.bench[1]: unknown key 'limt'"),
    ({"eval": {"geom": {"layers": "one"}}}, "eval.geom.layers='one': use all"),
    ({"eval": {"geom": {"tokens": 0}}}, "eval.geom.tokens=0: must be an integer from 1"),
    (
        {"eval": {"geom": {"corpus": "no-such-corpus.txt"}}},
        "eval.geom.corpus='no-such-corpus.txt': no such file",
    ),
    ({"eval": {"mteb": {"layer": "last"}}}, "eval.mteb.layer='last': must be an integer"),
    ({"eval": {"mteb": 3}}, "eval.mteb must be a mapping with keys suite, tasks, pooling, layer"),
    ({"set": [*TINY_SET, "a=[unclosed"]}, "set[10]='a=[unclosed': the value is not valid YAML"),
    ({"set": ["train.steps"]}, "set[0]='train.steps': expected key=value"),
    ({"set": "train.steps=3"}, "set='train.steps=3': must be a list of key=value strings"),
    ({"axes": {"seed": [0, "0", 0]}}, "axis 'seed' repeats 0"),
    ({"side_by_side": 0}, "side_by_side=0: must be an integer from 1"),
    ({"side_by_side": True}, "side_by_side=True: must be an integer"),
    ({"name": "a b"}, "name='a b': use letters, digits"),
    ({"description": ["x"]}, "description=['x']: must be a text"),
    ({"include": [{}]}, "include must be a list of mappings"),
]


@pytest.mark.parametrize("data, phrase", BAD_STUDIES, ids=[p.split(":")[0][:40] for _, p in BAD_STUDIES])
def test_bad_study_values_are_one_line_before_anything_runs(data, phrase, tmp_path):
    one_line_error(lambda: load_study(write_study(tmp_path, **data)), f"study {tmp_path}", phrase)


def test_a_date_axis_value_is_refused_not_a_traceback(tmp_path):
    path = tmp_path / "dates.yaml"
    path.write_text("name: dates\nconfig: tiny-nitp\naxes:\n  run_name: [2024-01-01, 2024-01-02]\n")
    one_line_error(lambda: load_study(path), "axis 'run_name' value datetime.date(2024, 1, 1)", "quote dates")


@pytest.mark.slow  # seconds (a study plan with a geom evaluation): out of the fast subset
def test_geom_without_tokens_is_planned_and_described(tmp_path):
    spec = load_study(write_study(tmp_path, eval={"geom": {"corpus": "builtin"}, "report": False}))
    lines: list[str] = []
    run_study(spec, tmp_path / "out", dry_run=True, log=lines.append)
    assert lines[-1] == "evaluation: geom builtin the default number of tokens; last checkpoint"


def test_a_changed_eval_plan_is_checked_too(tmp_path):
    """``dataclasses.replace`` of a loaded spec (the quickstart does it) goes through the same types."""
    import dataclasses

    from reports.study import check_study

    spec = load_study(write_study(tmp_path))
    bad = dataclasses.replace(spec, eval=dataclasses.replace(spec.eval, mteb={"pooling": "max"}))
    one_line_error(lambda: check_study(bad), "eval.mteb.pooling='max'")


def test_distinct_values_always_name_distinct_cells(tmp_path):
    spec = load_study(write_study(tmp_path, axes={"data.text_field": ["α", "β", "text"]}))
    names = [c.name for c in cells(spec)]
    assert len(set(names)) == 3 and names[2] == "text_field-text", names
    assert all(n.isascii() and "/" not in n for n in names)
    for sub in ("a", "b"):  # two overlays with one file name, in two folders
        (tmp_path / sub).mkdir()
        (tmp_path / sub / "x.yaml").write_text("overlay: true\nnitp:\n  shift: 0\n")
    spec = load_study(
        write_study(tmp_path, axes={"overlay": ["a/x.yaml", "b/x.yaml"], "objective": ["nitp"]})
    )
    assert len({c.name for c in cells(spec)}) == 2
    long = ["x" * 150 + str(i) for i in range(2)]
    spec = load_study(write_study(tmp_path, axes={"data.text_field": long, "seed": [0]}))
    assert all(len(c.name.encode()) <= 200 for c in cells(spec)) and len({c.name for c in cells(spec)}) == 2


# ----------------------------------------------------------------------------- --out
def _fake_run(out: Path, spec, name: str, **changes) -> Path:
    """A cell's run folder as the trainer leaves it (config.yaml = the planned config), with
    ``changes`` (dotted keys) applied: no training needed to test the checks."""
    from nitp_train.config import apply_plan
    from reports.study import cell_configs

    cfg = apply_plan(cell_configs(spec, out)[name])[0]
    for key, value in changes.items():
        *sections, leaf = key.split(".")
        node = cfg
        for s in sections:
            node = node[s]
        node[leaf] = value
    (out / name).mkdir(parents=True)
    (out / name / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    return out / name


def test_out_that_is_a_file_a_run_or_another_study_is_one_line(tmp_path):
    spec = load_study(write_study(tmp_path))
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    one_line_error(lambda: run_study(spec, a_file, log=lambda _: None), f"--out {a_file}: is a file")
    run = _fake_run(tmp_path / "o", spec, "ntp")
    one_line_error(lambda: run_study(spec, run, dry_run=True), "is a run directory, not a study folder")
    other = tmp_path / "other"
    other.mkdir()
    (other / "study.json").write_text(json.dumps({"study": "first", "file": "/x/first.yaml"}))
    one_line_error(
        lambda: run_study(spec, other, dry_run=True), "holds study 'first' (/x/first.yaml), not 'tiny'"
    )
    (other / "study.json").write_text('{"study": ')
    one_line_error(lambda: run_study(spec, other, dry_run=True), "study.json is damaged")


def test_a_study_of_the_same_name_from_another_file_is_refused_unless_the_first_is_gone(tmp_path):
    spec = load_study(write_study(tmp_path))
    (tmp_path / "elsewhere").mkdir()
    first = write_study(tmp_path / "elsewhere")
    out = tmp_path / "out"
    out.mkdir()
    (out / "study.json").write_text(json.dumps({"study": "tiny", "file": str(first)}))
    run_study(spec, out, dry_run=True)  # the same bytes in another place: the same study
    first.write_text(first.read_text() + "description: another study of the same name\n")
    one_line_error(
        lambda: run_study(spec, out, dry_run=True),
        f"--out {out}: holds study 'tiny' of {first}, and {spec.path} is another file",
    )
    first.unlink()  # moved away: this file carries the study on
    run_study(spec, out, dry_run=True)


def test_a_cell_trained_with_another_config_is_refused_then_retrained(tmp_path):
    from reports.study import _check_changed, cell_configs

    spec = load_study(write_study(tmp_path))
    out = tmp_path / "out"
    _fake_run(out, spec, "nitp", **{"nitp.lambda": 0.25})
    _fake_run(out, spec, "ntp", **{"nitp.lambda": 0.25, "log.every": 1, "train.threads": 2})
    lines: list[str] = []
    run_study(spec, out, dry_run=True, log=lines.append)
    assert "[changed 0/8]" in lines[2] and "[pending 0/8]" in lines[1], lines  # NTP: nitp.* is inert
    message = one_line_error(
        lambda: run_study(spec, out, log=lambda _: None),
        f"cell nitp: {out / 'nitp'} was trained with another config (nitp.lambda: 0.25 -> 1.0)",
        "--retrain-changed",
    )
    assert "and 1 more" not in message
    assert not (out / "study.json").exists() and not (out / "data").exists()  # refused before any work
    (out / ".study").mkdir()
    (out / ".study" / "nitp.json").write_text("{}")
    notes: list[str] = []
    _check_changed(spec, out, cells(spec), cell_configs(spec, out), True, notes.append)
    assert not (out / "nitp").exists() and not (out / ".study" / "nitp.json").exists()
    assert (out / "ntp" / "config.yaml").is_file() and notes == [
        "nitp: config changed (nitp.lambda); training it again"
    ]
    assert [p.name for p in out.iterdir() if p.name.startswith(".") and p.name != ".study"] == []


def test_a_retrained_checkpoint_of_the_same_name_is_evaluated_again(tmp_path):
    """The evaluation marker names each checkpoint by its weights, not only its folder name."""
    from reports.study import _eval_key, _is_evaluated, _marker

    spec = load_study(write_study(tmp_path, eval={"geom": {"tokens": 100}, "report": False}))
    out = tmp_path / "out"
    ckpt = out / "nitp" / "checkpoints" / "step_000008"
    ckpt.mkdir(parents=True)
    for name, data in (("config.json", b"{}"), ("COMPLETE", b""), ("model.safetensors", b"old weights")):
        (ckpt / name).write_bytes(data)
    _marker(out, "nitp").parent.mkdir()
    _marker(out, "nitp").write_text(json.dumps(_eval_key(spec, out / "nitp")))
    assert _is_evaluated(spec, out, "nitp")
    (ckpt / "model.safetensors").write_bytes(b"new weights")  # retrained: same name, other weights
    assert not _is_evaluated(spec, out, "nitp")


def test_cli_refuses_a_changed_cell_in_one_line(tmp_path, monkeypatch, capsys):
    from reports.study_cli import main

    study = write_study(tmp_path)
    _fake_run(tmp_path / "out", load_study(study), "nitp", **{"train.steps": 16})
    code, _, err = run_main(main, "nitp-study", [study, "--out", tmp_path / "out"], monkeypatch, capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("error: cell nitp: ") and "(train.steps: 16 -> 8)" in lines[0]


# ----------------------------------------------------------------------------- --set
@pytest.mark.parametrize("item", ["a=[unclosed", "nitp.lambda=[1", "nitp.loss={cosine"])
def test_unparsable_set_value_is_one_line(item, tmp_path, monkeypatch, capsys):
    from nitp_train.cli import main

    args = ["run", "configs/tiny-nitp.yaml", "--run-dir", tmp_path / "run", "--set", item]
    monkeypatch.chdir(ROOT)
    code, _, err = run_main(main, "nitp-train", args, monkeypatch, capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert (
        lines[0].startswith(f"error: --set {item!r}: the value is not valid YAML") and "quote it" in lines[0]
    )
    assert not (tmp_path / "run").exists()


# ----------------------------------------------------------------------------- the run lock
def test_the_lock_follows_symlinks_and_dotdot(tmp_path):
    from nitp.runs import lock_path, run_lock

    real = tmp_path / "runs" / "real"
    real.mkdir(parents=True)
    (tmp_path / "link").symlink_to(real)
    (tmp_path / "runs" / "sub").mkdir()
    with run_lock(real):
        for other in (tmp_path / "link", tmp_path / "runs" / "sub" / ".." / "real"):
            assert lock_path(other) == lock_path(real)
            with pytest.raises(UserError, match=f"in use by nitp-train pid {os.getpid()} "):
                run_lock(other).__enter__()
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    one_line_error(lambda: lock_path(loop), f"{loop}: cannot be resolved")


def test_the_lock_holds_through_a_bind_mount_of_the_run_folder(tmp_path):
    """A bind mount is a second path whose resolved lock file differs: the folder itself is locked too."""
    from nitp.runs import lock_path, run_lock

    real, bind = tmp_path / "a" / "real", tmp_path / "b" / "bind"
    real.mkdir(parents=True), bind.mkdir(parents=True)
    done = subprocess.run(["mount", "--bind", str(real), str(bind)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot bind-mount here: {done.stderr.decode().strip()[:100]}")
    try:
        assert lock_path(bind) != lock_path(real)
        with run_lock(real):
            one_line_error(lambda: run_lock(bind).__enter__(), f"{bind}: in use by another process", "bind")
        with run_lock(bind):  # released: the other path works again
            pass
    finally:
        subprocess.run(["umount", "-l", str(bind)], check=False)


def test_a_second_trainer_through_a_symlink_is_refused(tmp_path, monkeypatch, capsys):
    from nitp.runs import run_lock
    from nitp_train.cli import main

    real = tmp_path / "real"
    (tmp_path / "link").symlink_to(real, target_is_directory=True)
    monkeypatch.chdir(ROOT)
    with run_lock(real):  # the first writer
        args = ["run", "configs/tiny-nitp.yaml", "--run-dir", tmp_path / "link", "--steps", "2"]
        code, _, err = run_main(main, "nitp-train", args, monkeypatch, capsys)
    assert code == 2 and "in use by nitp-train" in err and "Traceback" not in err, err
    assert not real.exists() or not (real / "metrics.jsonl").exists()


def test_lock_and_temporary_names_never_pass_name_max(tmp_path):
    from nitp.io import atomic_folder, atomic_write_text, hidden_name, remove_stale_temps
    from nitp.runs import lock_path, run_lock

    name = "r" * 250 + "é"  # 252 bytes: a valid name whose ".NAME.lock" would be 258
    with run_lock(tmp_path / name) as lock:
        assert len(lock.name.encode()) <= 255 and lock == lock_path(tmp_path / name)
        assert lock.name != hidden_name("r" * 250 + "è", ".lock")  # unique per name
    target = atomic_write_text(tmp_path / name, "x")
    assert target.read_text() == "x"
    with atomic_folder(tmp_path / (name[:-1] + "d")) as tmp:
        (tmp / "w").write_text("w")
    assert (tmp_path / (name[:-1] + "d") / "w").is_file()
    dead = tmp_path / f"{hidden_name(name)}.{socket.gethostname().split('.')[0]}-999999999.abcd.tmp"
    dead.write_text("left by a killed writer")
    assert remove_stale_temps(tmp_path / name) == [dead]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([name, name[:-1] + "d"])


@pytest.fixture
def full_disk(tmp_path):
    """A 1 MB tmpfs, filled up (root only: skips elsewhere)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()[:100]}")
    try:
        with open(disk / "filler", "wb", buffering=0) as f, contextlib.suppress(OSError):
            while True:
                f.write(b"\0" * 65536)
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def test_a_full_disk_names_the_file_being_written(full_disk):
    import errno

    from nitp.errors import os_error_line
    from nitp.io import atomic_folder, atomic_write_json

    target = full_disk / "study.json"
    with pytest.raises(OSError) as e:
        atomic_write_json(target, {"cells": ["x" * 10_000]})
    assert e.value.errno == errno.ENOSPC and e.value.filename == str(target)
    assert os_error_line(e.value).startswith(f"cannot access {target}: No space left on device (ENOSPC)")
    folder = full_disk / "report"
    with pytest.raises(OSError) as e, atomic_folder(folder) as tmp:
        (tmp / "report.md").write_bytes(b"x" * 100_000)
    assert e.value.errno == errno.ENOSPC and str(folder) in os_error_line(e.value)
    assert sorted(p.name for p in full_disk.iterdir()) == ["filler"]  # nothing half-written


TRACKER_STARTS = """
import sys
from nitp.errors import UserError
from nitp_train.trackers import Trackers
try:
    Trackers(sys.argv[1], ["tensorboard"], "r", {"a": "x" * 100000}).close()
except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
"""


@pytest.mark.slow  # imports torch's tensorboard writer in a subprocess
def test_a_tracker_failing_at_start_on_a_full_disk_is_one_line(full_disk):
    run = subprocess.run(
        [sys.executable, "-c", TRACKER_STARTS, str(full_disk / "run")],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert run.returncode == 2 and "Traceback" not in run.stderr and "Exception in thread" not in run.stderr
    [line] = run.stderr.strip().splitlines()
    assert line.startswith("error: log.trackers: tensorboard") and "No space left" in line, line


def test_track_into_a_full_disk_is_one_line_and_leaves_nothing(full_disk, tiny_ntp_run, monkeypatch, capsys):
    from reports.cli import main

    out = full_disk / "replay"
    code, _, err = run_main(main, "nitp-report", ["track", tiny_ntp_run, "--out", out], monkeypatch, capsys)
    assert code == 2 and "Traceback" not in err and "Exception in thread" not in err, err
    assert err.strip().splitlines()[-1].startswith("error: log.trackers: tensorboard"), err
    assert sorted(p.name for p in full_disk.iterdir()) == ["filler"]  # no half-written replay


def test_a_study_on_a_full_disk_leaves_no_empty_out(full_disk, tmp_path):
    spec = load_study(write_study(tmp_path))
    with pytest.raises(OSError):
        run_study(spec, full_disk / "study", log=lambda _: None)
    assert sorted(p.name for p in full_disk.iterdir()) == ["filler"]


def test_prepare_on_a_full_disk_names_its_folder_and_leaves_nothing(full_disk, tmp_path, monkeypatch, capsys):
    from nitp_train.cli import main

    corpus = tmp_path / "c.txt"
    corpus.write_text("The quick brown fox jumps over the lazy dog. " * 4000)
    out = full_disk / "prep"
    args = ["prepare", out, "--corpus", corpus, "--vocab-size", 300, "--workers", 0]
    code, _, err = run_main(main, "nitp-train", args, monkeypatch, capsys)
    assert code == 2 and "Traceback" not in err, err
    assert err.strip().splitlines()[-1].startswith(f"error: cannot access {out}: No space left on device"), (
        err
    )
    assert sorted(p.name for p in full_disk.iterdir()) == ["filler"]


# ----------------------------------------------------------------------------- trained studies
@pytest.mark.slow
def test_changed_set_is_refused_then_retrained_and_another_study_is_refused(tmp_path):
    out = tmp_path / "out"
    spec = load_study(write_study(tmp_path, set=trained_set(), side_by_side=2))
    run_study(spec, out, log=lambda _: None)
    first = {c: list_checkpoints(out / c)[-1] for c in ("ntp", "nitp")}
    changed = load_study(write_study(tmp_path, set=trained_set("nitp.lambda=0.5"), side_by_side=2))
    one_line_error(
        lambda: run_study(changed, out, log=lambda _: None), "cell nitp: ", "nitp.lambda: 1.0 -> 0.5"
    )
    notes: list[str] = []
    run_study(changed, out, log=notes.append, retrain_changed=True)
    assert "nitp: config changed (nitp.lambda); training it again" in notes
    assert any(n.startswith("ntp: already trained") for n in notes)
    assert yaml.safe_load((out / "nitp" / "config.yaml").read_text())["nitp"]["lambda"] == 0.5
    assert (out / "ntp" / "checkpoints").stat().st_mtime_ns and list_checkpoints(out / "ntp")[-1] == first[
        "ntp"
    ]
    manifest = json.loads((out / "study.json").read_text())
    assert manifest["set"][-1] == "nitp.lambda=0.5" and {c["status"] for c in manifest["cells"]} == {
        "trained"
    }
    other = load_study(write_study(tmp_path, name="other"))
    one_line_error(lambda: run_study(other, out, log=lambda _: None), "holds study 'tiny'")


@pytest.mark.slow  # two worker processes start (torch imports), nothing trains
def test_a_cell_in_use_elsewhere_fails_in_one_line_naming_the_cell_and_its_log(tmp_path):
    from nitp.runs import run_lock

    out = tmp_path / "out"
    study = write_study(tmp_path, set=trained_set(), side_by_side=2)
    cmd = [sys.executable, "-m", "reports.study_cli", str(study), "--out", str(out)]
    with run_lock(out / "ntp", "another nitp-study"), run_lock(out / "nitp", "another nitp-study"):
        run = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    last = run.stderr.strip().splitlines()[-1]
    assert run.returncode == 2 and "Traceback" not in run.stderr, run.stderr[-2000:]
    # the two cells fail side by side: either may be the one the last line names (a race under load)
    first = "ntp" if last.startswith("error: training ntp failed (") else "nitp"
    other = "nitp" if first == "ntp" else "ntp"
    assert last.startswith(f"error: training {first} failed (") and "in use by another nitp-study" in last
    assert last.endswith(f"see {out / 'logs' / (first + '.log')}")
    assert f"{other}: failed (" in run.stderr  # the other cell is reported too


def _workers(pid: int) -> list:
    import psutil

    return [
        p
        for p in psutil.Process(pid).children(recursive=True)
        if "multiprocessing.spawn" in " ".join(p.cmdline())
    ]


def _alive(procs: list) -> list:
    import psutil

    alive = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                alive.append(p.pid)
        except psutil.NoSuchProcess:
            pass
    return alive


@pytest.mark.slow
@pytest.mark.timeout(1200)  # two trainings twice; a loaded 2-core machine starts them slowly
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_side_by_side_workers_die_with_the_study_and_the_rerun_resumes(sig, tmp_path):
    steps = ["train.steps=100", "checkpoint.every=4", "log.every=1"]
    study = write_study(tmp_path, set=trained_set(*steps), side_by_side=2)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "reports.study_cli", str(study), "--out", str(out)]
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 500
        while proc.poll() is None and time.monotonic() < deadline:
            if all(list_checkpoints(out / c) for c in ("ntp", "nitp")):
                break
            time.sleep(0.05)
        workers = _workers(proc.pid)
        assert len(workers) == 2 and proc.poll() is None, "the workers were not training"
        assert all(list_checkpoints(out / c) for c in ("ntp", "nitp")), "no checkpoint in 500 s"
        os.kill(proc.pid, sig)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:  # a failed assertion above: leave no study running
            proc.kill()
            proc.wait()
    err = proc.stderr.read()
    if sig == signal.SIGTERM:
        assert proc.returncode == 143 and err.strip().splitlines()[-1].startswith("interrupted (SIGTERM)"), (
            err
        )
        assert "Traceback" not in err
    deadline = time.monotonic() + 5
    while _alive(workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _alive(workers) == [], "a worker outlived the study"
    killed_at = {c: list_checkpoints(out / c)[-1].name for c in ("ntp", "nitp")}
    assert all(name != "step_000100" for name in killed_at.values()), killed_at

    run = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    for c in ("ntp", "nitp"):
        assert list_checkpoints(out / c)[-1].name == "step_000100"
        assert f"resumed from {killed_at[c]}" in (out / "logs" / f"{c}.log").read_text()


def test_quickstart_refuses_a_model_trained_with_other_steps_unless_told_to_retrain(tmp_path, monkeypatch):
    """``nitp-report quickstart --steps`` changed after a first run: the cell is refused in one
    line naming --retrain-changed; with it, the switch reaches the study."""
    from reports import study as study_lib
    from reports.quickstart import quickstart_spec, run_quickstart

    out = tmp_path / "qs"
    _fake_run(out, quickstart_spec("tiny", steps=8, device="cpu"), "nitp", **{"train.steps": 16})
    one_line_error(
        lambda: run_quickstart(out, steps=8, device="cpu", log=lambda _: None),
        "cell nitp: ",
        "--retrain-changed",
    )
    seen = []
    monkeypatch.setattr(study_lib, "run_study", lambda *a, **kw: seen.append(kw["retrain_changed"]) or out)
    run_quickstart(out, steps=8, device="cpu", log=lambda _: None, retrain_changed=True)
    assert seen == [True]


TIMING_KEYS = {"tokens_per_s", "mfu", "eval/seconds"}


@pytest.mark.slow  # two studies of two tiny cells each, side by side, with a geom evaluation
def test_the_same_study_twice_gives_bit_identical_weights_metrics_and_records(tmp_path):
    """Reproducibility on one machine: the same command twice (cells side by side, as make demo
    runs them) writes the same weights, the same metrics lines (timings aside) and the same scores."""
    import hashlib

    from nitp.io import read_jsonl

    spec = load_study(
        write_study(
            tmp_path,
            set=trained_set("log.eval_every=4", "log.geom_every=4"),
            side_by_side=2,
            eval={"report": False, "geom": {"corpus": "builtin", "tokens": 2048}},
        )
    )
    outs = [tmp_path / "a", tmp_path / "b"]
    for out in outs:
        run_study(spec, out, log=lambda _: None)

    def digest(out: Path, cell: str) -> tuple:
        ckpt = list_checkpoints(out / cell)[-1]
        weights = {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in ckpt.glob("*.safetensors")}
        lines = [
            {k: v for k, v in r.items() if k not in TIMING_KEYS}
            for r in read_jsonl(out / cell / "metrics.jsonl")
        ]
        [record] = (out / cell / "results" / "geom").glob("*.json")
        scores = json.loads(record.read_text())["scores"]
        return weights, lines, scores

    for cell in ("ntp", "nitp"):
        first, second = digest(outs[0], cell), digest(outs[1], cell)
        assert first[0] == second[0] and "model.safetensors" in first[0], f"{cell}: weights differ"
        assert cell == "ntp" or "nitp_head.safetensors" in first[0]  # the projector's file, byte for byte
    # one metadata key: safetensors writes several in an order that changes from process to process
    from safetensors import safe_open

    head = list_checkpoints(outs[0] / "nitp")[-1] / "nitp_head.safetensors"
    with safe_open(str(head), framework="pt") as f:
        assert f.metadata() == {"format": "pt"}
        assert first[1] == second[1] and any("val_loss" in r for r in first[1])
        assert first[2] == second[2]
