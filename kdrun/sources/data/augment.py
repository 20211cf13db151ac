"""Augment a whole batch at once on its device: random crop and flip, then normalise."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


def normalisation(mean: Sequence[float], std: Sequence[float]) -> tuple[Tensor, Tensor]:
    """(scale, shift), each (1, C, 1, 1), such that x * scale + shift == (x / 255 - mean) / std for pixels x in
    0..255: the normalisation in fewer passes, shared by both data paths and the exported models."""
    mean, std = torch.tensor(mean, dtype=torch.float32), torch.tensor(std, dtype=torch.float32)
    return (1 / (255 * std)).view(1, -1, 1, 1), (-mean / std).view(1, -1, 1, 1)


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
        self.scale, self.shift = normalisation(mean, std)
        self._patterns: dict[tuple, Tensor] = {}  # (h, w, device) -> crop_patterns

    def __call__(self, x: Tensor, generator: torch.Generator | None = None, train: bool = True,
                 part: tuple[int, int] | None = None) -> Tensor:
        """`part=(batch, start)`: x is samples start.. of a batch of `batch` (one process's share): the
        draws are made for the whole batch and this share's are used, so the views do not depend on how
        many processes share it."""
        if train and (self.crop_padding or self.hflip):
            x = self._crop_and_flip(x, generator, part or (len(x), 0))
        if self.scale.device != x.device:  # move the constants once, not every batch
            self.scale, self.shift = self.scale.to(x.device), self.shift.to(x.device)
        return x.float().mul_(self.scale).add_(self.shift)

    def _crop_and_flip(self, x: Tensor, generator: torch.Generator | None, part: tuple[int, int]) -> Tensor:
        """Random crop (as if zero-padded by crop_padding, then cut at a random offset per sample) and
        random flip, as one gather: each sample draws one of the crop_patterns."""
        n, c, h, w = x.shape
        k, device = 2 * self.crop_padding + 1, x.device
        batch, start = part
        mine = slice(start, start + n)
        pattern = torch.zeros(n, dtype=torch.long, device=device)
        if self.crop_padding:
            dy, dx = torch.randint(0, k, (2, batch), generator=generator, device=device)[:, mine]
            pattern = dy * k + dx
        if self.hflip:
            flip = torch.rand(batch, generator=generator, device=device)[mine] < 0.5
            pattern = pattern * 2 + flip
        key = (h, w, device)
        if key not in self._patterns:
            self._patterns[key] = self.crop_patterns(h, w, device)
        source = self._patterns[key].index_select(0, pattern)
        planes = F.pad(x.reshape(n, c, h * w), (0, 1))  # a 0 after each plane: what the padding reads
        return planes.gather(2, source.unsqueeze(1).expand(n, c, h * w)).view(n, c, h, w)

    def crop_patterns(self, h: int, w: int, device: torch.device) -> Tensor:
        """For each crop offset (dy, dx), and flip if hflip, the pixel of an H x W image that each output
        pixel reads, or H*W where it falls in the padding: int64 (patterns, H*W). Pattern number:
        dy * (2p+1) + dx, then times 2 plus the flip."""
        pad, k = self.crop_padding, 2 * self.crop_padding + 1
        offsets = torch.arange(k, device=device) - pad
        rows = offsets.repeat_interleave(k).view(-1, 1) + torch.arange(h, device=device)  # (k*k, h)
        cols = offsets.repeat(k).view(-1, 1) + torch.arange(w, device=device)  # (k*k, w)
        if self.hflip:
            rows, cols = rows.repeat_interleave(2, 0), cols.repeat_interleave(2, 0)
            cols[1::2] = cols[1::2].flip(1)
        inside = ((rows >= 0) & (rows < h)).unsqueeze(2) & ((cols >= 0) & (cols < w)).unsqueeze(1)
        source = rows.clamp(0, h - 1).unsqueeze(2) * w + cols.clamp(0, w - 1).unsqueeze(1)
        return torch.where(inside, source, h * w).flatten(1)
