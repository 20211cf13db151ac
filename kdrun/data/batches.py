"""Batches by randperm and indexing: the data already sits on the device."""

from __future__ import annotations

import math
from typing import Iterator

import torch
from torch import Tensor


def num_batches(n: int, batch_size: int, drop_last: bool = False) -> int:
    """How many batches iterate_batches yields for n samples."""
    return n // batch_size if drop_last else math.ceil(n / batch_size)


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
    n = len(x)
    order = torch.randperm(n, generator=generator, device=x.device) if shuffle else None
    for start in range(0, num_batches(n, batch_size, drop_last) * batch_size, batch_size):
        if order is None:
            yield x[start : start + batch_size], y[start : start + batch_size]
        else:
            index = order[start : start + batch_size]
            yield x[index], y[index]
