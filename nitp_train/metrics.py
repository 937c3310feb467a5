"""Training metrics: ``RUN/metrics.jsonl`` lines, a rich progress bar on a terminal, plain lines otherwise."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

from nitp.io import atomic_write_text, read_jsonl

# peak dense bf16 FLOP/s by GPU name fragment, for MFU
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 125e12, "4090": 165e12}


def peak_flops(device) -> float | None:
    import torch

    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16.items() if k in name), None)


def truncate_after(path: Path, step: int) -> None:
    """Drop lines logged after ``step`` (a resumed run re-logs them)."""
    if path.is_file():
        rows = [r for r in read_jsonl(path) if r.get("step", 0) <= step]
        atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))


def _fmt(key: str, v: float) -> str:
    if key == "lr":
        return f"{v:.2e}"
    if key in ("tokens_per_s",):
        return f"{v:,.0f}"
    return f"{v:.4f}" if abs(v) < 1000 else f"{v:.3g}"


class MetricsLog:
    """Appends metric lines (rank 0 only) and shows progress."""

    SHOWN = (
        "loss_total",
        "loss_ntp",
        "loss_nitp",
        "aux_loss",
        "val_loss",
        "erank",
        "mean_cos",
        "tokens_per_s",
    )

    def __init__(
        self, path: Path, total_steps: int, start_step: int, enabled: bool = True, title: str = "train"
    ):
        self.path, self.enabled = Path(path), enabled
        self.file = open(self.path, "a") if enabled else None
        self.progress = None
        if enabled and sys.stderr.isatty():
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.progress = Progress(
                TextColumn(f"[bold]{title}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeRemainingColumn(),
                TextColumn("{task.description}"),
                transient=False,
            )
            self.task = self.progress.add_task("", total=total_steps, completed=start_step)
            self.progress.start()

    def write(self, row: dict) -> None:
        if not self.enabled:
            return
        row = {k: (float(v) if isinstance(v, float) else v) for k, v in row.items() if v is not None}
        self.file.write(json.dumps(row) + "\n")
        self.file.flush()
        shown = "  ".join(
            f"{k}={_fmt(k, row[k])}"
            for k in self.SHOWN
            if k in row and isinstance(row[k], float) and math.isfinite(row[k])
        )
        if self.progress is not None:
            self.progress.update(self.task, completed=row["step"], description=shown)
        else:
            print(f"step {row['step']:>6}  {shown}", file=sys.stderr, flush=True)

    def advance(self, step: int) -> None:
        if self.progress is not None:
            self.progress.update(self.task, completed=step)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
        if self.file is not None:
            self.file.close()
