"""Augment a whole batch at once on its device: random crop and flip, then normalise."""

from __future__ import annotations

from typing import Sequence

import torch
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
        if train and (self.crop_padding or self.hflip):
            x = self._crop_and_flip(x, generator)
        if self.mean.device != x.device:  # move the constants once, not every batch
            self.mean, self.std = self.mean.to(x.device), self.std.to(x.device)
        return (x.float() / 255 - self.mean) / self.std

    def _crop_and_flip(self, x: Tensor, generator: torch.Generator | None) -> Tensor:
        """Random crop (as if zero-padded by crop_padding, then cut at a random offset per sample) and
        random flip, in one gather: each output pixel reads its source pixel, or 0 in the padding.
        The same as padding, slicing and flipping, without the padded copy or an index per channel."""
        n, c, h, w = x.shape
        pad, device = self.crop_padding, x.device
        dy, dx = (torch.randint(0, 2 * pad + 1, (2, n, 1), generator=generator, device=device) if pad
                  else torch.zeros(2, n, 1, dtype=torch.long, device=device))
        rows = dy - pad + torch.arange(h, device=device)  # (n, h) source rows
        cols = dx - pad + torch.arange(w, device=device)  # (n, w) source columns
        if self.hflip:
            flip = torch.rand(n, generator=generator, device=device) < 0.5
            cols = torch.where(flip.view(n, 1), cols.flip(1), cols)
        inside = ((rows >= 0) & (rows < h)).view(n, h, 1) & ((cols >= 0) & (cols < w)).view(n, 1, w)
        source = rows.clamp(0, h - 1).view(n, h, 1) * w + cols.clamp(0, w - 1).view(n, 1, w)
        out = x.reshape(n, c, h * w).gather(2, source.view(n, 1, h * w).expand(n, c, h * w))
        return out.view(n, c, h, w) * inside.view(n, 1, h, w)
