"""mteb's result cache is keyed per checkpoint (weights hash) and per pooling/layer; records skip
recorded work and --redo recomputes."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from nitp_eval.mteb.run import run_mteb
from nitp_eval.mteb.settings import MtebSettings
from tests.helpers import hidden_encoder

TASKS = ["WordSim353"]  # 706 one-word texts: quick, and the scores move with the weights


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("mteb-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MTEB_CACHE", str(path))
        mp.setenv("NITP_CACHE_DIR", str(tmp_path_factory.mktemp("nitp-cache")))  # per-task score cache
        yield path


@pytest.fixture(scope="module")
def two_checkpoints(tiny_checkpoint, tmp_path_factory):
    """The tiny checkpoint and a copy whose embeddings are perturbed: different weights."""
    import torch
    from safetensors.torch import load_file, save_file

    root = tmp_path_factory.mktemp("ckpts")
    a, b = root / "a", root / "b"
    shutil.copytree(tiny_checkpoint, a)
    shutil.copytree(tiny_checkpoint, b)
    weights = load_file(b / "model.safetensors")
    name = next(k for k in weights if "embed_tokens" in k)
    generator = torch.Generator().manual_seed(0)
    weights[name] = weights[name] + 0.5 * torch.randn(weights[name].shape, generator=generator)
    save_file(weights, b / "model.safetensors", metadata={"format": "pt"})
    return a, b


def _forbid_encoding(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("encoded although the result was cached / recorded")

    monkeypatch.setattr(hidden_encoder().HiddenStateEncoder, "encode_texts", fail)


def _revision_folders(cache_dir: Path) -> set[str]:
    return {p.name for p in (cache_dir / "results").glob("*/*") if p.is_dir()}


def test_two_checkpoints_never_share_cached_scores(two_checkpoints, cache_dir, tmp_path, monkeypatch):
    a, b = two_checkpoints
    first = run_mteb([a, b], MtebSettings(tasks=TASKS), out=tmp_path / "first", log=lambda _: None)
    score_a, score_b = (r["scores"]["tasks"]["WordSim353"]["main_score"] for r in first)
    assert score_a != score_b
    keys = {r["model"]["key"] for r in first}  # weights + config + tokenizer (nitp.records.model_identity)
    assert len(keys) == 2 and keys <= _revision_folders(cache_dir)  # one mteb revision per checkpoint

    # new records, same cache: each checkpoint gets its own scores back without encoding anything
    _forbid_encoding(monkeypatch)
    again = run_mteb([b, a], MtebSettings(tasks=TASKS), out=tmp_path / "second", log=lambda _: None)
    assert [r["scores"]["tasks"]["WordSim353"]["main_score"] for r in again] == [score_b, score_a]


def test_pooling_and_layer_have_their_own_cache_entries(two_checkpoints, tmp_path):
    a, _ = two_checkpoints
    mean = run_mteb(a, MtebSettings(tasks=TASKS), out=tmp_path, log=lambda _: None)[0]
    last = run_mteb(a, MtebSettings(tasks=TASKS, pooling="last"), out=tmp_path, log=lambda _: None)[0]
    layer1 = run_mteb(a, MtebSettings(tasks=TASKS, layer=1), out=tmp_path, log=lambda _: None)[0]
    values = [r["scores"]["tasks"]["WordSim353"]["main_score"] for r in (mean, last, layer1)]
    assert len(set(values)) == 3
    assert len(list(tmp_path.glob("*.json"))) == 3  # three settings, three record files


def test_rerun_skips_what_is_recorded_and_redo_recomputes(two_checkpoints, tmp_path, monkeypatch):
    a, _ = two_checkpoints
    out = tmp_path / "a.json"
    first = run_mteb(a, MtebSettings(tasks=TASKS), out=out, log=lambda _: None)[0]

    def no_model(*args, **kwargs):
        raise AssertionError("loaded the model although the record holds every task")

    with monkeypatch.context() as m:
        m.setattr(hidden_encoder(), "HiddenStateEncoder", no_model)
        notes: list[str] = []
        again = run_mteb(a, MtebSettings(tasks=TASKS), out=out, log=notes.append)[0]
    assert again == first and any("already recorded" in n for n in notes)

    calls = []
    original = hidden_encoder().HiddenStateEncoder.encode_texts

    def counting(self, texts, **kwargs):
        calls.append(len(texts))
        return original(self, texts, **kwargs)

    monkeypatch.setattr(hidden_encoder().HiddenStateEncoder, "encode_texts", counting)
    redone = run_mteb(a, MtebSettings(tasks=TASKS), out=out, redo=True, log=lambda _: None)[0]
    assert calls, "--redo must recompute, not read mteb's cache"
    assert redone["scores"]["tasks"]["WordSim353"]["main_score"] == pytest.approx(
        first["scores"]["tasks"]["WordSim353"]["main_score"], abs=1e-6
    )
    assert redone["created"] >= first["created"]


def test_same_weights_in_another_folder_share_the_key(two_checkpoints, tmp_path, monkeypatch):
    a, _ = two_checkpoints
    run_mteb(a, MtebSettings(tasks=TASKS), out=tmp_path / "x.json", log=lambda _: None)
    twin = tmp_path / "twin"
    shutil.copytree(a, twin)
    _forbid_encoding(monkeypatch)  # identical weights -> identical hash -> mteb's cache answers
    rec = run_mteb(twin, MtebSettings(tasks=TASKS), out=tmp_path / "y.json", log=lambda _: None)[0]
    assert rec["model"]["path"] == str(twin.resolve())  # the folder asked for, not the cached one
    assert (
        rec["model"]["hash"]
        == run_mteb(a, MtebSettings(tasks=TASKS), out=tmp_path / "x.json", log=lambda _: None)[0]["model"][
            "hash"
        ]
    )


# ----------------------------------------------------------------------------- resumable runs
RESUME_TASKS = ["WordSim353", "PangLeePolarity"]


def _count_evaluated(monkeypatch, fail_on: str | None = None) -> list[str]:
    """Wrap ``mteb.evaluate``: record which tasks it scores; raise (a killed run) on ``fail_on``."""
    import mteb

    seen: list[str] = []
    real = mteb.evaluate

    def evaluate(model, tasks, **kwargs):
        names = [t.metadata.name for t in tasks]
        seen.extend(names)
        if fail_on in names:
            raise KeyboardInterrupt(f"killed while scoring {fail_on}")
        return real(model, tasks, **kwargs)

    monkeypatch.setattr(mteb, "evaluate", evaluate)
    return seen


def test_a_killed_run_resumes_with_the_tasks_it_had_not_finished(two_checkpoints, tmp_path, monkeypatch):
    _, b = two_checkpoints
    out = tmp_path / "b.json"
    monkeypatch.setenv("NITP_CACHE_DIR", str(tmp_path / "nitp-cache"))  # nothing cached before
    with monkeypatch.context() as m:
        seen = _count_evaluated(m, fail_on="PangLeePolarity")
        with pytest.raises(KeyboardInterrupt):
            run_mteb(b, MtebSettings(tasks=RESUME_TASKS), out=out, log=lambda _: None)
    assert seen == RESUME_TASKS and not out.exists()  # task 1 done, task 2 killed, no record

    with monkeypatch.context() as m:
        seen = _count_evaluated(m)
        record = run_mteb(b, MtebSettings(tasks=RESUME_TASKS), out=out, log=lambda _: None)[0]
    assert seen == ["PangLeePolarity"]  # task 1 came from the per-task cache
    assert set(record["scores"]["tasks"]) == set(RESUME_TASKS) and out.is_file()


def test_a_failed_run_never_overwrites_a_good_record(two_checkpoints, tmp_path, monkeypatch):
    import nitp_eval.mteb.run as mteb_run

    a, _ = two_checkpoints
    out = tmp_path / "a.json"
    good = run_mteb(a, MtebSettings(tasks=RESUME_TASKS), out=out, log=lambda _: None)[0]
    before = out.read_text()

    real = mteb_run._evaluate_task

    def second_fails(encoder, task, *args):
        return None if task.metadata.name == "PangLeePolarity" else real(encoder, task, *args)

    monkeypatch.setattr(mteb_run, "_evaluate_task", second_fails)
    notes: list[str] = []
    partial = run_mteb(a, MtebSettings(tasks=RESUME_TASKS), out=out, redo=True, log=notes.append)[0]
    assert list(partial["scores"]["tasks"]) == ["WordSim353"]
    assert out.read_text() == before and set(good["scores"]["tasks"]) == set(RESUME_TASKS)
    assert any(n.startswith(f"kept {out}") for n in notes)
