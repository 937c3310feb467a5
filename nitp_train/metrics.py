"""Training metrics: ``RUN/metrics.jsonl`` lines, a rich progress bar on a terminal, plain lines otherwise,
and the in-loop geometry of the last hidden states (the paper's Figure 1 measures).
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

from nitp import metrics_registry as registry
from nitp.io import atomic_write_text, read_jsonl

# peak dense (no 2:4 sparsity) bf16 tensor-core FLOP/s by GPU name fragment, for MFU; first match wins
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 125e12, "4090": 165e12}


def peak_flops_for_name(name: str) -> float | None:
    """Dense bf16 peak FLOP/s of the GPU called ``name`` (``torch.cuda.get_device_name``), or None.

    The first name fragment of ``PEAK_BF16`` found in ``name`` wins. These are the dense figures
    of the vendor's sheets, not the 2x "with sparsity" ones; H200 has H100's tensor cores.

    Examples
    --------
    >>> peak_flops_for_name("NVIDIA H200"), peak_flops_for_name("NVIDIA H100 80GB HBM3")
    (989000000000000.0, 989000000000000.0)
    >>> peak_flops_for_name("Tesla T4") is None
    True
    """
    return next((v for k, v in PEAK_BF16.items() if k in name), None)


def peak_flops(device) -> float | None:
    r"""Peak FLOP/s of ``device`` for MFU: :func:`peak_flops_for_name`, None off CUDA or when unknown.

    MFU as the trainer logs it (``mfu`` in ``metrics.jsonl``, with ``flops_per_token`` and
    ``peak_flops`` on the first train line of each start):

    .. math::
        \mathrm{MFU} = \frac{F_\text{token} \cdot \text{tokens/s}}{\text{world} \cdot P_\text{bf16}}

    where :math:`F_\text{token}` is ``nitp_train.flops.training_flops_per_token`` (6 x the
    active matmul parameters + 12 L T h d_head attention scores, + the NITP projector for NITP
    runs). The attention term counts the full T x T score and value matmuls: causal masking is
    **not** halved (as nanochat and torchtitan count it), so MFU is comparable with theirs and
    overstates the useful work a little.
    Recomputation (activation checkpointing, the ``chunked`` loss) is not counted either.
    """
    import torch

    if device.type != "cuda":
        return None
    return peak_flops_for_name(torch.cuda.get_device_name(device))


def truncate_after(path: Path, step: int) -> None:
    """Drop lines logged after ``step`` (a resumed run re-logs them)."""
    if path.is_file():
        rows = [r for r in read_jsonl(path) if r.get("step", 0) <= step]
        atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))


def shown_keys() -> tuple[str, ...]:
    """The fields of a metrics line the progress shows: losses, the geometry the trainer logs
    (``nitp.metrics_registry`` rows with ``logged_as``: ``erank``, ``mean_cos``), speed."""
    geometry = tuple(m.logged_as for m in registry.logged())
    return (
        "loss_total",
        "loss_ntp",
        "loss_nitp",
        "aux_loss",
        "val_loss",
        *geometry,
        "geom_sequences",
        "tokens_per_s",
    )


def _fmt(key: str, v: float) -> str:
    if key == "lr":
        return f"{v:.2e}"
    if key == "tokens_per_s":
        return f"{v:,.0f}"
    return f"{v:.4f}" if abs(v) < 1000 else f"{v:.3g}"


class MetricsLog:
    """Appends metric lines (rank 0 only), sends them to the experiment trackers, shows progress.

    ``trackers``: a :class:`nitp_train.trackers.Trackers` (or ``None``); it gets every line written
    and is closed with the log.
    """

    def __init__(
        self,
        path: Path,
        total_steps: int,
        start_step: int,
        enabled: bool = True,
        title: str = "train",
        trackers=None,
    ):
        self.path, self.enabled, self.trackers = Path(path), enabled, trackers
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
        if self.trackers is not None:
            self.trackers.log(row)
        shown = "  ".join(
            f"{k}={_fmt(k, row[k])}"
            for k in shown_keys()
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
        if self.trackers is not None:
            self.trackers.close()


# ----------------------------------------------------------------------------- in-loop geometry
GEOM_TOKENS = 8192  # token vectors per measurement, all ranks together
GEOM_MIN_SEQUENCES = 8  # sequences per measurement, all ranks together (>= 2 for a cross-sequence pair)


@dataclass
class GeometrySample:
    """A random sample of last-hidden-state tokens from several sequences, for ``erank`` / ``mean_cos``.

    The paper's anisotropy is the mean cosine of pairs of tokens from *different* sentences, and
    its effective rank is taken over the tokens of a mini-batch. With ``batch_size: 1`` one
    micro-batch is one sequence, so tokens are sampled from every micro-batch of the measured
    step, of every rank, and -- when a step holds fewer than ``GEOM_MIN_SEQUENCES`` sequences --
    of the steps just before it (``window_steps``). Each sequence gives ``per_sequence`` random
    positions (all of them when they fit), at most ``GEOM_TOKENS`` tokens in all.

    ``result()`` then reports ``nitp.geometry.logged_geometry(x, g)`` of the gathered sample
    (rows x [n, d], sequence of each row g: ``erank``, ``mean_cos`` over pairs from different
    sequences) and ``geom_tokens``, ``geom_sequences``, ``geom_steps``, what it was taken on.

    Example
    -------
    >>> gs = GeometrySample(seq_len=4, seqs_per_step=1, world=1, geom_every=50)
    >>> gs.window_steps, [s for s in range(1, 101) if gs.collecting(s)][:3]
    (8, [43, 44, 45])
    """

    seq_len: int
    seqs_per_step: int  # sequences per optimizer step on one rank (batch_size x grad_accum)
    world: int
    geom_every: int
    rank: int = 0
    seed: int = 0
    rows: list = field(default_factory=list, repr=False)
    groups: list = field(default_factory=list, repr=False)
    steps: set = field(default_factory=set, repr=False)
    n_seen: int = 0  # sequences sampled on this rank so far (for unique sequence ids)

    @property
    def window_steps(self) -> int:
        """Steps ending at a measured one whose micro-batches are sampled."""
        per_step = self.seqs_per_step * self.world
        return max(1, min(self.geom_every, math.ceil(GEOM_MIN_SEQUENCES / per_step)))

    @property
    def per_sequence(self) -> int:
        """Positions sampled from each sequence."""
        seqs_per_rank = self.seqs_per_step * self.window_steps
        return max(1, min(self.seq_len, GEOM_TOKENS // (self.world * seqs_per_rank)))

    def collecting(self, step: int) -> bool:
        """Is ``step`` (1-based, the one being run) in a window ending at a measured step?"""
        if self.geom_every <= 0:
            return False
        return (-step) % self.geom_every < self.window_steps

    def add(self, last_hidden, step: int, micro: int = 0) -> None:
        """Sample ``per_sequence`` random positions of each sequence of ``last_hidden`` [B, T, d]."""
        import torch

        b, t, _ = last_hidden.shape
        k = min(self.per_sequence, t)
        gen = torch.Generator().manual_seed(((self.seed * 1_000_003 + step) * 1009 + micro) * 131 + self.rank)
        pos = torch.rand(b, t, generator=gen).argsort(dim=1)[:, :k].to(last_hidden.device)
        picked = torch.gather(last_hidden.detach(), 1, pos[:, :, None].expand(-1, -1, last_hidden.shape[-1]))
        self.rows.append(picked.reshape(b * k, -1).float())
        ids = (self.n_seen + torch.arange(b)) * self.world + self.rank  # unique over ranks
        self.groups.append(ids.repeat_interleave(k))
        self.n_seen += b
        self.steps.add(step)

    def result(self, d=None) -> dict:
        """Gather the sample from every rank (a collective: call it on all ranks), measure, clear."""
        from nitp.geometry import logged_geometry

        if not self.rows:
            return {}
        x, g = _gather_rows(d, self.rows, self.groups)
        n_steps = len(self.steps)
        self.rows, self.groups, self.steps = [], [], set()
        out = {
            "geom_tokens": int(x.shape[0]),
            "geom_sequences": int(g.unique().numel()),
            "geom_steps": n_steps,
        }
        out.update(logged_geometry(x, g))  # each metric skipped where undefined (< 2 rows / sequences)
        return out


def _gather_rows(d, rows: list, groups: list):
    """Concatenate this rank's sampled rows and sequence ids, then all-gather them over ranks.

    Ranks usually hold the same number of rows; in case they do not (a resume inside a window),
    the sizes are exchanged first and every rank's rows are padded to the largest for the gather.
    """
    import torch

    x, g = torch.cat(rows), torch.cat(groups).to(torch.int64)
    if d is None or not getattr(d, "enabled", False):
        return x, g
    from .parallel import all_gather

    sizes = [int(s) for s in all_gather(d, torch.tensor([x.shape[0]], device=x.device))]
    pad_x = torch.nn.functional.pad(x, (0, 0, 0, max(sizes) - x.shape[0]))
    pad_g = torch.nn.functional.pad(g.to(x.device), (0, max(sizes) - g.shape[0]), value=-1)
    xs, gs = all_gather(d, pad_x), all_gather(d, pad_g)
    return torch.cat([t[:s] for t, s in zip(xs, sizes)]), torch.cat([t[:s] for t, s in zip(gs, sizes)]).cpu()
