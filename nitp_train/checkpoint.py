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

Nothing in ``trainer_state/`` is unpickled: ``optimizer.pt``, ``scheduler.pt`` and ``rng.pt``
hold only tensors and plain containers and are read with ``torch.load(weights_only=True)``
(the numpy and Python RNG states are stored as lists of ints); ``state.json`` carries
``trainer_state_format`` and checkpoints of older versions (pickled RNG state) are refused.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nitp.errors import UserError, first_line, raise_if_interrupted
from nitp.io import atomic_write_json, atomic_write_text, remove_stale_temps_in
from nitp.runs import COMPLETE_MARKER, checkpoint_name, list_checkpoints, resolve_checkpoint

SHARDED_DIR = "distributed"  # inside trainer_state/: torch.distributed.checkpoint files of all ranks
STATE_FORMAT = 2  # 2: no pickle in trainer_state/ (1, unmarked: pickled numpy / Python RNG state)


def staging_dir(run_dir: Path, step: int) -> Path:
    """``RUN/checkpoints/.step_N.tmp``: where checkpoint ``step`` is written before its rename."""
    return Path(run_dir) / "checkpoints" / f".{checkpoint_name(step)}.tmp"


def start(run_dir: Path, step: int) -> Path:
    """Create an empty staging folder for checkpoint ``step`` (rank 0, before the ranks write shards)."""
    tmp = staging_dir(run_dir, step)
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "trainer_state").mkdir(parents=True)
    return tmp


@dataclass(frozen=True)
class Contents:
    """What one checkpoint holds, gathered on rank 0 (:func:`save` writes it).

    ``model_sd``: the objective's full state dict (``model.*`` = the LM, ``head.*`` = the projector);
    ``optim_sd``: the optimizer's, ``None`` when the ranks wrote it as shards; ``model`` and
    ``tokenizer``: what ``save_pretrained`` is called on; ``meta``: ``nitp_meta.json``;
    ``state``: ``trainer_state/state.json`` (step, tokens, data cursor, ...).
    """

    model_sd: dict
    optim_sd: dict | None
    scheduler: Any
    model: Any
    tokenizer: Any
    meta: dict
    state: dict


def save(run_dir: Path, step: int, contents: Contents, keep_last: int, sharded: bool = False) -> Path:
    """Write checkpoint ``step`` of a run (call on rank 0 only); keep the last ``keep_last`` (0: all).

    ``sharded=True``: the ranks already wrote the optimizer into ``start()``'s staging folder
    (``save_sharded``); ``contents.optim_sd`` is then ``None`` and the folder is completed, not replaced.
    """
    ckdir = Path(run_dir) / "checkpoints"
    final = ckdir / checkpoint_name(step)
    tmp = staging_dir(run_dir, step)
    try:
        if not sharded:
            start(run_dir, step)
        # every file of the checkpoint into its staging folder; COMPLETE last
        from safetensors.torch import save_file

        model_sd = contents.model_sd
        lm_sd = {k[len("model.") :]: v for k, v in model_sd.items() if k.startswith("model.")}
        head_sd = {
            k[len("head.") :]: v.detach().cpu().contiguous()
            for k, v in model_sd.items()
            if k.startswith("head.")
        }
        contents.model.save_pretrained(tmp, state_dict=lm_sd)
        contents.tokenizer.save_pretrained(tmp)
        if head_sd:
            save_file(
                head_sd,
                tmp / "nitp_head.safetensors",
                metadata={"format": "pt"},  # one key: safetensors orders several differently per process
            )
        atomic_write_json(tmp / "nitp_meta.json", contents.meta)
        st = tmp / "trainer_state"
        if contents.optim_sd is not None:
            torch.save(contents.optim_sd, st / "optimizer.pt")
        torch.save(contents.scheduler.state_dict(), st / "scheduler.pt")
        torch.save(rng_state(), st / "rng.pt")
        atomic_write_json(st / "state.json", {**contents.state, "trainer_state_format": STATE_FORMAT})
        atomic_write_text(tmp / COMPLETE_MARKER, f"{final.name}\n")  # last: readers trust only marked folders
        raise_if_interrupted()  # a signal a finalizer swallowed: no checkpoint after it
        if final.exists():  # same step written by an earlier, interrupted attempt
            remove_checkpoint(final)
        os.replace(tmp, final)
        atomic_write_text(ckdir / "latest", final.name)
        for old in list_checkpoints(run_dir)[:-keep_last] if keep_last > 0 else []:
            remove_checkpoint(old)
    except Exception as e:  # noqa: BLE001 - a full disk or lost permission: one line, no half folder
        shutil.rmtree(tmp, ignore_errors=True)
        done = [p.name for p in list_checkpoints(run_dir)]
        raise UserError(
            f"checkpoint {final.name} could not be written to {ckdir} ({type(e).__name__}: {first_line(e)}); "
            f"free disk space or fix permissions, then rerun with --resume "
            f"(last complete checkpoint: {done[-1] if done else 'none'})"
        ) from None
    except BaseException:  # Ctrl-C / SIGTERM while writing: complete-or-absent
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def rng_state() -> dict:
    """Every RNG the trainer draws from, as tensors and lists of ints (loadable without pickle).

    ``{"torch": ByteTensor, "cuda": [ByteTensor] | None, "numpy": {"bit_generator": "MT19937",
    "state": {"key": [624 ints], "pos": int}, "has_gauss": int, "gauss": float},
    "python": [version, [625 ints], gauss_next]}``.

    >>> set_rng_state(rng_state())  # a no-op round trip
    """
    np_state = np.random.get_state(legacy=False)
    np_state["state"] = {"key": np_state["state"]["key"].tolist(), "pos": int(np_state["state"]["pos"])}
    version, internal, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        "numpy": np_state,
        "python": [version, list(internal), gauss_next],
    }


def set_rng_state(rng: dict) -> None:
    """Restore what :func:`rng_state` returned."""
    torch.set_rng_state(rng["torch"])
    np_state = dict(rng["numpy"])
    np_state["state"] = {
        "key": np.asarray(np_state["state"]["key"], dtype=np.uint32),
        "pos": np_state["state"]["pos"],
    }
    np.random.set_state(np_state)
    version, internal, gauss_next = rng["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if rng.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])


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
    st = Path(ckpt) / "trainer_state"
    try:
        state = json.loads((st / "state.json").read_text())
        for key in ("step", "tokens_seen", "next_batch"):
            if key in state and (not isinstance(state[key], int) or state[key] < 0):
                raise ValueError(f"state.json {key}={state[key]!r} is not a count")
        if state.get("trainer_state_format") != STATE_FORMAT:  # older versions: refused without reading
            raise UserError(
                f"{st}: written by an older nitp with pickled trainer state, which nitp no longer unpickles; "
                f"re-train, or load {st.parent.name} as a model (model.init_from) to continue without its optimizer"
            )
        full = st / "optimizer.pt"
        saved = {
            "optimizer": load_plain(full) if full.is_file() else None,
            "sharded": st / SHARDED_DIR if (st / SHARDED_DIR).is_dir() else None,
            "scheduler": load_plain(st / "scheduler.pt"),
            "state": state,
        }
        set_rng_state(load_plain(st / "rng.pt"))  # last: a refused file leaves the RNGs untouched
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001 - any damage to these files is bad input for --resume
        raise UserError(
            f"{ckpt}/trainer_state: damaged or incomplete ({type(e).__name__}: {first_line(e)}); "
            f"move {Path(ckpt).name} aside to resume from the checkpoint before it"
        ) from None
    return saved


def load_plain(path: Path):
    """``torch.load`` of tensors and plain containers only; anything needing unpickling is refused."""
    import pickle

    try:
        return torch.load(path, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as e:
        if "weights only" not in str(e).lower() and "weights_only" not in str(e):
            raise
        raise UserError(
            f"{path}: holds Python objects beyond tensors and plain values (it would need unpickling, "
            "which could run code; nitp never does); the file was tampered with or not written by nitp: "
            "re-train or resume from a checkpoint you trust"
        ) from None


def load_head(ckpt: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    path = Path(ckpt) / "nitp_head.safetensors"
    if not path.is_file():
        return {}
    try:
        return load_file(path)
    except Exception as e:  # noqa: BLE001 - a torn or foreign file is bad input for --resume
        raise UserError(_damaged(path, e)) from None


def _damaged(path: Path, e: BaseException) -> str:
    ckpt = path.parent if path.parent.name != "trainer_state" else path.parent.parent
    return (
        f"{path}: damaged ({type(e).__name__}: {first_line(e, 100)}); "
        f"move {ckpt.name} aside to resume from the checkpoint before it"
    )


def verify(ckpt: Path) -> None:
    """Before a resume loads anything: the checkpoint's JSON files parse and its safetensors
    files are whole (header and data length); :func:`load_trainer_state` checks the rest.

    Raises ``UserError`` naming the damaged file and the fix (move the checkpoint aside).
    """
    ckpt = Path(ckpt)
    names = ("config.json", "nitp_meta.json", "tokenizer.json", "tokenizer_config.json")
    jsons = [ckpt / name for name in names if name == "config.json" or (ckpt / name).is_file()]
    for path in jsons + sorted(ckpt.glob("*.safetensors")):
        try:
            if path.suffix == ".json":
                json.loads(path.read_text(encoding="utf-8"))
                continue
            with open(path, "rb") as f:  # the header parses and the file holds every byte it promises
                (n,) = struct.unpack("<Q", f.read(8))
                header = json.loads(f.read(n))
            end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
            if path.stat().st_size < 8 + n + end:
                raise ValueError(f"{path.stat().st_size} bytes, the header promises {8 + n + end}")
        except (OSError, ValueError, struct.error, KeyError, TypeError, IndexError, MemoryError) as e:
            raise UserError(_damaged(path, e)) from None


def clean_partial(run_dir: Path) -> None:
    """Remove half-written (``.step_N.tmp``) and half-deleted (``.step_N.del``) checkpoint
    folders and the temporaries of atomic writes (``.NAME.*.tmp``) left by a killed run."""
    ckdir = Path(run_dir) / "checkpoints"
    if ckdir.is_dir():
        for p in [*ckdir.glob(".step_*.tmp"), *ckdir.glob(".step_*.del")]:
            shutil.rmtree(p, ignore_errors=True)
    for folder in (Path(run_dir), ckdir):  # .latest.*.tmp, .config.yaml.*.tmp, ... of killed writes
        remove_stale_temps_in(folder, everything=True)  # the caller holds the run lock


def verify_resume(run_dir: Path, resume: bool) -> None:
    """On ``--resume`` of a run with checkpoints, :func:`verify` the one it will resume from."""
    run_dir = Path(run_dir)
    if resume and (run_dir / "config.yaml").is_file() and list_checkpoints(run_dir):
        verify(resolve_checkpoint(run_dir))
