"""The evaluators of ``eval.every`` (entry points ``nitp.evaluators`` in pyproject.toml).

Each factory takes the resolved training config and returns an evaluator, or ``None`` when its
part of ``cfg["eval"]`` is empty; ``nitp_train.evaluators`` calls them on rank 0 with the model in
eval mode and the RNG state saved and restored around them.

* :func:`bench` -- lm-eval on the in-memory model, as ``nitp-eval bench``; metrics
  ``eval/bench/<task>`` and ``eval/bench/average``;
* :func:`mteb` (``nitp-eval mteb``) and :func:`geom` (``nitp-geom``) read a model folder, so the
  model is saved to ``RUN/inloop/step_N`` for them; metrics ``eval/mteb/<task>``,
  ``eval/geom/<metric>`` (the last layer's).

Every evaluator also writes an ordinary result record for the step, named as the checkpoint of
that step would be: ``RUN/results/<kind>/step_N-inloop-<tag>.json`` (``model.in_loop: true``), so
``nitp-report`` draws benchmark trajectories without evaluating every checkpoint again.

Example
-------
>>> evaluator = bench({"eval": {"bench": ["next_word"], "limit": 8}, "run_name": "r"})  # doctest: +SKIP
>>> evaluator.evaluate(model, tokenizer, 50, Path("runs/r"))                           # doctest: +SKIP
{'eval/bench/next_word': 0.25, 'eval/bench/average': 0.25}
"""

from __future__ import annotations

import contextlib
import hashlib
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from nitp import metrics_registry as registry
from nitp.io import atomic_folder
from nitp.records import library_versions, make_record, safe_name, write_record
from nitp.runs import checkpoint_name

from . import log_stderr

GEOM_TOKENS = 4096  # tokens of the in-loop nitp-geom sample


def model_info(model, run_dir: Path, step: int, cfg: dict) -> dict:
    """The ``model`` block of an in-loop record: the checkpoint this step has (or would have)
    and a sha256 of the in-memory weights (``hash``; it differs from a file hash)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().numpy().tobytes())
    path = Path(run_dir).resolve() / "checkpoints" / checkpoint_name(step)
    weights = digest.hexdigest()
    return {
        "path": str(path),
        "run": str(Path(run_dir).resolve()),
        "name": Path(run_dir).name,
        "step": step,
        "objective": cfg.get("objective"),
        "preset": (cfg.get("model") or {}).get("preset"),
        "tokens_seen": None,
        "hash": weights,
        "key": weights,
        "in_loop": True,
    }


def _record_path(run_dir: Path, kind: str, step: int, tag: str) -> Path:
    return Path(run_dir) / "results" / kind / f"{checkpoint_name(step)}-inloop-{safe_name(tag)}.json"


# ----------------------------------------------------------------------------- bench
@dataclass
class BenchEvaluator:
    """lm-eval on the in-memory model: ``tasks`` with ``limit`` documents each."""

    cfg: dict
    tasks: list
    limit: int | None

    def __post_init__(self):
        from .bench.plan import plan_tasks, select_benchmarks

        self.benchmarks = select_benchmarks(self.tasks, None)
        self.plan = plan_tasks(self.benchmarks, None, False, log_stderr)

    def evaluate(self, model, tokenizer, step: int, run_dir: Path) -> dict:
        from lm_eval.models.huggingface import HFLM

        from .bench.plan import shots_for
        from .bench.run import _record_settings, evaluate, extract_score, record_scores
        from .bench.settings import BenchSettings

        device = str(next(model.parameters()).device)
        lm = HFLM(pretrained=model, tokenizer=tokenizer, device=device, batch_size=8)
        tm, failed = self.plan.task_manager, dict(self.plan.failed)
        scores = {
            b.name: extract_score(evaluate(lm, b, tm, shots=shots_for(b, None), limit=self.limit), b)
            for b in self.benchmarks
            if b.name not in failed
        }
        out_scores = record_scores(scores, failed)
        # bench's record settings, less what an in-loop run does not choose (generation cap, seeds, mirror)
        run = BenchSettings(tasks=self.tasks, limit=self.limit, batch_size=8, device=device, backend="hf")
        settings = _record_settings(run, self.benchmarks)
        settings = {k: v for k, v in settings.items() if k not in ("max_gen_toks", "seed", "data_dir")}
        settings["in_loop"] = True
        info = model_info(model, run_dir, step, self.cfg)
        record = make_record("bench", info, settings, out_scores, versions=library_versions("lm_eval"))
        tag = "-".join(b.name for b in self.benchmarks) + (f"-limit{self.limit}" if self.limit else "")
        write_record(_record_path(run_dir, "bench", step, tag), record)
        row = {f"eval/bench/{name}": s["value"] for name, s in scores.items()}
        if scores:
            row["eval/bench/average"] = out_scores["average"]
        return row


def bench(cfg: dict) -> BenchEvaluator | None:
    """Entry point ``bench``: the ``eval.bench`` tasks (``None`` when empty)."""
    ec = cfg["eval"]
    return BenchEvaluator(cfg, list(ec["bench"]), ec["limit"]) if ec["bench"] else None


# ----------------------------------------------------------------------------- through a folder
@contextlib.contextmanager
def saved_folder(model, tokenizer, run_dir: Path, step: int) -> Iterator[Path]:
    """The model and tokenizer saved as a HF folder ``RUN/inloop/step_N`` (written aside, then
    renamed) for the block; then removed, with ``RUN/inloop`` once empty (nothing stays behind)."""
    final = Path(run_dir) / "inloop" / checkpoint_name(step)
    shutil.rmtree(final, ignore_errors=True)
    try:
        with atomic_folder(final) as tmp:
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
        yield final
    finally:
        shutil.rmtree(final, ignore_errors=True)
        with contextlib.suppress(OSError):
            final.parent.rmdir()


def _as_step(record: dict, model, run_dir: Path, step: int, cfg: dict) -> dict:
    """A record measured on the temporary folder, renamed to the checkpoint of ``step``."""
    record["model"] = {**record["model"], **model_info(model, run_dir, step, cfg)}
    return record


@dataclass
class GeomEvaluator:
    """nitp-geom layer statistics (``GEOM_TOKENS`` tokens of the built-in corpus)."""

    cfg: dict

    def evaluate(self, model, tokenizer, step: int, run_dir: Path) -> dict:
        from analysis.measure import geom_record
        from analysis.settings import GeomSettings

        device = str(next(model.parameters()).device)
        settings = GeomSettings(n_tokens=GEOM_TOKENS, device=device, dtype="float32")
        with saved_folder(model, tokenizer, run_dir, step) as folder:
            record = geom_record(folder, settings, progress=False, write=False)
        record = _as_step(record, model, run_dir, step, self.cfg)
        write_record(_record_path(run_dir, "geom", step, f"builtin-{GEOM_TOKENS}"), record)
        last = next((r for r in record["scores"].get("layers", []) if r.get("layer") == -1), {})
        return {  # the registry rows with eval_as: erank, anisotropy, intrinsic_dim
            f"eval/geom/{m.eval_as}": last[m.name]
            for m in registry.metrics()
            if m.eval_as and isinstance(last.get(m.name), (int, float))
        }


def geom(cfg: dict) -> GeomEvaluator | None:
    """Entry point ``geom``: on when ``eval.geom`` is true."""
    return GeomEvaluator(cfg) if cfg["eval"]["geom"] else None


@dataclass
class MtebEvaluator:
    """nitp-eval mteb on the ``eval.mteb`` tasks (mean pooling of the last layer)."""

    cfg: dict
    tasks: list

    def evaluate(self, model, tokenizer, step: int, run_dir: Path) -> dict:
        from .mteb.run import run_mteb
        from .mteb.settings import MtebSettings

        out = _record_path(run_dir, "mteb", step, "-".join(self.tasks))
        settings = MtebSettings(tasks=self.tasks, device=str(next(model.parameters()).device))
        with saved_folder(model, tokenizer, run_dir, step) as folder:
            [record] = run_mteb([folder], settings, out=out, log=log_stderr)
        write_record(out, _as_step(record, model, run_dir, step, self.cfg))
        tasks = record["scores"].get("tasks", {})
        return {f"eval/mteb/{t}": s["main_score"] for t, s in tasks.items() if "main_score" in s}


def mteb(cfg: dict) -> MtebEvaluator | None:
    """Entry point ``mteb``: the ``eval.mteb`` tasks (``None`` when empty)."""
    return MtebEvaluator(cfg, list(cfg["eval"]["mteb"])) if cfg["eval"]["mteb"] else None
