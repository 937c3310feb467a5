"""`nitp-eval bench` / `nitp-eval mirror` through the CLI: bad input, missing data, mirror check/export."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.helpers import run_main

pytestmark = pytest.mark.usefixtures("bench_cache")


@pytest.fixture
def cli(monkeypatch, capsys):
    """Run `nitp-eval ARGS` in this process (its real main(), so errors go through user_errors)."""
    from nitp_eval.cli import main

    return lambda *args: run_main(main, "nitp-eval", args, monkeypatch, capsys)


def _one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert "Traceback" not in err
    assert len(lines) == 1, err
    return lines[0]


# ----------------------------------------------------------------------------- bad input
def test_bad_numbers_fail_fast_in_a_real_process(tiny_checkpoint):
    for args, expected in (
        (["--limit", "0"], "--limit must be"),
        (["--num-fewshot", "-1"], "--num-fewshot must be 0 or more"),
    ):
        done = subprocess.run(
            [sys.executable, "-m", "nitp_eval.cli", "bench", str(tiny_checkpoint), *args],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 2
        assert "Traceback" not in done.stderr
        assert done.stderr.strip().splitlines() == [done.stderr.strip()]  # one line
        assert expected in done.stderr


def test_unknown_task_names_the_nearest(cli, tiny_checkpoint):
    code, _, err = cli("bench", tiny_checkpoint, "--tasks", "mmlu_prp")
    assert code == 2
    line = _one_error_line(err)
    assert "unknown task 'mmlu_prp'" in line and "mmlu_pro" in line


def test_suite_and_tasks_together_are_refused(cli, tiny_checkpoint):
    code, _, err = cli("bench", tiny_checkpoint, "--suite", "mission", "--tasks", "c3")
    assert code == 2
    assert "either --tasks or --suite" in _one_error_line(err)


def test_a_model_that_is_no_causal_lm_is_refused(cli, minilm_dir):
    code, _, err = cli("bench", minilm_dir, "--tasks", "sentiment")
    assert code == 2
    assert "BertModel is not a causal language model" in _one_error_line(err)


# ----------------------------------------------------------------------------- missing data
def test_task_without_local_data_fails_alone(cli, tiny_checkpoint, mirror, tmp_path):
    partial = tmp_path / "partial"
    shutil.copytree(mirror / "allenai" / "ai2_arc", partial / "allenai" / "ai2_arc")
    code, out, err = cli(
        "bench",
        tiny_checkpoint,
        "--tasks",
        "gsm8k,arc",
        "--limit",
        "1",
        "--num-fewshot",
        "0",
        "--data-dir",
        partial,
        "--out",
        tmp_path / "r.json",
    )
    assert code == 1
    assert "Traceback" not in err
    reason = next(line for line in err.splitlines() if line.startswith("error: gsm8k"))
    assert "openai/gsm8k" in reason and f"nitp-eval mirror export --tasks gsm8k --out {partial}" in reason
    record = json.loads((tmp_path / "r.json").read_text())
    assert list(record["scores"]["tasks"]) == ["arc_challenge"]  # the other task still ran
    assert "gsm8k" in record["scores"]["failed"]
    assert "arc_challenge" in out and "failed" in out


def test_lcbench_needs_the_unsafe_code_flag(cli, tiny_checkpoint, mirror, tmp_path):
    code, _, err = cli(
        "bench", tiny_checkpoint, "--tasks", "lcbench", "--data-dir", mirror, "--out", tmp_path / "r.json"
    )
    assert code == 2  # the only task could not run: one line, no record written
    assert "--allow-unsafe-code" in err and not (tmp_path / "r.json").exists()


# ----------------------------------------------------------------------------- checkpoints
def test_tokenizer_without_pad_token_is_fixed_as_lm_eval_does(cli, tiny_checkpoint, tmp_path):
    """A plain Hugging Face folder (a tiny Llama, not made by nitp) whose tokenizer has no pad token."""
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(
        tokenizer_file=str(tiny_checkpoint / "tokenizer.json"),
        bos_token="<|bos|>",
        eos_token="<|endoftext|>",
        unk_token="<|unk|>",
    )
    assert tok.pad_token is None
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=512,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    ckpt = tmp_path / "llama-no-pad"
    LlamaForCausalLM(config).save_pretrained(ckpt)
    tok.save_pretrained(ckpt)
    code, out, err = cli("bench", ckpt, "--tasks", "sentiment", "--limit", "2", "--out", tmp_path / "r.json")
    assert code == 0, err
    assert "tokenizer has no pad token; lm-eval pads with its unk token ('<|unk|>')" in err
    assert "sentiment" in out


def test_all_checkpoints_scores_every_checkpoint(cli, tiny_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("trainer_state", "results"))
    [ckpt] = [p for p in (run / "checkpoints").iterdir() if p.is_dir()]
    shutil.copytree(ckpt, run / "checkpoints" / "step_000001")
    code, out, err = cli("bench", "--all-checkpoints", run, "--tasks", "sentiment", "--limit", "2")
    assert code == 0, err
    records = sorted((run / "results" / "bench").glob("*.json"))
    assert [p.name.split("-")[0] for p in records] == ["step_000001", ckpt.name]
    assert out.count("average") == 2


# ----------------------------------------------------------------------------- mirror
def test_mirror_check_lists_present_and_missing(cli, mirror, tmp_path):
    code, out, _ = cli("mirror", "check", mirror)
    assert code == 0
    assert "13 of 13 task(s) complete" in out
    partial = tmp_path / "partial"
    shutil.copytree(mirror / "dataset-org", partial / "dataset-org")
    code, out, _ = cli("mirror", "check", partial, "--tasks", "c3,gsm8k")
    assert code == 1
    cells = [[c.strip() for c in line.strip("│┃ ").split("│")] for line in out.splitlines() if "│" in line]
    rows = {r[0]: r for r in cells if r[0]}
    assert rows["c3"][2:4] == ["2", "0"]
    assert rows["gsm8k"][2:4] == ["0", "1"] and "openai/gsm8k" in rows["gsm8k"][4]


def test_mirror_export_needs_the_hub(cli, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, _, err = cli("mirror", "export", "--tasks", "c3", "--out", tmp_path / "m")
    assert code == 2
    assert "HF_HUB_OFFLINE" in _one_error_line(err)


def test_mirror_export_of_non_hub_sources(cli, mirror, tmp_path, monkeypatch):
    """Xiezhi (GitHub files) and LCBench (OpenCompass zip) exported from stand-in download sites
    (local file:// URLs): the export writes the card itself, and datasets reads the result like
    a hub repository."""
    import datasets

    from nitp_eval.tasks.lcbench import utils as lcbench
    from nitp_eval.tasks.xiezhi import utils as xiezhi

    site = tmp_path / "site"
    shutil.copytree(mirror / "MikeGu721" / "XiezhiBenchmark" / "Tasks", site / "xiezhi" / "Tasks")
    with zipfile.ZipFile(site / "LCBench2023.zip", "w") as z:
        for member in lcbench.FILES.values():
            z.write(mirror / "opencompass" / "LCBench2023" / Path(member).name, member)
    monkeypatch.setattr(xiezhi, "RAW", (site / "xiezhi").as_uri() + "/")
    monkeypatch.setattr(lcbench, "ZIP_URL", (site / "LCBench2023.zip").as_uri())
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    out_dir = tmp_path / "exported"
    code, out, err = cli("mirror", "export", "--tasks", "xiezhi,lcbench", "--out", out_dir)
    assert code == 0, err
    assert "2 of 2 task(s) complete" in out
    spec = datasets.load_dataset(str(out_dir / "MikeGu721" / "XiezhiBenchmark"), "xiezhi_spec_chn")
    assert set(spec) == {"test", "train"} and spec["test"].column_names == [
        "question",
        "labels",
        "answer",
        "options",
    ]
    lc = datasets.load_dataset(str(out_dir / "opencompass" / "LCBench2023"), "cn", split="test")
    assert len(lc) == lcbench.N_PROMPT_ROWS + 2 and "test_list" in lc.column_names
    # the tasks' online loaders (used without --data-dir) read the same rows from the sources
    assert xiezhi.load_xiezhi("xiezhi_spec_chn")["test"].to_list() == spec["test"].to_list()
    assert lcbench.load_lcbench("cn")["test"].to_list() == lc.to_list()
