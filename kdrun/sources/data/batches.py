"""Batches by randperm and indexing: the data already sits on the device."""

from __future__ import annotations

import math
from typing import Iterator

import torch
from torch import Tensor


def drops_last(n: int, batch_size: int) -> bool:
    """Whether training drops the last, short batch: whenever there is more than one
    batch, since a last batch of one sample would break BatchNorm."""
    return n > batch_size


def num_batches(n: int, batch_size: int, drop_last: bool = False) -> int:
    """How many batches iterate_batches yields for n samples."""
    return n // batch_size if drop_last else math.ceil(n / batch_size)


def batch_indices(
    n: int,
    batch_size: int,
    *,
    generator: torch.Generator | None = None,
    drop_last: bool = False,
    device: torch.device | str = "cpu",
    epoch_size: int | None = None,
) -> Iterator[Tensor]:
    """Yield shuffled index batches covering each of n samples once (the training order); with an
    `epoch_size` above n, `epoch_size` samples from fresh shuffles of the n, one after another.

    The indices let a caller find per-sample state, e.g. cached teacher outputs.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    size = n if epoch_size is None else epoch_size
    order = torch.randperm(n, generator=generator, device=device)
    if size > n:
        more = [torch.randperm(n, generator=generator, device=device) for _ in range(math.ceil(size / n) - 1)]
        order = torch.cat([order, *more])[:size]
    for start in range(0, num_batches(size, batch_size, drop_last) * batch_size, batch_size):
        yield order[start : start + batch_size]


def iterate_batches(
    x: Tensor,
    y: Tensor,
    batch_size: int,
    *,
    shuffle: bool,
    generator: torch.Generator | None = None,
    drop_last: bool = False,
) -> Iterator[tuple[Tensor, Tensor]]:
    """Yield (x, y) batches covering each sample once, in random order if `shuffle`.

    `generator`, when given, must live on x's device.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if len(x) != len(y):
        raise ValueError(f"x has {len(x)} samples but y has {len(y)}")
    if shuffle:
        for index in batch_indices(len(x), batch_size, generator=generator, drop_last=drop_last, device=x.device):
            yield x[index], y[index]
        return
    for start in range(0, num_batches(len(x), batch_size, drop_last) * batch_size, batch_size):
        yield x[start : start + batch_size], y[start : start + batch_size]
