"""Security faults: every value nitp-study writes into a shell script is one word or refused in one
line, and the LCBench sandbox holds against the escapes a generated program would try.

Each sandbox escape runs twice where that is harmless: inside the sandbox it must fail, and with
``NITP_UNSAFE_NO_SANDBOX=1`` (the control) it must succeed, so the probe is known to detect it.
A probe program exits 0 when the escape failed, so ``passes(probe)`` means "the sandbox held".
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest
import yaml

from nitp import shell
from nitp.errors import UserError
from nitp_eval.tasks.lcbench import utils as lcbench
from reports.study import emit_commands, emit_slurm, load_study

ROOT = Path(__file__).resolve().parent.parent


# ----------------------------------------------------------------------------- shell quoting
@pytest.mark.parametrize(
    "value", ["a\nb", "a\rb", "a\tb", "a\x1b[2Jb", "a\x00b", "a\x85b", "a\u2028b", "a\udcffb"]
)
def test_shell_refuses_control_characters_in_one_line(value):
    with pytest.raises(UserError) as e:
        shell.quote(value, "--out")
    message = str(e.value)
    assert message.startswith("--out '") and "\n" not in message and "rename it" in message


def test_shell_words_round_trip_through_bash():
    values = ["a b", "it's", '"q"', "$(touch x)", "`id`", "a;b", "*", "~", "-n", "", "ü é", "%A", "\\"]
    line = shell.join(values)
    assert shlex.split(line) == values
    run = subprocess.run(["bash", "-c", f'printf "%s\\n" {line}'], capture_output=True, text=True, check=True)
    assert run.stdout.split("\n")[:-1] == values
    with pytest.raises(UserError, match="backslash"):
        shell.sbatch_quote("a\\b", "--out")


# ----------------------------------------------------------------------------- nitp-study --emit
def write_study(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "tiny.yaml"
    path.write_text(yaml.safe_dump({"name": "tiny", "config": "tiny-nitp", "axes": {"seed": [0, 1]}}))
    return path


def study_cli(argv: list[str], capsys, monkeypatch) -> tuple[int, str]:
    """``nitp-study ARGV`` in this process (the real CLI boundary): exit code and stderr."""
    from reports import study_cli as cli

    monkeypatch.setattr(sys, "argv", ["nitp-study", *map(str, argv)])
    with pytest.raises(SystemExit) as e:
        cli.main()
    return e.value.code, capsys.readouterr().err


@pytest.mark.parametrize("emit", ["slurm", "commands"])
def test_newline_in_out_is_refused_in_one_line(tmp_path, capsys, monkeypatch, emit):
    study = write_study(tmp_path / "s")
    out = tmp_path / f"out\ntouch {tmp_path}/PWNED\n#"
    code, err = study_cli([study, "--out", out, "--emit", emit], capsys, monkeypatch)
    assert code == 2
    assert err.strip().splitlines() == [
        f"error: --out {str(out)!r} contains a control character ('\\n'); rename it without newlines, "
        "tabs or other control characters before writing it into a shell script"
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]  # nothing half-written


@pytest.mark.parametrize("emit", ["slurm", "commands"])
def test_newline_in_study_path_is_refused_in_one_line(tmp_path, capsys, monkeypatch, emit):
    study = write_study(tmp_path / "st\rud\nies")
    code, err = study_cli([study, "--out", tmp_path / "out", "--emit", emit], capsys, monkeypatch)
    assert code == 2 and "Traceback" not in err
    (line,) = err.strip().splitlines()
    assert line.startswith(f"error: study file {str(study.resolve())!r} contains a control character ('\\r')")
    assert not (tmp_path / "out").exists()


def hostile_paths(tmp_path: Path) -> tuple[Path, Path]:
    """A study and an --out whose names hold spaces, quotes, $(...), backquotes, ; and %."""
    study = write_study(tmp_path / "my study's $(touch PWNED) `touch PWNED2`")
    return study, tmp_path / "runs; touch PWNED3" / "o'ut $(touch PWNED4) %j"


def no_marker(folder: Path) -> bool:
    return not list(folder.rglob("PWNED*"))


def test_emit_commands_words_equal_the_hostile_values(tmp_path):
    study, out = hostile_paths(tmp_path)
    spec = load_study(study)
    lines = emit_commands(spec, out).read_text().splitlines()
    expected = [str(study.resolve()), "--out", str(out.resolve())]
    for line, cell in zip(lines, ["s0", "s1", None]):
        words = expected + (["--cell", cell] if cell else [])
        assert shlex.split(line) == ["nitp-study", *words]
        # bash itself parses the line: a function stands in for the command and prints its words
        run = subprocess.run(
            ["bash", "-c", f'nitp-study() {{ printf "%s\\n" "$@"; }}\n{line}'],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            check=True,
        )
        assert run.stdout.split("\n")[:-1] == words
    assert no_marker(tmp_path)


def test_emit_slurm_is_valid_bash_whose_words_equal_the_hostile_values(tmp_path):
    study, out = hostile_paths(tmp_path)
    script = emit_slurm(load_study(study), out, gpus_per_node=2)
    text = script.read_text()
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    header = text.split("\nset -eu")[0].splitlines()
    assert all(line.startswith("#") for line in header)  # no value broke out of a comment
    (output,) = [line for line in header if line.startswith("#SBATCH --output=")]
    expected_log = f"{str(out.resolve()).replace('%', '%%')}/logs/slurm-%A_%a.out"
    assert shlex.split(output[len("#SBATCH ") :]) == [f"--output={expected_log}"]  # as sbatch reads it
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    run = subprocess.run(["bash", str(script)], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert run.returncode != 0 and "SLURM_ARRAY_TASK_ID is not set" in run.stderr
    # with SLURM's variables (fake srun/scontrol), torchrun gets the values word for word
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text("#!/bin/bash\necho node-1\n")
    (bin_dir / "srun").write_text('#!/bin/bash\nprintf "%s\\n" "$@"\n')
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    env.update(
        PATH=f"{bin_dir}:{env['PATH']}",
        SLURM_ARRAY_TASK_ID="1",
        SLURM_JOB_NODELIST="node-1",
        SLURM_NNODES="1",
    )
    run = subprocess.run(["bash", str(script)], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    words = run.stdout.split("\n")[:-1]
    assert words[words.index("reports.study_cli") + 1 :] == [
        str(study.resolve()),
        "--out",
        str(out.resolve()),
        "--cell",
        "s1",
    ]
    assert no_marker(tmp_path)


# ----------------------------------------------------------------------------- the LCBench sandbox
def _sandbox_refused() -> str | None:
    try:
        lcbench.check_sandbox()
    except UserError as e:
        return str(e)
    return None


needs_sandbox = pytest.mark.skipif(
    sys.platform != "linux" or os.environ.get(lcbench.NO_SANDBOX_ENV) == "1",
    reason="the LCBench sandbox needs Linux namespaces",
)


@pytest.fixture(scope="module")
def sandbox():
    """The sandbox's ``passes``; the module's escape tests skip where the machine refuses it."""
    refused = _sandbox_refused()
    if refused:
        pytest.skip(refused)
    return lcbench.passes


def unsandboxed(program: str, monkeypatch, **kw) -> bool:
    """``passes`` with the opt-out: the control run, where each escape must work."""
    with monkeypatch.context() as m:
        m.setenv(lcbench.NO_SANDBOX_ENV, "1")
        return lcbench.passes(program, **kw)


def probe(code: str) -> str:
    return textwrap.dedent(code).strip() + "\n"


def survivors(token: str) -> list[int]:
    """Host processes whose command line holds ``token`` (the sandboxed program's text)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if token.encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                found.append(int(pid))
        except OSError:
            pass
    return found


@needs_sandbox
def test_parent_environment_is_out_of_reach(sandbox, monkeypatch):
    secret = f"nitp-secret-{uuid.uuid4().hex}"
    holder = subprocess.Popen(["sleep", "60"], env={"NITP_SECRET": secret})
    try:
        program = probe(f"""
            import os, sys
            secret = {secret!r}.encode()
            pids = [p for p in os.listdir("/proc") if p.isdigit()]
            pids += ["self", "1", str(os.getppid()), "{holder.pid}", "{os.getpid()}"]
            for pid in pids:
                try:
                    with open(f"/proc/{{pid}}/environ", "rb") as f:
                        if secret in f.read():
                            sys.exit(1)
                except OSError:
                    pass
            sys.exit(1 if secret.decode() in repr(dict(os.environ)) else 0)
        """)
        assert sandbox(program)
        assert not unsandboxed(program, monkeypatch)  # control: the secret is read without the sandbox
    finally:
        holder.kill()
        holder.wait()


@needs_sandbox
def test_writes_outside_the_private_folder_fail(sandbox, monkeypatch, tmp_path):
    tag = uuid.uuid4().hex
    outside = [
        tmp_path / f"escape-{tag}",
        ROOT / f".escape-{tag}",
        Path(sys.prefix) / f"escape-{tag}",
        Path("/") / f"escape-{tag}",
        Path("/etc") / f"escape-{tag}",
        Path("/dev") / f"escape-{tag}",
    ]
    program = probe(f"""
        import os, sys
        with open("own-file", "w") as f:  # the private working folder is writable
            f.write("ok")
        assert open("own-file").read() == "ok" and os.getcwd() == "/tmp"
        open("/tmp/private-{tag}", "w").close()  # /tmp is the private folder too
        wrote = []
        for path in {[str(p) for p in outside]!r}:
            try:
                with open(path, "w") as f:
                    f.write("x")
                wrote.append(path)
            except OSError:
                pass
        sys.exit(1 if wrote else 0)
    """)
    assert sandbox(program)
    assert not [p for p in [*outside, Path(f"/tmp/private-{tag}")] if p.exists()]
    control = probe(f"""
        with open({str(tmp_path / "control")!r}, "w") as f:
            f.write("x")
        raise SystemExit(1)
    """)
    assert not unsandboxed(control, monkeypatch) and (tmp_path / "control").exists()


@needs_sandbox
def test_network_is_out_of_reach(sandbox, monkeypatch):
    tcp = socket.create_server(("127.0.0.1", 0))
    abstract = socket.socket(socket.AF_UNIX)
    name = f"\0nitp-test-{uuid.uuid4().hex}"
    abstract.bind(name)
    abstract.listen()
    try:
        program = probe(f"""
            import socket, sys
            reached = []
            try:
                socket.create_connection(("127.0.0.1", {tcp.getsockname()[1]}), timeout=3).close()
                reached.append("tcp")
            except OSError:
                pass
            s = socket.socket(socket.AF_UNIX)
            try:
                s.connect({name!r})
                reached.append("unix")
            except OSError:
                pass
            sys.exit(1 if reached else 0)
        """)
        assert sandbox(program)
        assert not unsandboxed(program, monkeypatch)  # control: both listeners answer without it
    finally:
        tcp.close()
        abstract.close()


@needs_sandbox
def test_setsid_and_double_forked_children_die_with_the_sandbox(sandbox, monkeypatch):
    token = uuid.uuid4().hex
    program = probe(f"""
        import os, time
        # {token}
        if os.fork() == 0:
            os.setsid()
            if os.fork() == 0:
                time.sleep(60)
            os._exit(0)
        os.wait()
    """)
    assert sandbox(program)
    assert survivors(token) == []
    try:  # control: the old process-group kill leaves the setsid grandchild alive
        assert unsandboxed(program, monkeypatch) and survivors(token)
    finally:
        for pid in survivors(token):
            os.kill(pid, signal.SIGKILL)


@needs_sandbox
def test_killing_the_evaluating_process_ends_the_sandbox(sandbox, tmp_path):
    """SIGKILL of the process that runs ``passes`` (nitp-eval): every sandbox process dies too."""
    token = uuid.uuid4().hex
    program = f"import os, time\n# {token}\nif os.fork() == 0:\n    os.setsid()\ntime.sleep(60)\n"
    runner = tmp_path / "runner.py"
    runner.write_text(
        f"from nitp_eval.tasks.lcbench.utils import passes\npasses({program!r}, timeout_s=60)\n"
    )
    # TMPDIR: the killed runner cannot remove its temporary folder; keep it in tmp_path
    outer = subprocess.Popen(
        [sys.executable, str(runner)], cwd=ROOT, env={**os.environ, "TMPDIR": str(tmp_path)}
    )
    try:
        deadline = time.monotonic() + 30
        # launcher, holder, init (their command lines carry the program), the program, its child
        while len(survivors(token)) < 5 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(survivors(token)) == 5
    finally:
        outer.kill()
        outer.wait()
    deadline = time.monotonic() + 10  # the parent-death signals arrive at once; allow a loaded machine
    while survivors(token) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert survivors(token) == []


@needs_sandbox
def test_fork_bomb_is_capped_and_cleaned_up(sandbox):
    token = uuid.uuid4().hex
    program = probe(f"""
        import os, sys, time
        # {token}
        n = 0
        try:
            while n < 1000:
                if os.fork() == 0:
                    time.sleep(60)
                    os._exit(0)
                n += 1
        except BlockingIOError:
            sys.exit(0 if n <= {lcbench.MAX_PROCESSES + 16} else 1)
        sys.exit(1)
    """)
    assert sandbox(program, timeout_s=30)
    assert survivors(token) == []


@needs_sandbox
def test_the_program_sees_only_its_own_processes_and_has_no_privilege(sandbox):
    program = probe("""
        import os, sys
        pids = sorted(p for p in os.listdir("/proc") if p.isdigit())
        assert pids == ["1", str(os.getpid())], pids  # init and itself
        assert os.getppid() == 1
        status = dict(line.split(":", 1) for line in open("/proc/self/status"))
        assert all(int(i) != 0 for i in status["Uid"].split() + status["Gid"].split()), status["Uid"]
        caps = [int(status[k], 16) for k in ("CapEff", "CapPrm", "CapInh", "CapBnd", "CapAmb")]
        assert caps == [0] * 5 and status["NoNewPrivs"].strip() == "1", caps
        assert sys.flags.isolated and os.environ.keys() <= {"PATH", "LC_CTYPE"}  # LC_CTYPE: PEP 538
    """)
    assert sandbox(program)


@needs_sandbox
def test_host_files_signals_and_proc_root_are_out_of_reach(sandbox, monkeypatch, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("nitp-secret")
    secret.chmod(0o644)
    got = []
    previous = signal.signal(signal.SIGUSR1, lambda *_: got.append(1))
    try:
        program = probe(f"""
            import os, signal, sys
            reached = []
            for path in [{str(secret)!r}, "/proc/1/root" + {str(secret)!r}, {str(ROOT / "pyproject.toml")!r}]:
                try:
                    open(path).read()
                    reached.append(path)
                except OSError:
                    pass
            try:
                os.kill({os.getpid()}, signal.SIGUSR1)  # the process that runs the sandbox
                reached.append("signal")
            except OSError:
                pass
            sys.exit(1 if reached else 0)
        """)
        assert sandbox(program) and got == []
        assert not unsandboxed(program, monkeypatch) and got == [1]  # control
    finally:
        signal.signal(signal.SIGUSR1, previous)


@needs_sandbox
def test_scoring_is_unchanged_inside_the_sandbox(sandbox):
    doc = {"text": "Return x plus 3.", "test_list": ["assert addK(1) == 4", "assert addK(0) == 3"]}
    assert lcbench.process_results(doc, ["'def addK(x):\n    return x + 3'\n"]) == {"pass_at_1": 1.0}
    assert lcbench.process_results(doc, ["'def addK(x):\n    return x'\n"]) == {"pass_at_1": 0.0}
    assert not sandbox("import time\ntime.sleep(30)", timeout_s=0.5)  # the time limit holds
    assert not sandbox("x = bytearray(2 << 30)")  # and the memory limit
    # a program that fakes the sandbox's own failure line only fails (its stderr goes nowhere)
    assert not sandbox(
        f"import sys\nsys.stderr.write({lcbench.MARK!r} + 'fake')\nsys.exit({lcbench.SETUP_FAILED})"
    )


# ----------------------------------------------------------------------------- refusal and opt-out
REFUSED_SNIPPET = """
from nitp.errors import user_errors
from nitp_eval.tasks.lcbench import utils
with user_errors():
    utils.check_sandbox()
    assert utils.passes("assert 1 + 1 == 2") and not utils.passes("assert 1 + 1 == 3")
"""


@needs_sandbox
@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs util-linux unshare")
def test_a_machine_without_namespaces_is_refused_in_one_line_unless_opted_out():
    # inside a user namespace whose limit of nested user namespaces is 0, as on a locked-down host
    no_userns = ["unshare", "--user", "--map-root-user", "sh", "-c"]
    limit = 'echo 0 > /proc/sys/user/max_user_namespaces && exec "$@"'
    cmd = [*no_userns, limit, "sh", sys.executable, "-c", REFUSED_SNIPPET]
    env = {k: v for k, v in os.environ.items() if k != lcbench.NO_SANDBOX_ENV}
    run = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    if "unshare:" in run.stderr:
        pytest.skip(f"unshare refused here: {run.stderr.strip()}")
    assert run.returncode == 2, run.stderr
    (line,) = run.stderr.strip().splitlines()
    assert line.startswith("error: LCBench needs a sandbox for the model's code and this machine refuses it")
    assert "max_user_namespaces" in line and f"{lcbench.NO_SANDBOX_ENV}=1" in line
    run = subprocess.run(
        cmd, capture_output=True, text=True, env={**env, lcbench.NO_SANDBOX_ENV: "1"}, cwd=ROOT
    )
    assert run.returncode == 0, run.stderr
    assert run.stderr.startswith(f"note: {lcbench.NO_SANDBOX_ENV}=1: LCBench runs the model's code without")
