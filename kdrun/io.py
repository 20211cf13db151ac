"""Atomic file writes: a temporary file in the same directory, flushed, then renamed.

A reader (or a run killed mid-write) sees either the old file or the new one,
never a truncated one. A failed write (a full disk) leaves the old file as it was
and no temporary file behind.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Callable, Iterable, Iterator

import torch

from kdrun.errors import WriteError

TMP_SUFFIX = ".tmp"  # temporary siblings are named .<name>.<random>.tmp


def atomic_write_via(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """For writers that want a file name (torch.export.save, onnx): `write(tmp)` fills a temporary sibling,
    which is then fsynced and renamed over `path`, with the umask's mode like every other kdrun file."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # The temporary name ends like the real one: torch.export.save wants ".pt2".
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TMP_SUFFIX + "".join(path.suffixes))
        os.fchmod(fd, 0o666 & ~current_umask())
        os.close(fd)
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        raise WriteError(_write_message(path, exc)) from exc
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)


@contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w") -> Iterator[IO]:
    """Open a temporary sibling of `path`; on success fsync and rename it over `path`.

    Any OSError (ENOSPC, EACCES, ...) becomes a WriteError that names the file.
    """
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TMP_SUFFIX)
        os.fchmod(fd, 0o666 & ~current_umask())  # mkstemp makes 0600; colleagues share caches and results
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError) and not isinstance(exc, WriteError):
            raise WriteError(_write_message(path, exc)) from exc
        raise


def current_umask() -> int:
    """The process umask (reading it means setting it, so it is set straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _write_message(path: Path, exc: OSError) -> str:
    reason = exc.strerror or str(exc)
    hint = " (the disk is full: free some space, then resume the run)" if exc.errno == errno.ENOSPC else ""
    return f"could not write {path}: {reason}{hint}; the previous version of the file, if any, is intact"


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_open(path, "w") as f:
        f.write(text)


def atomic_write_json(path: str | os.PathLike, data: dict) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def atomic_write_jsonl(path: str | os.PathLike, records: Iterable[dict]) -> None:
    """The whole file at once, one JSON line per record (rewritten each epoch: it is short)."""
    atomic_write_text(path, "".join(json.dumps(record) + "\n" for record in records))


def atomic_torch_save(obj: object, path: str | os.PathLike) -> None:
    """Serialise in memory first: torch's zip writer turns a full disk into an opaque RuntimeError
    ("inline_container.cc"), whereas a plain write raises the OSError that names the cause."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    with atomic_open(path, "wb") as f:
        f.write(buffer.getbuffer())


@contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary sibling folder to fill; on success it replaces `path` (an earlier one is removed), on any
    failure it is removed, with any parent folder made for it: a failed write leaves nothing behind."""
    path = Path(path)
    made = [p for p in (path.parent, *path.parent.parents) if not p.exists()]
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=TMP_SUFFIX))
        os.chmod(tmp, 0o777 & ~current_umask())
        yield tmp
        old = None
        if path.exists():
            old = path.with_name(f".{path.name}.old{TMP_SUFFIX}")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
        os.replace(tmp, path)
        tmp = None
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException as exc:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        for folder in made:  # innermost first
            try:
                folder.rmdir()
            except OSError:
                break
        if isinstance(exc, OSError) and not isinstance(exc, WriteError):
            raise WriteError(_write_message(path, exc)) from exc
        raise


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
