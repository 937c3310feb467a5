"""The metric registry (nitp.metrics_registry): one row per metric, read by every table and log.

A throw-away spectral metric (the trace of the covariance) registered at test time must reach a
geom record made by the real code path on the tiny model, the nitp-geom and nitp-report tables
built from it, the trainer's geometry line and the trackers' names; and leave no trace after.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from nitp import metrics_registry as registry
from nitp.metrics_registry import Metric

TRACE = Metric(
    "covariance_trace",
    "sum lambda: the total variance of the token vectors",
    "trace",
    "spectrum",
    views=("geom_rank", "geom_layers", "report_summary", "report_layers"),
    header="trace (cov)",
    summary_header="trace of the covariance",
    higher_is_better=None,
    decimals=3,
    of_spectrum=lambda lam: float(lam.sum()),
    logged_as="trace_cov",
)


def test_spectrum_metrics_are_the_registry_rows_and_match_numpy():
    from nitp.geometry import spectrum_metrics

    x = np.random.default_rng(0).normal(size=(300, 12)) * np.linspace(0.2, 3, 12)
    lam = np.linalg.eigvalsh(np.cov(x.T, bias=True))[::-1]
    got = spectrum_metrics(lam)
    assert tuple(got) == registry.names(group="spectrum")
    p = lam / lam.sum()
    assert got["effective_rank_covariance"] == pytest.approx(np.exp(-np.sum(p * np.log(p))), rel=1e-12)
    assert got["participation_ratio"] == pytest.approx(lam.sum() ** 2 / np.sum(lam**2), rel=1e-12)
    assert got["top_eigenvalue_share"] == pytest.approx(lam[0] / lam.sum(), rel=1e-12)
    with registry.registered(TRACE):
        assert spectrum_metrics(lam)["covariance_trace"] == pytest.approx(np.trace(np.cov(x.T, bias=True)))
    assert "covariance_trace" not in spectrum_metrics(lam)


def test_registering_checks_names_and_rows():
    with registry.registered(TRACE):
        with pytest.raises(ValueError, match="already registered"):
            registry.register(TRACE)
        with pytest.raises(ValueError, match="logged_as='trace_cov'"):
            registry.register(
                Metric("other", "d", "o", "spectrum", of_spectrum=np.sum, logged_as="trace_cov")
            )
    with pytest.raises(ValueError, match="needs of_spectrum"):
        Metric("no_function", "d", "x", "spectrum")
    with pytest.raises(ValueError, match="unknown views"):
        Metric("bad_view", "d", "x", "norms", views=("nowhere",))
    with pytest.raises(KeyError):
        registry.unregister("covariance_trace")


def test_view_orders_name_members_only_and_the_doc_table_is_the_registry():
    for view, order in registry.VIEW_ORDER.items():
        assert set(order) <= set(registry.names(view=view)), view
        assert registry.names(view=view)[: len(order)] == order
    text = (Path(__file__).resolve().parent.parent / "docs" / "geometry.md").read_text(encoding="utf-8")
    shown = text.split("<!-- metrics:start -->\n")[1].split("<!-- metrics:end -->")[0]
    assert shown == registry.markdown_table(), "docs/geometry.md's metric table is stale: run `make docs`"
    assert len(shown.splitlines()) == 2 + len(registry.metrics())


def _last_hidden_states(checkpoint):
    """Real last hidden states [B, T, d] of the tiny model on a few token windows."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(checkpoint).eval()
    ids = torch.randint(0, model.config.vocab_size, (4, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return model(input_ids=ids, output_hidden_states=True).hidden_states[-1]


def test_a_registered_metric_reaches_records_tables_logs_and_trackers(
    tiny_checkpoint, tmp_path, monkeypatch, capsys
):
    from analysis.measure import geom_record
    from analysis.settings import GeomSettings
    from analysis.tables import layer_rows, metric_rows, rank_metrics
    from nitp_train.metrics import GeometrySample, MetricsLog
    from nitp_train.trackers import scalars, tracker_name
    from reports import tables as report_tables
    from reports.inputs import Model

    monkeypatch.setenv("NITP_CACHE_DIR", str(tmp_path / "cache"))
    small = GeomSettings(
        n_tokens=600, seq_len=64, batch_size=4, layers=(0, 2, -1), spectrum=True, id_tokens=0, lens=False
    )
    before = geom_record(tiny_checkpoint, small, progress=False, write=False)  # now in the record cache
    assert "covariance_trace" not in before["scores"]["summary"]
    h = _last_hidden_states(tiny_checkpoint)
    with registry.registered(TRACE):
        # (a) the record of the real code path: every layer, the summary, the definitions; not the
        # cached record of before (the spectral metrics are part of the cache key)
        rec = geom_record(tiny_checkpoint, small, progress=False, write=False)
        for row in rec["scores"]["layers"]:
            assert row["covariance_trace"] == pytest.approx(sum(row["spectrum"]), rel=1e-9)
            assert row["with_first_position"]["covariance_trace"] > 0
        last = next(r for r in rec["scores"]["layers"] if r["layer"] == -1)
        assert rec["scores"]["summary"]["covariance_trace"] == last["covariance_trace"]
        assert rec["scores"]["definitions"]["covariance_trace"] == TRACE.definition
        # (b) nitp-geom's tables and nitp-report's per-layer and summary tables from that record
        assert [r["trace"] for r in layer_rows([rec])] == [
            r["covariance_trace"] for r in rec["scores"]["layers"]
        ]
        assert "covariance_trace" in [r["metric"] for r in metric_rows([rec], rank_metrics(), [-1])]
        model = Model(key="model:tiny", name="tiny", records=[rec], label="tiny")
        table = report_tables.layer_table(model, rec, "layers-tiny")
        column = table.columns.index("trace (cov)")
        assert [r.values[column] for r in table.rows] == [
            r["covariance_trace"] for r in rec["scores"]["layers"]
        ]
        assert "trace (cov)" in table.to_markdown()
        assert ("covariance_trace", "trace of the covariance", None, 3) in report_tables.GEOM_COLUMNS
        # (c) the trainer's geometry sample, its progress line and metrics.jsonl, the trackers' names
        sample = GeometrySample(seq_len=32, seqs_per_step=4, world=1, geom_every=1)
        sample.add(h, step=1)
        line = {"step": 1, **sample.result()}
        x = h.reshape(-1, h.shape[-1]).double().numpy()
        assert line["trace_cov"] == pytest.approx(np.trace(np.cov(x.T, bias=True)), rel=1e-5)
        assert {"erank", "mean_cos"} <= set(line)
        log = MetricsLog(tmp_path / "metrics.jsonl", total_steps=1, start_step=0)
        log.write(line)
        log.close()
        assert "trace_cov=" in capsys.readouterr().err
        assert tracker_name("trace_cov") == "geometry/trace_cov"
        assert scalars(line)["geometry/trace_cov"] == pytest.approx(line["trace_cov"])
    # gone again: no column, no logged field, an ordinary training name
    assert registry.find("covariance_trace") is None
    assert "trace (cov)" not in report_tables.layer_table(model, rec, "again").columns
    assert tracker_name("trace_cov") == "train/trace_cov"
    sample.add(h, step=2)
    assert "trace_cov" not in sample.result()
