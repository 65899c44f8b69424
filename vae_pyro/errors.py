"""Exceptions users see as one line, never as a traceback, and the signals that interrupt.

This module imports the standard library only.
"""

from __future__ import annotations

import errno
import signal
from typing import Any


class VaePyroError(Exception):
    """Bad config, missing data or an unreadable checkpoint: says what is wrong and the fix."""


class Interrupted(KeyboardInterrupt):
    """SIGTERM or SIGHUP raised where it arrives, as Ctrl-C raises KeyboardInterrupt (cli.shell
    installs the handler), or any of them raised by training after the step it let finish, with
    a `message` saying what the checkpoint holds and how to resume. Cleanup runs, and the shell
    says it in one line and exits 128 + signum. A KeyboardInterrupt, so that whatever treats
    Ctrl-C as a stop treats the others alike."""

    def __init__(self, signum: int, message: str = "") -> None:
        super().__init__(message or signal_name(signum))
        self.signum, self.message = signum, message


def signal_name(signum: int) -> str:
    return signal.Signals(signum).name


def raise_interrupted(signum: int, frame: Any) -> None:
    """A signal handler: raise Interrupted(signum)."""
    raise Interrupted(signum)


def first_line(err: BaseException) -> str:
    """An exception's message on one line: its first, or its type's name when it has none."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def os_error_in(err: BaseException | None) -> OSError | None:
    """The OSError behind err: err itself, or the one it was raised from or while handling
    (torch.save reports a full disk as a RuntimeError raised while handling the OSError)."""
    seen: set[int] = set()
    found = None
    while err is not None and id(err) not in seen:
        if isinstance(err, OSError):
            found = found or err
            if err.errno is not None:  # an OSError without one (PIL's) may wrap the system's
                return err
        seen.add(id(err))
        hidden = err.__suppress_context__  # `raise ... from None`: the cause is said already
        err = err.__cause__ if err.__cause__ is not None or hidden else err.__context__
    return found


def os_reason(err: OSError) -> str:
    """What went wrong, as the system says it, with the likely cause of a file-size limit."""
    reason = err.strerror or str(err) or type(err).__name__
    if err.errno == errno.EFBIG:
        reason += " (a file-size limit: see ulimit -f)"
    if err.errno in (errno.EMFILE, errno.ENFILE):
        reason += " (the limit on open files: see ulimit -n)"
    return reason
