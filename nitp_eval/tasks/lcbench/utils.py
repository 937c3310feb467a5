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


MEMORY_LIMIT_BYTES = 1 << 30  # address space of the test program
CPU_LIMIT_S = 10  # CPU seconds of the test program (a busy loop stops even when wall time is slow)
MAX_PROCESSES = 64  # RLIMIT_NPROC: a fork bomb stops here (counts the user's processes)
MAX_FILE_BYTES = 16 << 20  # largest file the program may write


# Runs first in the child (before the program, with no threads to race, unlike preexec_fn):
# memory, CPU time, file size, no core files and, for an unprivileged user, a cap on processes.
# Hard limits equal soft ones, so the program cannot raise them again (root aside).
_SANDBOX = """
import os, resource, sys
mem, cpu, fsize, nproc = (int(a) for a in sys.argv[1:5])
for lim, value in ((resource.RLIMIT_AS, mem), (resource.RLIMIT_CPU, cpu), (resource.RLIMIT_FSIZE, fsize),
                   (resource.RLIMIT_CORE, 0)):
    resource.setrlimit(lim, (value, value))
if os.geteuid() != 0:
    resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))
program = sys.argv[5]
del os, resource, sys, mem, cpu, fsize, nproc, lim, value
exec(compile(program, "<program>", "exec"), {"__name__": "__main__"})
"""


def _process_cap() -> int:
    """RLIMIT_NPROC for the program: this user's processes now plus ``MAX_PROCESSES``."""
    uid = os.getuid()
    try:
        mine = sum(1 for p in os.listdir("/proc") if p.isdigit() and os.stat(f"/proc/{p}").st_uid == uid)
    except OSError:
        mine = 0
    return mine + MAX_PROCESSES


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the program's whole process group (its children and grandchildren too)."""
    import signal

    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def passes(
    program: str,
    timeout_s: float = TIMEOUT_S,
    memory_bytes: int = MEMORY_LIMIT_BYTES,
    cpu_s: int = CPU_LIMIT_S,
) -> bool:
    """Run ``program`` in an isolated Python subprocess; True when it exits with status 0.

    The program runs in a new session (its own process group) in an empty temporary folder,
    with an empty environment and resource limits (``memory_bytes`` of address space, ``cpu_s``
    CPU seconds, 16 MiB files, no core dumps); at ``timeout_s`` wall-clock seconds, or when it
    ends, the whole group is killed, so no forked child outlives the check.

    >>> passes("assert 1 + 1 == 2"), passes("assert 1 + 1 == 3")             # doctest: +SKIP
    (True, False)
    """
    limits = (memory_bytes, cpu_s, MAX_FILE_BYTES, _process_cap())
    with tempfile.TemporaryDirectory(prefix="nitp-lcbench-") as work:
        proc = subprocess.Popen(
            [sys.executable, "-I", "-c", _SANDBOX, *map(str, limits), program],
            cwd=work,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env={"PATH": os.environ.get("PATH", "")},
            start_new_session=True,
        )
        try:
            code = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            code = None
        finally:
            _kill_group(proc)  # also a finished program's leftover children
            proc.wait()
    return code == 0


def process_results(doc, results):
    """pass@1 of one greedy generation: the extracted code plus the problem's asserts pass."""
    code = extract_code(results[0])
    # LeetCode-style answers sometimes wrap the function in `class Solution`; call it through an instance.
    tests = tests_text(doc)
    if "class Solution" in code:
        tests = re.sub(r"assert\s+(\w+)\(", r"assert Solution().\1(", tests)
    return {"pass_at_1": float(passes(code + "\n\n" + tests))}
