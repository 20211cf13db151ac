"""One sweep at a time in a sweep folder.

Two `kdrun -m ... hydra.sweep.dir=X` started together would write the same job folders (0, 1, ...) and
each summary would list the other's runs. The first claims X with an exclusive lock on X/.kdrun-sweep.lock
(holding its pid, so the refusal can name it); the second is refused before it writes anything. The lock
is the kernel's (flock), so a sweep killed with -9 leaves no stale claim: its lock dies with its process.
"""

from __future__ import annotations

import fcntl
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from kdrun.errors import ConfigError

LOCK_NAME = ".kdrun-sweep.lock"


def named_sweep_dir(argv: list[str]) -> Path | None:
    """The sweep folder a `kdrun -m` command names: hydra.sweep.dir=X, else resume=X. None when it names none
    (kdrun then makes a new folder, which no other process can have: kdrun.config.resume.claim_new_dir)."""
    if not any(flag in argv for flag in ("-m", "--multirun")):
        return None
    values = dict(a.lstrip("+").split("=", 1) for a in argv if "=" in a and not a.startswith("-"))
    named = values.get("hydra.sweep.dir")
    if named is None and values.get("resume") not in (None, "", "null", "auto"):
        named = values["resume"]
    if named is None or "${" in named:
        return None
    return Path(named).expanduser().absolute()


@contextmanager
def claimed_sweep_dir(sweep_dir: Path | None) -> Iterator[None]:
    """Hold `sweep_dir` for this process (nothing when None); ConfigError if another sweep holds it.
    A folder this claim had to create is removed again if the body raises and left it empty."""
    if sweep_dir is None:
        yield
        return
    created = [p for p in (sweep_dir, *sweep_dir.parents) if not p.exists()]
    fd = _lock(sweep_dir)
    try:
        yield
    except BaseException:
        _unlock(sweep_dir, fd)
        for folder in created:  # innermost first
            try:
                folder.rmdir()
            except OSError:
                break
        raise
    _unlock(sweep_dir, fd)


def _lock(sweep_dir: Path) -> int:
    lock = sweep_dir / LOCK_NAME
    holder = _holder(lock)  # look before creating anything: a refused sweep writes nothing
    if holder is not None:
        raise ConfigError(_busy(sweep_dir, holder))
    sweep_dir.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise ConfigError(_busy(sweep_dir, _holder(lock) or "another process")) from None
        # The holder before us may have removed the file between our open and our lock: then we hold a
        # lock on a file nobody else will open. Hold the one at the path, or try again.
        try:
            same = os.fstat(fd).st_ino == os.stat(lock).st_ino
        except FileNotFoundError:
            same = False
        if same:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            return fd
        os.close(fd)


def _unlock(sweep_dir: Path, fd: int) -> None:
    (sweep_dir / LOCK_NAME).unlink(missing_ok=True)  # while still locked, so no one locks the old file
    os.close(fd)


def _holder(lock: Path) -> str | None:
    """'process PID' when a live process holds the lock file, else None."""
    try:
        fd = os.open(lock, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = os.read(fd, 32).decode(errors="replace").strip()
            return f"process {pid}" if pid.isdigit() else "another process"
        fcntl.flock(fd, fcntl.LOCK_UN)  # a lock file left by a process that has gone: free
        return None
    finally:
        os.close(fd)


def _busy(sweep_dir: Path, holder: str) -> str:
    return (f"the sweep folder {sweep_dir} is in use by another sweep ({holder}); two sweeps in one folder would "
            f"overwrite each other's jobs: choose another hydra.sweep.dir, or wait for that sweep to end")
