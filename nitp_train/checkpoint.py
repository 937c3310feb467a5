"""Checkpoints: complete-or-absent Hugging Face folders with the trainer's state beside them.

``RUN/checkpoints/step_000500/`` holds the model (``save_pretrained``: config.json +
model.safetensors), the tokenizer, ``nitp_meta.json``, the projector as
``nitp_head.safetensors`` (never inside the model weights, so a NITP checkpoint has exactly the
keys of an NTP one) and ``trainer_state/`` (optimizer, scheduler, RNG, data cursor). The folder
is written as ``.step_000500.tmp`` and renamed when complete; ``latest`` is updated after.

FSDP2 runs keep the optimizer (and a copy of the model) sharded: every rank writes its own shards
to ``trainer_state/distributed/`` with ``torch.distributed.checkpoint`` (no ``optimizer.pt``),
which a resume at any world size reads back; the model folder beside it is still the full,
consolidated Hugging Face export.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch

from nitp.errors import UserError, first_line
from nitp.io import atomic_write_json, atomic_write_text
from nitp.runs import COMPLETE_MARKER, checkpoint_name, list_checkpoints

SHARDED_DIR = "distributed"  # inside trainer_state/: torch.distributed.checkpoint files of all ranks


def staging_dir(run_dir: Path, step: int) -> Path:
    """``RUN/checkpoints/.step_N.tmp``: where checkpoint ``step`` is written before its rename."""
    return Path(run_dir) / "checkpoints" / f".{checkpoint_name(step)}.tmp"


def start(run_dir: Path, step: int) -> Path:
    """Create an empty staging folder for checkpoint ``step`` (rank 0, before the ranks write shards)."""
    tmp = staging_dir(run_dir, step)
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "trainer_state").mkdir(parents=True)
    return tmp


def save(
    run_dir: Path,
    step: int,
    model_sd: dict,
    optim_sd: dict,
    scheduler,
    model,
    tokenizer,
    meta: dict,
    state: dict,
    keep_last: int,
    sharded: bool = False,
) -> Path:
    """Write checkpoint ``step`` of a run (call on rank 0 only).

    ``sharded=True``: the ranks already wrote the optimizer into ``start()``'s staging folder
    (``save_sharded``); ``optim_sd`` is then ``None`` and the folder is completed, not replaced.
    """
    from safetensors.torch import save_file

    ckdir = Path(run_dir) / "checkpoints"
    final = ckdir / checkpoint_name(step)
    tmp = staging_dir(run_dir, step) if sharded else start(run_dir, step)

    lm_sd = {k[len("model.") :]: v for k, v in model_sd.items() if k.startswith("model.")}
    head_sd = {
        k[len("head.") :]: v.detach().cpu().contiguous() for k, v in model_sd.items() if k.startswith("head.")
    }
    model.save_pretrained(tmp, state_dict=lm_sd)
    tokenizer.save_pretrained(tmp)
    if head_sd:
        save_file(
            head_sd,
            tmp / "nitp_head.safetensors",
            metadata={"format": "pt", "projector": meta.get("projector", "")},
        )
    atomic_write_json(tmp / "nitp_meta.json", meta)

    st = tmp / "trainer_state"
    if optim_sd is not None:
        torch.save(optim_sd, st / "optimizer.pt")
    torch.save(scheduler.state_dict(), st / "scheduler.pt")
    torch.save(
        {
            "torch": torch.get_rng_state(),
            "numpy": np.random.get_state(),
            "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        },
        st / "rng.pt",
    )
    atomic_write_json(st / "state.json", state)
    atomic_write_text(
        tmp / COMPLETE_MARKER, f"{final.name}\n"
    )  # last file: readers trust only marked folders

    if final.exists():  # same step written by an earlier, interrupted attempt
        remove_checkpoint(final)
    os.replace(tmp, final)
    atomic_write_text(ckdir / "latest", final.name)
    for old in list_checkpoints(run_dir)[:-keep_last] if keep_last > 0 else []:
        remove_checkpoint(old)
    return final


def remove_checkpoint(path: Path) -> None:
    """Rename to a hidden ``.step_N.del`` first, then delete: a kill never leaves a half-deleted
    ``step_N`` that looks like a checkpoint; ``clean_partial`` finishes the delete next start."""
    path = Path(path)
    doomed = path.with_name(f".{path.name}.del")
    shutil.rmtree(doomed, ignore_errors=True)
    os.replace(path, doomed)
    shutil.rmtree(doomed, ignore_errors=True)


def load_trainer_state(ckpt: Path) -> dict:
    """Optimizer / scheduler / RNG / cursor of a checkpoint (RNG restored here).

    ``optimizer`` is the full state dict, or ``None`` when the checkpoint is sharded; then
    ``sharded`` is the folder for ``parallel.load_sharded``.
    """
    try:
        return _read_trainer_state(Path(ckpt) / "trainer_state")
    except Exception as e:  # noqa: BLE001 - any damage to these files is bad input for --resume
        raise UserError(
            f"{ckpt}/trainer_state: damaged or incomplete ({type(e).__name__}: {first_line(e)}); "
            f"move {Path(ckpt).name} aside to resume from the checkpoint before it"
        ) from None


def _read_trainer_state(st: Path) -> dict:
    state = json.loads((st / "state.json").read_text())
    for key in ("step", "tokens_seen", "next_batch"):
        if key in state and (not isinstance(state[key], int) or state[key] < 0):
            raise ValueError(f"state.json {key}={state[key]!r} is not a count")
    rng = torch.load(st / "rng.pt", weights_only=False)
    torch.set_rng_state(rng["torch"])
    np.random.set_state(rng["numpy"])
    random.setstate(rng["python"])
    if rng.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    full = st / "optimizer.pt"
    return {
        "optimizer": torch.load(full, weights_only=False) if full.is_file() else None,
        "sharded": st / SHARDED_DIR if (st / SHARDED_DIR).is_dir() else None,
        "scheduler": torch.load(st / "scheduler.pt", weights_only=False),
        "state": state,
    }


def load_head(ckpt: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    path = Path(ckpt) / "nitp_head.safetensors"
    return load_file(path) if path.is_file() else {}


def clean_partial(run_dir: Path) -> None:
    """Remove half-written (``.step_N.tmp``) and half-deleted (``.step_N.del``) checkpoint
    folders left by a killed run."""
    ckdir = Path(run_dir) / "checkpoints"
    if ckdir.is_dir():
        for p in [*ckdir.glob(".step_*.tmp"), *ckdir.glob(".step_*.del")]:
            shutil.rmtree(p, ignore_errors=True)
