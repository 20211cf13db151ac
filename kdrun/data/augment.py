"""Augment a whole batch at once on its device: random crop and flip, then normalise."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


class BatchAugment:
    """uint8 batch (N, C, H, W) -> normalised float32 batch, with optional
    random crop (zero padding, per-sample offsets) and horizontal flip.

    Randomness comes from `generator`, which must live on the same device as
    the batch (`torch.Generator(device=x.device)`); the same generator state
    gives the same output. With `generator=None` the global RNG is used.
    """

    def __init__(self, crop_padding: int, hflip: bool, mean: Sequence[float], std: Sequence[float]):
        if crop_padding < 0:
            raise ValueError(f"crop_padding must be >= 0, got {crop_padding}")
        if len(mean) != len(std) or min(std) <= 0:
            raise ValueError(f"mean and std need one value per channel and std > 0, got {mean} and {std}")
        self.crop_padding = int(crop_padding)
        self.hflip = bool(hflip)
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)

    def __call__(self, x: Tensor, generator: torch.Generator | None = None, train: bool = True) -> Tensor:
        if train and self.crop_padding:
            x = self._random_crop(x, generator)
        if train and self.hflip:
            flip = torch.rand(len(x), generator=generator, device=x.device) < 0.5
            x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
        if self.mean.device != x.device:  # move the constants once, not every batch
            self.mean, self.std = self.mean.to(x.device), self.std.to(x.device)
        return (x.float() / 255 - self.mean) / self.std

    def _random_crop(self, x: Tensor, generator: torch.Generator | None) -> Tensor:
        """Pad every side by crop_padding, then cut an H x W window at a random offset per sample."""
        n, c, h, w = x.shape
        pad = self.crop_padding
        padded = F.pad(x, (pad, pad, pad, pad))
        dy, dx = torch.randint(0, 2 * pad + 1, (2, n, 1), generator=generator, device=x.device)
        rows = (dy + torch.arange(h, device=x.device)).view(n, 1, h, 1)
        cols = (dx + torch.arange(w, device=x.device)).view(n, 1, 1, w)
        samples = torch.arange(n, device=x.device).view(n, 1, 1, 1)
        channels = torch.arange(c, device=x.device).view(1, c, 1, 1)
        return padded[samples, channels, rows, cols]
