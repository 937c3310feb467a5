"""Faults on the training side: signals, kills, two writers, full and read-only disks, damaged
checkpoints, hostile trainer state, hostile corpora, and the lcbench sandbox.

Every case checks the exit code, the one line the user sees, what is left on disk, and that
the rerun the line suggests works.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nitp_train.cli import main
from tests.helpers import make_tiny_run, run_main, tiny_cli_args

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
QUIET = ["--set", "log.geom_every=0", "--set", "log.eval_every=0"]


# ----------------------------------------------------------------------------- helpers
def cli(args, monkeypatch, capsys) -> tuple[int, str]:
    code, _, err = run_main(main, "nitp-train", args, monkeypatch, capsys)
    return code, err.strip()


def one_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith(("note:", "warning:"))]
    assert len(lines) == 1 and "Traceback" not in err, err[-2000:]
    return lines[0]


def spawn(*args) -> subprocess.Popen:
    """``python -m nitp_train ARGS`` as a child process (its stderr is read at the end)."""
    return subprocess.Popen(
        [sys.executable, "-m", "nitp_train", *map(str, args)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
    )


def wait_for(condition, proc: subprocess.Popen | None = None, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"the process ended early ({proc.returncode}): {proc.stderr.read()[-2000:]}")
        if time.monotonic() > deadline:
            pytest.fail("timed out waiting")
        time.sleep(0.05)


def finish(proc: subprocess.Popen, sig: int | None = None) -> tuple[int, str]:
    if sig is not None:
        proc.send_signal(sig)
    _, err = proc.communicate(timeout=180)
    return proc.returncode, err.strip()


def hidden_leftovers(*folders: Path) -> list[str]:
    """Temporaries, staging folders and locks under ``folders`` and beside them."""
    found = []
    for folder in folders:
        for p in [*folder.rglob(".*"), *folder.parent.glob(f".{folder.name}*")]:
            found.append(str(p))
    return sorted(found)


def train_args(run: Path, steps: int, *extra) -> list:
    return ["run", *tiny_cli_args(), *QUIET, "--run-dir", run, "--steps", steps, *extra]


def last_checkpoint_step(run: Path) -> int:
    from nitp.runs import checkpoint_step, list_checkpoints

    return checkpoint_step(list_checkpoints(run)[-1])


def metric_steps(run: Path) -> list[int]:
    from nitp.io import read_jsonl

    return [r["step"] for r in read_jsonl(run / "metrics.jsonl")]


@contextlib.contextmanager
def tmpfs(folder: Path, size: str, read_only: bool = False):
    """A small tmpfs at ``folder`` (root only: skips elsewhere), unmounted after the block."""
    folder.mkdir(parents=True, exist_ok=True)
    opts = f"size={size}" + (",ro" if read_only else "")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(folder)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()[:100]}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A tiny NITP run with checkpoints at steps 1 and 2 (copied by each test that damages it)."""
    return make_tiny_run(
        tmp_path_factory.mktemp("faults") / "run",
        steps=2,
        extra=["checkpoint.every=1", "log.geom_every=0", "log.eval_every=0"],
    )


def copy_run(trained: Path, tmp_path: Path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    return run


def snapshot(folder: Path) -> dict:
    return {str(p): (p.stat().st_size if p.is_file() else -1) for p in sorted(folder.rglob("*"))}


# ----------------------------------------------------------------------------- signals and kills
@pytest.mark.slow
def test_second_run_into_a_busy_run_dir_is_refused_and_sigint_stops_the_first(tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    first = spawn(*train_args(run, 100000, "--set", "checkpoint.every=2"))
    wait_for(lambda: (run / "checkpoints" / "latest").is_file(), first)

    code, err = cli(train_args(run, 4), monkeypatch, capsys)
    line = one_line(err)
    assert code == 2 and f"pid {first.pid}" in line and "in use by nitp-train" in line, line

    code, err = finish(first, signal.SIGINT)
    assert code == 130, err[-2000:]
    assert err.splitlines()[-1].startswith("interrupted (SIGINT):") and "--resume" in err.splitlines()[-1]
    assert hidden_leftovers(run) == [], "an interrupted run left temporaries or its lock"
    done = last_checkpoint_step(run)

    code, err = cli(train_args(run, done + 2, "--resume"), monkeypatch, capsys)
    assert code == 0, err[-2000:]
    steps = metric_steps(run)
    assert steps == sorted(set(steps)) and steps[-1] == done + 2
    assert hidden_leftovers(run) == []


@pytest.mark.slow
def test_sigterm_during_training_exits_143_and_resumes(tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    proc = spawn(*train_args(run, 100000, "--set", "checkpoint.every=1"))
    wait_for(lambda: (run / "checkpoints" / "latest").is_file(), proc)
    code, err = finish(proc, signal.SIGTERM)
    assert code == 143, err[-2000:]
    assert err.splitlines()[-1].startswith("interrupted (SIGTERM):"), err[-500:]
    assert hidden_leftovers(run) == []
    done = last_checkpoint_step(run)
    code, err = cli(train_args(run, done + 2, "--resume"), monkeypatch, capsys)
    assert code == 0, err[-2000:]
    assert last_checkpoint_step(run) == done + 2 == metric_steps(run)[-1]


@pytest.mark.slow
def test_sigkill_leftovers_are_cleaned_when_the_run_resumes(tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    proc = spawn(*train_args(run, 100000, "--set", "checkpoint.every=1"))
    wait_for(lambda: (run / "checkpoints" / "latest").is_file(), proc)
    proc.kill()
    proc.wait()
    # what a writer killed inside atomic_write / a checkpoint save leaves (tagged with its pid)
    tag = f"{socket.gethostname().split('.')[0]}-{proc.pid}"
    ckdir = run / "checkpoints"
    (ckdir / f".latest.{tag}.k2j1.tmp").write_text("step_0")
    (run / f".config.yaml.{tag}.x9_a.tmp").write_text("half")
    (ckdir / ".latest.oldstyle.tmp").write_text("mkstemp of an older version")
    (ckdir / ".step_999999.tmp" / "trainer_state").mkdir(parents=True)
    done = last_checkpoint_step(run)
    code, err = cli(train_args(run, done + 2, "--resume"), monkeypatch, capsys)
    assert code == 0, err[-2000:]
    assert last_checkpoint_step(run) == done + 2
    assert hidden_leftovers(run) == []


def _prepare_args(out: Path, corpus: Path) -> list:
    return ["prepare", out, "--corpus", corpus, "--vocab-size", "300", "--workers", "0"]


def _big_corpus(tmp_path: Path) -> Path:
    corpus = tmp_path / "corpus.txt"
    line = " ".join(f"w{i % 911} x{i % 37}" for i in range(200)) + "\n"
    corpus.write_text(line * 4000)
    return corpus


@pytest.mark.slow
@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_during_prepare_keeps_nothing_half_and_the_rerun_finishes(
    sig, code, tmp_path, monkeypatch, capsys
):
    out, corpus = tmp_path / "prep", _big_corpus(tmp_path)
    proc = spawn(*_prepare_args(out, corpus))
    wait_for(lambda: (tmp_path / ".prep.partial").is_dir(), proc)
    rc, err = finish(proc, sig)
    assert rc == code, err[-2000:]
    assert err.splitlines()[-1].startswith(f"interrupted ({signal.Signals(sig).name}):"), err[-500:]
    assert "rerun the same command" in err.splitlines()[-1]
    assert not out.exists()  # complete-or-absent: only the resumable .prep.partial remains
    rc, err = cli(_prepare_args(out, corpus), monkeypatch, capsys)
    assert rc == 0, err
    assert json.loads((out / "meta.json").read_text())["n_train"] > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus.txt", "prep"]


@pytest.mark.slow
def test_two_prepares_into_one_folder_at_once_both_succeed(tmp_path):
    out, corpus = tmp_path / "prep", _big_corpus(tmp_path)
    procs = [spawn(*_prepare_args(out, corpus)) for _ in range(2)]
    results = [finish(p) for p in procs]
    assert [rc for rc, _ in results] == [0, 0], results
    assert json.loads((out / "meta.json").read_text())["n_train"] > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus.txt", "prep"]


# ----------------------------------------------------------------------------- disks
@pytest.mark.slow
def test_full_disk_at_the_first_checkpoint_is_one_line_and_the_rerun_resumes(tmp_path, monkeypatch, capsys):
    with tmpfs(tmp_path / "disk", "10M") as disk:
        run = disk / "run"
        code, err = cli(train_args(run, 2, "--set", "checkpoint.every=1"), monkeypatch, capsys)
        line = one_line(err)
        assert code == 2 and "checkpoint step_000001 could not be written" in line, line
        assert "last complete checkpoint: none" in line and "--resume" in line
        assert not list((run / "checkpoints").glob(".step_*")), "a half checkpoint was left"
        assert hidden_leftovers(run) == []
        subprocess.run(["mount", "-o", "remount,size=200M", str(disk)], check=True)
        code, err = cli(train_args(run, 2, "--set", "checkpoint.every=1", "--resume"), monkeypatch, capsys)
        assert code == 0, err[-2000:]
        assert metric_steps(run)[-1] == 2 and (run / "checkpoints" / "step_000002" / "COMPLETE").is_file()


@pytest.mark.slow
def test_read_only_run_folder_is_one_line_and_nothing_is_written(tmp_path, monkeypatch, capsys):
    with tmpfs(tmp_path / "ro", "1M", read_only=True) as ro:
        code, err = cli(train_args(ro / "run", 2), monkeypatch, capsys)
        line = one_line(err)
        assert code == 2 and "Read-only file system" in line and str(ro) in line, line
        assert list(ro.iterdir()) == []


def test_export_into_a_read_only_folder_fails_before_converting(tmp_path, monkeypatch, capsys):
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF" + b"\0" * 60)
    with tmpfs(tmp_path / "ro", "1M", read_only=True) as ro:
        code, err = cli(["export", gguf, "--out", ro / "exported"], monkeypatch, capsys)
        line = one_line(err)
        assert code == 2 and "Read-only file system" in line and str(ro) in line, line
        assert list(ro.iterdir()) == []


def test_truncated_gguf_export_is_one_line_and_writes_nothing(tmp_path, monkeypatch, capsys):
    import struct

    gguf = tmp_path / "cut.gguf"  # a GGUF v3 header that promises 12 tensors, then ends
    gguf.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 12, 20) + b"\x05\x00")
    code, err = cli(["export", gguf, "--out", tmp_path / "exported"], monkeypatch, capsys)
    line = one_line(err)
    assert code == 2 and "cut.gguf: not a GGUF causal LM" in line, line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cut.gguf"]


@pytest.mark.slow
def test_sigint_during_export_leaves_no_folder(smollm2_gguf, tmp_path):
    out = tmp_path / "exported"
    proc = spawn("export", smollm2_gguf, "--out", out)
    wait_for(lambda: any(tmp_path.glob(".exported.*.tmp")), proc, timeout=300)
    code, err = finish(proc, signal.SIGINT)
    assert code == 130 and err.splitlines()[-1].startswith("interrupted (SIGINT): nothing was written"), err
    assert list(tmp_path.iterdir()) == []  # neither the folder nor its temporary


# ----------------------------------------------------------------------------- damaged checkpoints
@pytest.mark.slow
@pytest.mark.parametrize(
    "name, damage",
    [
        ("nitp_head.safetensors", lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])),
        ("config.json", lambda p: p.write_text(p.read_text()[:40])),
        ("tokenizer.json", lambda p: p.write_bytes(b"\x00\xff" * 50)),
    ],
)
def test_damaged_checkpoint_file_on_resume_is_one_line_then_the_one_before_is_used(
    name, damage, trained, tmp_path, monkeypatch, capsys
):
    run = copy_run(trained, tmp_path)
    damage(run / "checkpoints" / "step_000002" / name)
    before = snapshot(run)
    code, err = cli(train_args(run, 3, "--resume"), monkeypatch, capsys)
    line = one_line(err)
    assert code == 2 and f"step_000002/{name}: damaged" in line and "move step_000002 aside" in line, line
    assert snapshot(run) == before
    shutil.move(run / "checkpoints" / "step_000002", tmp_path / "aside")
    code, out, err = run_main(main, "nitp-train", train_args(run, 3, "--resume"), monkeypatch, capsys)
    assert code == 0 and "resumed from step_000001" in out, err[-2000:]
    assert (run / "checkpoints" / "step_000003" / "COMPLETE").is_file()


class Payload:
    """Unpickling this creates ``marker``: proof that the file's code ran."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["rng.pt", "optimizer.pt", "scheduler.pt"])
def test_pickle_payload_in_trainer_state_is_never_run(name, trained, tmp_path, monkeypatch, capsys):
    import torch

    run = copy_run(trained, tmp_path)
    target = run / "checkpoints" / "step_000002" / "trainer_state" / name
    torch.save({"state": Payload(tmp_path / "pwned"), "param_groups": []}, target)
    proof = tmp_path / "proof.pt"
    torch.save(Payload(tmp_path / "proof"), proof)
    torch.load(proof, weights_only=False)  # the payload is real: unpickling runs it
    assert (tmp_path / "proof").exists()

    code, err = cli(train_args(run, 3, "--resume"), monkeypatch, capsys)
    line = one_line(err)
    assert code == 2 and f"{name}: holds Python objects" in line and "never" in line, line
    assert not (tmp_path / "pwned").exists(), "the trainer state was unpickled"


@pytest.mark.slow
def test_checkpoint_of_an_older_pickling_version_is_refused(trained, tmp_path, monkeypatch, capsys):
    run = copy_run(trained, tmp_path)
    state = run / "checkpoints" / "step_000002" / "trainer_state" / "state.json"
    old = json.loads(state.read_text())
    del old["trainer_state_format"]
    state.write_text(json.dumps(old))
    code, err = cli(train_args(run, 3, "--resume"), monkeypatch, capsys)
    line = one_line(err)
    assert code == 2 and "written by an older nitp with pickled trainer state" in line, line
    assert "re-train" in line


@pytest.mark.slow
def test_resume_with_a_config_that_changes_the_model_is_refused(trained, tmp_path, monkeypatch, capsys):
    run = copy_run(trained, tmp_path)
    before = snapshot(run)
    code, err = cli(train_args(run, 3, "--resume", "--set", "model.hidden_size=96"), monkeypatch, capsys)
    line = one_line(err)
    assert code == 2 and "config differs" in line and "model.hidden_size" in line, line
    assert snapshot(run) == before


def test_model_too_big_for_memory_is_refused_before_allocating(tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    big = ["--set", "model.hidden_size=16384", "--set", "model.num_hidden_layers=96"]
    big += ["--set", "model.intermediate_size=65536", "--set", "model.num_attention_heads=128"]
    big += ["--set", "model.num_key_value_heads=8"]
    code, err = cli(train_args(run, 2, *big), monkeypatch, capsys)
    line = one_line(err)
    assert code == 2 and "model too big for memory" in line, line
    assert "model.hidden_size (16384)" in line and "model.num_hidden_layers (96)" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- corpora
def test_corpus_that_is_not_utf8_is_one_line_and_leaves_nothing(tmp_path, monkeypatch, capsys):
    corpus = tmp_path / "corpus.txt"  # latin-1 text: valid bytes, no NUL, not UTF-8
    corpus.write_bytes("Caf\xe9 na\xefve r\xe9sum\xe9 ".encode("latin-1") * 2000)
    code, err = cli(_prepare_args(tmp_path / "prep", corpus), monkeypatch, capsys)
    line = one_line(err)
    assert code == 2 and "corpus.txt: not UTF-8 text" in line, line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus.txt"]


def test_corpus_of_one_huge_line_is_tokenized_in_bounded_pieces(tmp_path, monkeypatch):
    from nitp_train import corpus as corpus_mod

    path = tmp_path / "one-line.txt"
    path.write_text(" ".join(f"word{i % 300}" for i in range(60000)))  # ~500k characters, no newline
    monkeypatch.setattr(corpus_mod, "PIECE_CHARS", 50_000)
    with open(path) as f:
        blocks = list(corpus_mod._line_blocks(f, block_chars=50_000))
    assert len(blocks) > 5 and max(map(len, blocks)) <= 2 * 50_000
    assert "".join(blocks) == path.read_text()


# ----------------------------------------------------------------------------- temporaries of killed writers
_KILL_AT_REPLACE = """
import os, signal, sys
from pathlib import Path
from nitp import io
os.replace = lambda *a: os.kill(os.getpid(), signal.SIGKILL)
if sys.argv[1] == "file":
    io.atomic_write_text(Path(sys.argv[2]), "new")
else:
    with io.atomic_folder(Path(sys.argv[2])) as tmp:
        (tmp / "weights").write_text("half")
"""


@pytest.mark.parametrize("kind", ["file", "folder"])
def test_temporary_of_a_writer_killed_at_the_rename_is_removed_by_the_next_write(kind, tmp_path):
    from nitp.io import atomic_folder, atomic_write_text

    target = tmp_path / ("latest" if kind == "file" else "exported")
    done = subprocess.run([sys.executable, "-c", _KILL_AT_REPLACE, kind, str(target)], env=ENV)
    assert done.returncode == -signal.SIGKILL
    left = [p.name for p in tmp_path.iterdir()]
    assert len(left) == 1 and left[0].startswith(f".{target.name}.") and left[0].endswith(".tmp"), left
    if kind == "file":
        atomic_write_text(target, "step_000002")
    else:
        with atomic_folder(target) as tmp:
            (tmp / "weights").write_text("whole")
    assert [p.name for p in tmp_path.iterdir()] == [target.name]


def test_a_live_writers_temporary_is_kept(tmp_path):
    from nitp.io import atomic_write_text

    live = tmp_path / f".latest.{socket.gethostname().split('.')[0]}-{os.getpid()}.abcd.tmp"
    live.write_text("being written")
    atomic_write_text(tmp_path / "latest", "x")
    assert live.exists()


# ----------------------------------------------------------------------------- lcbench sandbox
def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state in ("Z", "X")  # a zombie waiting for init to reap it runs nothing


@pytest.mark.slow  # subprocesses with limits / a run: keeps the fast subset under a minute
def test_lcbench_timeout_kills_forked_grandchildren(tmp_path, monkeypatch):
    """The opt-out path's group kill (the sandboxed path: tests/test_faults_security.py)."""
    from nitp_eval.tasks.lcbench.utils import passes

    monkeypatch.setenv("NITP_UNSAFE_NO_SANDBOX", "1")  # the grandchild writes its pid into tmp_path

    pid_file = tmp_path / "grandchild.pid"
    program = f"""
import os, time
if os.fork() == 0:
    if os.fork() == 0:
        open({str(pid_file)!r}, "w").write(str(os.getpid()))
        time.sleep(600)
    time.sleep(600)
time.sleep(600)
"""
    assert passes(program, timeout_s=2.0) is False
    pid = int(pid_file.read_text())
    deadline = time.monotonic() + 5
    while not _gone(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _gone(pid), f"grandchild {pid} survived the timeout"


@pytest.mark.slow  # subprocesses with limits / a run: keeps the fast subset under a minute
def test_lcbench_memory_and_cpu_limits(tmp_path):
    from nitp_eval.tasks.lcbench.utils import passes

    assert passes("x = bytearray(16 << 20)\nassert len(x) == 16 << 20")
    assert not passes("x = bytearray(4 << 30)")  # over the 1 GiB address-space limit
    start = time.monotonic()
    assert not passes("while True:\n    pass", timeout_s=60, cpu_s=1)  # stopped by RLIMIT_CPU
    assert time.monotonic() - start < 30
