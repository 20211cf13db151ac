"""Folders too large for memory: a DataLoader with worker processes decodes and augments per sample.

`StreamingFolder.batches(order, batch_size, epoch, start_step)` yields the training batches of an
epoch in a given order, `evaluate(split)` the test or validation split in file order; `StreamingFeed`
serves them to the trainer as its feed (kdrun.sources.data.feed's contract).
Every sample's augmentation draws are a pure function of (data_seed, epoch, sample index), so the
same order gives the same batches for any number of workers, a resumed epoch, and the
teacher-output cache.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from kdrun.console import console
from kdrun.step import Batch

from .augment import normalisation
from .batches import drops_last, num_batches
from .folder_index import FolderSplit
from .images import BadImageError, fit, pad_crop_flip, random_resized_crop, read_image, sample_generator


@dataclass(frozen=True)
class StreamAugment:
    """How a training sample is viewed: RandomResizedCrop to size (ImageNet style), or the
    in-memory path's view (fitted to size, then a zero-padded random crop); then an optional flip."""

    random_resized_crop: bool
    crop_padding: int
    hflip: bool


class _Samples(Dataset):
    """Sample i of a split -> (uint8 image, label, i, ok). An unreadable file, when skipped, gives
    a zero image and ok=False so that the batch keeps its shape; the caller drops it."""

    def __init__(self, split: FolderSplit, *, size: int, resize: int, channels: int, skip_bad: bool,
                 augment: StreamAugment | None, data_seed: int, epoch: int):
        self.split, self.size, self.resize, self.channels = split, size, resize, channels
        self.skip_bad, self.augment, self.data_seed, self.epoch = skip_bad, augment, data_seed, epoch

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i: int):
        label = int(self.split.labels[i])
        try:
            image = read_image(self.split.paths[i], self.channels)
        except BadImageError:
            if not self.skip_bad:
                raise
            return torch.zeros(self.channels, self.size, self.size, dtype=torch.uint8), label, i, False
        return self.view(image, i), label, i, True

    def view(self, image: Tensor, i: int) -> Tensor:
        augment = self.augment
        if augment is None:
            return fit(image, self.size, self.resize)
        generator = sample_generator(self.data_seed, self.epoch, i)
        if augment.random_resized_crop:
            image = random_resized_crop(image, self.size, generator)
            return pad_crop_flip(image, 0, augment.hflip, generator)
        return pad_crop_flip(fit(image, self.size, self.resize), augment.crop_padding, augment.hflip, generator)


def _collate(samples):
    images, labels, index, ok = zip(*samples)
    return torch.stack(images), torch.tensor(labels), torch.tensor(index), torch.tensor(ok)


class StreamingFolder:
    """The splits of an image folder, decoded per batch by `workers` processes into pinned memory,
    then normalised on `device`. `skipped_images` counts unreadable files skipped so far
    (dataset.on_bad_image=skip)."""

    def __init__(self, train: FolderSplit, test: FolderSplit, val: FolderSplit | None, *, size: int, resize: int,
                 channels: int, augment: StreamAugment, mean: Sequence[float], std: Sequence[float],
                 data_seed: int, workers: int, device: torch.device | str, skip_bad: bool, name: str = "image_folder"):
        self.name, self.train, self.test, self.val = name, train, test, val
        self.size, self.resize, self.channels, self.augment = size, resize, channels, augment
        self.mean, self.std = tuple(mean), tuple(std)
        self.data_seed, self.workers, self.skip_bad = data_seed, workers, skip_bad
        self.device = torch.device(device)
        self.num_classes = len(train.class_names)
        self.class_names = train.class_names
        self.skipped_images = 0
        scale, shift = normalisation(self.mean, self.std)
        self.scale, self.shift = scale.to(self.device), shift.to(self.device)

    @property
    def in_channels(self) -> int:
        return self.channels

    @property
    def image_size(self) -> int:
        return self.size

    @property
    def train_y(self) -> Tensor:
        return self.train.labels

    def batches(self, order: Tensor, batch_size: int, epoch: int, start_step: int = 0
                ) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
        """The training batches of `epoch` from step `start_step` on: `order` is the epoch's permutation of
        sample indices; the last short batch is dropped as the in-memory path drops it."""
        n = len(order)
        steps = num_batches(n, batch_size, drops_last(n, batch_size))
        index_batches = [order[s * batch_size:(s + 1) * batch_size].tolist() for s in range(start_step, steps)]
        samples = self._samples(self.train, augment=self.augment, epoch=epoch)
        yield from self._load(samples, index_batches)

    def evaluate(self, batch_size: int, split: str = "test") -> Iterator[tuple[Tensor, Tensor, Tensor]]:
        """The `split` ("test" or "val") in file order, un-augmented (fitted to image_size)."""
        chosen = {"test": self.test, "val": self.val}[split]
        if chosen is None:
            raise ValueError(f"{self.name} has no {split} split")
        n = len(chosen)
        index_batches = [list(range(s, min(s + batch_size, n))) for s in range(0, n, batch_size)]
        yield from self._load(self._samples(chosen, augment=None, epoch=0), index_batches)

    def raw_images(self, split: str, indices: Sequence[int] | None = None, batch_size: int = 256
                   ) -> tuple[Tensor, Tensor]:
        """Samples of the `split` ("train", "test" or "val"; all, or those at `indices`) un-augmented (fitted to
        image_size) and not normalised: uint8 (N, C, H, W) and labels, as the in-memory path holds a split.
        Unreadable files are left out under dataset.on_bad_image=skip."""
        chosen = {"train": self.train, "test": self.test, "val": self.val}[split]
        indices = list(range(len(chosen))) if indices is None else [int(i) for i in indices]
        samples = self._samples(chosen, augment=None, epoch=0)
        loader = DataLoader(samples, batch_sampler=[indices[s:s + batch_size] for s in range(0, len(indices), batch_size)],
                            num_workers=self.workers, collate_fn=_collate)
        images, labels = [], []
        for x, y, _, ok in loader:
            images.append(x[ok])
            labels.append(y[ok])
        return torch.cat(images), torch.cat(labels)

    def _samples(self, split: FolderSplit, *, augment: StreamAugment | None, epoch: int) -> _Samples:
        return _Samples(split, size=self.size, resize=self.resize, channels=self.channels, skip_bad=self.skip_bad,
                        augment=augment, data_seed=self.data_seed, epoch=epoch)

    def _load(self, samples: _Samples, index_batches: list[list[int]]) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
        if not index_batches:
            return
        pin = self.device.type == "cuda"
        loader = DataLoader(samples, batch_sampler=index_batches, num_workers=self.workers, collate_fn=_collate,
                            pin_memory=pin, prefetch_factor=4 if self.workers else None)
        for images, labels, index, ok in loader:
            if not bool(ok.all()):
                bad = (~ok).sum().item()
                if self.skipped_images == 0:
                    console.print(f"[yellow]skipping unreadable images[/] (dataset.on_bad_image=skip); "
                                  f"first: {samples.split.paths[int(index[~ok][0])]}", soft_wrap=True)
                self.skipped_images += bad
                images, labels, index = images[ok], labels[ok], index[ok]
            x = images.to(self.device, non_blocking=pin).float().mul_(self.scale).add_(self.shift)
            yield x, labels.to(self.device, non_blocking=pin), index


class StreamingFeed:
    """The trainer's feed contract (as kdrun.sources.data.feed.InMemoryFeed) over a StreamingFolder. Each epoch's
    order is a permutation drawn from (data_seed, epoch) alone, so nothing but the epoch and step needs
    keeping for a resume: the state dict is empty."""

    def __init__(self, folder: StreamingFolder, batch_size: int, channels_last: bool = False):
        self.folder, self.batch_size, self.channels_last = folder, batch_size, channels_last
        self.samples = len(folder.train_y)
        self.steps_per_epoch = num_batches(self.samples, batch_size, drops_last(self.samples, batch_size))

    def order(self, epoch: int) -> Tensor:
        return torch.randperm(self.samples, generator=sample_generator(self.folder.data_seed, epoch, -1))

    def batches(self, epoch: int, start_step: int = 0) -> Iterator[Batch]:
        for x, y, index in self.folder.batches(self.order(epoch), self.batch_size, epoch, start_step):
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield Batch(x, y, index, epoch)

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass  # the order and views follow from (data_seed, epoch): nothing to restore
