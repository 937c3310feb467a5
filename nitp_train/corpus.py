"""Corpora as streams of documents: the built-in text, files and folders, hub datasets.

``builtin`` is real English text that the installed ``gensim`` wheel ships (106 articles of an
English Wikipedia dump and the 300 Lee news stories, ~3.4 MB); a path is a .txt/.jsonl/.parquet
file (.jsonl may be .gz/.xz/.bz2) or a folder of them; any other name is a Hugging Face dataset,
read in streaming mode (needs the hub). Long documents come in pieces of at most ``PIECE_CHARS``
characters so that memory never grows with a document's length. ``is_validation`` decides a
document's split from its index alone (a seeded draw), so a stream is split in one pass.
"""

from __future__ import annotations

import bz2
import functools
import html
import json
import re
from pathlib import Path
from typing import Iterator

import numpy as np

from nitp.errors import UserError

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
    """Documents of a corpus as a list (small corpora; :func:`iter_documents` streams)."""
    return list(iter_documents(corpus, text_field))


def iter_documents(corpus: str, text_field: str = "text") -> Iterator[str]:
    """Documents of a corpus, streamed: ``builtin``, a file or folder, or a hub dataset name."""
    doc: list[str] = []
    for new_doc, text in iter_pieces(corpus, text_field):
        if new_doc and doc:
            yield "".join(doc)
            doc = []
        doc.append(text)
    if doc:
        yield "".join(doc)


def iter_pieces(corpus: str, text_field: str = "text") -> Iterator[tuple[bool, str]]:
    """``(starts_a_document, text)`` pieces of a corpus in a fixed order, never the whole corpus
    in memory: a .txt file is one document read in pieces of about 1M characters (at line ends),
    .jsonl / .parquet / dataset rows are one document each, cut in pieces of at most 1M characters
    (:func:`_split_long`); blank documents are skipped.
    """
    found = False
    for text_pieces in _documents_as_pieces(corpus, text_field):
        first = True
        for piece in text_pieces:
            if first and not piece.strip():
                continue
            yield first, piece
            first, found = False, True
    if not found:
        raise UserError(f"corpus {corpus}: empty (no non-blank text found)")


def _documents_as_pieces(corpus: str, text_field: str) -> Iterator[Iterator[str]]:
    if corpus == "builtin":
        yield from map(_split_long, builtin_documents())
        return
    path = Path(corpus).expanduser()
    if path.exists():
        files = sorted(p for p in path.rglob("*") if _kind(p) and p.is_file() and not _hidden(p, path))
        files = files if path.is_dir() else [path]
        if not files:
            raise UserError(f"corpus {corpus}: folder holds no .txt/.jsonl/.parquet file")
        for f in files:
            yield from _file_documents(f, text_field)
    elif not corpus.startswith(("/", ".", "~")) and corpus.count("/") <= 1 and _kind(Path(corpus)) is None:
        # a hub name, wikitext or owner/name: no leading path marker, at most one slash, no file suffix
        yield from map(_split_long, _stream_hub_dataset(corpus, text_field))
    else:
        raise UserError(f"corpus {corpus}: no such file or folder")


def _hidden(path: Path, root: Path) -> bool:
    """Dot-names under a corpus folder (a partial preparation, editor files) are not corpus."""
    return any(part.startswith(".") for part in path.relative_to(root).parts)


COMPRESSED = {".gz": "gzip", ".xz": "lzma", ".bz2": "bz2"}


def _kind(path: Path) -> str | None:
    """``.txt`` / ``.jsonl`` / ``.json`` / ``.parquet`` of a file name, compression suffix ignored."""
    suffixes = path.suffixes[-2:]
    if suffixes and suffixes[-1] in COMPRESSED:
        suffixes = suffixes[:-1]
    return suffixes[-1] if suffixes and suffixes[-1] in TEXT_SUFFIXES else None


def _open_text(path: Path):
    import importlib

    if path.suffix in COMPRESSED:
        return importlib.import_module(COMPRESSED[path.suffix]).open(path, "rt", encoding="utf-8")
    with open(path, "rb") as f:
        if b"\x00" in f.read(8192):
            raise UserError(f"corpus {path}: binary file, not text (give .txt, .jsonl or .parquet)")
    return open(path, encoding="utf-8")


def _file_documents(path: Path, text_field: str) -> Iterator[Iterator[str]]:
    kind = _kind(path)
    if kind == ".parquet":
        yield from map(_split_long, _parquet_texts(path, text_field))
        return
    try:
        with _open_text(path) as f:
            if kind in (".jsonl", ".json"):
                for i, line in enumerate(f, 1):
                    if line.strip():
                        yield _split_long(_json_text(line, text_field, path, i))
            else:
                yield _utf8_only(_line_blocks(f), path)
    except UnicodeDecodeError:
        raise UserError(f"corpus {path}: not UTF-8 text (convert it to UTF-8)") from None


def _utf8_only(blocks: Iterator[str], path: Path) -> Iterator[str]:
    """``blocks``, with a decoding error (met while the caller reads them) as one line."""
    try:
        yield from blocks
    except UnicodeDecodeError:
        raise UserError(f"corpus {path}: not UTF-8 text (convert it to UTF-8)") from None


PIECE_CHARS = 1 << 20  # longer documents are tokenized in pieces: memory per piece stays bounded


def _split_long(text: str, limit: int = PIECE_CHARS) -> list[str]:
    """``text`` in pieces of at most ``limit`` characters, cut after the last line end or space
    within the limit (anywhere when there is none); short texts are one piece."""
    pieces = []
    while len(text) > limit:
        cut = max(text.rfind("\n", 0, limit), text.rfind(" ", 0, limit)) + 1 or limit
        pieces.append(text[:cut])
        text = text[cut:]
    return pieces + [text]


def _line_blocks(f, block_chars: int = PIECE_CHARS) -> Iterator[str]:
    block, size = [], 0
    for line in iter(lambda: f.readline(block_chars), ""):  # a huge line comes in bounded parts
        block.append(line)
        size += len(line)
        if size >= block_chars:
            yield "".join(block)
            block, size = [], 0
    if block:
        yield "".join(block)


def _json_text(line: str, text_field: str, path: Path, i: int) -> str:
    try:
        text = json.loads(line)[text_field]
    except (json.JSONDecodeError, KeyError, TypeError):
        raise UserError(
            f"corpus {path}:{i}: expected a JSON object with a {text_field!r} field per line"
        ) from None
    return text if isinstance(text, str) else str(text)


def _parquet_texts(path: Path, text_field: str) -> Iterator[str]:
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(path)
    if text_field not in pf.schema_arrow.names:
        raise UserError(
            f"corpus {path}: no column {text_field!r} (columns: {', '.join(pf.schema_arrow.names)}); set data.text_field"
        )
    for batch in pf.iter_batches(batch_size=1024, columns=[text_field]):
        yield from (str(x) for x in batch.column(0).to_pylist() if x)


def _stream_hub_dataset(name: str, text_field: str) -> Iterator[str]:
    try:
        import datasets

        ds = datasets.load_dataset(name, split="train", streaming=True)
        rows = iter(ds)
        first = next(rows)
    except Exception as e:  # noqa: BLE001 - any hub failure becomes one line
        raise UserError(
            f"corpus {name}: not a local path and could not be loaded from the hub ({type(e).__name__}); give a local file or folder"
        ) from None
    if text_field not in first:
        raise UserError(
            f"corpus {name}: no column {text_field!r} (columns: {', '.join(first)}); set data.text_field"
        )
    yield first[text_field]
    for row in rows:
        yield row[text_field]


def is_validation(doc_index: int, val_fraction: float, seed: int) -> bool:
    """Whether document ``doc_index`` is held out: a seeded uniform draw per document < val_fraction.

    Draws come in blocks of 4096 (``default_rng([seed, block])``), so the split of a stream is
    decided document by document without knowing the corpus size.
    """
    block, i = divmod(doc_index, _BLOCK)
    return bool(_block_draws(seed, block)[i] < val_fraction)


_BLOCK = 4096


@functools.lru_cache(maxsize=4)
def _block_draws(seed: int, block: int) -> np.ndarray:
    return np.random.default_rng([seed, block]).random(_BLOCK)


def split_documents(docs: list[str], val_fraction: float, seed: int = 0) -> tuple[list[str], list[str]]:
    """Hold out whole documents (:func:`is_validation`; at least one) for validation, seeded."""
    if len(docs) < 2:  # one long document: hold out its tail
        cut = int(len(docs[0]) * (1 - val_fraction))
        return [docs[0][:cut]], [docs[0][cut:]]
    held = [is_validation(i, val_fraction, seed) for i in range(len(docs))]
    if not any(held):
        held[-1] = True  # as prepare(): the last document moves to validation
    return [d for d, h in zip(docs, held) if not h], [d for d, h in zip(docs, held) if h]
