"""Exceptions users see as one line, never as a traceback, and the signals that interrupt.

This module imports the standard library only: `vae_pyro/__init__.py` uses it before torch.
"""

from __future__ import annotations

import errno
import os
import signal
from typing import Any


class VaePyroError(Exception):
    """Bad config, missing data or an unreadable checkpoint: says what is wrong and the fix."""


class TrainingInterrupted(Exception):
    """SIGTERM/SIGINT arrived: a checkpoint was written; the message says how to resume."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.exit_code = 128 + signum  # the shell's convention for death by signal


class Interrupted(KeyboardInterrupt):
    """SIGTERM, raised where it arrives as Ctrl-C raises KeyboardInterrupt (cli.shell installs
    the handler): cleanup runs, and the shell says what was kept and exits 128 + signum. A
    KeyboardInterrupt, so that whatever treats Ctrl-C as a stop treats SIGTERM alike."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal_name(signum))
        self.signum = signum


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
    while err is not None and id(err) not in seen:
        if isinstance(err, OSError):
            return err
        seen.add(id(err))
        hidden = err.__suppress_context__  # `raise ... from None`: the cause is said already
        err = err.__cause__ if err.__cause__ is not None or hidden else err.__context__
    return None


def os_reason(err: OSError) -> str:
    """What went wrong, as the system says it, with the likely cause of a file-size limit."""
    reason = err.strerror or str(err) or type(err).__name__
    if err.errno == errno.EFBIG:
        reason += " (a file-size limit: see ulimit -f)"
    return reason


def _starting_handler(program: str) -> Any:
    def stop(signum: int, frame: Any) -> None:
        line = (
            f"{program}: interrupted by {signal_name(signum)} while starting: nothing was written"
        )
        os.write(2, (line + "\n").encode())
        os._exit(128 + signum)  # mid-import: no cleanup to run, nothing to flush

    stop.starting = True  # type: ignore[attr-defined]  (cli.shell replaces it, never restores it)
    return stop


def exit_while_starting(orig_argv: list[str]) -> None:
    """For `python -m vae_pyro.<command>`, until the command's shell takes over (cli.shell):
    Ctrl-C or SIGTERM while Python imports the command's modules (seconds: torch, Pyro, Hydra)
    ends the process at once with one line and exit code 128 + signum, since nothing has been
    written yet. A signal the parent process set to be ignored (nohup, a background job) stays
    ignored."""
    at = orig_argv.index("-m") + 1 if "-m" in orig_argv else len(orig_argv)
    program = orig_argv[at] if at < len(orig_argv) else "vae_pyro"
    for signum, default in ((signal.SIGINT, signal.default_int_handler), (signal.SIGTERM, None)):
        if signal.getsignal(signum) in (default, signal.SIG_DFL):
            signal.signal(signum, _starting_handler(program))


def is_starting_handler(handler: Any) -> bool:
    return getattr(handler, "starting", False)
