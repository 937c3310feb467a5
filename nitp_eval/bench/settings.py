"""The settings of a `nitp-eval bench` run: every input but the checkpoints that changes its records.

Each field is defined once here: ``run_bench`` takes the settings whole, ``nitp-eval bench`` reads
its option defaults from them, and a new field is part of the cache key by itself
(:func:`keyed_settings`). ``run_bench`` checks names and numbers before any model loads,
:meth:`BenchSettings.resolved` the device, batch size and backend (one-line ``UserError`` each).
No torch or lm-eval import: the CLI's ``--help`` reads this module.

Example
-------
>>> BenchSettings(tasks=["arc", "c3"], limit=20).tasks
('arc', 'c3')
>>> BenchSettings(num_fewshot={"arc": 0}).num_fewshot  # aliases become benchmark names
{'arc_challenge': 0}
"""

from __future__ import annotations

import dataclasses
import importlib.util
from dataclasses import dataclass
from pathlib import Path

from nitp.errors import UserError

from ..tasks import friendly


@dataclass(frozen=True)
class BenchSettings:
    """What to score and how lm-eval runs it (``nitp_eval.bench.run.run_bench``).

    ``tasks``: friendly or lm-eval task names (a list, kept as a tuple, or a comma-separated
    string); ``suite``: ``mission`` / ``paper`` / ``offline`` (the default when neither is given).
    ``limit``: the first N documents of every (sub)task. ``num_fewshot``: shots for every task
    (int >= 0) or ``{name: shots}`` (aliases as keys); None: per benchmark. ``data_dir``: a local
    mirror (``nitp-eval mirror export``); forces the hub offline. ``device`` / ``batch_size`` /
    ``backend``: lm-eval's model (None / None / ``auto``: chosen by :meth:`resolved`).
    ``allow_unsafe_code``: let tasks execute model-written code (LCBench). ``max_gen_toks``: cap on
    generated tokens of generation tasks (smoke tests).
    """

    tasks: tuple[str, ...] | str | None = None
    suite: str | None = None
    limit: int | None = None
    num_fewshot: int | dict[str, int] | None = None
    data_dir: str | Path | None = None
    device: str | None = None
    batch_size: int | str | None = None
    backend: str = "auto"
    allow_unsafe_code: bool = False
    max_gen_toks: int | None = None

    def __post_init__(self):
        if self.tasks is not None and not isinstance(self.tasks, str):
            object.__setattr__(self, "tasks", tuple(self.tasks))
        if isinstance(self.num_fewshot, dict):  # "arc" keys arc_challenge's shots
            shots = {getattr(friendly(k), "name", k): v for k, v in self.num_fewshot.items()}
            object.__setattr__(self, "num_fewshot", shots)

    def resolved(self) -> BenchSettings:
        """The same settings with the device, batch size and backend chosen: a GPU when one is
        visible (``nitp.runtime``), batch ``auto`` on a GPU else 8, vLLM when installed and on a
        GPU; ``UserError`` for a bad one."""
        from nitp.runtime import pick_device

        device = pick_device(self.device)
        batch_size = _batch_size(self.batch_size, device)
        backend = self.backend
        if backend not in ("auto", "hf", "vllm"):
            raise UserError(f"--backend must be auto, hf or vllm (got {backend!r})")
        has_vllm = importlib.util.find_spec("vllm") is not None
        if backend == "vllm" and not has_vllm:
            raise UserError("--backend vllm: vLLM is not installed (pip install vllm), or use --backend hf")
        if backend == "auto":
            backend = "vllm" if has_vllm and device.startswith("cuda") else "hf"
        return dataclasses.replace(self, device=device, batch_size=batch_size, backend=backend)


# choose the tasks or name where their data lies: the key holds the task, its files and its
# data's contents instead, and the shots it runs with (``shots``) for ``num_fewshot``
UNKEYED = ("tasks", "suite", "num_fewshot", "data_dir", "allow_unsafe_code")


def keyed_settings(settings: BenchSettings, shots: int | None) -> dict:
    """The settings part of one task's cache key: ``dataclasses.asdict(settings)`` less
    :data:`UNKEYED`, plus the task's ``shots``.

    Example
    -------
    >>> sorted(keyed_settings(BenchSettings(limit=5), shots=0))
    ['backend', 'batch_size', 'device', 'limit', 'max_gen_toks', 'shots']
    """
    fields = {k: v for k, v in dataclasses.asdict(settings).items() if k not in UNKEYED}
    return {"shots": shots, **fields}


def _batch_size(batch_size, device: str) -> int | str:
    """``--batch-size``: None -> ``auto`` on a GPU, else 8; a number (text too) >= 1 or ``auto[:N]``."""
    if batch_size is None:
        return "auto" if device.startswith("cuda") else 8
    if isinstance(batch_size, str) and batch_size != "auto" and not batch_size.startswith("auto:"):
        try:
            batch_size = int(batch_size)
        except ValueError:
            raise UserError(f"--batch-size must be a number or 'auto' (got {batch_size!r})") from None
    if isinstance(batch_size, int) and batch_size < 1:
        raise UserError(f"--batch-size must be at least 1 (got {batch_size})")
    return batch_size
