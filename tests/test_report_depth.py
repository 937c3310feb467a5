"""The report's "where they differ" section: MTEB score by depth (per-layer mteb records), depth
profiles of the geometry, the CKA map; absent when the records hold none of them."""

from __future__ import annotations

import csv
import shutil

import pytest

from nitp.records import make_record, write_record
from reports import compare
from reports import figures as F
from reports.depth import geom_depth_profiles, mteb_depth_profiles, similarity_maps
from reports.grouping import arrange, settings_groups
from reports.inputs import load_inputs
from tests.test_report_data import geom_record, layer_stats, model_info, write_study
from tests.test_report_figures import text_problems

LAYERS = [0, 1, 2, 3, 4, -1]
SECTION = "## Where they differ (by depth)"


def mteb_layer_record(model: dict, layer: int, overall: float, root) -> None:
    """A per-layer mteb record as `nitp-eval mteb --layers` writes it (settings.layer = k)."""
    tasks = {
        "WordSim353": {
            "main_score": overall - 0.02,
            "metric": "cosine_spearman",
            "type": "STS",
            "group": "STS",
        },
        "PangLeePolarity": {
            "main_score": overall + 0.02,
            "metric": "accuracy",
            "type": "Classification",
            "group": "Classification",
        },
    }
    settings = {"suite": None, "tasks": sorted(tasks), "pooling": "mean", "layer": layer, "max_length": 512}
    scores = {
        "tasks": tasks,
        "groups": {"STS": overall - 0.02, "Classification": overall + 0.02},
        "overall": overall,
    }
    rec = make_record("mteb", {**model, "num_layers": 4}, settings, scores, versions={"mteb": "2.26.24"})
    write_record(root / f"{model['name']}-mteb-layer{layer}.json", rec)


def depth_stats(scale: float) -> list[dict]:
    rows = layer_stats(scale=scale)
    for r in rows:
        k = 5 if r["layer"] == -1 else r["layer"]
        r.update(intrinsic_dimension_twonn=scale * (8 + k), prompt_entropy=0.9 - 0.1 * k / scale)
    return rows


@pytest.fixture(scope="module")
def studies(tmp_path_factory):
    plain = tmp_path_factory.mktemp("plain")
    runs = write_study(plain)
    swept = tmp_path_factory.mktemp("swept")
    shutil.copytree(plain, swept, dirs_exist_ok=True)
    runs_swept = {k: swept / p.name for k, p in runs.items()}
    extra = swept / "records"
    extra.mkdir()
    ntp, nitp = model_info(runs_swept["ntp"], 600, "ntp"), model_info(runs_swept["nitp"], 600)
    ntp_scores = dict(zip(LAYERS, [0.30, 0.36, 0.34, 0.33, 0.32, 0.31]))
    nitp_scores = dict(zip(LAYERS, [0.30, 0.38, 0.40, 0.37, 0.35, 0.36]))
    for k in LAYERS:
        mteb_layer_record(ntp, k, ntp_scores[k], extra)
        mteb_layer_record(nitp, k, nitp_scores[k], extra)
    geom_record(ntp, {}, depth_stats(1.0), n_tokens=8192, out=extra / "ntp-geom.json")
    rec_path = geom_record(nitp, {}, depth_stats(1.2), n_tokens=8192, out=extra / "nitp-geom.json")
    import json

    rec = json.loads(rec_path.read_text())
    rec["scores"]["similarity"] = {
        "layers_a": LAYERS,
        "layers_b": LAYERS,
        "cka_debiased": [[1.0 if i == j else 0.5 for j in range(6)] for i in range(6)],
        "reference": "tiny-ntp",
    }
    rec_path.write_text(json.dumps(rec))
    return (
        [runs["ntp"], runs["nitp"]],
        [runs_swept["ntp"], runs_swept["nitp"], extra],
        (ntp_scores, nitp_scores),
    )


@pytest.mark.slow  # seconds: out of the fast subset
def test_no_section_without_per_layer_records(studies, tmp_path):
    plain, _, _ = studies
    text = compare(plain, tmp_path / "report").read_text()
    assert SECTION not in text and "depth_profiles" not in text


@pytest.mark.slow  # lm-eval / subprocess heavy: keeps the fast subset under a minute
def test_section_with_mteb_by_depth_profiles_and_cka_map(studies, tmp_path):
    _, swept, (ntp_scores, nitp_scores) = studies
    out = tmp_path / "report"
    text = compare(swept, out).read_text()
    assert SECTION in text
    section = text.split(SECTION)[1].split("\n## ")[0]
    assert "tables/depth-mteb" in section and "figures/depth_profiles.png" in section
    assert "figures/similarity_maps.png" in section
    with open(out / "tables" / "depth-mteb.csv") as f:
        rows = list(csv.reader(f))
    header, body = rows[0], {r[0]: r[1:] for r in rows[1:]}
    assert list(body) == ["0 (embeddings)", "1", "2", "3", "4", "last"]  # by depth, last at the end
    ntp_col = next(i for i, h in enumerate(header[1:]) if "NTP" in h and "NITP" not in h)
    nitp_col = next(i for i, h in enumerate(header[1:]) if "NITP" in h)
    assert float(body["2"][nitp_col]) == pytest.approx(100 * nitp_scores[2])
    assert float(body["last"][ntp_col]) == pytest.approx(100 * ntp_scores[-1])
    assert "Best layer per model" in (out / "tables" / "depth-mteb.md").read_text()
    for name in ("depth_profiles", "similarity_maps"):
        assert (out / "figures" / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert (out / "figures" / f"{name}.pdf").read_bytes()[:5] == b"%PDF-"
    [cka] = list((out / "tables").glob("similarity-*.csv"))
    with open(cka) as f:
        cka_rows = list(csv.reader(f))
    assert len(cka_rows) == 1 + len(LAYERS) and float(cka_rows[1][1]) == 1.0 and float(cka_rows[1][2]) == 0.5


def test_depth_figures_draw_what_is_present_without_overlaps(studies):
    _, swept, _ = studies
    study = load_inputs(swept)
    layout = arrange(study)
    mteb = mteb_depth_profiles(layout.main, settings_groups(study.models, "mteb"))
    geom = geom_depth_profiles(layout.main, settings_groups(study.models, "geom"))
    maps = similarity_maps(layout.main, settings_groups(study.models, "geom"))
    assert [len(d.by_model) for d in mteb] == [2]
    assert [d.what for d in geom] == [
        "effective rank (covariance)",
        "intrinsic dimension (TwoNN)",
        "prompt entropy (normalised)",
    ]
    assert len(maps) == 1 and maps[0].reference == "tiny-ntp"
    fig = F.draw_depth_profiles(mteb, geom, [])
    assert len([ax for ax in fig.axes if ax.get_visible()]) == 4  # MTEB + three geometry panels
    assert text_problems(fig) == []
    assert text_problems(F.draw_similarity_maps(maps)) == []
    with pytest.raises(F.NothingToPlot):
        F.draw_depth_profiles([], [], [])


def test_depth_profiles_of_several_seeds_are_their_mean_with_a_min_max_band():
    """Two seeds of one objective: one line (the mean by layer) with the min-max band; a model
    without a seed set keeps its own line, without a band."""
    from reports.depth import DepthSet, Profile
    from reports.inputs import Model
    from reports.seeds import SeedSet

    def model(name, seed, objective="nitp"):
        return Model(f"run:{name}", name, config={"seed": seed}, objective=objective, preset="tiny-dense")

    a, b, other = model("nitp-s0", 0), model("nitp-s1", 1), model("ntp-s0", 0, "ntp")
    depth = DepthSet("prompt entropy", "builtin")
    depth.by_model = {
        a.key: Profile(a, {0: 0.2, 2: 0.6, -1: 0.9}, 3),
        b.key: Profile(b, {0: 0.4, 2: 0.2, -1: 0.7}, 3),
        other.key: Profile(other, {0: 0.5, -1: 0.5}, 3),
    }
    lines = F._depth_lines(depth, [SeedSet("nitp", [a, b])])
    by_label = {label: (xs, ys, lo, hi) for _m, label, xs, ys, lo, hi in lines}
    xs, ys, lo, hi = by_label["NITP tiny-dense (2 seeds)"]
    assert xs == [0, 2, 4]  # layer -1 drawn after block L = 3
    assert ys == pytest.approx([0.3, 0.4, 0.8]) and lo == [0.2, 0.2, 0.7] and hi == [0.4, 0.6, 0.9]
    assert by_label[other.label][2:] == (None, None)
    fig = F.draw_depth_profiles([], [depth], [SeedSet("nitp", [a, b])])
    assert len(fig.axes[0].collections) == 1  # exactly one band: the seed set's
