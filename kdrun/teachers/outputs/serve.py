"""The teacher's logits for every batch a student trains on: read from a cache, or from a lean live pass.

A KD run asks its frozen teacher the same question every epoch of every job: its logits for the
augmented views the student sees. Those views are fixed by the training data, the augmentation
recipe, the data order (`data_seed`, batch size) and the epoch, never by the student, T, alpha, beta
or the init `seed`. So the first job records the teacher's outputs and every later job that shares
the views reads them back: a temperature sweep pays for the teacher once.

Targets are the teacher's logits rounded to fp16 (kdrun.teachers.outputs.files.TargetFormat). Live and
cached targets go through the same rounding: a run trains on the same numbers with the cache or
without it. A view whose checksum differs from the stored one means the key missed something that
shapes the views; the run stops rather than train on another image's targets.

Jobs running at once that miss the same epoch record it once: the one that holds the epoch's lock
records it, the others run the teacher live for that epoch. With several processes in one run each
rank computes its share of every batch; rank 0 chooses (cached, record or live) for all, and the
shares are summed into the one epoch file that rank 0 writes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from pathlib import Path

import torch
from torch import Tensor, nn

from kdrun.console import console, note
from kdrun.sources.data import DatasetSplits, drops_last, num_batches
from kdrun.distributed import SOLO, World, current_world
from kdrun.sources.data.folder_cache import cache_key as folder_cache_key
from kdrun.sources.data.streaming import StreamingFolder
from kdrun.errors import ConfigError
from kdrun.runtime import Runtime
from kdrun.step import Batch
from kdrun.teachers.outputs.files import (VERSION, EpochOutputs, OutputCache, TargetFormat, TeacherCacheError,
                                         view_checks)

DISK_MARGIN = 256 * 2**20  # left free for checkpoints and metrics

class TeacherOutputs:
    """The teacher's targets for each training batch: from `cache` where it holds the epoch, else from
    a lean live pass (torch.inference_mode, the run's autocast and memory format, on the student's own
    augmented batch), which is recorded into `cache` for the jobs that come after.

    `samples_per_epoch` views make a complete epoch: it is then verified (on a hit) or saved (on a miss).
    A batch of epoch 0 is a warm-up (see Runtime.warm_up): never recorded.
    """

    def __init__(self, teacher: nn.Module, fmt: TargetFormat, cache: OutputCache | None = None,
                 samples_per_epoch: int | None = None, live_needed: bool = True, world: World = SOLO):
        self.teacher = teacher.eval()
        self.fmt, self.cache, self.world = fmt, cache, world
        # Views this rank sees per epoch: its equal share (kdrun.distributed.check_divisible).
        self.samples_per_epoch = None if samples_per_epoch is None else samples_per_epoch // world.size
        self._lock = None  # the epoch being recorded: its lock file, held until it is saved
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
        self._release()
        self._epoch, self._seen, self._recording, self._cached = epoch, 0, None, None
        # Every rank must take the same way through the epoch: rank 0 chooses.
        choice = self.world.from_main(self._choose(epoch) if self.world.is_main else None)
        if choice == "cached" and self._cached is None:  # rank 0 has loaded it already
            # Intact for rank 0, so for every rank (files are renamed into place whole); were it not,
            # this rank would run the teacher live, which needs no other rank.
            self._cached = self.cache.load(epoch)
        if self._cached is not None:
            # On a GPU the epoch moves in one copy; on the CPU it stays a view of the memory map.
            self._cached = self._cached.to(device)
            self._mismatches = torch.zeros((), dtype=torch.long, device=device)
            self.hits += 1
        elif choice == "record":
            self._recording = EpochOutputs.empty(self.cache.samples, self.fmt, device)

    def _choose(self, epoch: int) -> str:
        """"cached" (the file is there and intact; loaded), "record" (this process holds the epoch's lock)
        or "live"."""
        if self.cache.path(epoch).is_file():
            self._cached = self.cache.load(epoch)  # None if damaged (reported): then recorded again
            if self._cached is not None:
                return "cached"
        if self.samples_per_epoch is None:  # not recording (a full disk)
            return "live"
        lock = self.cache.claim(epoch)
        if lock is None:
            console.print(f"[yellow]teacher-output cache:[/] another process is recording epoch {epoch}; "
                          "this run computes it live", soft_wrap=True)
            return "live"
        if self.cache.path(epoch).is_file():  # recorded by another process since the first look?
            self._cached = self.cache.load(epoch)
            if self._cached is not None:
                lock.close()
                return "cached"
        self._lock = lock
        return "record"

    def _release(self) -> None:
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def _verify(self) -> None:
        mismatches = int(self._mismatches)
        if mismatches:
            raise TeacherCacheError(
                f"teacher-output cache {self.cache.dir}: {mismatches} training views of epoch {self._epoch} differ "
                "from the views its outputs were recorded for, so its key misses something that shapes the views "
                "(a kdrun bug: please report it). Set teacher.cache=false to train without it.")

    def _save(self) -> None:
        outputs, self._recording = self._recording, None
        outputs = combine_shares(outputs, self.world)
        self.recorded += 1
        if not self.world.is_main:
            return
        try:
            self.cache.save(self._epoch, outputs)
        except OSError as exc:  # a full disk: the run goes on without recording
            console.print(f"[yellow]teacher-output cache:[/] could not save epoch {self._epoch} ({exc}); "
                          "this run records no more epochs", soft_wrap=True)
            self.samples_per_epoch = None
            self.recorded -= 1
        finally:
            self._release()


def combine_shares(outputs: EpochOutputs, world: World) -> EpochOutputs:
    """Each rank filled its own samples and left zeros elsewhere: the sum over ranks is the whole epoch
    (exact: every entry adds one value to zeros, in a wider type)."""
    if not world.distributed:
        return outputs
    combined = []
    for t in outputs.tensors():
        wide = t.to(torch.float32 if t.is_floating_point() else torch.int32)
        combined.append(world.sum(wide).to(t.dtype))
    values, *rest = combined
    classes = rest[0] if outputs.classes is not None else None
    return EpochOutputs(values, classes, rest[-1])


# ---- from a config ------------------------------------------------------------------------------


def tensor_digest(*tensors: Tensor) -> str:
    """sha256 of the tensors' names-free contents, dtypes and shapes."""
    h = hashlib.sha256()
    for t in tensors:
        h.update(f"{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def train_digest(data: DatasetSplits | StreamingFolder) -> str:
    """What the training split is: its tensors, or for a streamed folder its files and how they are viewed."""
    if isinstance(data, StreamingFolder):
        views = [data.size, data.resize, data.channels, dataclasses.astuple(data.augment)]
        return f"files:{folder_cache_key(data.train, data.size, data.resize, data.channels)}:{views}"
    return tensor_digest(data.train_x, data.train_y)


def weights_digest(model: nn.Module) -> str:
    """sha256 of a model's weights and buffers: the teacher itself, wherever it came from."""
    state = model.state_dict()
    return hashlib.sha256("".join(f"{name}:{tensor_digest(t)}" for name, t in state.items()).encode()).hexdigest()


def output_recipe(cfg, data: DatasetSplits, runtime: Runtime, teacher: nn.Module, fmt: TargetFormat) -> dict:
    """Everything that decides the teacher's outputs for a run's training views; the cache key hashes it.
    Not in it, because the views do not depend on them: the student, alpha, beta, seed, epochs, and T
    unless only the top-k logits are kept."""
    n, batch_size = len(data.train_y), cfg.trainer.batch_size
    return {
        "version": VERSION,
        "teacher": {"arch": getattr(teacher, "arch", type(teacher).__name__), "weights": weights_digest(teacher)},
        "data": {"dataset": data.name, "samples": n, "train": train_digest(data)},
        "augment": {"crop_padding": int(cfg.dataset.augment.crop_padding), "hflip": bool(cfg.dataset.augment.hflip),
                    "mean": list(data.mean), "std": list(data.std),
                    # only when on, so that the keys of caches recorded before mixing existed stay the same
                    **({"mixup": mix.mixup, "cutmix": mix.cutmix} if (mix := getattr(data, "mix", None)) else {})},
        "order": {"data_seed": int(cfg.data_seed), "batch_size": batch_size, "drop_last": drops_last(n, batch_size)},
        # The device type fixes the generator's draws; the rest the teacher's numerics.
        "runtime": {"device": runtime.device.type, "precision": runtime.precision,
                    "channels_last": runtime.channels_last, "compile": runtime.compile, "torch": torch.__version__},
        # Top-k targets keep the rest's mass at the run's T, so T is part of them; full targets do not depend on T.
        "targets": {"dtype": "float16", "topk": fmt.k, **({"T": fmt.T} if fmt.k is not None else {})},
    }


def cache_key(recipe: dict) -> str:
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]


def build_teacher_outputs(cfg, data: DatasetSplits, runtime: Runtime, teacher: nn.Module,
                          T: float = 1.0) -> TeacherOutputs:
    """Targets from `teacher` for a run whose strategy needs only the teacher's logits, read by its terms at
    temperature T (top-k targets keep the rest's mass exactly at that T)."""
    topk = cfg.teacher.topk
    if topk is not None and (isinstance(topk, bool) or not isinstance(topk, int) or topk < 1):
        raise ConfigError(f"teacher.topk must be a positive integer or null (keep every class), got {topk!r}")
    fmt = TargetFormat(data.num_classes, topk, T)
    if not cfg.teacher.cache:
        return TeacherOutputs(teacher, fmt)

    recipe = output_recipe(cfg, data, runtime, teacher, fmt)
    n, batch_size, epochs = len(data.train_y), cfg.trainer.batch_size, cfg.trainer.epochs
    cache = OutputCache(Path(cfg.paths.teacher_outputs) / cache_key(recipe), recipe, n, fmt)
    missing = sum(not cache.path(epoch).is_file() for epoch in range(1, epochs + 1))
    need, free = missing * cache.epoch_bytes, _free_bytes(cache.dir)
    note(f"[green]teacher outputs[/] cached in {cache.dir}: {epochs} epochs x {n} samples x {fmt.describe()} "
         f"= {_size(epochs * cache.epoch_bytes)} on disk; {epochs - missing} epochs there, "
         f"{_size(need)} to record ({_size(free)} free)")
    if missing and need + DISK_MARGIN > free:
        raise TeacherCacheError(
            f"the teacher-output cache needs {_size(need)} more in {cache.dir}, but only {_size(free)} is free there "
            f"(and kdrun keeps {_size(DISK_MARGIN)} for checkpoints). Free some space, point "
            "paths.teacher_outputs at a bigger disk, keep fewer logits with teacher.topk=K, "
            "or set teacher.cache=false to run the teacher live")
    cache.open()
    drop_last = drops_last(n, batch_size)
    samples = num_batches(n, batch_size, drop_last) * batch_size if drop_last else n
    return TeacherOutputs(teacher, fmt, cache, samples_per_epoch=samples, live_needed=missing > 0,
                          world=current_world())


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
