"""The LCBench sandbox: one program in new user, PID, mount, network, IPC and UTS namespaces.

Run by :func:`utils.passes` as ``python -I -S sandbox.py ROOT READ_ONLY PYTHON ARG...`` (standard
library only; ``ROOT`` an empty folder to mount the sandbox's root on, ``READ_ONLY`` a JSON list of
host folders to show read-only besides the system's: the Python installation). Four processes::

    launcher   outside every new namespace; writes the holder's user-id maps, returns its status
    └ holder   unshares the namespaces; root of the new user namespace only
      └ init   PID 1 of the new PID namespace: builds the root, pivots into it, reaps, and
        │      returns the program's status; when it ends the kernel kills every process left
        │      in the namespace (setsid and double-forked children included)
        └ program  uid/gid 65534 (nobody) when run by root, else the caller's own ids; no
                   capabilities (bounding set empty), no_new_privs; execs ``PYTHON ARG...`` in /tmp

The program's file system: a read-only tmpfs root holding read-only binds of /usr, /etc, the
/bin, /lib... links and the Python installation (its prefixes), /dev/null, zero, full, random and
urandom, a fresh /proc (only the sandbox's processes), and a private writable tmpfs at /tmp
(``TMP_BYTES``, its working folder). Nothing else of the host (home folders, the repository,
other processes, sockets) is in view. The network namespace has only a loopback that is down.
Every process dies with its parent (PR_SET_PDEATHSIG), so killing the launcher's group ends all.

When a namespace, a mount or the id maps are refused, the failing step exits with
``SETUP_FAILED`` and one stderr line starting with ``MARK``; the program's own output goes to
/dev/null.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import platform
import re
import signal
import sys

MARK = "nitp-sandbox: "
SETUP_FAILED = 125
NOBODY = 65534  # the kernel's overflow id; the program's ids when the caller is root
TMP_BYTES = 64 << 20  # the program's writable space (a tmpfs: RAM, gone with the sandbox)

CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC = 0x00020000, 0x04000000, 0x08000000
CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x10000000, 0x20000000, 0x40000000
NAMESPACES = CLONE_NEWUSER | CLONE_NEWPID | CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT = 1, 2, 4, 8, 32
MS_NOATIME, MS_NODIRATIME, MS_BIND, MS_REC, MS_PRIVATE, MS_RELATIME = (
    1024,
    2048,
    4096,
    16384,
    1 << 18,
    1 << 21,
)
MNT_DETACH = 2
PR_SET_PDEATHSIG, PR_CAPBSET_DROP, PR_SET_NO_NEW_PRIVS = 1, 24, 38
SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41, "ppc64le": 203, "s390x": 217, "riscv64": 41}
# statvfs flag -> mount flag, kept on a read-only remount (a user namespace may not clear them)
KEPT_FLAGS = {
    os.ST_NOSUID: MS_NOSUID,
    os.ST_NODEV: MS_NODEV,
    os.ST_NOEXEC: MS_NOEXEC,
    os.ST_NOATIME: MS_NOATIME,
    os.ST_NODIRATIME: MS_NODIRATIME,
    os.ST_RELATIME: MS_RELATIME,
}
UNSHARE_HINTS = {
    errno.EPERM: "not permitted (user namespaces disabled: kernel.unprivileged_userns_clone, "
    "an AppArmor policy or a container's seccomp filter)",
    errno.ENOSPC: "the limit user.max_user_namespaces is reached (or 0)",
    errno.EINVAL: "this kernel lacks one of them",
}
SYSTEM_DIRS = ("/usr", "/etc", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
DEVICES = ("null", "zero", "full", "random", "urandom")

_libc = ctypes.CDLL(None, use_errno=True)


class SetupError(Exception):
    """A step of building the sandbox was refused (its name and the reason)."""


def _call(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise SetupError(f"{what}: {os.strerror(err)}")


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    enc = lambda s: None if s is None else os.fsencode(s)  # noqa: E731
    _call(
        _libc.mount(enc(source), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data)),
        f"mount {target}",
    )


def _prctl(option: int, value: int) -> None:
    _call(_libc.prctl(option, ctypes.c_ulong(value), 0, 0, 0), f"prctl {option}")


def _die_with_parent() -> None:
    """SIGKILL when the parent dies (cleared by id changes: call after them)."""
    parent = os.getppid()
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before the request
        os._exit(SETUP_FAILED)


def _fail(message: str) -> None:
    os.write(2, f"{MARK}{message}\n".encode(errors="replace"))
    os._exit(SETUP_FAILED)


def _child(step: str, fn, *args) -> None:
    """Run ``fn`` in a forked child and never return: an unexpected error is one ``MARK`` line."""
    try:
        fn(*args)
    except BaseException as e:  # noqa: BLE001 - a forked child must not unwind into its parent's code
        _fail(f"{step}: {e}")
    os._exit(SETUP_FAILED)


def _exit_code(status: int) -> int:
    code = os.waitstatus_to_exitcode(status)
    return code if code >= 0 else 128 - code


# ----------------------------------------------------------------------------- launcher
def _maps(pid: int) -> None:
    """The holder's id maps: root's 0 and nobody when the caller is root, else the caller's own ids."""
    uid, gid = os.geteuid(), os.getegid()
    if uid == 0:  # nobody runs the program; root stays root inside, for building the root only
        uid_map = gid_map = f"0 0 1\n{NOBODY} {NOBODY} 1\n"
    else:  # an unprivileged caller may map only itself, and only after giving up setgroups
        with open(f"/proc/{pid}/setgroups", "w") as f:
            f.write("deny")
        uid_map, gid_map = f"{uid} {uid} 1\n", f"{gid} {gid} 1\n"
    for name, text in (("uid_map", uid_map), ("gid_map", gid_map)):
        with open(f"/proc/{pid}/{name}", "w") as f:
            f.write(text)


def launch(root: str, read_only: list[str], argv: list[str]) -> int:
    """Run ``argv`` in the sandbox rooted on the empty folder ``root``, with the host folders
    ``read_only`` in view (the Python installation); the program's exit status."""
    _die_with_parent()
    run_ids = (NOBODY, NOBODY) if os.geteuid() == 0 else (os.geteuid(), os.getegid())
    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(ready_r)
        os.close(go_w)
        _child("namespaces", _holder, ready_w, go_r, root, read_only, run_ids, argv)
    os.close(ready_w)
    os.close(go_r)
    if os.read(ready_r, 1) == b"1":  # else the holder failed and said why
        try:
            _maps(pid)
        except OSError as e:
            os.kill(pid, signal.SIGKILL)
            _fail(f"writing the user-id maps: {e.strerror or e}")
        os.write(go_w, b"1")
    return _exit_code(os.waitpid(pid, 0)[1])


# ----------------------------------------------------------------------------- holder and init
def _holder(
    ready_w: int, go_r: int, root: str, read_only: list[str], run_ids: tuple[int, int], argv: list[str]
) -> None:
    if _libc.unshare(NAMESPACES) != 0:
        err = ctypes.get_errno()
        _fail(
            f"unshare of user, PID, mount, network, IPC and UTS namespaces: {UNSHARE_HINTS.get(err, os.strerror(err))}"
        )
    os.write(ready_w, b"1")
    if os.read(go_r, 1) != b"1":
        os._exit(SETUP_FAILED)  # the launcher said why
    try:
        _die_with_parent()
    except SetupError as e:
        _fail(str(e))
    pid = os.fork()
    if pid == 0:
        _child("init", _init, root, read_only, run_ids, argv)
    os._exit(_exit_code(os.waitpid(pid, 0)[1]))


def _init(root: str, read_only: list[str], run_ids: tuple[int, int], argv: list[str]) -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # PID 1 ignores default-action signals from inside
    try:
        _die_with_parent()
        name = b"sandbox"
        _call(_libc.sethostname(name, len(name)), "sethostname")
        _build_root(root, read_only, run_ids)
        _no_nested_namespaces()
    except (SetupError, OSError) as e:
        _fail(f"building the sandbox's root: {e}")
    pid = os.fork()
    if pid == 0:
        _child("program", _program, run_ids, argv)
    while True:  # reap every orphan until the program itself ends
        done, status = os.waitpid(-1, 0)
        if done == pid:
            os._exit(_exit_code(status))


def _no_nested_namespaces() -> None:
    """Limit this user namespace's own user namespaces to 0: the program cannot get back
    capabilities (and the kernel surface they open) in a namespace of its own."""
    with contextlib.suppress(FileNotFoundError), open("/proc/sys/user/max_user_namespaces", "w") as f:
        f.write("0")  # (kernels before 4.9 have no per-namespace limit to set)


def _binds(extra: list[str]) -> list[str]:
    """Host paths to show read-only (``SYSTEM_DIRS`` and ``extra``), outermost first, none
    inside another."""
    keep: list[str] = []
    for path in sorted({*SYSTEM_DIRS, *extra}, key=len):
        if (
            path != "/"
            and os.path.lexists(path)
            and not any(path == k or path.startswith(k.rstrip("/") + "/") for k in keep)
        ):
            keep.append(path)
    return keep


def _mount_points_under(path: str) -> list[str]:
    """Mount points at or below ``path`` in this mount namespace (parents first)."""
    points = []
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), line.split()[4])  # \040: space
            if point == path or point.startswith(path.rstrip("/") + "/"):
                points.append(point)
    return sorted(points, key=len)


def _read_only(point: str) -> None:
    flags = os.statvfs(point).f_flag
    kept = sum(m for st, m in KEPT_FLAGS.items() if flags & st)
    _mount(None, point, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV | kept)


def _build_root(root: str, read_only: list[str], run_ids: tuple[int, int]) -> None:
    """A read-only tmpfs root on ``root`` with the binds (``read_only`` too), /dev, /proc and /tmp;
    then pivot into it."""
    machine = platform.machine()
    if machine not in SYS_PIVOT_ROOT:
        raise SetupError(f"pivot_root: unknown system call number on {machine}")
    _mount(None, "/", None, MS_REC | MS_PRIVATE)  # nothing propagates back to the host
    _mount("tmpfs", root, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=0755")
    # the private /tmp first: a Python installation under the host's /tmp (a venv there) is bound
    # inside it below, read-only, instead of being hidden by it
    os.mkdir(root + "/tmp")
    uid, gid = run_ids
    _mount(
        "tmpfs",
        root + "/tmp",
        "tmpfs",
        MS_NOSUID | MS_NODEV,
        f"size={TMP_BYTES},mode=0700,uid={uid},gid={gid}",
    )
    bound = []
    for path in _binds(read_only):
        dst = root + path
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        if os.path.islink(path):  # /bin -> usr/bin
            os.symlink(os.readlink(path), dst)
        elif os.path.isdir(path):
            os.makedirs(dst, exist_ok=True)
            _mount(path, dst, None, MS_BIND | MS_REC)
            bound.append(dst)
    for dst in bound:
        for point in _mount_points_under(dst):
            _read_only(point)
    os.mkdir(root + "/dev")
    for name in DEVICES:  # device nodes: bound, not created (a user namespace cannot mknod)
        open(f"{root}/dev/{name}", "x").close()
        _mount(f"/dev/{name}", f"{root}/dev/{name}", None, MS_BIND)
    os.symlink("/proc/self/fd", f"{root}/dev/fd")
    for fd, name in enumerate(("stdin", "stdout", "stderr")):
        os.symlink(f"/proc/self/fd/{fd}", f"{root}/dev/{name}")
    os.mkdir(root + "/proc")
    _mount("proc", root + "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)  # this PID namespace's
    _mount(None, root, None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)
    os.chdir(root)  # pivot_root(".", "."): the old root lands on top of the new one; detach it
    _call(_libc.syscall(SYS_PIVOT_ROOT[machine], b".", b"."), "pivot_root")
    _call(_libc.umount2(b".", MNT_DETACH), "detaching the host's root")
    os.chdir("/")


def _program(run_ids: tuple[int, int], argv: list[str]) -> None:
    uid, gid = run_ids
    try:
        with open("/proc/sys/kernel/cap_last_cap") as f:
            for cap in range(int(f.read()) + 1):  # empty bounding set: no way back to a capability
                _prctl(PR_CAPBSET_DROP, cap)
        if os.getuid() != uid:  # root inside: become nobody, which also drops every capability
            os.setgroups([])
            os.setresgid(gid, gid, gid)
            os.setresuid(uid, uid, uid)
        _prctl(PR_SET_NO_NEW_PRIVS, 1)  # no set-uid binary or file capability can raise it again
        _die_with_parent()
        os.chdir("/tmp")
        null = os.open("/dev/null", os.O_RDWR)
    except (SetupError, OSError) as e:
        _fail(f"dropping privileges: {e}")
    err = os.dup(2)  # close-on-exec: only for a failed exec
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    try:  # a non-root user in the namespace: execve clears the capabilities it still holds
        os.execve(argv[0], argv, dict(os.environ))
    except OSError as e:
        os.write(err, f"{MARK}running {argv[0]}: {e.strerror}\n".encode(errors="replace"))
        os._exit(SETUP_FAILED)


if __name__ == "__main__":
    try:
        code = launch(sys.argv[1], json.loads(sys.argv[2]), sys.argv[3:])
    except Exception as e:  # noqa: BLE001 - any failure of the launcher is a sandbox failure, in one line
        _fail(f"launcher: {e}")
    sys.exit(code)
