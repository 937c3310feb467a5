"""Issue 28, evaluation side: task names and offline data checked before anything heavy, GGUF
records named after the file, no git noise, the suite list in the help, pickled weights refused,
a tracker thread's failure as one line."""

from __future__ import annotations

import inspect
import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from nitp.errors import UserError

ROOT = Path(__file__).resolve().parent.parent


class _Index:
    """The names of lm-eval's task index, as ``remember_task_names`` reads them."""

    def __init__(self, names):
        self.all_tasks = list(names)


def test_a_mistyped_task_name_fails_from_the_remembered_index_with_a_hint(tmp_path, monkeypatch):
    from nitp_eval.bench.plan import known_task_names, remember_task_names, select_benchmarks

    monkeypatch.setenv("NITP_CACHE_DIR", str(tmp_path))
    shipped = known_task_names()  # never listed here: the names shipped for this lm-eval version
    assert shipped is not None and {"hellaswag", "leaderboard_mmlu_pro", "nitp_c3"} <= shipped
    with pytest.raises(UserError, match=r"unknown task 'anlogies'; did you mean analogies\?"):
        select_benchmarks("anlogies")  # a new user's first typo: no index built
    remember_task_names(_Index(["hellaswag", "leaderboard_mmlu_pro", "arc_easy"]))
    with pytest.raises(UserError, match=r"unknown task 'hellaswg'; did you mean hellaswag\?"):
        select_benchmarks("hellaswg,c3")
    with pytest.raises(UserError, match=r"unknown task 'mmlu_pr'; did you mean mmlu_pro"):
        select_benchmarks("mmlu_pr")
    names = [b.name for b in select_benchmarks("hellaswag,mmlu-pro,arc_easy")]
    assert names == ["hellaswag", "mmlu_pro", "arc_easy"]


@pytest.mark.slow  # builds lm-eval's whole task index (tens of seconds)
def test_the_shipped_task_names_are_lm_evals_index():
    """`make docs` lists lm-eval's index into the package; for the installed lm-eval it must be
    exactly the index (another version: the shipped names are not used at all)."""
    import gzip
    import json

    from nitp_eval.bench.plan import SHIPPED_TASK_NAMES, list_lm_eval_task_names

    shipped = json.loads(gzip.decompress(SHIPPED_TASK_NAMES.read_bytes()))
    listed = list_lm_eval_task_names()
    if shipped["lm_eval"] != listed["lm_eval"]:
        pytest.skip(f"names shipped for lm-eval {shipped['lm_eval']}, {listed['lm_eval']} installed")
    assert shipped == listed, "run `make docs`"


def test_suite_help_lists_every_suite_of_the_table():
    from nitp_eval.cli_bench import bench, mirror_export
    from nitp_eval.tasks import SUITES

    assert len(SUITES) == 5
    for command in (bench, mirror_export):
        text = inspect.signature(command).parameters["suite"].default.help
        assert all(name in text for name in SUITES), text


def _pickled_model(folder: Path) -> Path:
    """A model folder whose only weights are a pickle that would write ``ran`` when unpickled."""
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}')

    class Payload:
        def __reduce__(self):
            return (Path.write_text, (folder / "ran", "unpickled"))

    (folder / "pytorch_model.bin").write_bytes(pickle.dumps(Payload()))
    return folder


def test_pickled_weights_are_refused_by_bench_before_anything_loads_them(tmp_path):
    from nitp.loading import check_model_files, check_safe_weights
    from nitp_eval.bench.plan import check_causal_lm

    folder = _pickled_model(tmp_path / "m")
    with pytest.raises(UserError, match=r"the weights are pickled \(pytorch_model.bin\).*safetensors"):
        check_causal_lm(folder)
    with pytest.raises(UserError, match=r"the weights are pickled"):  # nitp-geom's and mteb's check
        check_model_files(folder)
    from nitp_train.config import load_config

    with pytest.raises(UserError, match=r"the weights are pickled"):  # model.init_from: at config time
        load_config(None, [f"model.init_from={folder}"])
    (folder / "model.safetensors").write_bytes(b"")  # a safetensors copy beside it is what loads
    check_safe_weights(folder)
    assert not (folder / "ran").exists()


@pytest.mark.slow
def test_pickled_weights_are_refused_by_bench_and_mteb_cli_in_one_line(tmp_path):
    folder = _pickled_model(tmp_path / "m")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "NITP_CACHE_DIR": str(tmp_path)}
    for args in (["bench", str(folder), "--tasks", "analogies"], ["mteb", str(folder)]):
        done = subprocess.run(
            [sys.executable, "-m", "nitp_eval.cli", *args],
            capture_output=True,
            text=True,
            env=env,
            cwd=tmp_path,
        )
        assert done.returncode == 2, done.stderr
        assert "Traceback" not in done.stderr
        assert "the weights are pickled" in done.stderr.strip().splitlines()[-1]
    assert not (folder / "ran").exists()


@pytest.mark.slow
def test_lm_eval_git_hash_outside_a_checkout_prints_nothing(tmp_path):
    code = textwrap.dedent(
        """
        import os, sys
        os.chdir(sys.argv[1])
        from lm_eval import evaluator
        from nitp_eval.bench.run import _quiet_git
        with _quiet_git():
            evaluator.get_git_commit_hash()
        evaluator.get_git_commit_hash()  # lm-eval's own, restored after the block
        """
    )
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("not a git repository") == 1  # the second call only


@pytest.mark.slow
def test_tasks_without_the_hub_fail_before_the_model_loads_and_write_nothing(tmp_path, monkeypatch):
    from nitp_eval.bench import BenchSettings, run_bench

    ckpt = _tiny_causal_lm(tmp_path / "model")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty hub cache
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf" / "datasets"))
    monkeypatch.chdir(tmp_path)
    logged = []
    with pytest.raises(UserError, match=r"^mmlu_pro: its data .* is not in the local Hugging Face cache"):
        run_bench([ckpt], BenchSettings(tasks="mmlu_pro,c3", device="cpu"), log=logged.append)
    assert not [line for line in logged if "lm-eval" in line]  # no task started
    assert not list(tmp_path.rglob("*mmlu_pro*.json"))


def _tiny_causal_lm(folder: Path) -> Path:
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    from tests.helpers import builtin_prepared_dir

    tok = PreTrainedTokenizerFast.from_pretrained(builtin_prepared_dir() / "tokenizer")
    GPT2LMHeadModel(
        GPT2Config(vocab_size=4096, n_embd=16, n_layer=1, n_head=2, n_positions=64)
    ).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.mark.slow
def test_a_gguf_record_is_named_after_the_file(smollm2_gguf, tmp_path, monkeypatch):
    from nitp.records import default_record_path, model_identity
    from nitp.runs import resolve_checkpoint

    info = model_identity(resolve_checkpoint(smollm2_gguf))  # what run_bench now keys and names by
    path = default_record_path(info, "bench", "offline")
    assert "SmolLM2-135M-Instruct" in path.name and "v2-" not in str(path)


TRACKER_FAILS = """
import resource, signal, sys
from nitp.errors import UserError
from nitp_train.trackers import Trackers
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG, as on a full disk
resource.setrlimit(resource.RLIMIT_FSIZE, (20000, 20000))
try:
    t = Trackers(sys.argv[1], ["tensorboard"], "r", {"a": 1})
    for step in range(2000):
        t.log({"step": step, **{f"m{i}": float(i) for i in range(20)}})
    t.close()
except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    t.close()  # after the error: closes quietly
    sys.exit(2)
"""


@pytest.mark.slow
def test_a_tracker_writer_thread_failing_is_one_line(tmp_path):
    done = subprocess.run(
        [sys.executable, "-c", TRACKER_FAILS, str(tmp_path)], capture_output=True, text=True, cwd=ROOT
    )
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and "Exception in thread" not in done.stderr
    [line] = done.stderr.strip().splitlines()
    assert line.startswith("error: log.trackers: tensorboard failed (log step") and "File too large" in line
