"""Faults of nitp-geom and the shared model / record layer (issue 28): caches keyed on every input
(file contents, dtype, every setting; one key builder, ``nitp.cachekey``), NaN weights named in one
line, broken tokenizers and paths named in one line, damaged pointers and metadata in a run.

Fast tests check the key builder and the readers on small files; tests that measure the tiny
trained checkpoint are slow (they load a real model).
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import os
import shutil
from pathlib import Path

import pytest

from nitp.cachekey import cache_key, content_digest, input_identity
from nitp.records import RecordCache, settings_digest
from tests.helpers import run_main

G = "nitp-geom"
FAST = ["--tokens", "300", "--no-progress"]


@pytest.fixture(autouse=True)
def nitp_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("NITP_CACHE_DIR", str(tmp_path / "nitp-cache"))


def geom(args, monkeypatch, capsys) -> tuple[int, str, str]:
    from analysis.cli import main

    return run_main(main, G, args, monkeypatch, capsys)


def one_line(code: int, err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith(("note:", "warning:"))]
    assert code == 2 and "Traceback" not in err, err[-2000:]
    assert len(lines) == 1 and lines[0].startswith("error: "), err[-2000:]
    return lines[0]


# ----------------------------------------------------------------------------- the key builder
def test_a_file_is_keyed_by_its_contents_and_a_folder_by_every_file(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text("one")
    first = input_identity(str(corpus))
    corpus.write_text("two")  # same path, same size, new contents
    assert input_identity(str(corpus)) != first and input_identity(str(corpus))["value"] == str(corpus)
    folder = tmp_path / "corpus"
    folder.mkdir()
    (folder / "a.txt").write_text("a")
    before = content_digest(folder)
    (folder / "b.txt").write_text("b")  # a new file in the folder
    after_new = content_digest(folder)
    (folder / "b.txt").rename(folder / "c.txt")  # the same bytes under another name
    assert len({before, after_new, content_digest(folder)}) == 3
    assert input_identity("builtin") == "builtin" and input_identity(None) is None


def test_the_key_holds_every_argument_but_the_ignored_ones(tmp_path):
    args = {"corpus": "builtin", "dtype": "float32", "seed": 0, "progress": True}
    key = cache_key(args, files=("corpus",), ignore=("progress",))
    assert set(key) == {"corpus", "dtype", "seed", "versions"}
    assert {"torch", "transformers"} <= set(key["versions"])
    with pytest.raises(ValueError, match="not among the arguments: corpos"):
        cache_key(args, files=("corpos",))  # a typo would silently drop an input


def _geom_functions():
    from analysis.diffrank import diff_erank_record
    from analysis.measure import geom_record
    from analysis.similarity import compare_record

    return [geom_record, compare_record, diff_erank_record]


OTHER_VALUE = {  # a second value of each argument (None-able arguments get a real one)
    "corpus": "other.txt",
    "n_tokens": 123,
    "layers": [0, -1],
    "exclude_first": True,
    "seed": 7,
    "init_seed": 3,
    "device": "cuda",
    "dtype": "bfloat16",
    "batch_size": 3,
    "seq_len": 64,
    "ridge": 0.5,
    "heldout_fraction": 0.3,
    "n_pairs": 11,
    "spectrum": True,
    "id_tokens": 5,
    "entropy_sequences": 6,
    "lens": False,
    "self_maps": False,
}


@pytest.mark.parametrize("function", _geom_functions(), ids=lambda f: f.__name__)
def test_every_argument_of_a_geom_record_is_a_key_part(function):
    """Each argument that can change a result (every field of its settings) changes the cache key
    on its own (the models are keyed by their identity: None here, checked end to end below); the
    rest is NOT_KEYED."""
    from analysis.measure import NOT_KEYED, geom_cache_key

    params = inspect.signature(function).parameters
    base = params["settings"].default
    base_digest = settings_digest(geom_cache_key(base))
    models = {"checkpoint", "reference", "model_a", "model_b"}
    for name in (f.name for f in dataclasses.fields(base)):
        changed = settings_digest(geom_cache_key(dataclasses.replace(base, **{name: OTHER_VALUE[name]})))
        assert changed != base_digest, f"{function.__name__}: {name} is not part of the cache key"
    assert {n for n in params if n not in models | {"settings"}} <= set(NOT_KEYED)


def test_a_cache_entry_is_served_only_for_equal_settings(tmp_path):
    """Not merely an equal digest: an entry whose stored settings differ (edited, or a digest
    collision) is recomputed."""
    cache = RecordCache("geom", "k" * 64, root=tmp_path)
    cache.put("layers", {"dtype": "float32"}, {"value": 1})
    path = cache.path("layers", {"dtype": "float32"})
    entry = json.loads(path.read_text())
    entry["settings"] = {"dtype": "bfloat16"}
    path.write_text(json.dumps(entry))
    calls = []
    value, cached = cache.find_or_compute("layers", {"dtype": "float32"}, lambda: calls.append(1) or 2)
    assert (value, cached, calls) == (2, False, [1])


def test_the_corpus_read_in_process_follows_the_file(tmp_path):
    from analysis.hidden import load_corpus

    corpus = tmp_path / "c.jsonl"
    corpus.write_text('{"text": "first version"}\n')
    assert load_corpus(str(corpus)) == ["first version"]
    corpus.write_text('{"text": "second version"}\n')
    assert load_corpus(str(corpus)) == ["second version"]


# ----------------------------------------------------------------------------- end to end (a real model)
def _corpus(path: Path, word: str) -> Path:
    path.write_text("\n".join(f"{word} number {i} walks home by the river" for i in range(300)))
    return path


def test_corpus_contents_dtype_and_reference_are_measured_again(tiny_checkpoint, tiny_ntp_run, tmp_path):
    from analysis.measure import geom_record
    from analysis.settings import GeomSettings

    kw = dict(n_tokens=300, layers=[-1], lens=False, id_tokens=0)
    corpus = _corpus(tmp_path / "c.txt", "the cat")
    first = geom_record(tiny_checkpoint, GeomSettings(corpus=str(corpus), **kw), progress=False)
    _corpus(corpus, "quantum zebra")  # new contents at the same path
    second = geom_record(tiny_checkpoint, GeomSettings(corpus=str(corpus), **kw), progress=False)
    assert second["created"] >= first["created"]
    assert first["scores"]["summary"] != second["scores"]["summary"]
    assert second["settings"]["sample"]["token_ids_sha256"] != first["settings"]["sample"]["token_ids_sha256"]
    served = geom_record(tiny_checkpoint, GeomSettings(corpus=str(corpus), **kw), progress=False)
    assert served["created"] == second["created"]  # served

    bf16 = geom_record(
        tiny_checkpoint, GeomSettings(corpus=str(corpus), dtype="bfloat16", **kw), progress=False
    )
    assert bf16["settings"]["dtype"] == "bfloat16" and bf16["_path"] != second["_path"]
    assert Path(bf16["_path"]).name.endswith("-bfloat16.json")
    # float32 served, its file kept
    again = geom_record(tiny_checkpoint, GeomSettings(corpus=str(corpus), **kw), progress=False)
    assert again["settings"]["dtype"] == "float32"
    assert json.loads(Path(again["_path"]).read_text())["settings"]["dtype"] == "float32"

    settings = GeomSettings(corpus=str(corpus), **kw)
    ref = geom_record(tiny_checkpoint, settings, reference=tiny_checkpoint, progress=False)
    other = geom_record(tiny_checkpoint, settings, reference=tiny_ntp_run, progress=False)
    assert ref["settings"]["reference"]["hash"] != other["settings"]["reference"]["hash"]


def test_cli_rank_after_the_corpus_changed_in_place(tiny_checkpoint, tmp_path, monkeypatch, capsys):
    corpus = _corpus(tmp_path / "c.txt", "the cat")
    args = [
        "rank",
        str(tiny_checkpoint),
        "--corpus",
        str(corpus),
        *FAST,
        "-f",
        "json",
        "-o",
        str(tmp_path / "r.json"),
    ]
    code, out, err = geom(args, monkeypatch, capsys)
    assert code == 0, err
    first = json.loads(out)[0]["scores"]["summary"]
    _corpus(corpus, "quantum zebra")
    code, out, err = geom(args, monkeypatch, capsys)
    assert code == 0, err
    assert json.loads(out)[0]["scores"]["summary"] != first


@pytest.fixture(scope="module")
def broken(tmp_path_factory, tiny_checkpoint) -> Path:
    """``nan`` (one layer's weights NaN), ``no-vocab`` (tokenizer.json gone, tokenizer_config.json
    left), a folder with a non-UTF-8 byte in its name, a run with a damaged ``latest`` pointer."""
    import torch
    from safetensors.torch import load_file, save_file

    root = tmp_path_factory.mktemp("broken")
    nan = root / "nan"
    shutil.copytree(tiny_checkpoint, nan)
    weights = load_file(nan / "model.safetensors")
    for name in weights:
        if "layers.0.mlp" in name:
            weights[name] = torch.full_like(weights[name], float("nan"))
    save_file(weights, nan / "model.safetensors", metadata={"format": "pt"})
    shutil.copytree(tiny_checkpoint, root / "no-vocab")
    (root / "no-vocab" / "tokenizer.json").unlink()
    shutil.copytree(tiny_checkpoint, root / os.fsdecode(b"bad\xffname"))
    return root


@pytest.mark.parametrize(
    "command, extra",
    [("compare", ["{ok}"]), ("compare", []), ("diff-erank", []), ("layers", [])],
    ids=["compare-a-b", "compare-self", "diff-erank", "layers"],
)
def test_nan_weights_are_one_line_naming_the_model(
    command, extra, broken, tiny_checkpoint, monkeypatch, capsys
):
    nan = broken / "nan"
    args = [command, str(nan), *[e.format(ok=tiny_checkpoint) for e in extra], *FAST]
    line = one_line(*geom(args, monkeypatch, capsys)[::2])
    assert line.startswith(f"error: {nan}: layer ") and "NaN/inf activations" in line, line
    if command == "compare":  # B broken: B named
        code, _, err = geom(["compare", str(tiny_checkpoint), str(nan), *FAST], monkeypatch, capsys)
        assert one_line(code, err).startswith(f"error: {nan}: layer ")


def test_missing_tokenizer_json_names_the_checkpoint_and_the_file(broken, monkeypatch, capsys):
    folder = broken / "no-vocab"
    line = one_line(*geom(["rank", str(folder), *FAST], monkeypatch, capsys)[::2])
    assert line.startswith(f"error: {folder}: the tokenizer turns text into no tokens")
    assert "tokenizer.json" in line and "0 tokens" not in line


def test_a_non_utf8_folder_name_is_not_called_damaged(broken, monkeypatch, capsys):
    folder = broken / os.fsdecode(b"bad\xffname")
    line = one_line(*geom(["rank", str(folder), *FAST], monkeypatch, capsys)[::2])
    assert "not UTF-8" in line and "bad\\xffname" in line and "damaged" not in line, line


@pytest.mark.parametrize(
    "edit, phrase",
    [
        (lambda run: (run / "checkpoints" / "latest").write_bytes(b"\xff\xfe"), None),
        (lambda run: (run / "checkpoints" / "latest").write_text("../../elsewhere"), None),
        (lambda run: _meta(run, step="eight"), "step='eight' is not a whole number"),
        (lambda run: _meta(run, raw='{"step": 8, '), "nitp_meta.json: not valid JSON"),
        (lambda run: _config(run, "target_layer: 1", "target_layer: middle"), "nitp.target_layer='middle'"),
    ],
    ids=["latest-not-utf8", "latest-escapes", "meta-step-text", "meta-torn", "config-target-text"],
)
def test_damaged_run_files_are_one_line_or_ignored(edit, phrase, tiny_run, tmp_path, monkeypatch, capsys):
    """A damaged ``latest`` pointer is no pointer (the newest complete checkpoint is used); a
    non-numeric value in nitp_meta.json or config.yaml is one line naming the file and the key."""
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    edit(run)
    code, out, err = geom(["layers", str(run), *FAST, "--layers", "-1"], monkeypatch, capsys)
    if phrase is None:
        assert code == 0, err[-2000:]
    else:
        assert phrase in one_line(code, err)


def _meta(run: Path, raw: str | None = None, **values) -> None:
    from nitp.runs import resolve_checkpoint

    path = resolve_checkpoint(run) / "nitp_meta.json"
    path.write_text(raw if raw is not None else json.dumps({**json.loads(path.read_text()), **values}))


def _config(run: Path, old: str, new: str) -> None:
    path = run / "config.yaml"
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))


# ----------------------------------------------------------------------------- nitp-eval caches
@pytest.mark.slow  # imports mteb (seconds)
def test_mteb_task_key_holds_the_local_data_contents_and_every_setting(tmp_path):
    from nitp_eval.mteb.encoder import EncoderSpec
    from nitp_eval.mteb.run import task_cache_settings
    from nitp_eval.mteb.tasks import resolve_tasks

    [task] = resolve_tasks(None, ["WordSim353"])
    data = tmp_path / "mirror"
    data.mkdir()
    (data / "test.jsonl").write_text('{"a": 1}\n')
    task.metadata = task.metadata.model_copy(update={"dataset": {**task.metadata.dataset, "path": str(data)}})
    settings = {"pooling": "mean", "layer": -1, "max_length": 128, "batch_size": 8, "batch_tokens": 1024}
    spec = EncoderSpec(folder=tmp_path, num_layers=2, **settings)
    key = settings_digest(task_cache_settings(task, spec))
    (data / "test.jsonl").write_text('{"a": 2}\n')  # the mirror's contents change at the same path
    assert settings_digest(task_cache_settings(task, spec)) != key
    key = settings_digest(task_cache_settings(task, spec))
    for name, value in (("batch_size", 9), ("batch_tokens", 2048), ("max_length", 64), ("layer", 0)):
        assert (
            settings_digest(task_cache_settings(task, dataclasses.replace(spec, **{name: value}))) != key
        ), name
    for name, value in (("dtype", "bfloat16"), ("device", "cuda")):
        other = EncoderSpec(**{**spec.__dict__, name: value})
        assert settings_digest(task_cache_settings(task, other)) != key, name


@pytest.mark.slow  # imports mteb (seconds)
def test_an_mteb_record_is_reused_only_for_the_same_inputs(tmp_path):
    from nitp.records import make_record, write_record
    from nitp_eval.mteb.results import is_recorded as _is_recorded

    info = {"key": "k" * 64, "path": str(tmp_path / "model")}
    settings = {"suite": None, "tasks": ["WordSim353"], "pooling": "mean", "layer": -1, "max_length": 128}
    record = make_record("mteb", info, settings, {"tasks": {"WordSim353": {"main_score": 0.5}}})
    path = write_record(tmp_path / "r.json", {**record, "inputs": "digest-a"})
    assert _is_recorded(path, info, settings, "digest-a")
    assert not _is_recorded(path, info, settings, "digest-b")  # other data contents, dtype, versions...
    write_record(path, record)  # a record of before the inputs were kept: scored again
    assert not _is_recorded(path, info, settings, "digest-a")


@pytest.mark.slow  # lm-eval's task manager (seconds)
def test_bench_key_holds_the_mirror_contents_and_every_setting(tmp_path):
    from nitp_eval.bench.plan import plan_tasks, select_benchmarks
    from nitp_eval.bench.run import bench_cache_key

    benchmarks = select_benchmarks(None, "offline")[:1]
    plan = plan_tasks(benchmarks, None, False, log=lambda _: None)
    info = {"key": "m" * 64}
    settings = dict(shots=0, limit=2, device="cpu", batch_size=8, backend="hf", max_gen_toks=None)
    key = settings_digest(bench_cache_key(info, benchmarks[0], plan, **settings))
    for name, value in (
        ("shots", 1),
        ("limit", 3),
        ("device", "cuda"),
        ("batch_size", 4),
        ("max_gen_toks", 9),
    ):
        changed = bench_cache_key(info, benchmarks[0], plan, **{**settings, name: value})
        assert settings_digest(changed) != key, name
    data = Path(plan.data_key[benchmarks[0].name])  # the offline suite's folder: keyed by contents
    assert bench_cache_key(info, benchmarks[0], plan, **settings)["data"]["sha256"] == content_digest(data)
