"""Bad input to nitp-train: one line naming the input and the fix, exit 2, nothing written."""

import subprocess
import sys

import pytest

from nitp_train.cli import main
from tests.helpers import builtin_prepared_dir, make_tiny_run, run_main, tiny_cli_args


def run_cli(args, capsys, monkeypatch):
    code, _, err = run_main(main, "nitp-train", args, monkeypatch, capsys)
    return code, err.strip()


def _expect_error(args, needle, capsys, monkeypatch, tmp_path):
    run = tmp_path / "run"
    code, err = run_cli(["run", *args, "--run-dir", str(run)], capsys, monkeypatch)
    assert code == 2
    assert len(err.splitlines()) == 1 and err.startswith("error:") and "Traceback" not in err, err
    assert needle in err, err
    assert not (run / "config.yaml").exists()
    return err


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--preset", "tiny-dens"], "did you mean tiny-dense"),
        (["--set", "nitp.lamda=1"], "did you mean nitp.lambda"),
        (["--set", "model.hiden_size=64"], "hiden_size"),
        (["--set", "nitp.target_layer=9"], "use 0..4"),
        (["--set", "nitp.lambda=-1"], ">= 0"),
        (["--set", "data.seq_len=4096"], "max_position_embeddings"),
        (["--objective", "mtp"], "use ntp or nitp"),
        (["--set", "nitp.loss=l2"], "cosine, mse"),
        (
            [
                "--set",
                "model.vocab_size=1000",
                "--set",
                "data.vocab_size=4096",
                "--set",
                "data.prepared_dir=PREPARED",
            ],
            "model.vocab_size",
        ),
    ],
)
def test_config_errors(args, needle, capsys, monkeypatch, tmp_path):
    args = [a.replace("PREPARED", str(builtin_prepared_dir())) for a in args]
    _expect_error(args, needle, capsys, monkeypatch, tmp_path)


def test_corpus_errors(capsys, monkeypatch, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n")
    binary = tmp_path / "blob.txt"
    binary.write_bytes(b"\x00\x01\x02" * 100)
    short = tmp_path / "short.txt"
    short.write_text("Only a few words here.")
    for corpus, needle in [
        (tmp_path / "missing.txt", "no such file"),
        (empty, "empty"),
        (binary, "binary"),
        (short, "fewer than one sequence"),
        (tmp_path, "no .txt/.jsonl/.parquet"),
    ]:
        if corpus == tmp_path:
            corpus = tmp_path / "emptydir"
            corpus.mkdir()
        err = _expect_error(
            [
                "--set",
                f"data.corpus={corpus}",
                "--set",
                f"data.prepared_dir={tmp_path / 'prep'}",
                "--set",
                "data.vocab_size=300",
            ],
            needle,
            capsys,
            monkeypatch,
            tmp_path,
        )
        assert not (tmp_path / "prep").exists(), err


@pytest.mark.slow
def test_existing_run_and_resume_with_other_config(capsys, monkeypatch, tmp_path):
    run = make_tiny_run(tmp_path / "run", steps=2, extra=["log.geom_every=0"])
    code, err = run_cli(["run", *tiny_cli_args(), "--run-dir", str(run), "--steps", "2"], capsys, monkeypatch)
    assert code == 2 and "--resume" in err
    code, err = run_cli(
        [
            "run",
            *tiny_cli_args(),
            "--run-dir",
            str(run),
            "--steps",
            "2",
            "--set",
            "nitp.lambda=0.5",
            "--resume",
        ],
        capsys,
        monkeypatch,
    )
    assert code == 2 and "nitp.lambda" in err and len(err.splitlines()) == 1


def test_nan_loss_stops_and_names_the_step(capsys, monkeypatch, tmp_path):
    run = tmp_path / "run"
    code, err = run_cli(
        [
            "run",
            *tiny_cli_args(),
            "--run-dir",
            str(run),
            "--steps",
            "6",
            "--set",
            "checkpoint.every=2",
            "--set",
            "log.geom_every=0",
            "--set",
            "train.lr=1e30",
            "--set",
            "train.warmup_steps=0",
            "--set",
            "train.grad_clip=1e30",
            "--set",
            "nitp.loss=mse",
        ],
        capsys,
        monkeypatch,
    )
    assert code == 2, err
    assert "at step" in err and "last good checkpoint" in err, err
    assert len(err.splitlines()) == 1


def test_failed_write_is_one_line(capsys, monkeypatch, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    code, err = run_cli(
        [
            "run",
            *tiny_cli_args(),
            "--run-dir",
            str(blocker / "run"),
            "--steps",
            "2",
            "--set",
            "log.geom_every=0",
        ],
        capsys,
        monkeypatch,
    )
    assert code == 2 and len(err.splitlines()) == 1 and "cannot access" in err and "a-file" in err, err


def _small_corpus(tmp_path):
    corpus = tmp_path / "small.txt"
    corpus.write_text(" ".join(f"token{i % 97} and more words" for i in range(600)))
    return corpus


def test_corpus_smaller_than_one_global_batch_leaves_nothing(capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    corpus = _small_corpus(tmp_path)
    run = tmp_path / "run"
    sets = [f"data.corpus={corpus}", "data.vocab_size=300", "train.batch_size=64", "data.workers=0"]
    code, err = run_cli(
        ["run", "--run-dir", str(run), "--steps", "2", *[a for s in sets for a in ("--set", s)]],
        capsys,
        monkeypatch,
    )
    assert code == 2 and "fewer than one step of 64 sequences" in err and len(err.splitlines()) == 1, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["small.txt"]  # no run dir, no data, no tmp


def test_prepared_dir_that_is_a_file_leaves_no_hidden_folder(capsys, monkeypatch, tmp_path):
    blocker = tmp_path / "prepared"
    blocker.write_text("not a folder")
    args = ["--set", f"data.corpus={_small_corpus(tmp_path)}", "--set", f"data.prepared_dir={blocker}"]
    err = _expect_error([*args, "--set", "data.vocab_size=300"], "is a file", capsys, monkeypatch, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prepared", "small.txt"], err


def test_leftover_of_a_killed_preparation_is_cleaned_and_resume_of_nothing_says_so(
    capsys, monkeypatch, tmp_path
):
    run = tmp_path / "run"
    stale = run / ".data.999999999.tmp"  # what older versions left when killed while preparing
    stale.mkdir(parents=True)
    (stale / "train.bin").write_bytes(b"\0" * 100)
    sets = [f"data.corpus={_small_corpus(tmp_path)}", "data.vocab_size=300", "data.seq_len=16"]
    sets += [
        "train.batch_size=2",
        "train.threads=1",
        "log.geom_every=0",
        "log.eval_every=0",
        "data.workers=0",
    ]
    code, out, err = run_main(
        main,
        "nitp-train",
        ["run", "--run-dir", run, "--steps", "1", "--resume", *[a for s in sets for a in ("--set", s)]],
        monkeypatch,
        capsys,
    )
    assert code == 0, err
    assert "--resume: " in out and "holds no run yet; starting a new one" in out
    assert not stale.exists() and (run / "data" / "meta.json").is_file()
    assert not [p.name for p in run.iterdir() if p.name.startswith(".")]


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["step is text", "torn rng file"])
def test_resume_from_a_damaged_trainer_state_is_one_line(damage, tmp_path):
    from nitp.runs import list_checkpoints

    run = make_tiny_run(tmp_path / "run", steps=2, extra=["log.geom_every=0"])
    state = list_checkpoints(run)[-1] / "trainer_state"
    if damage == "step is text":
        (state / "state.json").write_text('{"step": "two", "tokens_seen": 0}')
    else:
        (state / "rng.pt").write_bytes((state / "rng.pt").read_bytes()[:100])
    before = sorted(p.name for p in run.rglob("*"))
    args = [
        "run",
        *tiny_cli_args(),
        "--run-dir",
        str(run),
        "--steps",
        "4",
        "--set",
        "log.geom_every=0",
        "--resume",
    ]
    proc = subprocess.run(
        [sys.executable, "-m", "nitp_train", *args], capture_output=True, text=True, timeout=300
    )
    err = proc.stderr.strip()
    assert proc.returncode == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert "step_000002/trainer_state: damaged or incomplete" in err and "move step_000002 aside" in err
    assert sorted(p.name for p in run.rglob("*")) == before  # nothing written or removed
