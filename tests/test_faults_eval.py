"""Faults on the evaluation side (nitp-eval bench / mteb, nitp-geom): interrupted runs, outputs that
cannot be written, broken checkpoint files, stale cache keys, bad --data-dir, models too big.

Each case ends in one line and a known exit code, before any evaluation where the fault is
visible up front, and leaves good records and finished cache entries alone. Cases that
test_bad_inputs.py covers (missing tokenizer for bench, truncated weights, bad numbers) are not
repeated here. Real checkpoints (the tiny trained run), real libraries, real signals.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import run_main

E, G = "nitp-eval", "nitp-geom"
FAST = ["--tokens", "600", "--no-progress"]  # a small nitp-geom measurement


@pytest.fixture(scope="module", autouse=True)
def caches(tmp_path_factory):
    """Fresh nitp and mteb caches for this module (subprocesses inherit them)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NITP_CACHE_DIR", str(tmp_path_factory.mktemp("nitp-cache")))
        mp.setenv("MTEB_CACHE", str(tmp_path_factory.mktemp("mteb-cache")))
        yield


@pytest.fixture(scope="module")
def models(tmp_path_factory, tiny_checkpoint) -> Path:
    """Model folders that share the tiny checkpoint's weights: ``a`` (a plain copy), ``a2`` (another
    copy), ``cfg`` (config.json edited: another model), ``tok`` (tokenizer_config.json edited),
    ``no-tok`` (no tokenizer), ``bad-tok`` / ``bad-cfg`` (garbage tokenizer.json / config.json)."""
    root = tmp_path_factory.mktemp("models")
    files = (
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    )
    for name in ("a", "a2", "cfg", "tok", "no-tok", "bad-tok", "bad-cfg"):
        (root / name).mkdir()
        for f in files:
            shutil.copy(tiny_checkpoint / f, root / name / f)
    _edit_json(root / "cfg" / "config.json", rms_norm_eps=0.5)  # changes every hidden state
    _edit_json(root / "tok" / "tokenizer_config.json", model_max_length=77)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        (root / "no-tok" / f).unlink()
    (root / "bad-tok" / "tokenizer.json").write_text('{"version": "1.0", "model": ')
    (root / "bad-cfg" / "config.json").write_text("{not json\n")
    return root


def _edit_json(path: Path, **changes) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def _main(script: str):
    from analysis.cli import main as geom
    from nitp_eval.cli import main as evaluate

    return {E: evaluate, G: geom}[script]


def _cli(script, args, monkeypatch, capsys) -> tuple[int, str, str]:
    return run_main(_main(script), script, [str(a) for a in args], monkeypatch, capsys)


def _one_line(code: int, err: str, expected_code: int = 2) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith(("note:", "warning:"))]
    assert code == expected_code, (code, err[-1500:])
    assert "Traceback" not in err
    assert len(lines) == 1, err[-1500:]
    return lines[0]


# ----------------------------------------------------------------------------- the model key
def test_same_weights_with_another_tokenizer_or_config_is_another_model(models):
    from nitp.records import model_identity

    ids = {name: model_identity(models / name) for name in ("a", "a2", "cfg", "tok")}
    assert len({i["hash"] for i in ids.values()}) == 1  # the weights are the same everywhere
    assert ids["a"]["key"] == ids["a2"]["key"]  # a plain copy is the same model
    assert len({ids[n]["key"] for n in ("a", "cfg", "tok")}) == 3


def test_geom_cached_record_names_the_folder_asked_for_and_edited_config_is_measured(
    models, tmp_path, monkeypatch, capsys
):
    code, _, err = _cli(G, ["rank", models / "a", *FAST, "-o", tmp_path / "a.json"], monkeypatch, capsys)
    assert code == 0, err
    code, _, err = _cli(G, ["rank", models / "a2", *FAST, "-o", tmp_path / "a2.json"], monkeypatch, capsys)
    assert code == 0, err
    code, _, err = _cli(G, ["rank", models / "cfg", *FAST, "-o", tmp_path / "cfg.json"], monkeypatch, capsys)
    assert code == 0, err
    a, a2, cfg = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("a", "a2", "cfg"))
    assert a2["model"]["path"] == str((models / "a2").resolve())  # not the folder the cache saw first
    assert a2["scores"]["summary"] == a["scores"]["summary"]  # served from the cache: same model
    rank = "effective_rank_covariance"
    assert cfg["scores"]["summary"][rank] != a["scores"]["summary"][rank]  # measured again, not stale


@pytest.mark.parametrize(
    "script, args, phrase",
    [
        (G, ["rank", "{m}/no-tok", *FAST], "no tokenizer files"),
        (G, ["rank", "{m}/bad-tok", *FAST], "no usable tokenizer"),
        (G, ["rank", "{m}/bad-cfg", *FAST], "config.json"),
        (E, ["mteb", "{m}/no-tok", "--tasks", "WordSim353"], "no tokenizer files"),
        (E, ["mteb", "{m}/bad-tok", "--tasks", "WordSim353"], "no usable tokenizer"),
        (E, ["mteb", "{m}/bad-cfg", "--tasks", "WordSim353"], "config.json"),
        (E, ["bench", "{m}/bad-tok", "--limit", "1"], "no usable tokenizer"),
        (E, ["bench", "{m}/bad-cfg", "--limit", "1"], "config.json"),
    ],
    ids=lambda v: v if isinstance(v, str) else " ".join(v)[:40],
)
def test_broken_files_beside_cached_weights_fail_in_one_line(
    script, args, phrase, models, tmp_path, monkeypatch, capsys
):
    """The weights of these folders are cached (the geom case above ran on them): still one line."""
    argv = [a.format(m=models) for a in args] + ["--out", tmp_path / "r.json"]
    code, _, err = _cli(script, argv, monkeypatch, capsys)
    assert phrase in _one_line(code, err)
    assert not (tmp_path / "r.json").exists()


def test_trajectory_names_the_checkpoint_without_tokenizer(tiny_run, tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("trainer_state", "results"))
    [ckpt] = [p for p in (run / "checkpoints").iterdir() if p.is_dir()]
    (ckpt / "tokenizer.json").unlink()
    (ckpt / "tokenizer_config.json").unlink()
    code, _, err = _cli(G, ["trajectory", run, *FAST], monkeypatch, capsys)
    line = _one_line(code, err)
    assert ckpt.name in line and "no tokenizer files" in line


# ----------------------------------------------------------------------------- outputs first
def _read_only_folder(tmp_path: Path) -> Path:
    """A folder no file can be created in (chmod; as root, a sysfs folder)."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        (folder / "probe").touch()
    except OSError:
        return folder
    (folder / "probe").unlink()
    folder = Path("/sys/kernel")
    try:
        (folder / "nitp-probe").touch()
    except OSError:
        return folder
    pytest.skip("no read-only folder available on this machine")


@pytest.mark.parametrize(
    "script, args",
    [
        (E, ["bench", "{m}/a", "--limit", "1", "--out", "{ro}/r.json"]),
        (E, ["mteb", "{m}/a", "--tasks", "WordSim353", "--out", "{ro}/r.json"]),
        (E, ["mteb", "{m}/a", "--tasks", "WordSim353", "--save-encoder", "{ro}/enc"]),
        (G, ["rank", "{m}/a", *FAST, "--out", "{ro}/r.json"]),
    ],
    ids=["bench --out", "mteb --out", "mteb --save-encoder", "geom --out"],
)
def test_an_unwritable_output_fails_before_any_work(script, args, models, tmp_path, monkeypatch, capsys):
    ro = _read_only_folder(tmp_path)
    argv = [a.format(m=models, ro=ro) for a in args]
    code, out, err = _cli(script, argv, monkeypatch, capsys)
    line = _one_line(code, err)
    assert "cannot write in" in line and str(ro) in line
    assert "lm-eval" not in err and out == ""  # nothing was evaluated


def test_bench_out_that_is_a_folder_and_save_encoder_that_is_full(models, tmp_path, monkeypatch, capsys):
    code, _, err = _cli(E, ["bench", models / "a", "--limit", "1", "--out", tmp_path], monkeypatch, capsys)
    assert "is a folder" in _one_line(code, err)
    (tmp_path / "enc").mkdir()
    (tmp_path / "enc" / "x").write_text("keep me")
    argv = ["mteb", models / "a", "--tasks", "WordSim353", "--save-encoder", tmp_path / "enc"]
    code, _, err = _cli(E, argv, monkeypatch, capsys)
    assert "not empty" in _one_line(code, err)
    assert (tmp_path / "enc" / "x").read_text() == "keep me"


def test_a_full_disk_names_the_file_and_leaves_no_partial_record(models, tmp_path):
    """RLIMIT_FSIZE makes every write past 2 kB fail with EFBIG, as a full disk fails them."""
    import resource

    def limit_file_size():
        resource.setrlimit(resource.RLIMIT_FSIZE, (2048, 2048))

    out = tmp_path / "r.json"
    done = subprocess.run(
        [sys.executable, "-m", "analysis.cli", "rank", str(models / "a"), *FAST, "--redo", "-o", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=limit_file_size,
    )
    line = _one_line(done.returncode, done.stderr)
    assert line.startswith("error: cannot access ") and ".json" in line and "File too large" in line
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


# ----------------------------------------------------------------------------- --data-dir
def test_data_dir_missing_or_lacking_the_task_is_one_line_and_keeps_the_good_record(
    models, tmp_path, monkeypatch, capsys
):
    from nitp.records import make_record, model_identity, write_record

    code, _, err = _cli(
        E, ["bench", models / "a", "--tasks", "arc", "--data-dir", tmp_path / "nope"], monkeypatch, capsys
    )
    assert "no such folder" in _one_line(code, err)

    good = write_record(
        tmp_path / "good.json", make_record("bench", model_identity(models / "a"), {}, {"tasks": {}})
    )
    before = good.read_bytes()
    (tmp_path / "empty-mirror").mkdir()
    argv = ["bench", models / "a", "--tasks", "arc", "--data-dir", tmp_path / "empty-mirror", "--out", good]
    code, _, err = _cli(E, argv, monkeypatch, capsys)
    line = _one_line(code, err)
    assert "no local data for allenai/ai2_arc" in line and "mirror export" in line
    assert good.read_bytes() == before


# ----------------------------------------------------------------------------- too big
def _huge_model(folder: Path, src: Path, n_bytes: int) -> Path:
    """A model folder whose safetensors header declares ``n_bytes`` of float32 (a sparse file)."""
    folder.mkdir()
    for f in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(src / f, folder / f)
    n = n_bytes // 4
    header = json.dumps(
        {"model.embed_tokens.weight": {"dtype": "F32", "shape": [n], "data_offsets": [0, 4 * n]}}
    )
    blob = header.encode() + b" " * (-len(header) % 8)
    with open(folder / "model.safetensors", "wb") as f:
        f.write(struct.pack("<Q", len(blob)) + blob)
        f.truncate(8 + len(blob) + 4 * n)
    return folder


@pytest.mark.parametrize(
    "script, args",
    [
        (E, ["bench", "{big}", "--limit", "1"]),
        (E, ["mteb", "{big}", "--tasks", "WordSim353"]),
        (G, ["rank", "{big}", *FAST]),
    ],
    ids=["bench", "mteb", "geom"],
)
def test_a_model_too_big_for_memory_fails_before_loading(script, args, models, tmp_path, monkeypatch, capsys):
    from nitp.loading import available_memory

    free = available_memory("cpu")
    big = _huge_model(tmp_path / "big", models / "a", 2 * free + (1 << 30))
    code, _, err = _cli(script, [a.format(big=big) for a in args] + ["--device", "cpu"], monkeypatch, capsys)
    line = _one_line(code, err)
    assert str(big) in line and "GiB" in line and "available on cpu" in line


# ----------------------------------------------------------------------------- interrupted
def _start(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "nitp_eval.cli", *map(str, args)],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def _cached_units(kind: str) -> list[Path]:
    from nitp.records import cache_dir

    return sorted((cache_dir() / kind).glob("*/*.json"))


def _interrupt_after_first_unit(
    proc: subprocess.Popen, kind: str, sig: int, timeout: float = 240, before: frozenset = frozenset()
) -> str:
    """Send ``sig`` once the process cached its first unit (one not in ``before``)."""
    deadline = time.monotonic() + timeout
    while not set(_cached_units(kind)) - before:
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() < deadline, "no unit was cached in time"
        time.sleep(0.2)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    return err


def _interrupt_line(err: str) -> str:
    """The one line the CLI boundary prints for a signal (progress bars may write around it)."""
    # a bar cut short by the signal has no newline: the line may follow it on the same row
    [line] = [ln[ln.index("interrupted (") :] for ln in err.splitlines() if "interrupted (" in ln]
    assert "rerun the same command to resume" in line and "no record was written" in line
    return line


def test_ctrl_c_during_bench_keeps_the_finished_tasks_and_the_rerun_resumes(
    tiny_checkpoint, tmp_path, monkeypatch, capsys
):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, ckpt, ignore=shutil.ignore_patterns("trainer_state"))
    out = tmp_path / "r.json"
    # the signal must come while tasks are left: if the tiny tasks all finished first (a fast
    # machine), try again with more documents per task, as another model no other run cached
    for attempt, limit in enumerate(("2", "8", "32")):
        _edit_json(ckpt / "generation_config.json", nitp_fault_test=f"1-{attempt}")
        before = frozenset(_cached_units("bench"))
        proc = _start(["bench", ckpt, "--limit", limit, "--out", out])
        err = _interrupt_after_first_unit(proc, "bench", signal.SIGINT, before=before)
        if proc.returncode != 0:
            break
        out.unlink()
    assert proc.returncode == 130, err[-1500:]
    assert _interrupt_line(err).startswith("interrupted (SIGINT): the tasks finished so far are cached in")
    assert "Traceback" not in err and not out.exists()  # complete or absent
    code, _, err = _cli(E, ["bench", ckpt, "--limit", limit, "--out", out], monkeypatch, capsys)
    assert code == 0, err
    assert ": cached (" in err  # the rerun started from the finished task
    assert len(json.loads(out.read_text())["scores"]["tasks"]) == 3


def test_sigterm_during_mteb_keeps_the_finished_task_and_the_rerun_resumes(
    tiny_checkpoint, tmp_path, monkeypatch, capsys
):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, ckpt, ignore=shutil.ignore_patterns("trainer_state"))
    _edit_json(ckpt / "generation_config.json", nitp_fault_test=2)
    out = tmp_path / "r.json"
    tasks = ["--tasks", "WordSim353,SimLex999,LeeDocumentSimilarity", "--out", out]
    proc = _start(["mteb", ckpt, *tasks])
    err = _interrupt_after_first_unit(proc, "mteb", signal.SIGTERM)
    assert proc.returncode == 128 + signal.SIGTERM, err[-1500:]
    assert _interrupt_line(err).startswith("interrupted (SIGTERM): the tasks finished so far are cached in")
    assert "Traceback" not in err and not out.exists()
    [first] = _cached_units("mteb")[:1]
    kept = first.stat().st_mtime_ns
    code, _, err = _cli(E, ["mteb", ckpt, *tasks], monkeypatch, capsys)
    assert code == 0, err
    assert first.stat().st_mtime_ns == kept  # not computed again
    assert len(json.loads(out.read_text())["scores"]["tasks"]) == 3


SWALLOWED_SNIPPET = """
import signal, sys, weakref
from nitp.errors import user_errors
from nitp.io import atomic_write_text

class Held:
    pass

def on_collect(_ref):  # a weakref callback: Python prints and ignores what it raises
    signal.raise_signal(signal.SIGINT)
    sum(range(1000))  # the handler runs here and raises Interrupted

with user_errors():
    held = Held()
    ref = weakref.ref(held, on_collect)
    del held
    print("still running", flush=True)
    atomic_write_text(sys.argv[1], "a result published after the signal")
"""


def test_a_signal_swallowed_by_a_finalizer_still_stops_the_next_write(tmp_path):
    out = tmp_path / "r.txt"
    run = subprocess.run([sys.executable, "-c", SWALLOWED_SNIPPET, out], capture_output=True, text=True)
    assert run.stdout == "still running\n"  # Python swallowed the Interrupted the handler raised
    assert run.returncode == 130, run.stderr
    assert run.stderr.startswith("interrupted (SIGINT):") and "Traceback" not in run.stderr
    assert not out.exists() and not list(tmp_path.iterdir())  # nothing published, no temporary left
