"""`--suite offline`: three lm-eval tasks built from real labelled data that installed packages ship.

- ``nitp_offline_analogy`` (3-shot, acc): the Google analogy set (gensim ``questions-words.txt``),
  "Athens is to Greece as Baghdad is to" + 4 choices;
- ``nitp_offline_next_word`` (0-shot, acc): a passage's last word, LAMBADA-style, from held-out
  documents of the built-in training corpus (the trainer's split);
- ``nitp_offline_sentiment`` (4-shot, acc): Pang & Lee movie-review polarity sentences (gensim).

The items are drawn deterministically (seed 0), written once as JSON lines into
``cache_dir()/offline-tasks/<content hash>/data/`` together with task YAML files that include the
prompt templates in ``nitp_eval/tasks/offline/``; ``prepare_offline_tasks()`` returns the folder
to give ``TaskManager(include_path=...)``. The tasks then run through lm-eval's own evaluator like
any other task.

Example
-------
>>> from nitp_eval.data.offline_bench import prepare_offline_tasks
>>> tasks_dir = prepare_offline_tasks()       # doctest: +SKIP
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import os
import random
from pathlib import Path

import yaml

from nitp.errors import UserError
from nitp.io import atomic_folder
from nitp.records import cache_dir

from ..tasks import TASKS_DIR

SEED = 0
ANALOGY_TRAIN_PER_SECTION = 2  # few-shot pool
ANALOGY_TEST_PER_SECTION = 40  # 14 sections -> 560 scored items
NEXT_WORD_CONTEXT_WORDS = 50  # words before the target word
NEXT_WORD_MIN_CONTEXT = 20
NEXT_WORD_ITEMS = 400
SENTIMENT_TRAIN_PER_CLASS = 5  # few-shot pool; the other 190 sentences are scored
# the trainer's default split of the built-in corpus (docs/contracts.md)
VALIDATION_SPLIT = {"corpus": "builtin", "val_fraction": 0.05, "seed": 0}


# ----------------------------------------------------------------------------- items
@functools.cache
def gensim_test_data() -> Path:
    """``gensim/test/test_data`` of the installed gensim wheel (found without importing gensim)."""
    spec = importlib.util.find_spec("gensim")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("the offline MTEB suite reads gensim's test data: pip install gensim")
    folder = Path(next(iter(spec.submodule_search_locations))) / "test" / "test_data"
    if not folder.is_dir():
        raise UserError(f"{folder}: gensim is installed without its test data (reinstall the gensim wheel)")
    return folder


def read_pang_lee(path: str | os.PathLike | None = None) -> list[tuple[str, int]]:
    """Pang & Lee sentence polarity lines ``__label__pos|neg text`` -> (text, 1|0), in file order.

    The file is Windows-1252 (em dashes, accented letters), as in the original polarity data.
    """
    rows = []
    for line in (
        Path(path or gensim_test_data() / "pang_lee_polarity.cor").read_text(encoding="cp1252").splitlines()
    ):
        tag, _, text = line.partition(" ")
        if tag in ("__label__neg", "__label__pos") and text.strip():
            rows.append((text.strip(), int(tag == "__label__pos")))
    return rows


def analogy_items(path: str | os.PathLike | None = None) -> dict[str, list[dict]]:
    """Google analogies as 4-way multiple choice: ``{"train": [...], "test": [...]}``.

    Each item ``{"section", "a", "b", "c", "choices", "label"}``: a is to b as c is to
    ``choices[label]``; the 3 distractors are answers of other questions of the same section
    (so they have the right type: capitals, past tenses, ...), never a, b or c.
    """
    path = path or gensim_test_data() / "questions-words.txt"
    sections: dict[str, list[list[str]]] = {}
    current = None
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if line.startswith(":"):
            current = line[1:].strip()
            sections[current] = []
        elif line.strip() and current is not None:
            sections[current].append(line.split())
    rng = random.Random(SEED)
    out: dict[str, list[dict]] = {"train": [], "test": []}
    for section, rows in sections.items():
        pool = sorted({row[3] for row in rows})
        rows = rows[:]
        rng.shuffle(rows)
        n_train, n_test = ANALOGY_TRAIN_PER_SECTION, ANALOGY_TEST_PER_SECTION
        for split, chosen in (("train", rows[:n_train]), ("test", rows[n_train : n_train + n_test])):
            for a, b, c, d in chosen:
                taken = {w.lower() for w in (a, b, c, d)}
                distractors = rng.sample([w for w in pool if w.lower() not in taken], 3)
                choices = [d, *distractors]
                rng.shuffle(choices)
                out[split].append(
                    dict(section=section, a=a, b=b, c=c, choices=choices, label=choices.index(d))
                )
    return out


def next_word_items(documents: list[str] | None = None) -> dict[str, list[dict]]:
    """LAMBADA-style passages from held-out corpus text: ``{"test": [{"text": ...}, ...]}``.

    A passage is up to ``NEXT_WORD_CONTEXT_WORDS`` words followed by the target: the last word of
    a sentence (alphabetic, at least 3 letters, its full stop dropped). Passages do not overlap.
    """
    if documents is None:
        from nitp_train.data import validation_documents

        documents = validation_documents(VALIDATION_SPLIT)
    items = []
    for doc in documents:
        words = doc.split()
        next_free = NEXT_WORD_MIN_CONTEXT
        for i in range(NEXT_WORD_MIN_CONTEXT, len(words)):
            target = words[i][:-1]
            if i < next_free or not words[i].endswith(".") or len(target) < 3 or not target.isalpha():
                continue
            start = max(0, i - NEXT_WORD_CONTEXT_WORDS)
            items.append({"text": " ".join(words[start:i] + [target])})
            next_free = i + NEXT_WORD_CONTEXT_WORDS
    if len(items) > NEXT_WORD_ITEMS:
        items = random.Random(SEED).sample(items, NEXT_WORD_ITEMS)
    return {"test": items}


def sentiment_items(path: str | os.PathLike | None = None) -> dict[str, list[dict]]:
    """Pang & Lee polarity sentences: ``{"train", "test"}`` of ``{"sentence", "label"}`` (1 = positive)."""
    rows = [{"sentence": text, "label": label} for text, label in read_pang_lee(path)]
    random.Random(SEED).shuffle(rows)
    train = [r for r in rows if r["label"] == 0][:SENTIMENT_TRAIN_PER_CLASS] + [
        r for r in rows if r["label"] == 1
    ][:SENTIMENT_TRAIN_PER_CLASS]
    chosen = {id(r) for r in train}
    return {"train": train, "test": [r for r in rows if id(r) not in chosen]}


OFFLINE_TASKS = {
    # task name -> (template file in nitp_eval/tasks/offline/, item builder)
    "nitp_offline_analogy": ("_analogy_template.yaml", analogy_items),
    "nitp_offline_next_word": ("_next_word_template.yaml", next_word_items),
    "nitp_offline_sentiment": ("_sentiment_template.yaml", sentiment_items),
}


# ----------------------------------------------------------------------------- files
def prepare_offline_tasks(root: str | os.PathLike | None = None) -> Path:
    """Write (once) the offline tasks' data and YAML files; return the folder of YAML files.

    The folder is named by a hash of the data, so a change of the item recipe or of the shipped
    data never mixes with an older copy; a complete folder is renamed into place atomically.
    Building the items takes seconds (the corpus is parsed), so the folder is also remembered
    under a fingerprint of its sources (the data files' sizes and times, this module's code).
    """
    base = Path(root) if root is not None else cache_dir() / "offline-tasks"
    remembered = base / "by-source" / _source_fingerprint()
    if remembered.is_file() and (base / remembered.read_text().strip() / "tasks").is_dir():
        return base / remembered.read_text().strip() / "tasks"
    files = {}
    for task, (_, build) in OFFLINE_TASKS.items():
        for split, rows in build().items():
            files[f"{task}_{split}.jsonl"] = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    digest = hashlib.sha256("".join(f"{k}\n{v}" for k, v in sorted(files.items())).encode()).hexdigest()[:12]
    final = base / digest
    if not (final / "tasks").is_dir():
        folder = {f"data/{name}": text for name, text in files.items()}
        for task, (template, _) in OFFLINE_TASKS.items():
            splits = sorted(n[len(task) + 1 : -len(".jsonl")] for n in files if n.startswith(task + "_"))
            config = {
                "include": str(TASKS_DIR / "offline" / template),
                "task": task,
                "dataset_path": "json",
                # final (not temporary) paths: the folder is renamed before anything reads it
                "dataset_kwargs": {
                    "data_files": {s: str(final / "data" / f"{task}_{s}.jsonl") for s in splits}
                },
                "metadata": {"version": 1.0, "data": digest},
            }
            folder[f"tasks/{task}.yaml"] = yaml.safe_dump(config, sort_keys=False)
        write_folder(final, folder)
    remembered.parent.mkdir(parents=True, exist_ok=True)
    remembered.write_text(digest)
    return final / "tasks"


def _source_fingerprint() -> str:
    """Sizes and modification times of the source data, plus the code that turns them into items."""
    import nitp_train.corpus
    import nitp_train.data

    files = (__file__, nitp_train.corpus.__file__, nitp_train.data.__file__)
    parts = [Path(f).read_bytes() for f in files]
    for name in (
        "questions-words.txt",
        "pang_lee_polarity.cor",
        "lee_background.cor",
        "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2",
    ):
        st = (gensim_test_data() / name).stat()
        parts.append(f"{name}:{st.st_size}:{st.st_mtime_ns}".encode())
    return hashlib.sha256(b"\0".join(parts)).hexdigest()[:16]


def write_folder(folder: Path, files: dict[str, str]) -> None:
    """Write ``files`` (path in ``folder`` -> text) as the new folder ``folder``, atomically (readers
    see all of it or nothing); where another process completed the same folder first, its copy stays."""
    try:
        with atomic_folder(folder) as tmp:
            for rel, text in files.items():
                (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
                (tmp / rel).write_text(text, encoding="utf-8")
    except OSError:
        if not folder.is_dir():
            raise
