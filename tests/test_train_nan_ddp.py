"""A non-finite loss on one rank of a 2-process gloo run stops both ranks with the one-line error."""

import os
import socket
import subprocess
import sys
import textwrap

import pytest

from nitp.runs import checkpoint_name, list_checkpoints
from tests.helpers import tiny_cli_args

pytestmark = pytest.mark.slow  # trains models (the rule: tests/conftest.py)

# Rank 1's embeddings turn NaN from its third training forward pass on (step 3): a hook on the
# real model, installed through the trainer's model builder; rank 0 stays finite.
DRIVER = textwrap.dedent(
    """
    import os, sys
    import nitp_train.trainer as trainer
    from nitp_train.cli import main

    build = trainer.build_model

    def poisoned(*args, **kwargs):
        model = build(*args, **kwargs)
        calls = [0]

        def hook(module, inputs, output):
            calls[0] += 1
            return output * float("nan") if calls[0] >= 3 else output

        if os.environ["RANK"] == "1":
            model.get_input_embeddings().register_forward_hook(hook)
        return model

    trainer.build_model = poisoned
    sys.argv = ["nitp-train", *sys.argv[1:]]
    main()
    """
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_one_rank_nan_stops_both_ranks_with_one_line(tmp_path):
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    args = [*tiny_cli_args(), "--run-dir", str(tmp_path / "run"), "--steps", "8"]
    args += ["--set", "checkpoint.every=2", "--set", "log.every=4", "--set", "log.geom_every=0"]
    args += ["--set", "log.eval_every=0", "--set", "objective=ntp"]
    env = {**os.environ, "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port())}
    procs = [
        subprocess.Popen(
            [sys.executable, str(driver), "run", *args],
            env={**env, "RANK": str(r), "LOCAL_RANK": str(r)},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for r in (0, 1)
    ]
    try:
        errs = [p.communicate(timeout=240)[1] for p in procs]  # a hang fails here
    finally:
        for p in procs:
            p.kill()
    for p, err in zip(procs, errs):
        lines = [ln for ln in err.splitlines() if "loss became" in ln]
        assert p.returncode == 2, err[-2000:]
        assert "Traceback" not in err, err[-2000:]
        # step 3 went bad on rank 1; checked before step 4's update, so checkpoint 2 is the last good one
        assert lines == [
            f"error: loss became nan at step 3 (found at step 4); last good checkpoint: {checkpoint_name(2)} "
            "(lower train.lr or check the data)"
        ], err[-2000:]
    assert [p.name for p in list_checkpoints(tmp_path / "run")] == [checkpoint_name(2)]
