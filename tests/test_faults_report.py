"""`nitp-report` held to the toolkit's promises (issue 28): records that contradict themselves are
refused in one line, only comparable runs pair, a report folder is replaced whole or not at all,
a replay never writes into another run, and a checkpoint given as input gets a suggestion."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from nitp.errors import UserError
from reports import paired as P
from reports import tables as T
from reports.cli import main
from reports.grouping import arrange, settings_groups
from reports.inputs import load_inputs
from reports.outdir import staged_report
from tests.helpers import run_main
from tests.test_report_data import model_info, mteb_record, write_run
from tests.test_report_stats import item_record, scores


@pytest.fixture()
def two_runs(tmp_path):
    return write_run(tmp_path, "tiny-ntp", "ntp", steps=100), write_run(
        tmp_path, "tiny-nitp", "nitp", steps=100
    )


def edit_record(path, change) -> None:
    rec = json.loads(path.read_text())
    change(rec)
    path.write_text(json.dumps(rec))


def cli(args, monkeypatch, capsys):
    return run_main(main, "nitp-report", args, monkeypatch, capsys)


def assert_one_line(code, err, start):
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith(f"error: {start}") or start in err, err


# ----------------------------------------------------------------------------- records
def test_a_value_that_disagrees_with_its_items_is_refused(two_runs, tmp_path, monkeypatch, capsys):
    ntp, nitp = two_runs
    item_record(ntp, 100, "ntp", {"analogies": scores(1, 50, 0.4)})
    path = item_record(nitp, 100, "nitp", {"analogies": scores(2, 50, 0.4)})
    edit_record(path, lambda r: r["scores"]["tasks"]["analogies"].update(value=0.9))
    code, _, err = cli(["compare", ntp, nitp, "--out", tmp_path / "o"], monkeypatch, capsys)
    assert_one_line(code, err, "error: ")
    assert "task analogies: value 0.9 disagrees with the mean of its 50 items" in err
    assert not (tmp_path / "o").exists()


def test_items_of_half_in_an_accuracy_task_are_refused(two_runs, tmp_path, monkeypatch, capsys):
    ntp, nitp = two_runs
    item_record(ntp, 100, "ntp", {"analogies": scores(1, 20, 0.4)})
    path = item_record(nitp, 100, "nitp", {"analogies": scores(2, 20, 0.4)})

    def halve(r):
        task = r["scores"]["tasks"]["analogies"]
        task["items"]["analogies"]["acc"] = [0.5] * 20
        task["value"] = 0.5
        r["scores"]["average"] = 0.5

    edit_record(path, halve)
    code, _, err = cli(["compare", ntp, nitp, "--out", tmp_path / "o"], monkeypatch, capsys)
    assert_one_line(code, err, "error: ")
    assert "acc items must be 0 or 1" in err and "found 0.5" in err


def test_an_average_that_is_not_the_mean_of_its_tasks_is_refused(two_runs):
    ntp, _ = two_runs
    path = item_record(ntp, 100, "ntp", {"analogies": scores(1, 20, 0.4), "sentiment": scores(2, 20, 0.5)})
    edit_record(path, lambda r: r["scores"].update(average=0.99))
    with pytest.raises(UserError, match=r"average 0.99 is not the mean of its 2 task values"):
        load_inputs([ntp])


def test_zero_items_print_no_value_and_no_stale_average(two_runs):
    ntp, nitp = two_runs
    item_record(ntp, 100, "ntp", {"analogies": scores(1, 30, 0.4), "sentiment": scores(3, 30, 0.5)})
    path = item_record(nitp, 100, "nitp", {"analogies": scores(2, 30, 0.4), "sentiment": scores(4, 30, 0.5)})

    def empty(r):
        task = r["scores"]["tasks"]["sentiment"]
        task["items"]["sentiment"] = {"doc_id": [], "acc": []}
        task["value"] = 0.0  # what a run that scored nothing would have stored
        r["scores"]["average"] = task["value"] / 2 + r["scores"]["tasks"]["analogies"]["value"] / 2

    edit_record(path, empty)
    study = load_inputs(list(two_runs))
    (table,) = T.bench_tables(arrange(study), settings_groups(study.models, "bench"))
    nitp_row = next(r for r in table.rows if r.label.startswith("NITP"))
    assert nitp_row.values[1] is None and nitp_row.values[2] is None  # never 0.00, never a stale mean
    md = table.to_markdown()
    assert "0.00" not in md.split("| NITP")[1].split("\n")[0]
    assert "scored on no items" in md and "the record scored no items of this task" in md


def test_non_numeric_values_are_one_line(two_runs, tmp_path, monkeypatch, capsys):
    ntp, nitp = two_runs
    path = mteb_record(model_info(ntp, 100, "ntp"), {"A": ("STS", 0.3), "B": ("STS", 0.4)})
    edit_record(path, lambda r: r["scores"]["groups"].update(STS="n/a"))
    code, _, err = cli(["compare", ntp, nitp, "--out", tmp_path / "o"], monkeypatch, capsys)
    assert_one_line(code, err, "error: ")
    assert "group STS is 'n/a', not a number" in err


def test_an_mteb_overall_that_is_not_the_mean_of_its_tasks_is_refused(two_runs):
    ntp, _ = two_runs
    path = mteb_record(model_info(ntp, 100, "ntp"), {"A": ("STS", 0.3), "B": ("STS", 0.4)})
    edit_record(path, lambda r: r["scores"].update(overall=0.7))
    with pytest.raises(UserError, match="overall 0.7 is not the mean of its 2 tasks' main scores"):
        load_inputs([ntp])


def test_a_group_value_may_be_the_mean_of_its_subtasks(two_runs):
    """lm-eval aggregates some groups as the mean of subtask means, not of pooled items."""
    ntp, _ = two_runs
    path = item_record(ntp, 100, "ntp", {"mmlu": scores(1, 10, 0.5)})

    def two_leaves(r):
        task = r["scores"]["tasks"]["mmlu"]
        task["items"] = {
            "a": {"doc_id": [0, 1], "acc": [1, 1]},
            "b": {"doc_id": [0, 1, 2, 3], "acc": [0, 0, 0, 1]},
        }
        task["value"] = (1.0 + 0.25) / 2  # mean of leaf means, not 3/6
        r["scores"]["average"] = task["value"]

    edit_record(path, two_leaves)
    assert load_inputs([ntp]).models[0].records[0]["scores"]["tasks"]["mmlu"]["value"] == 0.625


# ----------------------------------------------------------------------------- validation CE
def _with_val_batches(run, batches, **config):
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    for line in lines:
        if "val_loss" in line:
            line["val_loss_batches"] = list(batches)
            line["val_loss"] = float(np.mean(batches))
    (run / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    if config:
        import yaml

        cfg = yaml.safe_load((run / "config.yaml").read_text())
        for dotted, value in config.items():
            section, key = dotted.split("__")
            cfg[section][key] = value
        (run / "config.yaml").write_text(yaml.safe_dump(cfg))


def _lm_test(runs):
    table = T.lm_table(arrange(load_inputs(list(runs))))
    delta = next(r for r in table.rows if r.kind == "delta")
    return table, delta.tests[2]


def test_validation_ce_pairs_by_batch_only_on_the_same_batches(two_runs):
    ntp, nitp = two_runs
    rng = np.random.default_rng(0)
    base = 5 + rng.normal(0, 0.05, 8)
    _with_val_batches(ntp, base)
    _with_val_batches(nitp, base + 0.01 + rng.normal(0, 0.002, 8))
    table, test = _lm_test(two_runs)
    assert test.result is not None and test.unit == "batches"
    (line,) = table.verdicts
    assert "n = 8 batches" in line and "not whether the objectives do" in line
    assert "smallest p 8 pairs can give" in line  # every batch worse: p at the permutation floor
    _with_val_batches(nitp, base + 0.01, data__seq_len=128)
    table, test = _lm_test(two_runs)
    assert test.result is None and "data.seq_len 64 vs 128" in test.reason
    assert "p=" not in table.to_markdown().split("*Δ")[1].split("\n")[0]
    assert any("not paired: the runs validate on different batches" in n for n in table.notes)


@pytest.mark.slow  # the data fingerprint imports the trainer's config (torch)
def test_validation_ce_of_different_data_is_not_paired(two_runs):
    ntp, nitp = two_runs
    _with_val_batches(ntp, [5.0, 5.1, 5.2])
    _with_val_batches(nitp, [5.0, 5.1, 5.3], data__corpus="/elsewhere/corpus.txt")
    _, test = _lm_test(two_runs)
    assert test.result is None and "different data" in test.reason


# ----------------------------------------------------------------------------- checkpoints as inputs
def _checkpoint(root):
    run = write_run(root, "r", "nitp", steps=100)
    ckpt = run / "checkpoints" / "step_000100"
    ckpt.mkdir(parents=True)
    (ckpt / "config.json").write_text('{"model_type": "llama"}')
    (ckpt / "tokenizer.json").write_text("{}")
    return run, ckpt


def test_a_checkpoint_gets_a_suggestion(tmp_path, monkeypatch, capsys):
    run, ckpt = _checkpoint(tmp_path)
    code, _, err = cli(["compare", ckpt, "--out", tmp_path / "o"], monkeypatch, capsys)
    assert_one_line(code, err, "error: ")
    assert "a model checkpoint, not a run directory or a result record" in err
    assert f"give its run directory ({run.resolve()})" in err and f"nitp-eval bench {ckpt}" in err
    code, _, err = cli(["compare", ckpt / "config.json", "--out", tmp_path / "o"], monkeypatch, capsys)
    assert_one_line(code, err, "error: ")
    assert "not a nitp result record" in err and "give a run directory or a record" in err


def test_a_folder_scan_skips_the_files_of_model_folders(tmp_path):
    _, ckpt = _checkpoint(tmp_path)
    folder = tmp_path / "results"
    (folder / "models").mkdir(parents=True)
    (folder / "models" / "config.json").write_text("{}")  # a model folder's own files, not records
    mteb_record(model_info(None, None, None, None, name="m"), {"A": ("STS", 0.3)}, out=folder / "m.json")
    study = load_inputs([folder])
    assert [m.name for m in study.models] == ["m"] and ckpt.is_dir()


# ----------------------------------------------------------------------------- the report folder
def _old_report(out):
    (out / "tables").mkdir(parents=True)
    (out / "report.md").write_text("old report\n")
    (out / "tables" / "bench.md").write_text("old table\n")


def test_a_failed_report_leaves_the_old_one_whole(tmp_path):
    out = tmp_path / "rep"
    _old_report(out)
    with pytest.raises(RuntimeError):
        with staged_report(out) as stage:
            (stage / "report.md").write_text("new report\n")
            raise RuntimeError("killed half-way")
    assert (out / "report.md").read_text() == "old report\n" and (out / "tables" / "bench.md").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staged leftovers
    with staged_report(out) as stage:
        (stage / "report.md").write_text("new report\n")
    assert (out / "report.md").read_text() == "new report\n"
    assert not (out / "tables").exists()  # replaced whole: nothing of the old report stays


@pytest.mark.parametrize("what", ["run", "foreign"])
def test_a_folder_a_swap_would_destroy_is_refused(tmp_path, what):
    out = write_run(tmp_path, "a-run", "ntp", steps=10) if what == "run" else tmp_path / "notes"
    if what == "foreign":
        out.mkdir()
        (out / "my-notes.txt").write_text("keep me")
    with pytest.raises(UserError, match="is a run directory" if what == "run" else "not part of a report"):
        with staged_report(out):
            pass
    assert any(out.iterdir())


def test_long_and_symlinked_out_names(tmp_path):
    long = tmp_path / ("r" * 250)  # a valid name; temporaries beside it must stay within NAME_MAX
    with staged_report(long) as stage:
        (stage / "report.md").write_text("x")
    assert (long / "report.md").read_text() == "x"
    target = tmp_path / "target"
    _old_report(target)
    link = tmp_path / "link"
    link.symlink_to(target)
    with staged_report(link) as stage:
        (stage / "report.md").write_text("new")
    assert link.is_symlink() and (target / "report.md").read_text() == "new"


FULL_DISK = textwrap.dedent(
    """
    import resource, signal, sys
    from reports.compare import compare
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)      # writes past the limit fail with EFBIG
    resource.setrlimit(resource.RLIMIT_FSIZE, (2000, 2000))
    compare(sys.argv[1:3], sys.argv[3])
    """
)


@pytest.mark.slow  # a compare in a subprocess
def test_a_full_disk_leaves_the_old_report_whole(two_runs, tmp_path):
    ntp, nitp = two_runs
    out = tmp_path / "rep"
    _old_report(out)
    item_record(ntp, 100, "ntp", {"analogies": scores(1, 300, 0.4)})
    item_record(nitp, 100, "nitp", {"analogies": scores(2, 300, 0.4)})
    code = "from reports.cli import main; main()"
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    done = subprocess.run(
        [sys.executable, "-c", FULL_DISK.replace("compare(sys.argv[1:3], sys.argv[3])", code), "compare",
         str(ntp), str(nitp), "--out", str(out)],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    err = done.stderr.strip().splitlines()
    assert err[-1].startswith(f"error: --out {out}: cannot write the report") and "left as it was" in err[-1]
    assert "Traceback" not in done.stderr
    assert (out / "report.md").read_text() == "old report\n" and (out / "tables" / "bench.md").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rep", "tiny-nitp", "tiny-ntp"]


# ----------------------------------------------------------------------------- track
def test_track_never_writes_into_another_run(two_runs, monkeypatch, capsys):
    a, b = two_runs
    (a / "tensorboard").mkdir()
    (a / "tensorboard" / "events.out").write_text("A's events")
    (a / "trackers.json").write_text('{"run_name": "tiny-ntp"}')
    for out in (a, a / "tensorboard", a / "replay"):
        code, _, err = cli(["track", b, "--out", out], monkeypatch, capsys)
        assert_one_line(code, err, "error: --out")
        assert "inside another run directory" in err
    assert (a / "tensorboard" / "events.out").read_text() == "A's events"
    assert (a / "trackers.json").read_text() == '{"run_name": "tiny-ntp"}'


def test_track_refuses_a_folder_holding_another_replay(two_runs, tmp_path, monkeypatch, capsys):
    _, b = two_runs
    other = tmp_path / "replays"
    (other / "tensorboard").mkdir(parents=True)
    (other / "trackers.json").write_text('{"run_name": "someone-else"}')
    code, _, err = cli(["track", b, "--out", other], monkeypatch, capsys)
    assert_one_line(code, err, "error: --out")
    assert "tracker state of someone-else, not of tiny-nitp" in err and (other / "tensorboard").is_dir()
    (other / "trackers.json").unlink()
    code, _, err = cli(["track", b, "--out", other], monkeypatch, capsys)
    assert_one_line(code, err, "error: --out")
    assert "not a replay of tiny-nitp" in err


def test_identical_answers_and_chance_are_flagged(two_runs):
    ntp, nitp = two_runs
    guess = scores(7, 200, 0.25)  # 4-way analogies at chance, the same answers on sentiment
    item_record(ntp, 100, "ntp", {"analogies": guess, "sentiment": scores(8, 200, 0.9)})
    item_record(nitp, 100, "nitp", {"analogies": scores(9, 200, 0.25), "sentiment": scores(8, 200, 0.9)})
    study = load_inputs(list(two_runs))
    (table,) = T.bench_tables(arrange(study), settings_groups(study.models, "bench"))
    delta = next(r for r in table.rows if r.kind == "delta")
    assert delta.tests[0].flag == "both at chance (25 %)"
    assert delta.tests[1].flag == "identical answers on all 200 items"
    md = table.to_markdown()
    assert "(both at chance (25 %))" in md and "[identical answers on all 200 items]" in md
    assert "[+0.00, +0.00]" not in md and any("the Δ compares noise" in n for n in table.notes)
    assert P.at_chance("lt_piqa", np.array([1, 0] * 50), "acc_norm")
    assert not P.at_chance("lt_piqa", np.array([1] * 90 + [0] * 10), "acc_norm")
