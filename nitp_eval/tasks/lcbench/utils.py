"""LCBench (LCBench2023, OpenCompass): LeetCode weekly-contest problems, English and Chinese.

Not on the Hugging Face hub: OpenCompass ships it as ``LCBench2023/LCBench2023.jsonl`` (English)
and ``LCBench2023/LCBench2023_cn.jsonl`` (Chinese) inside ``LCBench2023.zip``. Each line::

    {"text": problem statement, "test_list": ["assert f(...) == ...", ...],
     "Contest id": ..., "Difficulty": ...}

As in OpenCompass's loader, the first 5 rows are reserved for prompting and the other 576 are
scored. The model writes a Python function between ``[BEGIN]`` and ``[DONE]``; the function and
the problem's asserts run in a separate Python process with a time limit, and a problem counts as
solved (pass@1 = 1) when the process exits cleanly. Running model-written code is only allowed
when the caller confirms it (lm-eval's ``confirm_run_unsafe_code``; ``--allow-unsafe-code``).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile

ZIP_URL = "http://opencompass.oss-cn-shanghai.aliyuncs.com/datasets/data/LCBench2023.zip"
FILES = {"en": "LCBench2023/LCBench2023.jsonl", "cn": "LCBench2023/LCBench2023_cn.jsonl"}
N_PROMPT_ROWS = 5  # rows OpenCompass keeps out of scoring
TIMEOUT_S = 10.0  # per problem, for the whole test program


def load_lcbench(source_config: str, **_):
    """DatasetDict {"test": all rows} of one language, read from OpenCompass's zip archive."""
    import datasets

    root = datasets.DownloadManager().download_and_extract(ZIP_URL)
    return datasets.load_dataset("json", data_files={"test": os.path.join(root, FILES[source_config])})


def drop_prompt_rows(dataset):
    """The scored problems: all rows but the first ``N_PROMPT_ROWS``."""
    return dataset.select(range(N_PROMPT_ROWS, len(dataset)))


def tests_text(doc) -> str:
    return "\n".join(doc["test_list"])


def extract_code(generation: str) -> str:
    """The program between ``[BEGIN]`` and ``[DONE]`` (markers optional, quotes stripped)."""
    code = generation
    fence = re.search(r"```(?:python)?\n(.*?)```", code, re.S)
    if fence:
        code = fence.group(1)
    code = re.split(r"\[DONE\]", code)[0]
    code = code.split("[BEGIN]")[-1].strip()
    if len(code) >= 2 and code[0] == code[-1] == "'":
        code = code[1:-1]
    return code


def passes(program: str, timeout_s: float = TIMEOUT_S) -> bool:
    """Run ``program`` in an isolated Python subprocess; True when it exits with status 0."""
    with tempfile.TemporaryDirectory(prefix="nitp-lcbench-") as work:
        try:
            done = subprocess.run(
                [sys.executable, "-I", "-c", program],
                cwd=work,
                capture_output=True,
                timeout=timeout_s,
                env={"PATH": os.environ.get("PATH", "")},
            )
        except subprocess.TimeoutExpired:
            return False
    return done.returncode == 0


def process_results(doc, results):
    """pass@1 of one greedy generation: the extracted code plus the problem's asserts pass."""
    code = extract_code(results[0])
    # LeetCode-style answers sometimes wrap the function in `class Solution`; call it through an instance.
    tests = tests_text(doc)
    if "class Solution" in code:
        tests = re.sub(r"assert\s+(\w+)\(", r"assert Solution().\1(", tests)
    return {"pass_at_1": float(passes(code + "\n\n" + tests))}
