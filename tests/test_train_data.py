"""Streaming data preparation: formats, document boundaries, worker processes, resume after a kill."""

import gzip
import json

import numpy as np
import pytest

from nitp.errors import UserError
from nitp_train import corpus as corpora
from nitp_train import data
from nitp_train.data import TokenShards, prepare

TEXTS = [f"Document {i}: " + " ".join(f"word{(i * 7 + j) % 50}" for j in range(40 + i)) for i in range(60)]


def _tokenizer_dir(tmp_path_factory):
    """A small BPE trained once on TEXTS and saved, so every preparation encodes the same way."""
    out = tmp_path_factory.mktemp("tok")
    data.train_tokenizer(iter(TEXTS), 300).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    return _tokenizer_dir(tmp_path_factory)


def _cfg(corpus, tok_dir, **kw):
    return {
        "corpus": str(corpus),
        "tokenizer": str(tok_dir),
        "val_fraction": 0.1,
        "seed": 3,
        "seq_len": 8,
        **kw,
    }


def _write_jsonl(path, texts, opener=open):
    with opener(path, "wt", encoding="utf-8") as f:
        for t in texts:
            f.write(json.dumps({"text": t}) + "\n")
    return path


def _expected(tok_dir):
    """Reference packing: every document encoded alone, EOS after each, split per document."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tok_dir)
    out = {"train": ([], []), "val": ([], [])}
    for i, text in enumerate(TEXTS):
        split = "val" if corpora.is_validation(i, 0.1, 3) else "train"
        ids, starts = out[split]
        starts.append(len(ids))
        ids += tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    return out


@pytest.mark.parametrize("workers", [0, 2])
def test_jsonl_prepares_documents_with_boundaries(workers, tmp_path, tok_dir):
    corpus = _write_jsonl(tmp_path / "c.jsonl", TEXTS)
    out = prepare(
        _cfg(corpus, tok_dir, workers=workers, batch_docs=7), tmp_path / "prep", log=lambda *_: None
    )
    shards, want = TokenShards(out), _expected(tok_dir)
    assert shards.meta["format"] == 2 and shards.meta["dtype"] == "uint16"
    for split, arr in (("train", shards.train), ("val", shards.val)):
        assert np.asarray(arr).tolist() == want[split][0]
        assert shards.doc_starts(split).tolist() == want[split][1]
    assert shards.meta["n_docs_val"] == len(want["val"][1]) > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.jsonl", "prep"]  # no partial, no lock left


def test_formats_agree_parquet_gzip_and_folders(tmp_path, tok_dir):
    import pyarrow as pa
    import pyarrow.parquet as pq

    ref = prepare(
        _cfg(_write_jsonl(tmp_path / "a.jsonl", TEXTS), tok_dir), tmp_path / "ref", log=lambda *_: None
    )
    pq.write_table(pa.table({"body": TEXTS}), tmp_path / "a.parquet", row_group_size=7)
    gz = _write_jsonl(tmp_path / "g.jsonl.gz", TEXTS, opener=gzip.open)
    folder = tmp_path / "txt"
    folder.mkdir()
    for i, t in enumerate(TEXTS):  # one document per .txt file, in name order
        (folder / f"{i:03d}.txt").write_text(t)
    for corpus, field in ((tmp_path / "a.parquet", "body"), (gz, "text"), (folder, "text")):
        out = prepare(_cfg(corpus, tok_dir, text_field=field), tmp_path / f"out-{corpus.name}")
        assert np.array_equal(TokenShards(out).train, TokenShards(ref).train), corpus
        assert np.array_equal(TokenShards(out).doc_starts(), TokenShards(ref).doc_starts()), corpus


def test_a_txt_file_in_pieces_is_one_document(tmp_path, tok_dir, monkeypatch):
    text = "\n".join(TEXTS) + "\n"
    (tmp_path / "one.txt").write_text(text)
    monkeypatch.setattr(corpora, "_line_blocks", lambda f, block_chars=500: _small_blocks(f, block_chars))
    pieces = list(corpora.iter_pieces(str(tmp_path / "one.txt")))
    assert len(pieces) > 5 and [p[0] for p in pieces] == [True] + [False] * (len(pieces) - 1)
    assert "".join(p[1] for p in pieces) == text
    out = prepare(_cfg(tmp_path / "one.txt", tok_dir, val_fraction=0.2), tmp_path / "prep")
    shards = TokenShards(out)  # one document: its tail becomes validation, one EOS at its end
    eos = shards.meta["eos_token_id"]
    both = np.concatenate([shards.train, shards.val])
    assert (both == eos).sum() == 1 and both[-1] == eos and shards.meta["n_val"] > 0


def _small_blocks(f, block_chars):
    block = []
    for line in f:
        block.append(line)
        if sum(map(len, block)) >= block_chars:
            yield "".join(block)
            block = []
    if block:
        yield "".join(block)


def test_killed_preparation_resumes_to_the_same_shards(tmp_path, tok_dir, monkeypatch):
    corpus = _write_jsonl(tmp_path / "c.jsonl", TEXTS * 5)
    cfg = _cfg(corpus, tok_dir, workers=0, batch_docs=4)
    ref = prepare(cfg, tmp_path / "ref", log=lambda *_: None)
    monkeypatch.setattr(data, "FLUSH_TOKENS", 50)  # commit progress often
    real_commit, commits = data._commit, []

    def commit_then_die(partial, progress):
        real_commit(partial, progress)
        commits.append(progress["pieces"])
        if len(commits) == 6:
            # what a kill leaves: tokens written after the last commit, then no more
            with open(partial / "train.bin", "ab") as f:
                f.write(b"\x07\x00" * 33)
            raise KeyboardInterrupt

    monkeypatch.setattr(data, "_commit", commit_then_die)
    with pytest.raises(KeyboardInterrupt):
        prepare(cfg, tmp_path / "out", log=lambda *_: None)
    assert (tmp_path / ".out.partial" / "progress.json").is_file() and not (tmp_path / "out").exists()
    monkeypatch.setattr(data, "_commit", real_commit)
    lines = []
    out = prepare(cfg, tmp_path / "out", log=lines.append)
    assert any("resuming" in line for line in lines), lines
    for split in ("train", "val"):
        a, b = TokenShards(out), TokenShards(ref)
        assert np.array_equal(getattr(a, split), getattr(b, split))
        assert np.array_equal(a.doc_starts(split), b.doc_starts(split))
    assert not (tmp_path / ".out.partial").exists()


def test_bad_inputs_leave_nothing(tmp_path, tok_dir):
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    corpus = _write_jsonl(tmp_path / "c.jsonl", TEXTS)
    with pytest.raises(UserError, match="is a file"):
        prepare(_cfg(corpus, tok_dir), a_file)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"text": "fine"}) + "\n{broken\n")
    with pytest.raises(UserError, match="bad.jsonl:2"):
        prepare(_cfg(bad, tok_dir), tmp_path / "p1")
    with pytest.raises(UserError, match="fewer than one sequence"):
        prepare(_cfg(corpus, tok_dir, seq_len=10**6), tmp_path / "p2")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "bad.jsonl", "c.jsonl"]


def test_stale_tmp_of_a_killed_process_is_removed(tmp_path, tok_dir):
    stale = tmp_path / ".prep.999999999.tmp"  # no such process
    (stale / "x").mkdir(parents=True)
    prepare(_cfg(_write_jsonl(tmp_path / "c.jsonl", TEXTS), tok_dir), tmp_path / "prep")
    assert not stale.exists()


def test_split_of_documents_matches_prepare():
    docs = [f"doc {i}" for i in range(200)]
    train, val = corpora.split_documents(docs, 0.1, 3)
    assert [d for d in docs if d in val] == [docs[i] for i in range(200) if corpora.is_validation(i, 0.1, 3)]
    assert 5 <= len(val) <= 40 and len(train) + len(val) == 200


def test_a_long_valid_folder_name_and_a_symlink_share_one_lock(tmp_path, tok_dir, monkeypatch):
    """The lock and partial folder beside a 250-byte name stay within NAME_MAX; the lock is taken
    on the resolved folder, so a symlink to it waits on the same lock as the folder's own path."""
    import fcntl

    corpus = _write_jsonl(tmp_path / "c.jsonl", TEXTS)
    cfg = _cfg(corpus, tok_dir, workers=0)
    real = tmp_path / ("p" * 250)
    (tmp_path / "link").symlink_to(real, target_is_directory=True)  # dangling until prepared
    locks, flock = [], fcntl.flock
    monkeypatch.setattr(fcntl, "flock", lambda f, op: locks.append(f.name) or flock(f, op))
    prepare(cfg, tmp_path / "link", log=lambda *_: None)
    assert (real / "train.bin").is_file() and (tmp_path / "link").is_symlink()
    (real / "meta.json").rename(real / "meta.moved")  # not reusable: the second call prepares again
    prepare(cfg, real, log=lambda *_: None)
    assert locks == [str(tmp_path / data.hidden_name(real.name, ".lock"))] * 2
    assert len(locks[0].rsplit("/", 1)[1].encode()) <= 255
