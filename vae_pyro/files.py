"""Where vae-pyro's own files are, and how runs write theirs: a run dir owned by one process,
outputs checked before the work, atomic writes with the user's umask.

A run dir is owned through an exclusive `flock` on `.lock` inside it, held for the life of the
run. The OS drops the lock when its process dies, however it dies, so a killed run (SIGKILL, a
SLURM requeue) leaves nothing that blocks the next one; the file names the holder (pid and
host) for the refusal message and is removed when the run ends. Only `checkpoint.pt` makes a
dir "hold a run": the lock file never does.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import logging
import os
import secrets
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import IO

from vae_pyro.errors import VaePyroError

try:
    import fcntl
except ImportError:  # Windows: no flock; runs go unlocked there
    fcntl = None

LOCK_NAME = ".lock"

log = logging.getLogger(__name__)


def shipped(inside: str, clone: str) -> Path:
    """A folder that ships with vae-pyro: `vae_pyro/<inside>` in an installed wheel (where
    pyproject.toml puts the repository's folders), else `<clone>` at the top of the repository
    (a clone, or an editable install)."""
    package = Path(str(resources.files("vae_pyro")))
    return package / inside if (package / inside).is_dir() else package.parent / clone


@dataclass
class _Held:
    fd: int | None  # None where the file system has no locks (see _flock)
    count: int = 1  # re-entrant: another acquire in the same process only counts
    created: list[Path] = field(default_factory=list)  # dirs made for it, deepest last
    disposable: frozenset[str] = frozenset()  # see acquire


_HELD: dict[Path, _Held] = {}


def _make_dirs(folder: Path) -> list[Path]:
    """mkdir -p, returning the directories this call created (outermost first)."""
    created: list[Path] = []
    try:
        for path in [p for p in (folder, *folder.parents) if not p.exists()][::-1]:
            with contextlib.suppress(FileExistsError):  # made by another process: not ours
                path.mkdir()
                created.append(path)
    except OSError as err:
        _remove_empty(created)
        raise VaePyroError(f"cannot create {folder}: {err.strerror or err}") from None
    return created


def _discard(run_dir: Path, disposable: frozenset[str]) -> None:
    """Empty a run dir that holds no files but `disposable` ones (see acquire)."""
    found = sorted(run_dir.rglob("*"), reverse=True)  # deepest first
    if disposable and {str(p.relative_to(run_dir)) for p in found if not p.is_dir()} <= disposable:
        for path in found:
            with contextlib.suppress(OSError):
                path.rmdir() if path.is_dir() else path.unlink()


def _remove_empty(created: list[Path]) -> None:
    for path in reversed(created):
        with contextlib.suppress(OSError):  # not empty: something was written, keep it
            path.rmdir()


def _holder(fd: int) -> str:
    with contextlib.suppress(OSError):
        said = os.pread(fd, 200, 0).decode(errors="replace").split()
        if len(said) >= 2:
            return f"pid {said[0]} on host {said[1]}"
    return "another process"


def _flock(path: Path, run_dir: Path) -> int | None:
    """The locked file's descriptor, or VaePyroError naming the holder."""
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)  # mode: 0o666 less the umask
        except OSError as err:
            raise VaePyroError(f"cannot write to {run_dir}: {err.strerror or err}") from None
        try:
            if fcntl is None:
                raise OSError(errno.ENOSYS, "no flock on this platform")
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            holder = _holder(fd)
            os.close(fd)
            if err.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                log.warning("%s cannot be locked on this file system (%s)", run_dir, err.strerror)
                path.unlink(missing_ok=True)
                return None
            raise VaePyroError(
                f"{run_dir} is in use by another run ({holder}); wait for it to end, or "
                "choose another hydra.run.dir"
            ) from None
        # The holder removes the file when it ends: if it did between our open and our lock,
        # we hold a lock on a removed file; start again on the path's current file.
        with contextlib.suppress(OSError):
            if os.path.samestat(os.fstat(fd), os.stat(path)):
                return fd
        os.close(fd)


def acquire(run_dir: str | os.PathLike, disposable: tuple[str, ...] = ()) -> Path:
    """Lock run_dir (created if missing) for this process; again in the same process only
    counts. Returns the resolved run dir, the key for `release`. If this call created run_dir
    and, at the last release, it holds no files but `disposable` (paths inside it: what Hydra
    writes before a task that then refused), it is removed."""
    run_dir = Path(run_dir).resolve()
    if run_dir in _HELD:
        _HELD[run_dir].count += 1
        return run_dir
    created = _make_dirs(run_dir)
    try:
        check_writable(run_dir)  # a read-only dir may still hold a writable stale lock file
        fd = _flock(run_dir / LOCK_NAME, run_dir)
    except VaePyroError:
        _remove_empty(created)
        raise
    if fd is not None:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
    _HELD[run_dir] = _Held(fd, created=created, disposable=frozenset(disposable))
    return run_dir


def release(run_dir: Path) -> None:
    """Undo one `acquire`; the last one removes the lock file, unlocks, and removes the
    directories `acquire` made if nothing was written into them."""
    held = _HELD[run_dir]
    held.count -= 1
    if held.count > 0:
        return
    del _HELD[run_dir]
    if held.fd is not None:
        with contextlib.suppress(OSError):
            (run_dir / LOCK_NAME).unlink()  # while still locked: see _flock
        os.close(held.fd)
    if held.created and held.created[-1] == run_dir:
        _discard(run_dir, held.disposable)
    _remove_empty(held.created)


@atexit.register
def _release_all() -> None:
    for run_dir in list(_HELD):
        _HELD[run_dir].count = 1
        release(run_dir)


@contextlib.contextmanager
def locked(run_dir: str | os.PathLike) -> Iterator[Path]:
    """`acquire` for the length of a with block."""
    key = acquire(run_dir)
    try:
        yield key
    finally:
        release(key)


def _temp_beside(path: Path) -> tuple[int, Path]:
    """A new temp file in path's folder, created with mode 0o666 less the umask (mkstemp would
    make it 0600 and the renamed file unreadable to the user's group)."""
    for _ in range(100):
        tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no free temporary file name", str(path.parent))


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], object]) -> None:
    """write(f) into a temp file beside path, fsync, rename over path: a crash leaves the old
    file or the new one, never half of one. OSError propagates; the temp file is removed."""
    path = Path(path)
    fd, tmp = _temp_beside(path)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def check_writable(folder: str | os.PathLike) -> None:
    """A VaePyroError unless files can be created in folder (or, if it does not exist yet, in
    its nearest existing parent, where it would be made). Tried, not inferred from the mode
    bits: root, ACLs and read-only mounts answer differently. Leaves nothing behind."""
    folder = Path(folder).expanduser()
    base = next(p for p in (folder, *folder.parents) if p.exists())
    if not base.is_dir():
        raise VaePyroError(f"cannot write to {folder}: {base} is not a directory")
    try:
        fd, tmp = _temp_beside(base / "write-test")
    except OSError as err:
        raise VaePyroError(f"cannot write to {folder}: {err.strerror or err}") from None
    os.close(fd)
    tmp.unlink()


def check_output(path: str | os.PathLike, overwrite: bool, hint: str = "") -> None:
    """Before the work: refuse to replace an existing file unless overwrite, and check that
    its folder can be written."""
    path = Path(path).expanduser()
    if path.exists() and not overwrite:
        raise VaePyroError(f"{path} already exists; give overwrite=true to replace it{hint}")
    check_writable(path.parent)
