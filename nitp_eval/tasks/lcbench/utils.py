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

The process runs in a sandbox (``sandbox.py``). Where the machine refuses its namespaces, the task
fails before generating with one line (:func:`check_sandbox`), unless the user opts out with
``NITP_UNSAFE_NO_SANDBOX=1``: then the program runs unisolated, with the resource limits only.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import signal
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
    """The scored problems: all rows but the first ``N_PROMPT_ROWS``.

    lm-eval calls this when it builds the task, from the hub and from a mirror alike: the
    sandbox is checked here, before the model generates anything.
    """
    check_sandbox()
    return dataset.select(range(N_PROMPT_ROWS, len(dataset)))


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
NO_SANDBOX_ENV = "NITP_UNSAFE_NO_SANDBOX"  # "1": run the program without the sandbox (limits only)
SANDBOX = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sandbox.py")
NOBODY = 65534  # the program's uid inside the sandbox when nitp runs as root (sandbox.NOBODY)
SETUP_FAILED, MARK = 125, "nitp-sandbox: "  # sandbox.SETUP_FAILED, sandbox.MARK


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


def _process_cap(uid: int) -> int:
    """RLIMIT_NPROC for the program: ``uid``'s processes now plus ``MAX_PROCESSES``.

    (Kernels before 5.14 count a user's processes host-wide, newer ones per user namespace.)
    """
    try:
        mine = sum(1 for p in os.listdir("/proc") if p.isdigit() and os.stat(f"/proc/{p}").st_uid == uid)
    except OSError:
        mine = 0
    return mine + MAX_PROCESSES


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the program's whole process group (its children and grandchildren too)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


def sandbox_disabled() -> bool:
    """Whether the user opted out of the sandbox (``NITP_UNSAFE_NO_SANDBOX=1``)."""
    return os.environ.get(NO_SANDBOX_ENV, "") not in ("", "0")


def _python_dirs() -> list[str]:
    """The Python installation that runs the program (prefixes as given and resolved), for the sandbox."""
    dirs = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}
    return sorted(dirs | {os.path.realpath(d) for d in dirs})


def _sandbox_unavailable(reason: str):
    from nitp.errors import UserError

    return UserError(
        f"LCBench needs a sandbox for the model's code and this machine refuses it ({reason}); run it where "
        f"Linux user namespaces are allowed (unshare), or set {NO_SANDBOX_ENV}=1 to run the code with "
        "resource limits only, unisolated"
    )


def _run(argv: list[str], cwd: str, timeout_s: float, capture: bool) -> tuple[int | None, bytes]:
    """Run ``argv`` in a new session; its exit code (None past ``timeout_s``) and stderr when
    ``capture``. The whole process group is killed at the end, so no forked child outlives it."""
    proc = subprocess.Popen(
        argv,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE if capture else subprocess.DEVNULL,
        env={"PATH": os.environ.get("PATH", "")},
        start_new_session=True,
    )
    err = b""
    try:
        err = proc.communicate(timeout=timeout_s)[1] or b""
        code = proc.returncode
    except subprocess.TimeoutExpired:
        code = None
    finally:
        _kill_group(proc)  # also a finished program's leftover children
        proc.communicate()
    return code, err


def passes(
    program: str,
    timeout_s: float = TIMEOUT_S,
    memory_bytes: int = MEMORY_LIMIT_BYTES,
    cpu_s: int = CPU_LIMIT_S,
) -> bool:
    """Run ``program`` in a sandboxed Python process (``sandbox.py``, see the module docstring);
    True when it exits with status 0.

    Limits: ``memory_bytes`` of address space, ``cpu_s`` CPU seconds, 16 MiB files, no core
    dumps, ``MAX_PROCESSES`` processes, an empty environment; at ``timeout_s`` wall-clock seconds,
    or when it ends, every process of the sandbox is killed. With ``NITP_UNSAFE_NO_SANDBOX=1``
    the same limits (the process cap only for a non-root user) apply to an unisolated process in
    an empty temporary folder and its own session, whose process group is killed at the end.

    Raises a one-line ``UserError`` when the machine refuses the sandbox.

    >>> passes("assert 1 + 1 == 2"), passes("assert 1 + 1 == 3")             # doctest: +SKIP
    (True, False)
    """
    unsafe = sandbox_disabled()
    uid = os.geteuid() if unsafe or os.geteuid() != 0 else NOBODY
    limits = (memory_bytes, cpu_s, MAX_FILE_BYTES, _process_cap(uid))
    command = [sys.executable, "-I", "-c", _SANDBOX, *map(str, limits), program]
    with tempfile.TemporaryDirectory(prefix="nitp-lcbench-") as work:
        if unsafe:
            return _run(command, work, timeout_s, capture=False)[0] == 0
        if sys.platform != "linux":
            raise _sandbox_unavailable(f"namespaces are Linux-only, this is {sys.platform}")
        launcher = [sys.executable, "-I", "-S", SANDBOX, work, json.dumps(_python_dirs())]
        code, err = _run(launcher + command, "/", timeout_s, capture=True)
    text = err.decode(errors="replace")
    if code == SETUP_FAILED and text.startswith(MARK):
        raise _sandbox_unavailable(text[len(MARK) :].strip().splitlines()[0])
    return code == 0


@functools.lru_cache(maxsize=1)
def check_sandbox() -> None:
    """Refuse now (one line) when the sandbox cannot run here, unless the user opted out.

    Checked once per process, before any generation (:func:`drop_prompt_rows` calls it).
    """
    if sandbox_disabled():
        print(
            f"note: {NO_SANDBOX_ENV}=1: LCBench runs the model's code without the sandbox (resource limits only)",
            file=sys.stderr,
        )
        return
    if not passes("pass"):
        raise _sandbox_unavailable("a trivial program failed inside it")


def process_results(doc, results):
    """pass@1 of one greedy generation: the extracted code plus the problem's asserts pass."""
    code = extract_code(results[0])
    # LeetCode-style answers sometimes wrap the function in `class Solution`; call it through an instance.
    tests = "\n".join(doc["test_list"])
    if "class Solution" in code:
        tests = re.sub(r"assert\s+(\w+)\(", r"assert Solution().\1(", tests)
    return {"pass_at_1": float(passes(code + "\n\n" + tests))}
