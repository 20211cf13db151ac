"""Training batches for one run: the order of each epoch and its augmented views.

A feed is what the trainer iterates: `batches(epoch, start_step)` yields the epoch's Batches from
`start_step` on, `state_dict()` is what last.pt keeps so that a resumed epoch sees the same order and
views. `InMemoryFeed` serves a split held on the device: each epoch's order is one randperm drawn from
the data generator when the epoch begins, and the augmentation draws follow from the same generator.
`StreamingFeed` (kdrun.sources.data.streaming) decodes a folder too large for memory, batch by batch.

`eval_batches` gives the un-augmented batches of the test or validation split on either path.

With several processes every rank draws the same global order and augmentation draws (same seed, same
generator), then keeps its contiguous share of each global batch: the global batch at every step, and
each sample's view, are those of one process, whatever the world size.
"""

from __future__ import annotations

from typing import Iterator, Union

import torch

from kdrun.sources.data.augment import BatchAugment
from kdrun.sources.data.batches import batch_indices, drops_last, num_batches
from kdrun.sources.data.batches import iterate_batches
from kdrun.sources.data.splits import DatasetSplits
from kdrun.distributed import SOLO, World
from kdrun.errors import ConfigError
from kdrun.sources.data.streaming import StreamingFeed, StreamingFolder
from kdrun.runtime import Runtime, data_generator
from kdrun.step import Batch


class InMemoryFeed:
    def __init__(self, data: DatasetSplits, augment: BatchAugment, batch_size: int, data_seed: int,
                 runtime: Runtime, world: World = SOLO):
        self.data, self.augment, self.batch_size, self.runtime = data, augment, batch_size, runtime
        self.world, self.data_seed = world, data_seed
        self.samples = len(data.train_y)
        # A labelled subset standing in for a larger split (scratch on a transfer set) keeps that split's steps.
        self.epoch_size = max(self.samples, data.epoch_samples or 0)
        self.drop_last = drops_last(self.epoch_size, batch_size)
        self.steps_per_epoch = num_batches(self.epoch_size, batch_size, self.drop_last)
        self.generator = data_generator(data_seed, runtime.device)
        self.epoch_start_state: torch.Tensor | None = None  # the generator when the epoch in progress began

    def batches(self, epoch: int, start_step: int = 0) -> Iterator[Batch]:
        generator = self.generator
        if start_step == 0:
            self.epoch_start_state = generator.get_state()
        # The shuffle is drawn from the generator as it was when the epoch began, so a resumed epoch sees
        # the same order; the generator then goes on from where it was (its augmentation draws).
        now = generator.get_state()
        generator.set_state(self.epoch_start_state)
        order = list(batch_indices(self.samples, self.batch_size, generator=generator, drop_last=self.drop_last,
                                   device=self.runtime.device, epoch_size=self.epoch_size))
        if start_step > 0:
            generator.set_state(now)
        for batch in order[start_step:]:
            index = self.world.shard(batch)
            start = self.world.rank * len(index)  # equal shares (kdrun.distributed.check_divisible)
            data, partner_y, own_share = self.data, None, None
            labelled = None if data.train_labelled is None else data.train_labelled[index]
            if data.mix is not None and data.mix.active:  # mixed before the crop and flip: one view per sample
                images, partner, own_share = data.mix(data.train_x, index, self.data_seed, epoch)
                partner_y = data.train_y[partner]
                if labelled is not None:  # a mixed image has a label when both of its images have
                    labelled = labelled & data.train_labelled[partner]
            else:
                images = data.train_x[index]
            x = self.augment(images, generator, train=True, part=(len(batch), start))
            if self.runtime.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield Batch(x, data.train_y[index], index, epoch, labelled, partner_y, own_share)

    def state_dict(self) -> dict:
        return {"data": self.generator.get_state(), "data_epoch_start": self.epoch_start_state}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["data"])
        self.epoch_start_state = state["data_epoch_start"]


Data = Union[DatasetSplits, StreamingFolder]


def make_feed(data: Data, augment: BatchAugment, batch_size: int, data_seed: int, runtime: Runtime,
              world: World = SOLO):
    """The feed for `data`: from memory, or streamed (whose order and views follow from the folder's
    data_seed and the epoch)."""
    if isinstance(data, StreamingFolder):
        if world.distributed:
            raise ConfigError(f"dataset {data.name!r} streams from its folder, and the streaming feed does not "
                              f"yet split batches over {world.size} processes; run it on one process, or in "
                              "memory (dataset.in_memory=true) if it fits")
        return StreamingFeed(data, batch_size, runtime.channels_last)
    return InMemoryFeed(data, augment, batch_size, data_seed, runtime, world)


def has_val(data: Data) -> bool:
    if isinstance(data, StreamingFolder):
        return data.val is not None and len(data.val) > 0
    return data.val_y is not None and len(data.val_y) > 0


def eval_batches(data: Data, augment: BatchAugment, split: str, batch_size: int,
                 world: World = SOLO) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(normalised inputs, labels) of the "test" or "val" split, un-augmented, in file order; with several
    processes, this rank's contiguous share of it (in memory)."""
    if isinstance(data, StreamingFolder):
        for x, y, _ in data.evaluate(batch_size, split):
            yield x, y
        return
    x, y = (data.val_x, data.val_y) if split == "val" else (data.test_x, data.test_y)
    x, y = world.shard(x), world.shard(y)
    for xb, yb in iterate_batches(x, y, batch_size, shuffle=False):
        yield augment(xb, None, train=False), yb
