"""Corpus -> tokenizer -> memory-mapped token shards -> deterministic, resumable batches.

Corpora are read as streams by :mod:`nitp_train.corpus` (the built-in text, files, folders, hub
datasets).

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

import gc
import hashlib
import itertools
import json
import os
import shutil
import signal
from pathlib import Path
from typing import Iterator

import numpy as np

from nitp.errors import UserError
from nitp.io import atomic_write_json, atomic_write_text, hidden_name, pid_alive

from .config_model import data_defaults
from .corpus import PIECE_CHARS, is_validation, iter_documents, iter_pieces, load_documents, split_documents

SPECIAL_TOKENS = {
    "bos_token": "<|bos|>",
    "eos_token": "<|endoftext|>",
    "pad_token": "<|pad|>",
    "unk_token": "<|unk|>",
}


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
    """A tokenizer folder, model folder or hub name (read by the one ``nitp.loading.load_tokenizer``);
    pad/eos are filled in when missing."""
    from nitp.loading import load_tokenizer as load_model_tokenizer

    try:
        tok = load_model_tokenizer(name_or_path, tokenizer_source=True)
    except UserError as e:
        raise UserError(f"tokenizer {e}; give a tokenizer folder or null to train one") from None
    if tok.eos_token is None:
        tok.add_special_tokens({"eos_token": SPECIAL_TOKENS["eos_token"]})
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


# ----------------------------------------------------------------------------- shards
# the data settings that determine a prepared folder's content, with the config's defaults
FINGERPRINT_KEYS = ("corpus", "text_field", "tokenizer", "vocab_size", "val_fraction", "seed")
FINGERPRINT_DEFAULTS = {k: v for k, v in data_defaults().items() if k in FINGERPRINT_KEYS}
FORMAT = 2  # 2: streamed, hash-split documents, doc-start index files
TOKENIZER_SAMPLE_CHARS = 64 << 20  # a trained BPE sees at most this much training text
FLUSH_TOKENS = 8 << 20  # progress is committed (resumable) at least every this many tokens


def data_fingerprint(data_cfg: dict) -> str:
    """Hash of the settings that determine a prepared folder's content."""
    blob = json.dumps({k: data_cfg.get(k, v) for k, v in FINGERPRINT_DEFAULTS.items()}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def prepare(data_cfg: dict, out_dir: str | os.PathLike, log=print) -> Path:
    """Tokenize a corpus once into ``out_dir`` (reused when it already matches ``data_cfg``).

    Streams the corpus piece by piece (:func:`iter_pieces`), tokenizes batches of
    ``data.batch_docs`` documents in ``data.workers`` processes with the Rust tokenizer's
    ``encode_batch``, and appends to ``train.bin`` / ``val.bin`` (+ ``train.idx`` / ``val.idx``,
    uint64 token offsets where documents start) in ``.NAME.partial/`` beside ``out_dir``, which
    is renamed to ``out_dir`` when complete. Memory stays bounded by the batches in flight. A
    killed preparation resumes from its last committed progress at the next call.
    """
    import fcntl

    # resolved: one lock per folder however its path is spelled, and a symlink (even one to a
    # folder not made yet) leads to the folder it names
    out = Path(out_dir).resolve()
    if out.exists() and not out.is_dir():
        raise UserError(f"data.prepared_dir={out}: is a file; give a folder path (new or prepared before)")
    data_cfg = {**data_defaults(), **data_cfg}
    fp = data_fingerprint(data_cfg)
    if out.parent.is_dir():  # folders .NAME.PID.tmp of older versions whose process is gone
        for tmp in out.parent.glob(f".{out.name}.*.tmp"):
            pid = tmp.name[len(out.name) + 2 : -4]
            if pid.isdigit() and not pid_alive(int(pid)):
                shutil.rmtree(tmp, ignore_errors=True)
    if (reused := _reuse(out, fp)) is not None:
        return reused
    out.parent.mkdir(parents=True, exist_ok=True)
    lock_path = out.with_name(hidden_name(out.name, ".lock"))  # within NAME_MAX for any valid name
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one preparer per folder; others wait, then reuse
        try:
            if (reused := _reuse(out, fp)) is not None:
                return reused
            partial = out.with_name(hidden_name(out.name, ".partial"))
            try:
                meta = _prepare_into(partial, data_cfg, fp, log)
                if out.exists():  # an empty or partial folder from an interrupted older run
                    shutil.rmtree(out)
                os.replace(partial, out)
            except Exception as e:
                shutil.rmtree(partial, ignore_errors=True)  # bad input: leave nothing behind
                if isinstance(e, OSError) and e.filename is None:  # a write (full disk): name the folder
                    e.filename = str(out)
                raise
        finally:
            lock_path.unlink(missing_ok=True)
    log(
        f"prepared {meta['n_train']:,} train and {meta['n_val']:,} validation tokens "
        f"({meta['n_docs_train']:,} + {meta['n_docs_val']:,} documents), vocabulary {meta['vocab_size']:,}"
    )
    return out


def _reuse(out: Path, fp: str) -> Path | None:
    meta_path = out / "meta.json"
    if not meta_path.is_file():
        return None
    meta = json.loads(meta_path.read_text())
    if meta.get("fingerprint") != fp:
        raise UserError(
            f"{out}: holds data prepared with other settings (corpus {meta.get('corpus')}, vocabulary "
            f"{meta.get('vocab_size')}); use another data.prepared_dir or delete it"
        )
    return out


def _prepare_into(partial: Path, data_cfg: dict, fp: str, log) -> dict:
    """``data_cfg`` (every key given) tokenized into ``partial``; returns ``meta.json``'s content."""
    corpus = data_cfg["corpus"]
    try:  # the committed progress of an interrupted preparation with the same settings
        progress = json.loads((partial / "progress.json").read_text())
    except (OSError, ValueError):
        progress = {}
    if progress.get("fingerprint") != fp:
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        log(f"preparing corpus {corpus!r} -> {partial.name[1:-8]}")
        tok = _make_tokenizer(data_cfg)
        tok.save_pretrained(partial / "tokenizer")
        progress = dict(fingerprint=fp, pieces=0, docs=0, train=0, val=0, train_docs=0, val_docs=0)
        progress["dtype"] = "uint16" if len(tok) <= np.iinfo(np.uint16).max + 1 else "uint32"
        progress["vocab_size"], progress["eos"] = len(tok), tok.eos_token_id
        _commit(partial, progress)
    else:
        log(f"resuming the preparation of {corpus!r} at document {progress['docs']:,}")
    writer = _ShardWriter(partial, progress)
    try:
        _tokenize_stream(partial, data_cfg, progress, writer)
    finally:
        writer.close()
    _ensure_validation(partial, progress, data_cfg["val_fraction"])
    seq_len = data_cfg["seq_len"]
    if progress["train"] < seq_len + 1:
        raise UserError(
            f"corpus {corpus}: {progress['train']} training tokens, fewer than one sequence of {seq_len}; "
            "give more text or lower data.seq_len"
        )
    meta = {
        "format": FORMAT,
        "fingerprint": fp,
        "corpus": corpus,
        "dtype": progress["dtype"],
        "vocab_size": progress["vocab_size"],
        "n_train": progress["train"],
        "n_val": progress["val"],
        "n_docs_train": progress["train_docs"],
        "n_docs_val": progress["val_docs"],
        "eos_token_id": progress["eos"],
        "settings": {k: data_cfg[k] for k in FINGERPRINT_DEFAULTS},
    }
    (partial / "progress.json").unlink()
    atomic_write_json(partial / "meta.json", meta)
    return meta


def _make_tokenizer(data_cfg: dict):
    if data_cfg["tokenizer"]:
        tok = load_tokenizer(data_cfg["tokenizer"])
        if not tok.is_fast:
            raise UserError(
                f"tokenizer {data_cfg['tokenizer']}: has no fast (Rust) version; give a tokenizer.json one"
            )
        return tok

    def sample() -> Iterator[str]:  # training documents, up to TOKENIZER_SAMPLE_CHARS
        seen = 0
        for i, doc in enumerate(iter_documents(data_cfg["corpus"], data_cfg["text_field"])):
            if not is_validation(i, data_cfg["val_fraction"], data_cfg["seed"]) or i == 0:
                yield doc
                seen += len(doc)
                if seen >= TOKENIZER_SAMPLE_CHARS:
                    return

    return train_tokenizer(sample(), data_cfg["vocab_size"])


def _commit(partial: Path, progress: dict) -> None:
    atomic_write_json(partial / "progress.json", progress)


class _ShardWriter:
    """Appends token ids and document starts per split; truncates to the committed progress."""

    def __init__(self, partial: Path, progress: dict):
        self.dtype = np.dtype(progress["dtype"])
        self.files = {}
        for split in ("train", "val"):
            for ext, size in (
                ("bin", progress[split] * self.dtype.itemsize),
                ("idx", progress[f"{split}_docs"] * 8),
            ):
                f = open(partial / f"{split}.{ext}", "ab+")
                f.truncate(size)  # drop what was written after the last commit
                f.seek(size)
                self.files[split, ext] = f

    def append(self, split: str, ids: np.ndarray, doc_starts: np.ndarray, progress: dict) -> None:
        self.files[split, "idx"].write((doc_starts + progress[split]).astype(np.uint64).tobytes())
        self.files[split, "bin"].write(ids.astype(self.dtype, copy=False).tobytes())
        progress[split] += int(ids.size)
        progress[f"{split}_docs"] += int(doc_starts.size)

    def flush(self) -> None:
        for f in self.files.values():
            f.flush()
            os.fsync(f.fileno())

    def close(self) -> None:
        for f in self.files.values():
            f.close()


def _jobs(data_cfg: dict, progress: dict) -> Iterator[tuple[list, int, int]]:
    """Batches of ``([(text, starts_doc, ends_doc, is_val), ...], pieces done, docs done)``
    after the committed progress."""
    val_fraction, seed = data_cfg["val_fraction"], data_cfg["seed"]
    items, chars, doc = [], 0, -1
    # a piece ends its document when the next one starts one (one piece of look-ahead; the end does)
    pieces = itertools.chain(iter_pieces(data_cfg["corpus"], data_cfg["text_field"]), [(True, "")])
    for piece, ((starts, text), (ends, _)) in enumerate(itertools.pairwise(pieces)):
        doc += starts
        if piece < progress["pieces"]:
            continue
        items.append((text, starts, ends, is_validation(doc, val_fraction, seed)))
        chars += len(text)
        if len(items) >= data_cfg["batch_docs"] or chars >= PIECE_CHARS:
            yield items, piece + 1, doc + 1
            items, chars = [], 0
    if items:
        yield items, piece + 1, doc + 1


def _tokenize_stream(partial: Path, data_cfg: dict, progress: dict, writer: _ShardWriter) -> None:
    import collections
    import multiprocessing

    workers = data_cfg["workers"]
    workers = min(8, os.cpu_count() or 1) if workers is None else workers
    tok_file = str(partial / "tokenizer" / "tokenizer.json")
    eos = progress["eos"]
    since_commit = 0

    def consume(result, pieces, docs):
        nonlocal since_commit
        for split, (ids, doc_starts) in result.items():
            writer.append(split, ids, doc_starts, progress)
            since_commit += ids.size
        progress["pieces"], progress["docs"] = pieces, docs
        if since_commit >= FLUSH_TOKENS:
            writer.flush()
            _commit(partial, progress)
            since_commit = 0

    if workers == 0:
        _init_worker(tok_file, eos)
        for items, pieces, docs in _jobs(data_cfg, progress):
            consume(_encode_job(items), pieces, docs)
    else:
        # fork: workers need no re-import of the caller's __main__ (spawn would re-run scripts
        # without a main guard); each loads its own Rust tokenizer from tokenizer.json.
        methods = multiprocessing.get_all_start_methods()
        ctx = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
        gc.freeze()  # forked workers' garbage collection then leaves the parent's pages shared
        saved = _worker_signals()  # workers are born with them: a SIGTERM before their initializer kills
        try:
            pool = ctx.Pool(workers, initializer=_init_pool_worker, initargs=(tok_file, eos))
        finally:  # the parent's own handlers, restored right after
            signal.signal(signal.SIGINT, saved[0])
            signal.signal(signal.SIGTERM, saved[1])
        gc.unfreeze()
        with pool:
            pending: collections.deque = collections.deque()
            for items, pieces, docs in _jobs(data_cfg, progress):
                pending.append((pool.apply_async(_encode_job, (items,)), pieces, docs))
                if len(pending) >= 2 * workers:  # bounded: memory does not grow with the corpus
                    result, p, d = pending.popleft()
                    consume(result.get(), p, d)
            while pending:
                result, p, d = pending.popleft()
                consume(result.get(), p, d)
    writer.flush()
    _commit(partial, progress)


_WORKER: dict = {}


def _worker_signals() -> tuple:
    """A pool worker's handlers: Ctrl-C ignored (the main process reports it), SIGTERM the default
    (``Pool.terminate`` must end a worker at once; the CLI's handler would unwind it and can hang the
    pool's join). Returns the handlers they replace."""
    return signal.signal(signal.SIGINT, signal.SIG_IGN), signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _init_pool_worker(tokenizer_file: str, eos: int) -> None:
    """A pool worker leaves Ctrl-C and SIGTERM to the main process (which reports and cleans up)."""
    _worker_signals()
    _init_worker(tokenizer_file, eos)


def _init_worker(tokenizer_file: str, eos: int) -> None:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(tokenizer_file)
    _WORKER["encode"], _WORKER["eos"] = getattr(tok, "encode_batch_fast", tok.encode_batch), eos


def _encode_job(items: list[tuple[str, bool, bool, bool]]) -> dict:
    """``{split: (token ids with EOS after each document's last piece, document start offsets)}``
    for one batch of ``(text, starts_doc, ends_doc, is_val)`` pieces."""
    # encode_batch_fast skips the character offsets, which nothing here uses
    encodings = _WORKER["encode"]([it[0] for it in items], add_special_tokens=False)
    eos = np.array([_WORKER["eos"]], dtype=np.uint32)
    out = {}
    for split, flag in (("train", False), ("val", True)):
        parts, doc_starts, n = [], [], 0
        for enc, (_, starts, ends, is_val) in zip(encodings, items):
            if is_val != flag:
                continue
            if starts:
                doc_starts.append(n)
            parts.append(np.asarray(enc.ids, dtype=np.uint32))
            n += len(enc.ids)
            if ends:
                parts.append(eos)
                n += 1
        if parts:
            out[split] = (np.concatenate(parts), np.asarray(doc_starts, dtype=np.int64))
    return out


def _ensure_validation(partial: Path, progress: dict, val_fraction: float) -> None:
    """At least one validation document: move the last training document (or, with one
    document only, the tail ``val_fraction`` of its tokens) to val.bin."""
    if progress["train"] == 0 and progress["val"] > 0:  # every document drew validation: start over
        for ext in ("bin", "idx"):
            os.replace(partial / f"val.{ext}", partial / f"train.{ext}")
        progress.update(train=progress["val"], train_docs=progress["val_docs"], val=0, val_docs=0)
    if progress["val"] > 0 or progress["train"] == 0:
        return
    dtype = np.dtype(progress["dtype"])
    starts = np.fromfile(partial / "train.idx", dtype=np.uint64)
    cut = int(starts[-1]) if starts.size >= 2 else int(progress["train"] * (1 - val_fraction))
    train = np.memmap(partial / "train.bin", dtype=dtype, mode="r")
    np.asarray(train[cut:]).tofile(partial / "val.bin")
    del train
    np.zeros(1, dtype=np.uint64).tofile(partial / "val.idx")
    with open(partial / "train.bin", "r+b") as f:
        f.truncate(cut * dtype.itemsize)
    if starts.size >= 2:
        starts[:-1].tofile(partial / "train.idx")
    progress.update(
        val=progress["train"] - cut,
        train=cut,
        val_docs=1,
        train_docs=max(1, progress["train_docs"] - (starts.size >= 2)),
    )


def validation_documents(data_cfg: dict) -> list[str]:
    """The held-out documents of a corpus (same split as ``prepare``)."""
    data_cfg = {**data_defaults(), **data_cfg}
    docs = load_documents(data_cfg["corpus"], data_cfg["text_field"])
    return split_documents(docs, data_cfg["val_fraction"], data_cfg["seed"])[1]


VALIDATION_TEXT = "val_documents.jsonl"


def validation_text(prepared_dir: str | os.PathLike) -> Path:
    """``PREPARED/val_documents.jsonl``: the held-out documents of a prepared folder as text
    (``{"text": ...}`` per line), decoded once from ``val.bin`` / ``val.idx`` with its tokenizer
    (byte-level BPE decodes losslessly) and written atomically; the file is reused afterwards."""
    shards = TokenShards(prepared_dir)
    path = shards.dir / VALIDATION_TEXT
    if path.is_file():
        return path
    tokenizer = shards.tokenizer()
    starts = [int(x) for x in shards.doc_starts("val")] + [len(shards.val)]
    lines = []
    for lo, hi in zip(starts[:-1], starts[1:]):
        text = tokenizer.decode(np.asarray(shards.val[lo:hi]).tolist(), skip_special_tokens=True).strip()
        if text:
            lines.append(json.dumps({"text": text}) + "\n")
    try:
        return atomic_write_text(path, "".join(lines))
    except OSError:  # a read-only prepared folder: keep the text beside the other temporary files
        import tempfile

        meta = (shards.dir / "meta.json").read_bytes()
        key = hashlib.sha256(str(shards.dir.resolve()).encode() + meta).hexdigest()[:16]
        return atomic_write_text(Path(tempfile.gettempdir()) / f"nitp-val-{key}.jsonl", "".join(lines))


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

    def check_fits(self, seq_len: int, batch_size: int, world: int = 1) -> None:
        """Raise a UserError unless train.bin holds one step of ``batch_size x world`` windows."""
        n_windows, per_step = len(self.train) // seq_len, batch_size * world
        if n_windows < per_step:
            raise UserError(
                f"corpus has {n_windows} windows of {seq_len} tokens, fewer than one step of {per_step} "
                f"sequences ({batch_size} per process x {world}); lower train.batch_size or data.seq_len, "
                "or give more text"
            )

    def doc_starts(self, split: str = "train") -> np.ndarray:
        """Token offsets (uint64) where the documents of ``split`` start in ``split.bin``."""
        path = self.dir / f"{split}.idx"
        if not path.is_file():
            raise UserError(
                f"{self.dir}: prepared by an older nitp without document boundaries; prepare it again"
            )
        return np.fromfile(path, dtype=np.uint64)

    def batches(
        self, seq_len: int, batch_size: int, seed: int, start: int = 0, rank: int = 0, world: int = 1
    ) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(index, int64 array [batch_size, seq_len])`` from batch ``start`` on, forever."""
        for i, windows in self._batch_windows(seq_len, batch_size, seed, start, rank, world):
            yield i, self._window_tokens(windows, seq_len)

    def document_batches(
        self, seq_len: int, batch_size: int, seed: int, start: int = 0, rank: int = 0, world: int = 1
    ) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """:meth:`batches` plus each token's document index: ``(index, tokens, documents)``, both
        int64 ``[batch_size, seq_len]``, the same windows in the same order.

        ``documents[r, j]`` = the number of the document (in train.bin order) holding token j of
        window r, ``searchsorted(doc_starts, offset, "right") - 1``; the EOS ending a document
        belongs to it. The trainer gives them to the NITP pair rule only (no pair crosses a
        boundary); the model's attention and positions are not changed.

        Example: documents starting at 0 and 5, seq_len 4, window 1 (tokens 4..7) -> [0, 1, 1, 1].
        """
        starts = self.doc_starts("train").astype(np.int64)
        offsets = np.arange(seq_len, dtype=np.int64)
        for i, windows in self._batch_windows(seq_len, batch_size, seed, start, rank, world):
            tokens = self._window_tokens(windows, seq_len)
            positions = windows.astype(np.int64)[:, None] * seq_len + offsets
            yield i, tokens, np.searchsorted(starts, positions, side="right") - 1

    def _batch_windows(
        self, seq_len: int, batch_size: int, seed: int, start: int, rank: int, world: int
    ) -> Iterator[tuple[int, np.ndarray]]:
        """``(index, sorted window numbers [batch_size])`` of this rank's batches, forever."""
        self.check_fits(seq_len, batch_size, world)
        n_windows = len(self.train) // seq_len
        steps_per_epoch = n_windows // (batch_size * world)
        i = start
        while True:
            epoch, j = divmod(i, steps_per_epoch)
            perm = np.random.default_rng([seed, epoch]).permutation(n_windows)
            while j < steps_per_epoch:
                lo = (j * world + rank) * batch_size
                yield i, np.sort(perm[lo : lo + batch_size])
                i, j = i + 1, j + 1

    def _window_tokens(self, windows, seq_len: int, split: str = "train") -> np.ndarray:
        tokens = getattr(self, split)
        return np.stack([tokens[w * seq_len : (w + 1) * seq_len] for w in windows]).astype(np.int64)

    def val_batches(
        self, seq_len: int, batch_size: int, max_batches: int, rank: int = 0, world: int = 1
    ) -> Iterator[np.ndarray]:
        """Consecutive validation windows, split across ranks; at most ``max_batches`` per rank."""
        n_windows = len(self.val) // seq_len
        windows = list(range(rank, n_windows, world))
        for b in range(min(max_batches, len(windows) // batch_size)):
            yield self._window_tokens(windows[b * batch_size : (b + 1) * batch_size], seq_len, "val")
