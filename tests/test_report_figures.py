"""Figures (valid PNG/PDF, one colour per objective, no overlapping or clipped text) and the
whole `compare` report built from small runs and records."""

from __future__ import annotations

import pytest

from reports import compare
from reports import figures as F
from reports.grouping import arrange, settings_groups
from reports.inputs import load_inputs
from tests.test_report_data import write_run, write_study


@pytest.fixture(scope="module")
def study_runs(tmp_path_factory):
    return write_study(tmp_path_factory.mktemp("study"))


@pytest.fixture(scope="module")
def loaded(study_runs):
    study = load_inputs(list(study_runs.values()))
    return study, arrange(study)


def text_problems(fig) -> list[tuple]:
    """Texts that stick out of the figure or overlap another text (drawn with Agg)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.text import Text

    FigureCanvasAgg(fig)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    hidden = set()  # tick labels of ticks outside the view are not drawn
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            lo, hi = sorted(axis.get_view_interval())
            for tick in axis.get_major_ticks() + axis.get_minor_ticks():
                loc = tick.get_loc()
                if loc is None or not lo - 1e-9 * (hi - lo) <= loc <= hi + 1e-9 * (hi - lo):
                    hidden |= {id(tick.label1), id(tick.label2)}
    boxes = [
        (t.get_text(), t.get_window_extent(renderer))
        for t in fig.findobj(Text)
        if id(t) not in hidden and t.get_visible() and t.get_text().strip()
    ]
    width, height = fig.bbox.width, fig.bbox.height
    problems = [
        ("clipped", name)
        for name, b in boxes
        if b.x0 < -1 or b.y0 < -1 or b.x1 > width + 1 or b.y1 > height + 1
    ]
    for i, (name_a, a) in enumerate(boxes):
        for name_b, b in boxes[i + 1 :]:
            if a.x0 < b.x1 - 1 and b.x0 < a.x1 - 1 and a.y0 < b.y1 - 1 and b.y0 < a.y1 - 1:
                problems.append(("overlap", name_a, name_b))
    return problems


def test_text_checker_sees_overlaps_and_clipping():
    from matplotlib.figure import Figure

    fig = Figure(figsize=(3, 2))
    ax = fig.subplots()
    ax.set_title("a title far too long to fit inside a three inch wide figure")
    ax.text(0.5, 0.5, "one", transform=ax.transAxes)
    ax.text(0.5, 0.5, "two", transform=ax.transAxes)
    kinds = {p[0] for p in text_problems(fig)}
    assert kinds == {"clipped", "overlap"}


@pytest.mark.slow
def test_figures_have_no_overlapping_or_clipped_text(loaded):
    study, layout = loaded
    with F._rc():
        figs = {
            "geometry": F.draw_training_geometry(layout.main),
            "bench": F.draw_bench_curve(layout.main, settings_groups(study.models, "bench")[0], layout.pairs),
            "loss": F.draw_nitp_loss(layout.blocks[0].reference)[0],
            "layers": F.draw_layer_profiles(layout.main, settings_groups(study.models, "geom")[0]),
        }
        for name, fig in figs.items():
            assert text_problems(fig) == [], name
    # one colour per objective, everywhere
    ntp, nitp = layout.blocks[0].baseline, layout.blocks[0].reference
    for name in ("geometry", "bench", "layers"):
        colours = {line.get_label(): line.get_color() for line in figs[name].axes[0].lines}
        assert (
            colours[ntp.label] == F.OBJECTIVE_COLOURS["ntp"]
            and colours[nitp.label] == F.OBJECTIVE_COLOURS["nitp"]
        ), name
    # the final Δ is annotated, the phases are marked, the target layer is drawn
    assert "+8.19" in figs["bench"].axes[0].get_title()
    loss_labels = [line.get_label() for line in figs["loss"].axes[0].lines]
    assert any(label.startswith("I ends") for label in loss_labels) and any(
        label.startswith("II ends") for label in loss_labels
    )
    assert "NITP target layer (1)" in [line.get_label() for line in figs["layers"].axes[0].lines]


def test_nothing_to_plot_says_why(tmp_path, loaded):
    study, layout = loaded
    ntp_only = load_inputs([write_run(tmp_path, "plain-ntp", "ntp", steps=100)]).models[0]
    with pytest.raises(F.NothingToPlot, match="no loss_nitp"):
        F.plot_nitp_loss(ntp_only, tmp_path / "x")
    five_shot = next(g for g in settings_groups(study.models, "bench") if "num_fewshot=5" in g.description)
    with pytest.raises(F.NothingToPlot, match="two scored checkpoints"):
        F.plot_bench_curve(layout.main, five_shot, layout.pairs, tmp_path / "y")
    assert not list(tmp_path.glob("x.*")) and not list(tmp_path.glob("y.*"))


@pytest.mark.slow
def test_compare_writes_the_whole_report(study_runs, tmp_path):
    out = tmp_path / "report"
    notes = []
    path = compare(list(study_runs.values()), out, per_task=True, log=notes.append)
    assert path == out / "report.md"
    text = path.read_text()
    for section in (
        "## Models",
        "## Benchmarks",
        "## MTEB",
        "## Language modelling",
        "## Geometry",
        "## Ablations",
        "## Cost",
        "## Training dynamics",
        "## Notes",
    ):
        assert section in text, section
    # every linked file exists and is what its suffix says
    import re

    links = re.findall(r"\]\(((?:tables|figures)/[^)]+)\)", text)
    assert len(links) > 30
    for link in links:
        data = (out / link).read_bytes()
        if link.endswith(".png"):
            assert data[:8] == b"\x89PNG\r\n\x1a\n"
        elif link.endswith(".pdf"):
            assert data[:5] == b"%PDF-" and b"%%EOF" in data[-1024:]
        elif link.endswith(".csv"):
            assert data.decode().splitlines()[0].count(",") >= 1
    figures = {p.stem for p in (out / "figures").glob("*.png")}
    assert figures == {
        "training_geometry",
        "bench_vs_step",
        "layer_profiles",
        "nitp_loss-nitp-tiny-dense-600-tiny-nitp",
        "nitp_loss-nitp-tiny-dense-600-tiny-nitp-two-knobs",
        "forest-mteb",  # the MTEB overall Δ has an interval over its 5 tasks
    }
    from matplotlib.image import imread

    assert imread(out / "figures" / "training_geometry.png").shape[2] == 4
    # mixed settings are reported as kept apart, and so are skipped figures
    assert any("2 different settings" in n and "never averaged" in n for n in notes)
    assert any("bench (num_fewshot=5" in n and "skipped" in n for n in notes)
    assert "phase I ends at step" in text
    assert not list(out.rglob("*.tmp"))
    # a rerun with fewer inputs rewrites the report and drops what no longer applies
    compare([study_runs["ntp"]], out)
    assert not (out / "tables" / "mteb-tasks.md").exists() and not list((out / "figures").glob("nitp_loss-*"))
    assert "NITP-loss figure skipped: no NITP run" in (out / "report.md").read_text()
