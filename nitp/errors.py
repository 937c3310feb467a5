"""Bad input as one line: the error type every tool raises and the boundary every CLI uses."""

from __future__ import annotations

import contextlib
import errno
import signal
import sys
import threading
from typing import Iterator


class UserError(Exception):
    """Bad input from the user: printed as one line, no traceback, non-zero exit."""


class Interrupted(BaseException):
    """SIGINT (Ctrl-C) or SIGTERM received inside :func:`user_errors`: unwinds the stack, so
    ``finally`` blocks and the complete-or-absent writes clean up, and the boundary exits with
    ``128 + signum``. Not a ``KeyboardInterrupt``: the CLI framework (typer turns those into a
    silent exit 130) and ``except Exception`` blocks let it through."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


_INTERRUPT_HINT = ["rerun the same command to continue"]


def on_interrupt(hint: str) -> None:
    """What the one interrupt line tells the user to do next (set by the command that runs).

    >>> on_interrupt("the run keeps its last complete checkpoint; rerun with --resume to continue")
    """
    _INTERRUPT_HINT[0] = hint


def first_line(e: BaseException, limit: int = 160) -> str:
    """The first line of an exception's message, cut to ``limit`` characters (for one-line errors)."""
    text = str(e).strip()
    return text.splitlines()[0][:limit] if text else ""


def os_error_line(e: OSError) -> str:
    """One line for a failed file access, naming the file when the error carries one.

    >>> os_error_line(OSError(28, "No space left on device"))
    'cannot write: No space left on device (ENOSPC); free space on the output disk or choose another folder'
    """
    reason = e.strerror or first_line(e) or type(e).__name__
    code = errno.errorcode.get(e.errno or 0)
    fix = {
        errno.ENOSPC: "free space on the output disk or choose another folder",
        errno.EDQUOT: "free space on the output disk or choose another folder",
        errno.EROFS: "the file system is read-only; choose another folder",
        errno.EACCES: "check its permissions or choose another folder",
        errno.EPERM: "check its permissions or choose another folder",
    }.get(e.errno, "check the path, its permissions and free space")
    what = f"cannot access {e.filename}" if e.filename else "cannot write"
    return f"{what}: {reason}{f' ({code})' if code else ''}; {fix}"


_received: list[int] = []  # the signals of this boundary, raised or not
_swallowed: list[int] = []  # those raised inside a finalizer, where Python ignores exceptions


def _raise_interrupted(signum, _frame):
    _received.append(signum)
    raise Interrupted(signum)


def raise_if_interrupted() -> None:
    """Raise the :class:`Interrupted` of a signal that a finalizer swallowed, once.

    Every complete-or-absent write calls this before its rename, so nothing is published after
    Ctrl-C or SIGTERM even when the signal landed where Python could not raise it.
    """
    if _swallowed:
        signum = _swallowed[-1]
        _swallowed.clear()
        raise Interrupted(signum)


@contextlib.contextmanager
def _signals_unwind() -> Iterator[None]:
    """While the block runs, SIGINT and SIGTERM raise :class:`Interrupted` (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _received.clear()
    _swallowed.clear()
    previous = {s: signal.signal(s, _raise_interrupted) for s in (signal.SIGINT, signal.SIGTERM)}
    previous_hook = sys.unraisablehook

    def keep_interrupts(unraisable) -> None:
        """An :class:`Interrupted` raised inside a finalizer or weakref callback (Python prints and
        ignores it) is kept, not printed, and raised again at the next publish
        (:func:`raise_if_interrupted`); anything else goes to the hook that was there."""
        if isinstance(unraisable.exc_value, Interrupted):
            _swallowed.append(unraisable.exc_value.signum)
        else:
            previous_hook(unraisable)

    sys.unraisablehook = keep_interrupts
    try:
        try:
            yield
        except SystemExit as e:
            if _received and not e.code:  # a success exit after a signal the stack never saw
                raise Interrupted(_received[-1]) from None
            raise
        if _received:
            raise Interrupted(_received[-1])
    finally:
        sys.unraisablehook = previous_hook
        for s, handler in previous.items():
            signal.signal(s, handler)


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """The CLI boundary: ``UserError`` and failed file access become one line on stderr and
    exit code 2; Ctrl-C (SIGINT) and SIGTERM one line and exit code 130 / 143.

    >>> with user_errors():                                                  # doctest: +SKIP
    ...     app()
    """
    try:
        with _signals_unwind():
            yield
    except (UserError, OSError) as e:  # OSError: permissions, disk full, a file where a folder should be
        print(f"error: {os_error_line(e) if isinstance(e, OSError) else e}", file=sys.stderr)
        raise SystemExit(2) from None
    except (Interrupted, KeyboardInterrupt) as e:
        signum = e.signum if isinstance(e, Interrupted) else signal.SIGINT
        print(f"interrupted ({signal.Signals(signum).name}): {_INTERRUPT_HINT[0]}", file=sys.stderr)
        raise SystemExit(128 + signum) from None
