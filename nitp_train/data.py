"""Corpus -> tokenizer -> memory-mapped token shards -> deterministic, resumable batches.

Corpora: ``builtin`` (real English text that the installed ``gensim`` wheel ships: 106 articles
of an English Wikipedia dump and the 300 Lee news stories, ~3.4 MB), a .txt/.jsonl/.parquet
file or a folder of them, or a Hugging Face dataset name (needs the hub).

Prepared data folder (``nitp-train prepare`` or the first ``nitp-train run``)::

    DIR/train.bin, DIR/val.bin   token ids, uint16 when the vocabulary fits, else uint32;
                                 documents packed with EOS between them
    DIR/tokenizer/               Hugging Face tokenizer (bos/eos/pad set)
    DIR/meta.json                {"fingerprint", "dtype", "vocab_size", "n_train", "n_val", ...}

Batches are windows of ``seq_len`` tokens cut from train.bin; their order is a seeded
permutation per epoch, and batch ``i`` of rank ``r`` of ``W`` takes windows
``perm[(i*W + r)*B : (i*W + r + 1)*B]``: ranks read disjoint windows, and the only state to
resume is ``i`` (the cursor).
"""

from __future__ import annotations

import bz2
import hashlib
import html
import json
import os
import re
import shutil
from pathlib import Path
from typing import Iterator

import numpy as np

from nitp.errors import UserError
from nitp.io import atomic_write_json

SPECIAL_TOKENS = {
    "bos_token": "<|bos|>",
    "eos_token": "<|endoftext|>",
    "pad_token": "<|pad|>",
    "unk_token": "<|unk|>",
}
TEXT_SUFFIXES = {".txt", ".jsonl", ".json", ".parquet"}


# ----------------------------------------------------------------------------- corpora
def builtin_documents() -> list[str]:
    """Real English text shipped by the gensim wheel: Wikipedia articles + Lee news stories."""
    from gensim.corpora.wikicorpus import filter_wiki
    from gensim.test.utils import datapath

    docs = []
    wiki = datapath("enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2")
    with bz2.open(wiki, "rt", encoding="utf-8") as f:
        raw = f.read()
    for text in re.findall(r"<text[^>]*>(.*?)</text>", raw, re.S):
        if text.lstrip().lower().startswith("#redirect"):
            continue
        plain = filter_wiki(html.unescape(text))
        plain = re.sub(r"'{2,}", "", plain)  # bold / italic marks
        plain = re.sub(r"^=+\s*(.*?)\s*=+\s*$", r"\1", plain, flags=re.M)  # headings
        plain = re.sub(r"\n{3,}", "\n\n", plain).strip()
        if len(plain) > 200:
            docs.append(plain)
    with open(datapath("lee_background.cor"), encoding="utf-8") as f:
        docs.extend(line.strip() for line in f if line.strip())
    return docs


def load_documents(corpus: str, text_field: str = "text") -> list[str]:
    """Documents of a corpus: ``builtin``, a file or folder, or a Hugging Face dataset name."""
    if corpus == "builtin":
        return builtin_documents()
    path = Path(corpus).expanduser()
    if path.exists():
        files = sorted(p for p in path.rglob("*") if p.suffix in TEXT_SUFFIXES) if path.is_dir() else [path]
        if not files:
            raise UserError(f"corpus {corpus}: folder holds no .txt/.jsonl/.parquet file")
        docs = [d for f in files for d in _read_file(f, text_field)]
    elif _looks_like_hub_name(corpus):
        docs = _load_hub_dataset(corpus, text_field)
    else:
        raise UserError(f"corpus {corpus}: no such file or folder")
    docs = [d for d in docs if d.strip()]
    if not docs:
        raise UserError(f"corpus {corpus}: empty (no non-blank text found)")
    return docs


def _looks_like_hub_name(name: str) -> bool:
    """``wikitext`` or ``owner/name``: no leading path marker, at most one slash, no file suffix."""
    return (
        not name.startswith(("/", ".", "~"))
        and name.count("/") <= 1
        and Path(name).suffix not in TEXT_SUFFIXES
    )


def _read_file(path: Path, text_field: str) -> list[str]:
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        if text_field not in table.column_names:
            raise UserError(
                f"corpus {path}: no column {text_field!r} (columns: {', '.join(table.column_names)}); set data.text_field"
            )
        return [str(x) for x in table.column(text_field).to_pylist() if x]
    raw = path.read_bytes()
    if b"\x00" in raw[:8192]:
        raise UserError(f"corpus {path}: binary file, not text (give .txt, .jsonl or .parquet)")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise UserError(f"corpus {path}: not UTF-8 text (convert it to UTF-8)") from None
    if path.suffix in {".jsonl", ".json"}:
        docs = []
        for i, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                docs.append(json.loads(line)[text_field])
            except (json.JSONDecodeError, KeyError, TypeError):
                raise UserError(
                    f"corpus {path}:{i}: expected a JSON object with a {text_field!r} field per line"
                ) from None
        return docs
    # .txt: documents are separated by blank lines when there are several paragraphs per file
    return [text]


def _load_hub_dataset(name: str, text_field: str) -> list[str]:
    try:
        import datasets

        ds = datasets.load_dataset(name, split="train")
    except Exception as e:  # noqa: BLE001 - any hub failure becomes one line
        raise UserError(
            f"corpus {name}: not a local path and could not be loaded from the hub ({type(e).__name__}); give a local file or folder"
        ) from None
    if text_field not in ds.column_names:
        raise UserError(
            f"corpus {name}: no column {text_field!r} (columns: {', '.join(ds.column_names)}); set data.text_field"
        )
    return list(ds[text_field])


def split_documents(docs: list[str], val_fraction: float, seed: int = 0) -> tuple[list[str], list[str]]:
    """Hold out whole documents (at least one) for validation, seeded."""
    if len(docs) < 2:
        # one long document: hold out its tail
        cut = int(len(docs[0]) * (1 - val_fraction))
        return [docs[0][:cut]], [docs[0][cut:]]
    order = np.random.default_rng(seed).permutation(len(docs))
    n_val = max(1, int(round(len(docs) * val_fraction)))
    val_idx = set(order[:n_val].tolist())
    return [d for i, d in enumerate(docs) if i not in val_idx], [docs[i] for i in sorted(val_idx)]


# ----------------------------------------------------------------------------- tokenizers
def train_tokenizer(docs: list[str], vocab_size: int):
    """A byte-level BPE tokenizer trained on ``docs`` with bos/eos/pad/unk special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS.values()),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(docs, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, **SPECIAL_TOKENS, model_max_length=1 << 20)


def load_tokenizer(name_or_path: str):
    """A Hugging Face tokenizer folder or hub name; pad/eos are filled in when missing."""
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(name_or_path)
    except Exception as e:  # noqa: BLE001
        raise UserError(
            f"tokenizer {name_or_path}: could not be loaded ({type(e).__name__}); give a tokenizer folder or null to train one"
        ) from None
    if tok.eos_token is None:
        tok.add_special_tokens({"eos_token": SPECIAL_TOKENS["eos_token"]})
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


# ----------------------------------------------------------------------------- shards
FINGERPRINT_DEFAULTS = {
    "corpus": "builtin",
    "text_field": "text",
    "tokenizer": None,
    "vocab_size": 4096,
    "val_fraction": 0.05,
    "seed": 0,
}


def data_fingerprint(data_cfg: dict) -> str:
    """Hash of the settings that determine a prepared folder's content."""
    blob = json.dumps({k: data_cfg.get(k, v) for k, v in FINGERPRINT_DEFAULTS.items()}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def prepare(data_cfg: dict, out_dir: str | os.PathLike, log=print) -> Path:
    """Tokenize a corpus once into ``out_dir`` (reused when it already matches ``data_cfg``)."""
    out = Path(out_dir)
    fp = data_fingerprint(data_cfg)
    meta_path = out / "meta.json"
    if meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        if meta.get("fingerprint") != fp:
            raise UserError(
                f"{out}: holds data prepared with other settings (corpus {meta.get('corpus')}, vocabulary {meta.get('vocab_size')}); use another data.prepared_dir or delete it"
            )
        return out
    log(f"preparing corpus {data_cfg['corpus']!r} -> {out}")
    docs = load_documents(data_cfg["corpus"], data_cfg.get("text_field", "text"))
    train_docs, val_docs = split_documents(docs, data_cfg.get("val_fraction", 0.02), data_cfg.get("seed", 0))
    if data_cfg.get("tokenizer"):
        tok = load_tokenizer(data_cfg["tokenizer"])
    else:
        tok = train_tokenizer(train_docs, data_cfg.get("vocab_size", 4096))
    vocab = len(tok)
    dtype = np.uint16 if vocab <= np.iinfo(np.uint16).max + 1 else np.uint32

    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    tok.save_pretrained(tmp / "tokenizer")
    counts = {}
    for split, split_docs in (("train", train_docs), ("val", val_docs)):
        ids = _encode_packed(tok, split_docs).astype(dtype)
        ids.tofile(tmp / f"{split}.bin")
        counts[split] = int(ids.size)
    seq_len = data_cfg.get("seq_len", 256)
    if counts["train"] < seq_len + 1:
        shutil.rmtree(tmp)
        raise UserError(
            f"corpus {data_cfg['corpus']}: {counts['train']} training tokens, fewer than one sequence of {seq_len}; give more text or lower data.seq_len"
        )
    meta = {
        "fingerprint": fp,
        "corpus": data_cfg["corpus"],
        "dtype": np.dtype(dtype).name,
        "vocab_size": vocab,
        "n_train": counts["train"],
        "n_val": counts["val"],
        "n_docs_train": len(train_docs),
        "n_docs_val": len(val_docs),
        "eos_token_id": tok.eos_token_id,
        "settings": {k: data_cfg.get(k, v) for k, v in FINGERPRINT_DEFAULTS.items()},
    }
    atomic_write_json(tmp / "meta.json", meta)
    if out.exists() and not meta_path.is_file():  # an empty or partial folder from an interrupted run
        shutil.rmtree(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(tmp, out)
    except OSError:  # another process finished preparing the same data first
        shutil.rmtree(tmp, ignore_errors=True)
        return prepare(data_cfg, out, log)
    log(f"prepared {counts['train']:,} train and {counts['val']:,} validation tokens, vocabulary {vocab:,}")
    return out


def _encode_packed(tok, docs: list[str]) -> np.ndarray:
    eos = tok.eos_token_id
    parts = []
    for ids in tok(docs, add_special_tokens=False)["input_ids"]:
        parts.append(np.asarray(ids + [eos], dtype=np.int64))
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def validation_documents(data_cfg: dict) -> list[str]:
    """The held-out documents of a prepared corpus (same split as ``prepare``)."""
    docs = load_documents(data_cfg["corpus"], data_cfg.get("text_field", "text"))
    return split_documents(docs, data_cfg.get("val_fraction", 0.02), data_cfg.get("seed", 0))[1]


class TokenShards:
    """Read-only view of a prepared data folder."""

    def __init__(self, prepared_dir: str | os.PathLike):
        self.dir = Path(prepared_dir)
        self.meta = json.loads((self.dir / "meta.json").read_text())
        dtype = np.dtype(self.meta["dtype"])
        self.train = np.memmap(self.dir / "train.bin", dtype=dtype, mode="r")
        self.val = np.memmap(self.dir / "val.bin", dtype=dtype, mode="r")

    def tokenizer(self):
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(self.dir / "tokenizer")

    def batches(
        self, seq_len: int, batch_size: int, seed: int, start: int = 0, rank: int = 0, world: int = 1
    ) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(index, int64 array [batch_size, seq_len])`` from batch ``start`` on, forever."""
        n_windows = len(self.train) // seq_len
        per_step = batch_size * world
        if n_windows < per_step:
            raise UserError(
                f"corpus has {n_windows} windows of {seq_len} tokens, fewer than one global batch of {per_step}; "
                "lower train.batch_size or data.seq_len, or give more text"
            )
        steps_per_epoch = n_windows // per_step
        i = start
        while True:
            epoch, j = divmod(i, steps_per_epoch)
            perm = np.random.default_rng([seed, epoch]).permutation(n_windows)
            while j < steps_per_epoch:
                lo = (j * world + rank) * batch_size
                idx = np.sort(perm[lo : lo + batch_size])
                yield i, np.stack([self.train[w * seq_len : (w + 1) * seq_len] for w in idx]).astype(np.int64)
                i, j = i + 1, j + 1

    def val_batches(
        self, seq_len: int, batch_size: int, max_batches: int, rank: int = 0, world: int = 1
    ) -> Iterator[np.ndarray]:
        """Consecutive validation windows, split across ranks; at most ``max_batches`` per rank."""
        n_windows = len(self.val) // seq_len
        windows = list(range(rank, n_windows, world))
        for b in range(min(max_batches, len(windows) // batch_size)):
            ws = windows[b * batch_size : (b + 1) * batch_size]
            yield np.stack([self.val[w * seq_len : (w + 1) * seq_len] for w in ws]).astype(np.int64)
