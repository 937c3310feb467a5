"""`nitp-eval mteb` on the command line: the table, and one-line errors for bad input."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from nitp_eval.cli import main
from tests.helpers import run_main

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "mteb"


@pytest.fixture(scope="module", autouse=True)
def mteb_cache(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MTEB_CACHE", str(tmp_path_factory.mktemp("mteb-cache")))
        mp.setenv("NITP_CACHE_DIR", str(tmp_path_factory.mktemp("nitp-cache")))  # per-task score cache
        yield


def run_cli(monkeypatch, capsys, *args) -> tuple[int, str, str]:
    """`nitp-eval mteb ARGS` through the console script's real ``main()``, in-process."""
    return run_main(main, "nitp-eval", ["mteb", *args], monkeypatch, capsys)


def _one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def test_table_and_record(tiny_checkpoint, tmp_path, monkeypatch, capsys):
    out = tmp_path / "rec.json"
    code, stdout, _ = run_cli(monkeypatch, capsys, tiny_checkpoint, "--tasks", "WordSim353", "--out", out)
    assert code == 0
    rec = json.loads(out.read_text())
    score = rec["scores"]["tasks"]["WordSim353"]["main_score"]
    assert "WordSim353" in stdout and f"{score * 100:.2f}" in stdout and "Overall (1)" in stdout


def test_two_models_show_deltas_and_wins(tiny_checkpoint, minilm_dir, tmp_path, monkeypatch, capsys):
    code, stdout, _ = run_cli(
        monkeypatch, capsys, tiny_checkpoint, minilm_dir, "--tasks", "WordSim353", "--out", tmp_path
    )
    assert code == 0
    recs = [json.loads(p.read_text()) for p in sorted(tmp_path.glob("*.json"))]
    assert len(recs) == 2
    assert "delta" in stdout.splitlines()[1]  # the header row under the table's top rule
    won = (
        recs[0]["scores"]["tasks"]["WordSim353"]["main_score"]
        != recs[1]["scores"]["tasks"]["WordSim353"]["main_score"]
    )
    assert won and "wins" in stdout and "of 1 tasks" in stdout


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--pooling", "max"], "unknown pooling 'max'"),
        (["--layer", "9"], "--layer 9 is out of range"),
        (["--tasks", "STS99"], "unknown MTEB task 'STS99'"),
        (["--suite", "papr"], "unknown suite 'papr'"),
        (["--data-dir", "/nonexistent/mirror", "--tasks", "STS12"], "no such directory"),
        (["--max-length", "0"], "--max-length must be at least 1"),
        (["--batch-tokens", "0"], "--batch-tokens and --batch-size must be at least 1"),
    ],
)
def test_bad_input_is_one_line(args, expected, tiny_checkpoint, tmp_path, monkeypatch, capsys):
    code, _, err = run_cli(monkeypatch, capsys, tiny_checkpoint, *args, "--out", tmp_path / "r.json")
    assert code == 2
    assert expected in _one_error_line(err)
    assert not (tmp_path / "r.json").exists()  # nothing half-written


def test_model_without_tokenizer(tiny_checkpoint, tmp_path, monkeypatch, capsys):
    ckpt = tmp_path / "no-tokenizer"
    shutil.copytree(tiny_checkpoint, ckpt, ignore=shutil.ignore_patterns("tokenizer*"))
    code, _, err = run_cli(monkeypatch, capsys, ckpt, "--tasks", "WordSim353", "--out", tmp_path / "r.json")
    assert code == 2 and "no tokenizer files" in _one_error_line(err)


def test_data_dir_without_a_task_runs_the_others_and_fails(tiny_checkpoint, tmp_path, monkeypatch, capsys):
    out = tmp_path / "r.json"
    code, stdout, err = run_cli(
        monkeypatch, capsys, tiny_checkpoint, "--tasks", "BIOSSES,STS12", "--data-dir", FIXTURES, "--out", out
    )
    assert code == 1
    assert "BIOSSES" in stdout  # the task with data ran and is in the table and the record
    assert list(json.loads(out.read_text())["scores"]["tasks"]) == ["BIOSSES"]
    first = [line for line in err.splitlines() if "STS12" in line][0]
    assert "nitp-eval mirror export --tasks STS12" in first
    assert "Traceback" not in err


def test_console_script_error_is_one_line_without_traceback(tiny_checkpoint):
    script = Path(sys.executable).with_name("nitp-eval")  # the installed console script
    proc = subprocess.run(
        [str(script), "mteb", str(tiny_checkpoint), "--pooling", "cls"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: unknown pooling 'cls' (choose one of: mean, last, eos)"


@pytest.mark.slow
def test_save_encoder_reloads_as_a_sentence_transformer(tiny_checkpoint, tmp_path, monkeypatch, capsys):
    import numpy as np
    from sentence_transformers import SentenceTransformer

    from nitp_eval.mteb.hidden_encoder import HiddenStateEncoder

    folder = tmp_path / "encoder"
    args = ["--tasks", "WordSim353", "--layer", "2", "--pooling", "last", "--max-length", "64"]
    code, _, _ = run_cli(
        monkeypatch, capsys, tiny_checkpoint, *args, "--out", tmp_path / "r.json", "--save-encoder", folder
    )
    assert code == 0 and (folder / "modules.json").is_file()
    texts = ["a cat sat on the mat", "the bank of the river", "word " * 100]
    reloaded = SentenceTransformer(str(folder), device="cpu", trust_remote_code=True)
    assert reloaded.max_seq_length == 64
    ours = HiddenStateEncoder(tiny_checkpoint, layer=2, pooling="last", max_length=64, device="cpu")
    np.testing.assert_allclose(
        reloaded.encode(texts, convert_to_numpy=True), ours.encode_texts(texts), rtol=0, atol=1e-6
    )
