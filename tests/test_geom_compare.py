"""`nitp-geom compare`, `diff-erank` and the depth columns of `layers` on the tiny checkpoints."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import subprocess
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

from analysis.cli import app

FAST = ["-n", "600", "--seq-len", "64", "-b", "4", "--no-progress"]
runner = CliRunner()


def invoke(*args) -> str:
    result = runner.invoke(app, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.stdout


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("NITP_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)


def test_compare_alone_is_self_similarity_with_unit_diagonal_and_a_heatmap(tiny_checkpoint, tmp_path):
    out, fig = tmp_path / "self.json", tmp_path / "fig" / "self"
    invoke("compare", tiny_checkpoint, *FAST, "--out", out, "--figure", fig)
    rec = json.loads(out.read_text())
    sim = rec["scores"]["similarity"]
    assert rec["kind"] == "geom" and sim["layers_a"] == [0, 1, 2, 3, 4, -1] and "a_vs_b" not in sim
    cka = np.array(sim["a_vs_a"]["cka_debiased"])
    assert np.allclose(np.diag(cka), 1.0) and np.allclose(cka, cka.T)
    assert np.allclose(np.diag(np.array(sim["a_vs_a"]["procrustes"])), 0.0, atol=1e-9)
    assert (cka[0, 1:] < 0.99).all()  # the embeddings are not the last layer
    assert (fig.parent / "self.png").stat().st_size > 1000 and (fig.parent / "self.pdf").is_file()


def test_compare_two_models_is_cached_and_keyed_by_both(tiny_checkpoint, tiny_ntp_run, tmp_path):
    from nitp.runs import resolve_checkpoint

    ntp = resolve_checkpoint(tiny_ntp_run)
    ab = json.loads(invoke("compare", tiny_checkpoint, ntp, *FAST, "--no-self", "-f", "json"))[0]
    again = json.loads(invoke("compare", tiny_checkpoint, ntp, *FAST, "--no-self", "-f", "json"))[0]
    aa = json.loads(invoke("compare", tiny_checkpoint, tiny_checkpoint, *FAST, "--no-self", "-f", "json"))[0]
    assert again["created"] == ab["created"]  # the same pair: served from the cache
    assert aa["settings"]["model_b"]["key"] != ab["settings"]["model_b"]["key"]
    same = np.array(aa["scores"]["similarity"]["a_vs_b"]["cka_debiased"])
    other = np.array(ab["scores"]["similarity"]["a_vs_b"]["cka_debiased"])
    assert np.allclose(np.diag(same), 1.0)
    assert not np.allclose(np.diag(other), 1.0)  # two different trainings: not identical layers
    assert "a_vs_a" not in ab["scores"]["similarity"]
    rows = list(
        csv.DictReader(io.StringIO(invoke("compare", tiny_checkpoint, ntp, *FAST, "--no-self", "-f", "csv")))
    )
    assert len(rows) == 36 and {r["map"] for r in rows} == {"a_vs_b"}
    table = invoke("compare", tiny_checkpoint, ntp, *FAST, "--no-self")
    assert "cka_debiased" in table and "same layer" in table


def test_layers_has_depth_columns_and_the_lens_matches_the_model_loss(tiny_checkpoint):
    import torch
    from transformers import AutoModelForCausalLM

    from analysis.hidden import corpus_sample, load_model
    from analysis.measure import geom_record
    from analysis.settings import GeomSettings

    small = GeomSettings(n_tokens=600, seq_len=64, batch_size=4)
    rec = geom_record(tiny_checkpoint, small, progress=False, write=False)
    rows = {r["layer"]: r for r in rec["scores"]["layers"]}
    for r in rows.values():
        assert r["intrinsic_dimension_twonn"] > 0 and r["intrinsic_dimension_gride"] > 0
        assert 0 <= r["prompt_entropy"] <= 1 and 0 <= r["dataset_entropy"] <= 1
        assert 0 <= r["curvature"] <= np.pi and r["alpha_req"] is not None
    assert rows[4]["logit_lens_ce"] == pytest.approx(
        rows[-1]["logit_lens_ce"], rel=1e-5
    )  # norm(block L) = last
    assert rec["settings"]["depth"]["alpha_req_fit_range"] == [6, 100]
    # the lens of the last hidden state is the model's own next-token CE on the same tokens
    loaded = load_model(tiny_checkpoint, device="cpu")
    sample = corpus_sample(loaded.tokenizer, "builtin", 600, 64, 0, 0.2)
    model = AutoModelForCausalLM.from_pretrained(tiny_checkpoint).eval()
    nll = n = 0.0
    with torch.no_grad():
        for seq in sample.sequences:
            ids = torch.from_numpy(seq)[None]
            nll += float(model(input_ids=ids, labels=ids).loss) * (len(seq) - 1)
            n += len(seq) - 1
    assert rows[-1]["logit_lens_ce"] == pytest.approx(nll / n, rel=1e-4)
    no_lens = geom_record(
        tiny_checkpoint, dataclasses.replace(small, lens=False, id_tokens=0), progress=False, write=False
    )
    assert no_lens["created"] != rec["created"]  # other settings: another record, not the cached one
    assert all(
        r["logit_lens_ce"] is None and r["intrinsic_dimension_twonn"] is None
        for r in no_lens["scores"]["layers"]
    )


def test_diff_erank_is_random_minus_trained_and_cached(tiny_checkpoint, tmp_path):
    out = tmp_path / "de.json"
    rows = list(
        csv.DictReader(
            io.StringIO(invoke("diff-erank", tiny_checkpoint, *FAST, "-l", "0,-1", "-o", out, "-f", "csv"))
        )
    )
    assert [int(r["layer"]) for r in rows] == [0, -1]
    for r in rows:
        assert float(r["diff_erank"]) == pytest.approx(float(r["erank_random"]) - float(r["erank_trained"]))
        assert 1 <= float(r["erank_trained"]) <= 64
    rec = json.loads(out.read_text())
    again = json.loads(invoke("diff-erank", tiny_checkpoint, *FAST, "-l", "0,-1", "-f", "json"))[0]
    assert again["created"] == rec["created"] and "opposite direction" in rec["scores"]["diff_erank"]["label"]
    other_init = json.loads(
        invoke("diff-erank", tiny_checkpoint, *FAST, "-l", "0,-1", "--init-seed", "1", "-f", "json")
    )[0]
    random_ranks = [r["erank_random"] for r in other_init["scores"]["diff_erank"]["layers"]]
    assert random_ranks != [r["erank_random"] for r in rec["scores"]["diff_erank"]["layers"]]
    assert "opposite direction" in invoke("diff-erank", tiny_checkpoint, *FAST, "-l", "0,-1")


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["layers", "nowhere", "--id-tokens", "-1"], "--id-tokens -1"),
        (["compare", "nowhere", "--measure", "mean"], "--measure mean"),
        (["diff-erank", "nowhere", "--tokens", "0"], "--tokens 0"),
    ],
)
def test_bad_options_are_one_line_errors(args, expected):
    proc = subprocess.run(
        [sys.executable, "-m", "analysis.cli", *args], capture_output=True, text=True, timeout=120
    )
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and expected in lines[0], proc.stderr


def test_the_report_draws_the_map_of_a_real_compare_record(tiny_checkpoint, tiny_ntp_run, tmp_path):
    """nitp-report reads the record nitp-geom compare writes (a_vs_b beside layers_a / layers_b)."""
    from nitp.runs import resolve_checkpoint
    from reports.depth import similarity_maps
    from reports.grouping import arrange, settings_groups
    from reports.inputs import load_inputs

    ntp = resolve_checkpoint(tiny_ntp_run)
    out = tmp_path / "ab.json"
    invoke("compare", tiny_checkpoint, ntp, *FAST, "--no-self", "--out", out)
    rec = json.loads(out.read_text())
    study = load_inputs([out])
    [found] = similarity_maps(arrange(study).main, settings_groups(study.models, "geom"))
    assert found.matrix == rec["scores"]["similarity"]["a_vs_b"]["cka_debiased"]
    assert found.rows == rec["scores"]["similarity"]["layers_a"] and found.reference != "itself"
