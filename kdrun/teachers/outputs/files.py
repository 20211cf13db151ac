"""The teacher-output cache on disk: how targets are encoded, and the epoch files that hold them.

<paths.teacher_outputs>/<key>/
    recipe.json       what the key hashes (kdrun.teachers.outputs.serve.output_recipe)
    epoch_0001.bin    one file per epoch, written whole and renamed into place, so jobs running at once
    ...               never see half a file: a 64-byte header (magic, sizes, CRC32 of the payload), then
                      in train-split order the fp16 values (n, width), the top-k class indices (n, k)
                      when top-k, and a 16-bit checksum of each sample's view (n,).
Files are read through memory maps, so a sweep's jobs share one copy in the page cache. A file that
fails its checks is reported (and the caller recomputes it).

    epoch_0001.lock   held (flock) by the one process recording that epoch: jobs running at once that
                      miss the same epoch record it once; the others run the teacher live for that epoch.
                      The kernel drops the lock when its holder dies, so it never goes stale.
"""

from __future__ import annotations

import json
import math
import struct
import zlib
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from kdrun.console import console
from kdrun.errors import KdrunError
from kdrun.io import atomic_open, atomic_write_json

try:
    import fcntl
except ImportError:  # not POSIX: no lock; the atomic rename still keeps every file whole
    fcntl = None

# Bump when the bytes of an epoch file, or the way the trainer draws its views (batch_indices,
# BatchAugment, the drop-last rule), change: old caches then stop matching.
VERSION = 1
MAGIC = b"kdrunTO1"
HEADER = struct.Struct("<8sQIIII")  # magic, samples, width, top-k (0: all), class index bytes, CRC32 of the payload
HEADER_BYTES = 64
FP16_MAX = 65504.0


class TeacherCacheError(KdrunError):
    """The teacher-output cache cannot be used: no room on the disk, or it disagrees with this run."""


class TargetFormat:
    """How teacher logits are kept: fp16, and above `topk` classes the top k plus one shared logit.

    The shared logit s is chosen so that at the run's temperature T the other classes keep exactly their
    mass: (C - k) * exp(s / T) = sum of exp(l_i / T) over them, i.e. s = T * (logsumexp(l / T) - log(C - k)).
    At T the top-k probabilities and the rest's total are then those of the full logits (to fp16); only
    how the rest is shared among its classes (evenly) is lost. A mass kept at T=1 would be off at other T.
    """

    def __init__(self, num_classes: int, topk: int | None, T: float = 1.0):
        self.num_classes = num_classes
        self.k = topk if topk is not None and topk < num_classes else None
        self.T = float(T)
        self.width = num_classes if self.k is None else self.k + 1  # values per sample
        self.class_dtype = torch.int16 if num_classes <= 2**15 else torch.int32

    @property
    def class_bytes(self) -> int:
        return 0 if self.k is None else self.class_dtype.itemsize

    def encode(self, logits: Tensor) -> tuple[Tensor, Tensor | None]:
        """(fp16 values (B, width), class indices (B, k) or None)."""
        logits = logits.float()
        if self.k is not None:
            top, classes = logits.topk(self.k, dim=1)
            # One logit for every other class, keeping their total mass at temperature T (see the class doc).
            rest = logits.scatter(1, classes, -math.inf) / self.T
            others = self.T * (rest.logsumexp(1, keepdim=True) - math.log(self.num_classes - self.k))
            return torch.cat([top, others], 1).clamp(-FP16_MAX, FP16_MAX).half(), classes.to(self.class_dtype)
        return logits.clamp(-FP16_MAX, FP16_MAX).half(), None

    def decode(self, values: Tensor, classes: Tensor | None) -> Tensor:
        """float32 logits (B, num_classes)."""
        if classes is None:
            return values.float()
        full = values[:, -1:].float().repeat(1, self.num_classes)
        return full.scatter_(1, classes.long(), values[:, :-1].float())

    def round(self, logits: Tensor) -> Tensor:
        """The targets a run trains on for these teacher logits."""
        return self.decode(*self.encode(logits))

    def describe(self) -> str:
        if self.k is None:
            return f"{self.num_classes} fp16 logits"
        return f"top-{self.k} of {self.num_classes} fp16 logits + 1 for the rest at T={self.T:g}"


def view_checks(x: Tensor) -> Tensor:
    """A 16-bit checksum per sample of an augmented batch (N, C, H, W): its middle row, weighted by
    position (so a flip counts). Exact integer maths, so the same view always gives the same value."""
    row = x[:, :, x.shape[2] // 2].flatten(1).float()
    weights = torch.arange(1, row.shape[1] + 1, device=x.device)
    total = ((row * 256).round().long() * weights).sum(1)
    return (total % 65536 - 32768).to(torch.int16)


class EpochOutputs:
    """One epoch's targets for every sample of the train split, plus the checksum of each sample's view."""

    def __init__(self, values: Tensor, classes: Tensor | None, checks: Tensor):
        self.values, self.classes, self.checks = values, classes, checks

    @classmethod
    def empty(cls, samples: int, fmt: TargetFormat, device: torch.device) -> EpochOutputs:
        classes = None if fmt.k is None else torch.zeros(samples, fmt.k, dtype=fmt.class_dtype, device=device)
        return cls(torch.zeros(samples, fmt.width, dtype=torch.float16, device=device), classes,
                   torch.zeros(samples, dtype=torch.int16, device=device))

    def to(self, device: torch.device) -> EpochOutputs:
        if self.values.device == device:
            return self
        classes = None if self.classes is None else self.classes.to(device)
        return EpochOutputs(self.values.to(device), classes, self.checks.to(device))

    def tensors(self) -> list[Tensor]:
        return [t for t in (self.values, self.classes, self.checks) if t is not None]


class OutputCache:
    """The epoch files of one cache key (see the module docstring)."""

    def __init__(self, directory: Path, recipe: dict, samples: int, fmt: TargetFormat):
        self.dir, self.recipe, self.samples, self.fmt = Path(directory), recipe, samples, fmt

    def path(self, epoch: int) -> Path:
        return self.dir / f"epoch_{epoch:04d}.bin"

    @property
    def epoch_bytes(self) -> int:
        per_sample = 2 * self.fmt.width + self.fmt.class_bytes * (self.fmt.k or 0) + 2
        return HEADER_BYTES + self.samples * per_sample

    def open(self) -> None:
        """Create the folder, or check that the one there is for this recipe."""
        recipe_path = self.dir / "recipe.json"
        if recipe_path.is_file():
            try:
                found = json.loads(recipe_path.read_text())
            except (OSError, ValueError) as exc:
                found = f"unreadable ({exc})"
            if found != self.recipe:
                raise TeacherCacheError(
                    f"teacher-output cache {self.dir} holds outputs for another recipe than this run's "
                    f"(recipe.json is damaged or was edited); delete that folder, or set teacher.cache=false")
            return
        atomic_write_json(recipe_path, self.recipe)

    def load(self, epoch: int) -> EpochOutputs | None:
        """The epoch's outputs as tensors over a memory map, or None if they are not (intact) on disk."""
        path = self.path(epoch)
        if not path.is_file():
            return None
        try:
            raw = np.memmap(path, dtype=np.uint8, mode="c")  # copy-on-write: writable views, never written
        except (OSError, ValueError) as exc:  # ValueError: an empty file cannot be mapped
            return self._damaged(path, f"cannot map it ({exc})")
        if raw.size != self.epoch_bytes:
            return self._damaged(path, f"{raw.size} bytes where {self.epoch_bytes} were expected")
        magic, samples, width, k, class_bytes, crc = HEADER.unpack_from(raw[:HEADER.size].tobytes())
        expected = (MAGIC, self.samples, self.fmt.width, self.fmt.k or 0, self.fmt.class_bytes)
        if (magic, samples, width, k, class_bytes) != expected:
            return self._damaged(path, "its header does not describe this cache")
        if zlib.crc32(raw[HEADER_BYTES:]) != crc:
            return self._damaged(path, "its CRC32 does not match its contents")
        n, fmt = self.samples, self.fmt
        at = HEADER_BYTES
        values = raw[at:at + 2 * n * fmt.width].view(np.float16).reshape(n, fmt.width)
        at += values.nbytes
        classes = None
        if fmt.k is not None:
            numpy_class = np.int16 if fmt.class_dtype == torch.int16 else np.int32
            classes = torch.from_numpy(raw[at:at + fmt.class_bytes * n * fmt.k].view(numpy_class).reshape(n, fmt.k))
            at += classes.numel() * fmt.class_bytes
        checks = raw[at:].view(np.int16)
        return EpochOutputs(torch.from_numpy(values), classes, torch.from_numpy(checks))

    def save(self, epoch: int, outputs: EpochOutputs) -> None:
        """Write the epoch's file whole, then rename it into place."""
        payload = b"".join(t.cpu().numpy().tobytes() for t in outputs.tensors())
        header = HEADER.pack(MAGIC, self.samples, self.fmt.width, self.fmt.k or 0, self.fmt.class_bytes,
                             zlib.crc32(payload)).ljust(HEADER_BYTES, b"\0")
        with atomic_open(self.path(epoch), "wb") as f:
            f.write(header)
            f.write(payload)

    def claim(self, epoch: int):
        """The lock on recording `epoch` (an open file; close it to release), or None when another process
        holds it, i.e. is recording that epoch now."""
        lock = open(self.dir / f"epoch_{epoch:04d}.lock", "a")
        if fcntl is not None:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                lock.close()
                return None
        return lock

    def _damaged(self, path: Path, why: str) -> None:
        console.print(f"[yellow]teacher-output cache:[/] {path} is damaged ({why}); "
                      "recomputing that epoch from the teacher", soft_wrap=True)
        return None
