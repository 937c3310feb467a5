"""Studies: the study file's checks, the cells and their names, dry runs, cluster scripts, and a
2-objective x 2-seed tiny study end to end on CPU that survives a SIGKILL and resumes bit for bit."""

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nitp.errors import UserError
from nitp.runs import list_checkpoints
from reports.study import cells, emit_commands, emit_slurm, load_study, run_study

ROOT = Path(__file__).resolve().parent.parent
TINY_SET = [
    "train.steps=24",
    "data.seq_len=32",
    "train.batch_size=4",
    "train.threads=1",
    "train.warmup_steps=4",
    "log.every=4",
    "log.geom_every=8",
    "log.eval_every=12",
    "log.eval_batches=1",
    "checkpoint.every=4",
    "checkpoint.keep_last=2",
]
GRID = {"objective": ["ntp", "nitp"], "seed": [0, 1]}
NAMES = ["ntp-s0", "ntp-s1", "nitp-s0", "nitp-s1"]


def write_study(folder: Path, name: str = "tiny", **data) -> Path:
    import yaml

    data = {"name": name, "config": "tiny-nitp", "set": TINY_SET, "axes": GRID, **data}
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def one_line_error(path: Path, *fragments: str) -> str:
    with pytest.raises(UserError) as e:
        load_study(path)
    message = str(e.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message
    return message


# ----------------------------------------------------------------------------- the study file
def test_unknown_key_names_the_nearest(tmp_path):
    one_line_error(write_study(tmp_path, axis={"seed": [0]}), "unknown key 'axis'", "did you mean axes?")
    one_line_error(write_study(tmp_path, eval={"bench": {"suite": "offline", "limt": 2}}), "'limt'", "limit")


def test_empty_axis_and_bad_axis_key(tmp_path):
    one_line_error(write_study(tmp_path, axes={"seed": []}), "axis 'seed' is empty")
    one_line_error(write_study(tmp_path, axes={"seed": 0}), "axis 'seed' must be a list")
    one_line_error(
        write_study(tmp_path, axes={"nitp.lamda": [0.5]}), "nitp.lamda", "did you mean nitp.lambda"
    )
    one_line_error(write_study(tmp_path, axes={"nitp.loss": ["cosine", "l3"]}), "axis 'nitp.loss' value 'l3'")
    one_line_error(
        write_study(tmp_path, axes={"overlay": ["shift-O"]}), "overlay 'shift-O'", "did you mean shift-0"
    )


def test_duplicate_cell_names(tmp_path):
    one_line_error(
        write_study(tmp_path, axes={"objective": ["nitp"], "seed": [0, 0]}), "axis 'seed' repeats 0"
    )
    one_line_error(write_study(tmp_path, include=[{"objective": "nitp"}]), "two cells are named 'nitp-s0'")


def test_bad_eval_plan(tmp_path):
    one_line_error(write_study(tmp_path, eval={"checkpoints": "first"}), "eval.checkpoints", "last or all")
    one_line_error(write_study(tmp_path, eval={"bench": {"suite": "ofline"}}), "eval.bench", "unknown suite")


def test_cell_names_and_overrides(tmp_path):
    spec = load_study(
        write_study(
            tmp_path,
            axes={"overlay": ["none", "shift-0", "lambda-0.5"], "objective": ["nitp"], "seed": [0, 1]},
            include=[{"overlay": "none", "objective": "ntp"}],
        )
    )
    got = [c.name for c in cells(spec)]
    assert got == [
        "nitp-s0",
        "nitp-s1",
        "shift-0-nitp-s0",
        "shift-0-nitp-s1",
        "lambda-0.5-nitp-s0",
        "lambda-0.5-nitp-s1",
        "ntp-s0",
        "ntp-s1",
    ]
    from reports.study import cell_config

    by_name = {c.name: c for c in cells(spec)}
    cfg = cell_config(spec, by_name["shift-0-nitp-s1"])
    assert (cfg["nitp"]["shift"], cfg["seed"], cfg["objective"], cfg["train"]["steps"]) == (0, 1, "nitp", 24)
    assert cell_config(spec, by_name["lambda-0.5-nitp-s0"])["nitp"]["lambda"] == 0.5
    assert cell_config(spec, by_name["ntp-s1"])["objective"] == "ntp"


def test_shipped_studies_load():
    sizes = {
        "quickstart": 2,
        "quickstart-small": 2,
        "ablations-small-dense": 28,
        "gpu-single": 2,
        "regime": 8,
        "gpu-regime": 6,
        "ladder-cpu": 12,
        "ladder-gpu": 16,
    }
    for name, n in sizes.items():
        assert len(cells(load_study(name))) == n, name
    names = [c.name for c in cells(load_study("ablations-small-dense"))]
    assert {"nitp-s0", "ntp-s1", "shift-0-nitp-s0", "stopgrad-off-nitp-s1"} <= set(names)


# ----------------------------------------------------------------------------- dry run and scripts
def test_dry_run_lists_every_cell_with_its_plan(tmp_path):
    spec = load_study(write_study(tmp_path))
    lines: list[str] = []
    assert run_study(spec, tmp_path / "out", dry_run=True, log=lines.append) is None
    cell_lines = [line for line in lines if "tokens/step" in line]
    assert [line.split()[0] for line in cell_lines] == NAMES
    for line in cell_lines:
        assert "[pending 0/24]" in line and "24 steps" in line and "global batch 4 x 32" in line
    assert lines[0] == f"study tiny: 4 cells -> {tmp_path / 'out'}"
    assert lines[-1].startswith("evaluation:")
    assert not (tmp_path / "out").exists()  # a dry run writes nothing
    # each cell's size and compute: tiny-dense at 4 x 32 tokens x 24 steps
    from nitp_train.flops import model_compute
    from nitp_train.models import resolve_preset

    c = model_compute(resolve_preset("tiny-dense"), 32)
    tpp = 24 * 4 * 32 / c["parameters"]
    assert all(
        f"{c['parameters']:,} params" in line and f"{tpp:.3g} tokens/param" in line for line in cell_lines
    )
    assert sum("(NITP +" in line for line in cell_lines) == 2


def test_compute_matched_gives_ntp_nitps_flops(tmp_path):
    from nitp_train.flops import model_compute
    from nitp_train.models import resolve_preset
    from reports.study import cell_config

    spec = load_study(write_study(tmp_path, compute_matched=True))
    by_name = {c.name: c for c in cells(spec)}
    c = model_compute(resolve_preset("tiny-dense"), 32)
    ntp, nitp = cell_config(spec, by_name["ntp-s0"]), cell_config(spec, by_name["nitp-s0"])
    assert nitp["train"]["steps"] == 24
    want = 24 * (1 + c["nitp_extra_flops_per_token"] / c["ntp_flops_per_token"])
    assert ntp["train"]["steps"] == math.ceil(want) > 24
    one_line_error(write_study(tmp_path, compute_matched="maybe"), "compute_matched", "true or false")


@pytest.mark.slow  # lm-eval / subprocess heavy: keeps the fast subset under a minute
def test_cli_dry_run_and_one_line_error(tmp_path):
    study = write_study(tmp_path)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "reports.study_cli", str(study), "--out", str(tmp_path / "o"), "--dry-run"]
    run = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env)
    assert run.returncode == 0, run.stderr
    assert [line.split()[0] for line in run.stdout.splitlines()[1:-1]] == NAMES
    bad = write_study(tmp_path, "bad", axes={"seed": []})
    run = subprocess.run(cmd[:3] + [str(bad)], capture_output=True, text=True, cwd=ROOT, env=env)
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert run.stderr.strip().splitlines() == [
        f"error: study {bad.resolve()}: axis 'seed' is empty; give it at least one value or remove it"
    ]


def test_emit_commands(tmp_path):
    spec = load_study(write_study(tmp_path))
    lines = emit_commands(spec, tmp_path / "out").read_text().splitlines()
    assert len(lines) == len(NAMES) + 1
    for name, line in zip(NAMES, lines):
        assert line.startswith("nitp-study ") and line.endswith(f"--out {tmp_path / 'out'} --cell {name}")
    assert "--cell" not in lines[-1]


def no_slurm_env() -> dict:
    return {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}


def test_emit_slurm_is_bash_and_fails_clearly_outside_sbatch(tmp_path):
    spec = load_study(write_study(tmp_path))
    script = emit_slurm(spec, tmp_path / "out", nodes=2, gpus_per_node=4)
    text = script.read_text()
    assert "#SBATCH --array=0-3\n" in text and "#SBATCH --nodes=2\n" in text
    assert "CELLS=(ntp-s0 ntp-s1 nitp-s0 nitp-s1)" in text
    assert '--nproc_per_node "${GPUS_PER_NODE:-4}"' in text and "--rdzv_backend c10d" in text
    assert "-m reports.study_cli" in text and '--cell "$CELL"' in text
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    run = subprocess.run(["bash", str(script)], capture_output=True, text=True, env=no_slurm_env())
    assert run.returncode != 0
    assert "run this script with sbatch (SLURM_ARRAY_TASK_ID is not set)" in run.stderr
    run = subprocess.run(
        ["bash", str(script)],
        capture_output=True,
        text=True,
        env={**no_slurm_env(), "SLURM_ARRAY_TASK_ID": "1"},
    )
    assert run.returncode != 0 and "SLURM_JOB_NODELIST is not set" in run.stderr


def test_emit_slurm_launches_the_task_cell(tmp_path):
    """With SLURM's variables set, the task's cell and the rendezvous reach torchrun (fake srun/scontrol)."""
    spec = load_study(write_study(tmp_path))
    script = emit_slurm(spec, tmp_path / "out", gpus_per_node=2)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text('#!/bin/bash\nprintf "gpu-a17\\ngpu-a18\\n"\n')
    (bin_dir / "srun").write_text('#!/bin/bash\necho "MASTER=$MASTER_ADDR:$MASTER_PORT"; echo "$@"\n')
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    env = {
        **no_slurm_env(),
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "SLURM_ARRAY_TASK_ID": "2",
        "SLURM_ARRAY_JOB_ID": "99",
        "SLURM_JOB_NODELIST": "gpu-a[17-18]",
        "SLURM_NNODES": "2",
    }
    run = subprocess.run(["bash", str(script)], capture_output=True, text=True, env=env)
    assert run.returncode == 0, run.stderr
    master, args = run.stdout.splitlines()
    assert master == "MASTER=gpu-a17:29502"
    assert "torchrun --nnodes 2 --nproc_per_node 2" in args
    assert "--rdzv_endpoint gpu-a17:29502" in args and args.endswith("--cell nitp-s0")


# ----------------------------------------------------------------------------- end to end
def final_weights(run_dir: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(list_checkpoints(run_dir)[-1] / "model.safetensors"))


def mtimes(run_dir: Path) -> list[int]:
    return sorted(p.stat().st_mtime_ns for p in (run_dir / "checkpoints").rglob("model.safetensors"))


@pytest.mark.slow
def test_tiny_study_end_to_end_then_killed_and_resumed(tmp_path):
    import torch

    # 1. the whole study, uninterrupted: 4 trainings, benchmarks, geometry, report
    full = tmp_path / "full"
    spec = load_study(
        write_study(
            tmp_path,
            eval={"bench": {"suite": "offline", "limit": 2}, "geom": {"tokens": 1500}, "report": True},
        )
    )
    report = run_study(spec, full, log=lambda *_: None)
    assert report == full / "report" / "report.md" and "## Benchmarks" in report.read_text()
    manifest = json.loads((full / "study.json").read_text())
    assert [(c["name"], c["status"]) for c in manifest["cells"]] == [(n, "evaluated") for n in NAMES]
    for name in NAMES:
        assert [c.name for c in list_checkpoints(full / name)][-1] == "step_000024"
        kinds = {json.loads(p.read_text())["kind"] for p in (full / name / "results").rglob("*.json")}
        assert kinds == {"bench", "geom"}

    # 2. the same grid from scratch in another folder, SIGKILLed once the second cell has a checkpoint
    study = write_study(tmp_path, "again", eval={"report": False})
    out = tmp_path / "again-out"
    cmd = [sys.executable, "-m", "reports.study_cli", str(study), "--out", str(out)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not list_checkpoints(out / NAMES[1]) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = [c.name for c in list_checkpoints(out / NAMES[1])]
    assert killed_at and killed_at[-1] != "step_000024", killed_at  # half-trained
    assert not list_checkpoints(out / NAMES[2])
    first = mtimes(out / NAMES[0])

    # 3. resume: the finished cell is skipped, the half-trained one resumes, the rest train
    run = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    assert f"{NAMES[0]}: already trained" in run.stderr
    assert f"resumed from {killed_at[-1]}" in run.stderr
    assert mtimes(out / NAMES[0]) == first
    for name in NAMES:
        a, b = final_weights(full / name), final_weights(out / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    statuses = [c["status"] for c in json.loads((out / "study.json").read_text())["cells"]]
    assert statuses == ["trained"] * 4
