"""Loading models and tokenizers from anything a user calls a model, with one-line errors.

Accepted everywhere a checkpoint is: a checkpoint folder, a run directory (its latest checkpoint),
a plain Hugging Face model folder, or a ``.gguf`` file. A GGUF file is dequantised once into a
plain float32 Hugging Face folder under ``cache_dir()/gguf/<hash>/`` (see :func:`model_folder`),
so every tool, lm-eval and mteb included, reads the same weights and gives the same numbers as
from the GGUF itself.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import tempfile
from pathlib import Path
from typing import Iterator

from .errors import UserError, first_line
from .io import atomic_folder
from .records import cache_dir
from .runs import is_gguf_file, resolve_checkpoint, weight_files, weights_hash

OFFLINE_FLAGS = (
    ("datasets.config", "HF_DATASETS_OFFLINE"),
    ("datasets.config", "HF_HUB_OFFLINE"),
    ("huggingface_hub.constants", "HF_HUB_OFFLINE"),
    ("transformers.utils.hub", "_is_offline_mode"),
)


@contextlib.contextmanager
def offline_hub(enabled: bool = True) -> Iterator[None]:
    """HF_HUB_OFFLINE / HF_DATASETS_OFFLINE set for the block (environment and already-imported
    libraries), so that nothing waits on network retries when the data are local."""
    if not enabled:
        yield
        return
    saved_env = {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")}
    os.environ.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    saved_attrs = []
    for module, attr in OFFLINE_FLAGS:
        mod = sys.modules.get(module)
        if mod is not None and isinstance(getattr(mod, attr, None), bool):
            saved_attrs.append((mod, attr, getattr(mod, attr)))
            setattr(mod, attr, True)
    try:
        yield
    finally:
        for mod, attr, value in saved_attrs:
            setattr(mod, attr, value)
        os.environ.update({k: v for k, v in saved_env.items() if v is not None})
        for k in [k for k, v in saved_env.items() if v is None]:
            os.environ.pop(k, None)


def model_folder(path: str | os.PathLike) -> Path:
    """The Hugging Face folder to load for ``path`` (a .gguf file is converted once, cached)."""
    p = resolve_checkpoint(path)
    check_utf8_path(p)
    if not is_gguf_file(p):
        return p
    folder = cache_dir() / "gguf" / f"v2-{weights_hash(p)[:16]}"
    if not (folder / "config.json").is_file():
        try:
            export_gguf(p, folder)
        except UserError:
            if not (folder / "config.json").is_file():  # not another process converting it first
                raise
    return folder


def check_utf8_path(path: Path) -> None:
    """``UserError`` when ``path`` holds bytes that are not UTF-8 (safetensors and the tokenizers
    cannot open it: without this the weights would be called damaged)."""
    text = str(Path(path).absolute())
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        shown = os.fsencode(text).decode("utf-8", "backslashreplace")
        raise UserError(
            f"{shown}: the path holds bytes that are not UTF-8, which safetensors and the tokenizers "
            "cannot open; rename the folder (or a parent) to a UTF-8 name"
        ) from None


def export_gguf(gguf: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Dequantise a GGUF causal LM into a plain float32 Hugging Face folder (atomic).

    transformers reads GGUF (the ``gguf`` package dequantises the tensors); ``save_pretrained``
    of that model fails, so its weights are copied into a model built from its config.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf, out = Path(gguf), Path(out)
    if out.exists() and any(out.iterdir()):
        raise UserError(f"--out {out}: folder exists and is not empty; choose a new folder")
    out.parent.mkdir(parents=True, exist_ok=True)  # a read-only place fails now, not after the conversion
    os.rmdir(tempfile.mkdtemp(dir=out.parent, prefix=".nitp-write-check."))
    kwargs = {"gguf_file": gguf.name}
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, **kwargs)
        loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, dtype=torch.float32, **kwargs)
    except ImportError as e:
        raise UserError(
            f"{gguf}: reading GGUF needs the gguf package ({first_line(e)}); pip install gguf"
        ) from None
    except Exception as e:  # noqa: BLE001 - any parse failure is bad input
        raise UserError(
            f"{gguf}: not a GGUF causal LM transformers can read ({type(e).__name__}: {first_line(e)})"
        ) from None
    config = loaded.config
    if hasattr(config, "quantization_config"):  # the weights are dequantised: a plain float32 model
        del config.quantization_config
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict(), assign=True, strict=True)
    if getattr(model.config, "tie_word_embeddings", False):
        model.tie_weights()
    try:
        with atomic_folder(out) as tmp:
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            (tmp / "nitp_source.txt").write_text(f"converted from {gguf.resolve()}\n")
    except Exception as e:  # noqa: BLE001 - a full disk (SafetensorError) or a read-only folder
        raise UserError(
            f"--out {out}: could not be written ({type(e).__name__}: {first_line(e, 100)}); "
            "free disk space, check its permissions or choose another folder"
        ) from None
    return out


def load_config(path: str | os.PathLike):
    """The model's config (its text config for multimodal models); ``UserError`` naming the folder."""
    from transformers import AutoConfig

    folder = model_folder(path)
    try:
        config = AutoConfig.from_pretrained(folder)
    except Exception as e:  # noqa: BLE001 - any parse failure is bad input
        raise UserError(
            f"{folder}: config.json could not be read ({type(e).__name__}: {first_line(e)}); "
            "is this a Hugging Face model folder?"
        ) from None
    return config.get_text_config() if hasattr(config, "get_text_config") else config


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.txt", "vocab.json")


def check_tokenizer_files(folder: Path) -> None:
    """A model folder must carry its tokenizer (``UserError`` naming the folder, else)."""
    if not any((Path(folder) / f).is_file() for f in TOKENIZER_FILES):
        raise UserError(
            f"{folder}: no tokenizer files ({', '.join(TOKENIZER_FILES[:2])}); "
            "save the tokenizer into the model folder (tokenizer.save_pretrained)"
        )


def load_tokenizer(path: str | os.PathLike, *, tokenizer_source: bool = False):
    """The model's own tokenizer; ``UserError`` when the folder carries none (never a guess).

    ``path`` is anything :func:`model_folder` takes. With ``tokenizer_source=True`` (a data
    config's ``tokenizer:``) it may also be a folder holding only tokenizer files, or a hub name
    (read from the local hub cache when offline).
    """
    from transformers import AutoTokenizer

    p = Path(path).expanduser()
    if tokenizer_source and not (p / "config.json").is_file() and not is_gguf_file(p):
        folder = p if p.exists() else str(path)
        if p.is_dir():
            check_tokenizer_files(p)
    else:
        folder = model_folder(path)
        check_tokenizer_files(folder)
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder)
    except Exception as e:  # noqa: BLE001
        raise UserError(
            f"{folder}: no usable tokenizer ({type(e).__name__}: {first_line(e, 120)}); "
            "save the tokenizer beside the weights (tokenizer.save_pretrained)"
        ) from None
    check_vocabulary(tokenizer, folder)
    return tokenizer


VOCABULARY_FILES = ("tokenizer.json", "vocab.json", "tokenizer.model", "vocab.txt", "merges.txt")


def check_vocabulary(tokenizer, folder) -> None:
    """``UserError`` naming ``folder`` and the missing file when the tokenizer turns plain text into
    no tokens (e.g. ``tokenizer.json`` gone but ``tokenizer_config.json`` left: transformers then
    builds a tokenizer of its special tokens only, and every tool would see 0 tokens)."""
    try:
        ids = tokenizer("The quick brown fox.", add_special_tokens=False)["input_ids"]
    except Exception:  # noqa: BLE001 - a tokenizer that cannot tokenize is as unusable
        ids = []
    if ids:
        return
    present = [f for f in VOCABULARY_FILES if isinstance(folder, Path) and (folder / f).is_file()]
    why = (
        f"its vocabulary file is missing (no {' / '.join(VOCABULARY_FILES[:3])}; only "
        f"{', '.join(f for f in TOKENIZER_FILES if (Path(folder) / f).is_file()) or 'nothing'} is there)"
        if not present
        else f"its vocabulary ({', '.join(present)}) gives no token for plain text"
    )
    raise UserError(
        f"{folder}: the tokenizer turns text into no tokens: {why}; copy tokenizer.json from the run's "
        "checkpoint or save the tokenizer again (tokenizer.save_pretrained)"
    )


def load_model(path: str | os.PathLike, *, causal: bool = True, dtype: str = "float32", device: str = "cpu"):
    """The model of ``path`` (``AutoModelForCausalLM``, or the bare backbone with ``causal=False``),
    in eval mode on ``device``. ``UserError`` for damaged, incomplete or mismatched weights."""
    import torch
    import transformers
    from transformers import AutoModel, AutoModelForCausalLM

    if not isinstance(getattr(torch, str(dtype), None), torch.dtype):
        raise UserError(f"--dtype {dtype}: not a torch dtype (use float32, bfloat16 or float16)")
    folder = model_folder(path)
    load_config(folder)
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    cls = AutoModelForCausalLM if causal else AutoModel
    try:
        model, info = cls.from_pretrained(folder, dtype=getattr(torch, dtype), output_loading_info=True)
    except Exception as e:  # noqa: BLE001
        raise UserError(
            f"{folder}: could not load the model weights ({type(e).__name__}: {first_line(e)}); "
            "the weight file is damaged, incomplete or missing"
        ) from None
    missing = [k for k in info.get("missing_keys", []) if "position_ids" not in k]
    if missing:
        raise UserError(
            f"{folder}: the weight file lacks {len(missing)} tensor(s) of the {type(model).__name__} "
            f"(e.g. {missing[0]}); it does not belong to this config.json"
        )
    try:
        model.to(device)
    except Exception as e:  # noqa: BLE001
        raise UserError(
            f"--device {device}: cannot place the model there ({type(e).__name__}); use cpu or cuda"
        ) from None
    return model.eval()


def check_weights_readable(path: str | os.PathLike) -> None:
    """Open every safetensors file's header and tensors lazily; ``UserError`` for a truncated file."""
    from safetensors import safe_open

    folder = model_folder(path)
    for f in sorted(folder.glob("*.safetensors")):
        try:
            with safe_open(str(f), framework="pt") as st:
                for key in st.keys():
                    st.get_slice(key)
        except Exception as e:  # noqa: BLE001
            raise UserError(
                f"{f}: damaged or truncated weight file ({type(e).__name__}); re-save or re-download the model"
            ) from None


# ----------------------------------------------------------------------------- before loading
def check_safe_weights(folder) -> None:
    """``UserError`` for a model folder whose weights are only pickled (``pytorch_model.bin``,
    ``*.pt``): loading them unpickles a user's file, which nitp never does."""
    folder = Path(folder)
    if not folder.is_dir():
        return  # a .gguf file: no pickle
    files = weight_files(folder)
    if files and not any(f.suffix in (".safetensors", ".gguf") for f in files):
        raise UserError(
            f"{folder}: the weights are pickled ({files[0].name}) and nitp never unpickles a model's files; "
            "convert them to safetensors (model.save_pretrained(folder) with transformers) and retry"
        )


def check_model_files(path: str | os.PathLike, *, device: str = "cpu", dtype: str | None = None) -> Path:
    """Everything about a model folder that can fail, checked before any cache lookup or load.

    Its weights are not only pickled (:func:`check_safe_weights`), its config.json parses, its tokenizer loads (a missing or garbage tokenizer is one line here,
    never a cached score of another model), every weight file opens, and its parameters fit in
    the memory of ``device`` (:func:`check_memory`). Returns the Hugging Face folder to load.
    """
    folder = model_folder(path)
    check_safe_weights(folder)  # before anything opens a pickled file
    load_config(folder)
    load_tokenizer(folder)
    check_memory(folder, device=device, dtype=dtype)  # from the headers only: before opening the weights
    check_weights_readable(folder)
    return folder


SAFETENSORS_ITEMSIZE = {"F64": 8, "I64": 8, "U64": 8, "F32": 4, "I32": 4, "U32": 4, "F16": 2, "BF16": 2}


def parameter_bytes(path: str | os.PathLike, dtype: str | None = None) -> int:
    """Bytes the model's parameters take once loaded in ``dtype`` (None: as stored), read from the
    safetensors headers without loading a tensor (other weight formats: their file sizes).

    ``bytes = sum over tensors of numel x itemsize(dtype)``; e.g. 135M parameters in bfloat16 ->
    270 MB.
    """
    import json
    import struct

    import torch

    itemsize = torch.empty(0, dtype=getattr(torch, dtype)).element_size() if dtype else None
    total = 0
    for f in weight_files(Path(path)):
        if f.suffix != ".safetensors":
            total += f.stat().st_size
            continue
        # not safetensors.safe_open: it maps the whole file, which fails for a model larger than memory
        with open(f, "rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(n))
        for name, t in header.items():
            if name == "__metadata__":
                continue
            total += math.prod(map(int, t["shape"])) * (itemsize or SAFETENSORS_ITEMSIZE.get(t["dtype"], 1))
    return total


def available_memory(device="cpu") -> int:
    """Free bytes a new allocation can use on ``device`` (a string or ``torch.device``): the GPU's
    free memory for cuda devices, else the machine's available memory (psutil) capped by this
    process's cgroup limit."""
    if str(device).startswith("cuda"):
        import torch

        return int(torch.cuda.mem_get_info(torch.device(device))[0])
    import psutil  # a dependency of accelerate

    host, room = int(psutil.virtual_memory().available), _cgroup_room()
    return host if room is None else min(host, room)


def _cgroup_room() -> int | None:
    """``memory.max - memory.current`` of this process's cgroup (v2), when it has a limit."""
    root = Path("/sys/fs/cgroup")
    try:
        limit = (root / "memory.max").read_text().strip()
        if limit == "max":
            return None
        return int(limit) - int((root / "memory.current").read_text())
    except (OSError, ValueError):
        return None


def check_memory(path: str | os.PathLike, *, device: str = "cpu", dtype: str | None = None) -> None:
    """``UserError`` naming the model, its size and the free memory when its parameters alone
    exceed the memory available on ``device`` (checked before anything is allocated)."""
    import struct

    folder = Path(path)
    try:
        need = parameter_bytes(folder, dtype)
    except (OSError, ValueError, KeyError, TypeError, struct.error):
        return  # a damaged header: check_weights_readable names the file
    free = available_memory(device)
    if need > free:
        where = "GPU memory" if str(device).startswith("cuda") else "memory"
        raise UserError(
            f"{folder}: the model's parameters need {_gib(need)} ({dtype or 'as stored'}) but only "
            f"{_gib(free)} of {where} is available on {device}; free memory, use a smaller dtype or a larger machine"
        )


def _gib(n: int) -> str:
    return f"{n / 2**30:.1f} GiB"
