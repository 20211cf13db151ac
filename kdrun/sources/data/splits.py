"""A dataset's splits as tensors on one device, and the per-channel statistics that normalise them."""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

import torch
from torch import Tensor

from .mix import Mix

FOLDER_DATASETS = ("image_folder", "imagenet")  # kdrun/sources/data/image_folder.py


@dataclass
class DatasetSplits:
    """The splits of a dataset, as tensors on one device.

    Images are uint8 (N, C, H, W) and labels int64 (N,). `mean` and `std` are
    per channel in [0, 1] units, for normalisation (see BatchAugment). `val_x`,
    `val_y` are the validation split (None without one: dataset.val_fraction=0).
    `class_names` come from an image folder (None for the built-in datasets);
    `skipped_images` counts unreadable files left out (dataset.on_bad_image=skip).
    `train_labelled` marks the training images that keep a label in a transfer set.
    """

    name: str
    train_x: Tensor
    train_y: Tensor
    test_x: Tensor
    test_y: Tensor
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    val_x: Tensor | None = None  # a validation split, held out of train, when there is one
    val_y: Tensor | None = None
    class_names: list[str] | None = None  # an image folder's classes, in label order
    skipped_images: int = 0  # unreadable files left out (dataset.on_bad_image=skip)
    # Which training images keep their label (kdrun/sources/data/transfer.py); None: all. The others have label -1.
    train_labelled: Tensor | None = None
    # Samples per training epoch when more than the split holds: scratch on the labelled part of a transfer set
    # takes as many steps per epoch as the whole split gives (kdrun/sources/data/transfer.py); None: one pass.
    epoch_samples: int | None = None
    mix: Mix | None = None  # mixup / cutmix of the student's training batches (kdrun/sources/data/mix.py)

    @property
    def in_channels(self) -> int:
        return self.train_x.shape[1]

    @property
    def image_size(self) -> int:
        """Side length in pixels (every dataset here has square images)."""
        return self.train_x.shape[2]


def channel_stats(x: Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and (population) std in [0, 1] units, computed exactly from integer pixel counts.

    A float reduction's result depends on the thread count and the order of its partial sums; these
    values feed the teacher-output cache key, so they must not move in the last bits between runs."""
    means, stds = [], []
    for channel in x.transpose(0, 1).reshape(x.shape[1], -1):
        counts = torch.bincount(channel.cpu(), minlength=256).tolist()
        n = sum(counts)
        total = sum(value * count for value, count in enumerate(counts))
        squares = sum(value * value * count for value, count in enumerate(counts))
        means.append(float(Fraction(total, 255 * n)))
        stds.append(math.sqrt(Fraction(n * squares - total * total, (255 * n) ** 2)))
    return tuple(means), tuple(stds)
