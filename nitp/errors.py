"""Bad input as one line: the error type every tool raises and the boundary every CLI uses."""

from __future__ import annotations

import contextlib
import sys
from typing import Iterator


class UserError(Exception):
    """Bad input from the user: printed as one line, no traceback, non-zero exit."""


def first_line(e: BaseException, limit: int = 160) -> str:
    """The first line of an exception's message, cut to ``limit`` characters (for one-line errors)."""
    text = str(e).strip()
    return text.splitlines()[0][:limit] if text else ""


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turn ``UserError`` (and failed file access) into one line on stderr and exit code 2."""
    try:
        yield
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    except OSError as e:  # permissions, disk full, a file where a folder should be
        where = e.filename or "a file"
        print(
            f"error: cannot access {where}: {e.strerror or e}; check the path, its permissions and free space",
            file=sys.stderr,
        )
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        raise SystemExit(130) from None
