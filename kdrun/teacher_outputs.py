"""The teacher's logits for every batch a student trains on: read from a cache, or from a lean live pass.

A KD run asks its frozen teacher the same question every epoch of every job: its logits for the
augmented views the student sees. Those views are fixed by the training data, the augmentation
recipe, the data order (`data_seed`, batch size) and the epoch, never by the student, T, alpha, beta
or the init `seed`. So the first job records the teacher's outputs and every later job that shares
the views reads them back: a temperature sweep pays for the teacher once.

Targets are the teacher's logits rounded to fp16. Above `teacher.topk` classes only the top k logits
are kept, and the other classes share one logit that holds the rest of the probability mass (at T=1),
so that mass is spread evenly at any temperature. Live and cached targets go through the same
rounding: a run trains on the same numbers with the cache or without it.

The cache, <paths.teacher_outputs>/<key>/, where the key hashes `output_recipe`:
    recipe.json       what the key hashes: teacher weights, data, augmentation, data order, runtime,
                      target format
    epoch_0001.bin    one file per epoch, written whole and renamed into place, so jobs running at once
    ...               never see half a file: a 64-byte header (magic, sizes, CRC32 of the payload), then
                      in train-split order the fp16 values (n, width), the top-k class indices (n, k)
                      when top-k, and a 16-bit checksum of each sample's view (n,).
Files are read through memory maps, so a sweep's jobs share one copy in the page cache. A file that
fails its checks is reported and recomputed. A view whose checksum differs from the stored one means
the key missed something that shapes the views; the run stops rather than train on another image's
targets.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import struct
import zlib
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor, nn

from kdrun.console import console
from kdrun.data import DatasetSplits, drops_last, num_batches
from kdrun.errors import ConfigError, KdrunError
from kdrun.io import atomic_open, atomic_write_json
from kdrun.runtime import Runtime

if TYPE_CHECKING:
    from kdrun.strategies.base import Batch

# Bump when the bytes of an epoch file, or the way the trainer draws its views (batch_indices,
# BatchAugment, the drop-last rule), change: old caches then stop matching.
VERSION = 1
MAGIC = b"kdrunTO1"
HEADER = struct.Struct("<8sQIIII")  # magic, samples, width, top-k (0: all), class index bytes, CRC32 of the payload
HEADER_BYTES = 64
FP16_MAX = 65504.0
DISK_MARGIN = 256 * 2**20  # left free for checkpoints and metrics


class TeacherCacheError(KdrunError):
    """The teacher-output cache cannot be used: no room on the disk, or it disagrees with this run."""


class TargetFormat:
    """How teacher logits are kept: fp16, and above `topk` classes the top k plus one shared logit."""

    def __init__(self, num_classes: int, topk: int | None):
        self.num_classes = num_classes
        self.k = topk if topk is not None and topk < num_classes else None
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
            # One logit for every other class: the log of their mean exp, so that together they keep their mass.
            others = logits.scatter(1, classes, -math.inf).logsumexp(1, keepdim=True) - math.log(self.num_classes - self.k)
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
        return f"top-{self.k} of {self.num_classes} fp16 logits + 1 for the rest"


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

    def _damaged(self, path: Path, why: str) -> None:
        console.print(f"[yellow]teacher-output cache:[/] {path} is damaged ({why}); "
                      "recomputing that epoch from the teacher", soft_wrap=True)
        return None


class TeacherOutputs:
    """The teacher's targets for each training batch: from `cache` where it holds the epoch, else from
    a lean live pass (torch.inference_mode, the run's autocast and memory format, on the student's own
    augmented batch), which is recorded into `cache` for the jobs that come after.

    `samples_per_epoch` views make a complete epoch: it is then verified (on a hit) or saved (on a miss).
    A batch of epoch 0 is a warm-up (see Runtime.warm_up): never recorded.
    """

    def __init__(self, teacher: nn.Module, fmt: TargetFormat, cache: OutputCache | None = None,
                 samples_per_epoch: int | None = None, live_needed: bool = True):
        self.teacher = teacher.eval()
        self.fmt, self.cache = fmt, cache
        self.samples_per_epoch = samples_per_epoch
        self.live_needed = live_needed  # False when the cache holds every epoch of the run
        self.hits = self.recorded = 0  # epochs read from / written to the cache
        self._epoch: int | None = None
        self._cached: EpochOutputs | None = None  # the epoch in progress, from the cache
        self._recording: EpochOutputs | None = None  # the epoch in progress, being recorded
        self._seen = 0
        self._mismatches: Tensor | None = None  # views unlike the cached ones, counted on the device

    def __call__(self, batch: Batch) -> Tensor:
        if batch.epoch == 0 and not self.live_needed:  # a warm-up with nothing to compile: all epochs are cached
            return torch.zeros(len(batch.x), self.fmt.num_classes, device=batch.x.device)
        if batch.epoch == 0 or self.cache is None:
            return self.fmt.round(self.live(batch.x))
        if batch.epoch != self._epoch:
            self._begin(batch.epoch, batch.x.device)
        checks = view_checks(batch.x)
        first = self._seen == 0
        self._seen += len(batch.index)
        if self._cached is not None:
            cached, index = self._cached, batch.index
            self._mismatches += (cached.checks[index] != checks).sum()
            targets = self.fmt.decode(cached.values[index], None if cached.classes is None else cached.classes[index])
            if first or self._seen == self.samples_per_epoch:  # one device sync at each end of the epoch
                self._verify()
            return targets
        values, classes = self.fmt.encode(self.live(batch.x))
        if self._recording is not None:
            self._recording.values[batch.index] = values
            if classes is not None:
                self._recording.classes[batch.index] = classes
            self._recording.checks[batch.index] = checks
            if self._seen == self.samples_per_epoch:
                self._save()
        return self.fmt.decode(values, classes)

    def live(self, x: Tensor) -> Tensor:
        """The teacher's forward pass with no autograd state; the caller's autocast applies."""
        with torch.inference_mode():
            return self.teacher(x)

    def summary(self) -> dict:
        if self.cache is None:
            return {"teacher_outputs": "live"}
        return {"teacher_outputs": "cache", "teacher_cache_hits": self.hits, "teacher_cache_recorded": self.recorded,
                "teacher_cache_dir": str(self.cache.dir)}

    def _begin(self, epoch: int, device: torch.device) -> None:
        if self._cached is not None:  # an epoch entered mid-way (a resumed run) ends unverified: check what it saw
            self._verify()
        self._epoch, self._seen, self._recording = epoch, 0, None
        self._cached = self.cache.load(epoch)
        if self._cached is not None:
            # On a GPU the epoch moves in one copy; on the CPU it stays a view of the memory map.
            self._cached = self._cached.to(device)
            self._mismatches = torch.zeros((), dtype=torch.long, device=device)
            self.hits += 1
        elif self.samples_per_epoch is not None:
            self._recording = EpochOutputs.empty(self.cache.samples, self.fmt, device)

    def _verify(self) -> None:
        mismatches = int(self._mismatches)
        if mismatches:
            raise TeacherCacheError(
                f"teacher-output cache {self.cache.dir}: {mismatches} training views of epoch {self._epoch} differ "
                "from the views its outputs were recorded for, so its key misses something that shapes the views "
                "(a kdrun bug: please report it). Set teacher.cache=false to train without it.")

    def _save(self) -> None:
        outputs, self._recording = self._recording, None
        try:
            self.cache.save(self._epoch, outputs)
        except OSError as exc:  # a full disk: the run goes on without recording
            console.print(f"[yellow]teacher-output cache:[/] could not save epoch {self._epoch} ({exc}); "
                          "this run records no more epochs", soft_wrap=True)
            self.samples_per_epoch = None
            return
        self.recorded += 1


# ---- from a config ------------------------------------------------------------------------------


def tensor_digest(*tensors: Tensor) -> str:
    """sha256 of the tensors' names-free contents, dtypes and shapes."""
    h = hashlib.sha256()
    for t in tensors:
        h.update(f"{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def weights_digest(model: nn.Module) -> str:
    """sha256 of a model's weights and buffers: the teacher itself, wherever it came from."""
    state = model.state_dict()
    return hashlib.sha256("".join(f"{name}:{tensor_digest(t)}" for name, t in state.items()).encode()).hexdigest()


def output_recipe(cfg, data: DatasetSplits, runtime: Runtime, teacher: nn.Module, fmt: TargetFormat) -> dict:
    """Everything that decides the teacher's outputs for a run's training views; the cache key hashes it.
    Not in it, because the views do not depend on them: the student, T, alpha, beta, seed, epochs."""
    n, batch_size = len(data.train_y), cfg.trainer.batch_size
    return {
        "version": VERSION,
        "teacher": {"arch": getattr(teacher, "arch", type(teacher).__name__), "weights": weights_digest(teacher)},
        "data": {"dataset": data.name, "samples": n, "train": tensor_digest(data.train_x, data.train_y)},
        "augment": {"crop_padding": int(cfg.dataset.augment.crop_padding), "hflip": bool(cfg.dataset.augment.hflip),
                    "mean": list(data.mean), "std": list(data.std)},
        "order": {"data_seed": int(cfg.data_seed), "batch_size": batch_size, "drop_last": drops_last(n, batch_size)},
        # The device type fixes the generator's draws; the rest the teacher's numerics.
        "runtime": {"device": runtime.device.type, "precision": runtime.precision,
                    "channels_last": runtime.channels_last, "compile": runtime.compile, "torch": torch.__version__},
        "targets": {"dtype": "float16", "topk": fmt.k},
    }


def cache_key(recipe: dict) -> str:
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]


def build_teacher_outputs(cfg, data: DatasetSplits, runtime: Runtime, teacher: nn.Module) -> TeacherOutputs:
    """Targets from `teacher` for a run whose strategy needs only the teacher's logits."""
    topk = cfg.teacher.topk
    if topk is not None and (isinstance(topk, bool) or not isinstance(topk, int) or topk < 1):
        raise ConfigError(f"teacher.topk must be a positive integer or null (keep every class), got {topk!r}")
    fmt = TargetFormat(data.num_classes, topk)
    if not cfg.teacher.cache:
        return TeacherOutputs(teacher, fmt)

    recipe = output_recipe(cfg, data, runtime, teacher, fmt)
    n, batch_size, epochs = len(data.train_y), cfg.trainer.batch_size, cfg.trainer.epochs
    cache = OutputCache(Path(cfg.paths.teacher_outputs) / cache_key(recipe), recipe, n, fmt)
    missing = sum(not cache.path(epoch).is_file() for epoch in range(1, epochs + 1))
    need, free = missing * cache.epoch_bytes, _free_bytes(cache.dir)
    console.print(f"[green]teacher outputs[/] cached in {cache.dir}: {epochs} epochs x {n} samples x {fmt.describe()} "
                  f"= {_size(epochs * cache.epoch_bytes)} on disk; {epochs - missing} epochs there, "
                  f"{_size(need)} to record ({_size(free)} free)", soft_wrap=True)
    if missing and need + DISK_MARGIN > free:
        raise TeacherCacheError(
            f"the teacher-output cache needs {_size(need)} more in {cache.dir}, but only {_size(free)} is free there "
            f"(and kdrun keeps {_size(DISK_MARGIN)} for checkpoints). Free some space, point "
            "paths.teacher_outputs at a bigger disk, keep fewer logits with teacher.topk=K, "
            "or set teacher.cache=false to run the teacher live")
    cache.open()
    drop_last = drops_last(n, batch_size)
    samples = num_batches(n, batch_size, drop_last) * batch_size if drop_last else n
    return TeacherOutputs(teacher, fmt, cache, samples_per_epoch=samples, live_needed=missing > 0)


def _free_bytes(directory: Path) -> int:
    while not directory.exists():
        directory = directory.parent
    return shutil.disk_usage(directory).free


def _size(n_bytes: float) -> str:
    for unit in ("bytes", "KB", "MB"):
        if n_bytes < 1000:
            return f"{n_bytes:.0f} {unit}" if unit == "bytes" else f"{n_bytes:.1f} {unit}"
        n_bytes /= 1000
    return f"{n_bytes:.1f} GB"
