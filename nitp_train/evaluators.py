"""Evaluation during training (``eval.every``): step callbacks found through entry points.

nitp_train may not import nitp_eval or analysis (the package order, docs/architecture.md), so the
evaluators are plugins: each entry point of the group ``nitp.evaluators`` (pyproject.toml; nitp's
own are ``bench``, ``mteb`` and ``geom`` in ``nitp_eval/inloop.py``) is a factory
``factory(cfg) -> Evaluator | None`` (``cfg``: the resolved config as a plain dict; ``None``: its
``eval`` part names nothing for that factory). An
:class:`Evaluator` scores the in-memory model and returns flat metrics (``eval/bench/<task>``, ...)
for ``metrics.jsonl`` and the trackers; it may also write ordinary result records.

:func:`evaluate_in_loop` runs them on rank 0 (the others wait at a barrier) with the model in
eval mode and every random generator (python, numpy, torch CPU and CUDA) saved before and restored
after, so the run stays bit for bit the run without evaluation.

Example
-------
>>> import random
>>> before = random.getstate()
>>> with preserved_rng():
...     _ = random.random()
>>> random.getstate() == before
True
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Protocol

from nitp.errors import UserError

from .config_model import Config, as_config

GROUP = "nitp.evaluators"


class Evaluator(Protocol):
    """A step callback: score ``model`` (a transformers causal LM in eval mode) at ``step``."""

    def evaluate(self, model, tokenizer, step: int, run_dir: Path) -> dict: ...


def load_evaluators(cfg: Config | dict) -> list:
    """The evaluators the resolved ``cfg.eval`` asks for, from the ``nitp.evaluators`` entry points
    (each factory gets the config as a plain dict)."""
    from importlib.metadata import entry_points

    cfg = as_config(cfg)
    if cfg.eval.every <= 0:
        return []
    if cfg.train.parallel == "fsdp":
        raise UserError(
            "eval.every with train.parallel=fsdp: the model is sharded, evaluate the checkpoints with "
            "nitp-eval instead, or set eval.every=0"
        )
    found = sorted(entry_points(group=GROUP), key=lambda e: e.name)
    if not found:
        raise UserError(
            f"eval.every={cfg.eval.every}: no evaluators installed (entry points {GROUP}); "
            "reinstall nitp (pip install -e .) or set eval.every=0"
        )
    plain = cfg.model_dump(by_alias=True)
    made = [e.load()(plain) for e in found]
    return [m for m in made if m is not None]


@contextlib.contextmanager
def preserved_rng():
    """Save python, numpy, torch (CPU and every CUDA device) RNG states; restore them on exit."""
    from .checkpoint import rng_state, set_rng_state

    saved = rng_state()
    try:
        yield
    finally:
        set_rng_state(saved)


def evaluate_in_loop(evaluators: list, model, modules, tokenizer, step: int, run_dir: Path, d) -> dict:
    """Run every evaluator on rank 0 (others wait); ``eval/seconds`` is the time it took.

    ``modules`` (the trained objective, its wrappers) are put back in training mode afterwards.
    """
    import torch

    from . import parallel

    out: dict = {}
    if d.is_main and evaluators:
        start = time.perf_counter()
        with preserved_rng(), torch.no_grad():
            model.eval()
            try:
                for evaluator in evaluators:
                    try:
                        out.update(evaluator.evaluate(model, tokenizer, step, Path(run_dir)))
                    except OSError as e:  # one line: this step's checkpoint is saved before evaluating
                        where = f" ({e.filename})" if e.filename else ""
                        raise UserError(
                            f"eval.every: the {type(evaluator).__name__} evaluator failed at step {step}: "
                            f"{e.strerror or e}{where}; this step's checkpoint is saved: fix it and rerun with --resume"
                        ) from None
            finally:
                for module in modules:
                    module.train()
        out["eval/seconds"] = time.perf_counter() - start
    parallel.barrier(d)
    return out
