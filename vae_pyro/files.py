"""Where vae-pyro's own files are, and how runs write theirs: a run dir owned by one process,
outputs checked before the work, atomic writes with the user's umask.

A run dir is owned through an exclusive `flock` on `.lock` inside it, held for the life of the
run. The OS drops the lock when its process dies, however it dies, so a killed run (SIGKILL, a
SLURM requeue) leaves nothing that blocks the next one; the file names the holder (pid and
host) for the refusal message and is removed when the run ends. Only `checkpoint.pt` makes a
dir "hold a run": the lock file never does.

Every output of every command goes through `check_output` before the work (the one overwrite
rule: never a run's own file or a non-file; an existing file only with overwrite) and
`atomic_write` (a temp file beside it, renamed over it: an interrupted or failed write leaves
the previous version and no temp file). JSON goes through `write_json`, which writes null for
NaN and infinities.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import json
import logging
import math
import os
import secrets
import socket
import stat
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import IO, Any

from vae_pyro.errors import VaePyroError

try:
    import fcntl
except ImportError:  # Windows: no flock; runs go unlocked there
    fcntl = None

LOCK_NAME = ".lock"
# A run dir's own files and folders (train's, Hydra's, the sweep's status, sample's default
# folder): no output of another command ever replaces them, whatever overwrite says.
RUN_FILES = frozenset(
    {
        "checkpoint.pt",
        "metrics.jsonl",
        "train.log",
        "status.json",
        ".hydra",
        "tensorboard",
        "figures",
        "samples",
        LOCK_NAME,
    }
)
SOFTWARE = "vae_pyro"  # the PNG text chunk "Software" of every figure vae-pyro draws

log = logging.getLogger(__name__)


def cache_dir() -> Path:
    """The user's cache folder, $VAE_PYRO_CACHE (default ~/.cache/vae_pyro): where torchvision
    extracts a read-only copy's .gz files (data._torchvision_root)."""
    return Path(os.environ.get("VAE_PYRO_CACHE", Path.home() / ".cache" / "vae_pyro"))


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


def _remove_empty(created: list[Path]) -> None:
    for path in reversed(created):
        with contextlib.suppress(OSError):  # not empty: something was written, keep it
            path.rmdir()


def _holder(fd: int) -> str:
    # The holder writes its name just after it locks: a run started at the same moment may
    # find the file locked but still empty, so give the holder a second to write.
    for _ in range(50):
        with contextlib.suppress(OSError):
            said = os.pread(fd, 200, 0).decode(errors="replace").split()
            if len(said) >= 2:
                return f"pid {said[0]} on host {said[1]}"
        time.sleep(0.02)
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


def acquire(run_dir: str | os.PathLike) -> Path:
    """Lock run_dir (created if missing) for this process; again in the same process only
    counts. Returns the resolved run dir, the key for `release`."""
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
    _HELD[run_dir] = _Held(fd, created=created)
    return run_dir


def release(run_dir: Path) -> None:
    """Undo one `acquire`; the last one removes the lock file, unlocks, and removes the run dir
    if nothing was written into it (prune), and the directories `acquire` made for it."""
    held = _HELD[run_dir]
    held.count -= 1
    if held.count > 0:
        return
    del _HELD[run_dir]
    if held.fd is not None:
        with contextlib.suppress(OSError):
            (run_dir / LOCK_NAME).unlink()  # while still locked: see _flock
        os.close(held.fd)
    prune(run_dir)
    _remove_empty(held.created)


def prune(run_dir: Path) -> None:
    """Remove run_dir if it holds nothing, and then each folder above it that is left empty,
    inside the working directory (Hydra's outputs/<date>/): a refused run leaves no folder."""
    cwd = Path.cwd().resolve()
    for path in (run_dir.resolve(), *run_dir.resolve().parents):
        if path != run_dir.resolve() and cwd not in path.parents:
            return
        try:
            path.rmdir()  # only an empty folder
        except OSError:
            return


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


# Every file atomic_write completed in this process, in order: what an interrupted command
# kept (cli.shell names them).
WRITTEN: list[Path] = []


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], object]) -> None:
    """write(f) into a temp file beside path, fsync, rename over path: a crash leaves the old
    file or the new one, never half of one. OSError propagates; the temp file is removed on an
    error, Ctrl-C, and, under the CLI's shell (which turns them into exceptions), SIGTERM or
    SIGHUP alike."""
    path = Path(path)
    fd, tmp = _temp_beside(path)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        WRITTEN.append(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    with contextlib.suppress(OSError):  # the rename itself on disk; not every system can
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def _finite(value: Any) -> Any:
    """value with every NaN or infinite float as None (JSON has no such numbers)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def to_json(value: Any, indent: int | None = None) -> str:
    """Strict JSON text: NaN and infinities become null, never the bare NaN/Infinity that
    Python's json writes and other readers refuse."""
    return json.dumps(_finite(value), indent=indent, allow_nan=False)


def write_json(path: str | os.PathLike, record: Any) -> None:
    """One JSON document, indented, atomically (see to_json and atomic_write)."""
    text = to_json(record, indent=2) + "\n"
    atomic_write(path, lambda f: f.write(text.encode()))


def write_failed(path: str | os.PathLike, err: OSError, note: str = "") -> VaePyroError:
    """The one line of a write that failed (full disk, a file-size limit, a vanished folder):
    the file, the reason, `note`, and what was kept (the previous version, if there was one:
    atomic_write never leaves half a file)."""
    path = Path(path)
    kept = (
        f"the previous {path.name} is unchanged"
        if path.is_file()
        else f"no {path.name} was written"
    )
    note = f" ({note})" if note else ""
    return VaePyroError(f"could not write {path}: {err.strerror or err}{note}; {kept}")


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


def _not_a_file(mode: int) -> str:
    for test, said in (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISLNK, "a symbolic link"),
        (stat.S_ISCHR, "a device"),
        (stat.S_ISBLK, "a device"),
        (stat.S_ISFIFO, "a named pipe"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return said
    return "not a regular file"


def check_output(path: str | os.PathLike, overwrite: bool, hint: str = "") -> None:
    """Before the work, the one rule for every output: never one of a run's own files (by
    name, RUN_FILES) nor anything but a regular file; an existing file only with overwrite
    (sample and report pass True: redrawing their own files is what a re-run is for); its
    folder must be writable. `hint` ends each refusal (e.g. ", or choose another output=")."""
    path = Path(path).expanduser()
    if path.name in RUN_FILES:
        said = hint or "; choose another name"
        raise VaePyroError(f"{path} is a run's own {path.name}: no output replaces it{said}")
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        mode = None
    except OSError as err:
        raise VaePyroError(f"cannot write {path}: {err.strerror or err}") from None
    if mode is not None and not stat.S_ISREG(mode):
        raise VaePyroError(f"{path} is {_not_a_file(mode)}: an output replaces only a file{hint}")
    if mode is not None and not overwrite:
        raise VaePyroError(f"{path} already exists; give overwrite=true to replace it{hint}")
    check_writable(path.parent)
