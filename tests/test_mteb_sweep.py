"""The MTEB layer sweep (`--layers`): one pass over the texts, scores equal to `--layer k` runs."""

from __future__ import annotations

import json

import numpy as np
import pytest

from nitp.errors import UserError
from nitp_eval.cli import main
from nitp_eval.mteb.run import run_mteb
from nitp_eval.mteb.settings import MtebSettings, parse_layers
from tests.helpers import hidden_encoder, run_main

TASKS = ["WordSim353", "PangLeePolarity"]  # an STS and a classification task: two groups
LAYERS = [0, 2, -1]


def _fresh_caches(monkeypatch, tmp_path, name: str) -> None:
    monkeypatch.setenv("MTEB_CACHE", str(tmp_path / f"{name}-mteb"))
    monkeypatch.setenv("NITP_CACHE_DIR", str(tmp_path / f"{name}-nitp"))


def _main_scores(record: dict) -> dict[str, float]:
    return {t: s["main_score"] for t, s in record["scores"]["tasks"].items()}


def test_parse_layers():
    assert parse_layers("all", 4) == [0, 1, 2, 3, 4, -1]
    assert parse_layers("-1, 3,0,3", 4) == [0, 3, -1]
    with pytest.raises(UserError, match="--layers 7 is out of range"):
        parse_layers("0,7", 4)
    with pytest.raises(UserError, match="comma-separated integers"):
        parse_layers("0,mid", 4)


def test_encode_layers_equals_each_single_layer_encoder(tiny_checkpoint):
    texts = ["a cat sat on the mat", "x", "", "a dog " * 40, "a cat sat on the mat"]
    full = hidden_encoder().HiddenStateEncoder(tiny_checkpoint, device="cpu", log=lambda _: None)
    swept = full.encode_layers(texts, LAYERS, batch_size=2)
    for j, k in enumerate(LAYERS):
        single = hidden_encoder().HiddenStateEncoder(
            tiny_checkpoint, layer=k, device="cpu", log=lambda _: None
        )
        np.testing.assert_array_equal(swept[j], single.encode_texts(texts, batch_size=2))
    assert not np.allclose(swept[0], swept[-1])  # the layers do differ


def test_sweep_scores_equal_single_layer_runs_with_one_pass(tiny_checkpoint, tmp_path, monkeypatch):
    singles = {}
    for k in LAYERS:
        _fresh_caches(monkeypatch, tmp_path, f"single{k}")
        [rec] = run_mteb(
            tiny_checkpoint, MtebSettings(tasks=TASKS, layer=k), out=tmp_path / "single", log=lambda _: None
        )
        singles[k] = _main_scores(rec)

    from nitp_eval.mteb.sweep import LayerView

    passes, views = [], []
    real_layers, real_view = hidden_encoder().HiddenStateEncoder.encode_layers, LayerView.encode_texts
    monkeypatch.setattr(
        hidden_encoder().HiddenStateEncoder,
        "encode_layers",
        lambda self, texts, *a, **kw: passes.append(len(texts)) or real_layers(self, texts, *a, **kw),
    )
    monkeypatch.setattr(
        LayerView,
        "encode_texts",
        lambda self, texts, **kw: views.append(len(texts)) or real_view(self, texts, **kw),
    )
    _fresh_caches(monkeypatch, tmp_path, "sweep")
    records = run_mteb(
        tiny_checkpoint,
        MtebSettings(tasks=TASKS, layers="0,2,-1"),
        out=tmp_path / "sweep",
        log=lambda _: None,
    )
    assert [r["settings"]["layer"] for r in records] == LAYERS
    for rec in records:
        assert _main_scores(rec) == singles[rec["settings"]["layer"]]
        assert set(rec["scores"]["tasks"]) == set(TASKS) and rec["model"]["num_layers"] == 4
    assert len({tuple(v.values()) for v in singles.values()}) == 3  # three layers, three sets of scores
    assert passes and len(views) == len(LAYERS) * len(passes)  # each text list ran once for all layers
    assert sorted(p.name for p in (tmp_path / "sweep").glob("*.json")) == sorted(
        p.name for p in (tmp_path / "single").glob("*.json")
    )  # one record per layer, named like the single-layer records


def test_rerun_of_a_sweep_reads_the_records(tiny_checkpoint, tmp_path, monkeypatch):
    _fresh_caches(monkeypatch, tmp_path, "a")
    first = run_mteb(
        tiny_checkpoint, MtebSettings(tasks=TASKS[:1], layers="0,-1"), out=tmp_path, log=lambda _: None
    )

    def fail(*args, **kwargs):
        raise AssertionError("encoded although every layer was recorded")

    monkeypatch.setattr(hidden_encoder().HiddenStateEncoder, "encode_layers", fail)
    again = run_mteb(
        tiny_checkpoint, MtebSettings(tasks=TASKS[:1], layers="0,-1"), out=tmp_path, log=lambda _: None
    )
    assert [_main_scores(r) for r in again] == [_main_scores(r) for r in first]


def test_cli_prints_the_layer_table_and_writes_the_figure(tiny_checkpoint, tmp_path, monkeypatch, capsys):
    _fresh_caches(monkeypatch, tmp_path, "cli")
    figure = tmp_path / "fig" / "mteb-layers.png"
    code, stdout, err = run_main(
        main,
        "nitp-eval",
        [
            "mteb",
            tiny_checkpoint,
            "--tasks",
            "WordSim353",
            "--layers",
            "all",
            "--out",
            tmp_path / "recs",
            "--figure",
            figure,
        ],
        monkeypatch,
        capsys,
    )
    assert code == 0, err
    records = [json.loads(p.read_text()) for p in sorted((tmp_path / "recs").glob("*.json"))]
    assert sorted(r["settings"]["layer"] for r in records) == [-1, 0, 1, 2, 3, 4]
    header = next(line for line in stdout.splitlines() if "L0" in line)
    positions = [header.index(c) for c in ("L0", "L1", "L2", "L3", "L4", "last")]
    assert positions == sorted(positions) and "delta" not in stdout  # columns by depth, no deltas
    best = max(records, key=lambda r: r["scores"]["overall"])
    assert f"{best['scores']['overall'] * 100:.2f}" in stdout.splitlines()[-1] and "best layer" in stdout
    for r in records:
        assert f"{r['scores']['tasks']['WordSim353']['main_score'] * 100:.2f}" in stdout
    png, pdf = figure.with_suffix(".png"), figure.with_suffix(".pdf")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and pdf.read_bytes()[:5] == b"%PDF-"


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--layer", "2", "--layers", "all"], "--layer and --layers are mutually exclusive"),
        (["--layers", "0,9"], "--layers 9 is out of range"),
        (["--figure", "f.png"], "--figure draws a layer sweep: use it with --layers"),
        (["--layers", "all", "--save-encoder", "enc"], "--save-encoder saves one layer's encoder"),
    ],
)
def test_bad_sweep_input_is_one_line(args, expected, tiny_checkpoint, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code, _, err = run_main(
        main,
        "nitp-eval",
        ["mteb", tiny_checkpoint, "--tasks", "WordSim353", "--out", tmp_path, *args],
        monkeypatch,
        capsys,
    )
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(lines) == 1 and expected in lines[0] and "Traceback" not in err
    assert not list(tmp_path.glob("*.json"))
