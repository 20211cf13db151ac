"""One image file -> a uint8 (C, H, W) tensor, and the per-sample views both data paths share.

Decoding and resizing go through the same functions on the in-memory and the streaming path, so
both see the same pixels. Augmentation draws come from a generator seeded by (data_seed, epoch,
sample index) only, never by the worker that loads the sample.
"""

from __future__ import annotations

import functools
import hashlib
import math
import os

import torch
from torch import Tensor

from kdrun.errors import DataError


# torchvision is imported on first use: importing it takes about 2 s (it loads torch._dynamo), every kdrun
# command would pay that at start-up, and only image folders need it.
@functools.cache
def _io():
    import torchvision.io

    return torchvision.io


@functools.cache
def _functional():
    from torchvision.transforms.v2 import functional

    return functional


GRAY_MODES = ("1", "L", "LA", "I", "I;16", "F")
EMPTY = "an empty file, 0 bytes"


class BadImageError(DataError):
    """An image file that cannot be decoded; the message names it."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"{path}: cannot read this image ({reason}); remove or replace it, "
                         f"or set dataset.on_bad_image=skip to skip such files (they are counted)")
        self.path = path


def first_image_channels(paths, skip_bad: bool) -> int:
    """The channel count of the first readable image: with dataset.on_bad_image=skip, unreadable files
    before it are passed over (they are counted where the split is decoded); else the first must be readable."""
    for path in paths:
        try:
            return image_channels(path)
        except BadImageError:
            if not skip_bad:
                raise
    raise DataError(f"none of the {len(paths)} training images can be read (dataset.on_bad_image=skip skipped "
                    f"them all); the first is {paths[0]}")


def image_channels(path: str) -> int:
    """1 for a grayscale file, 3 otherwise (read from the header only)."""
    from PIL import Image

    try:
        if os.path.getsize(path) == 0:
            raise BadImageError(path, EMPTY)
        with Image.open(path) as image:
            return 1 if image.mode in GRAY_MODES else 3
    except BadImageError:
        raise
    except Exception as exc:  # PIL raises many kinds for a damaged header
        raise BadImageError(path, f"{type(exc).__name__}: {exc}") from exc


def read_image(path: str, channels: int) -> Tensor:
    """Decode `path` to uint8 (channels, H, W); torchvision's decoders, PIL for the other formats."""
    mode = _io().ImageReadMode.GRAY if channels == 1 else _io().ImageReadMode.RGB
    try:
        with open(path, "rb") as f:
            content = f.read()
    except OSError as exc:
        raise BadImageError(path, f"{type(exc).__name__}: {exc}") from exc
    if not content:  # torch.frombuffer's own error for it names neither the file nor the problem
        raise BadImageError(path, EMPTY)
    try:
        return _io().decode_image(torch.frombuffer(bytearray(content), dtype=torch.uint8), mode=mode)
    except RuntimeError:
        return _read_with_pil(path, channels)


def _read_with_pil(path: str, channels: int) -> Tensor:
    from PIL import Image

    try:
        with Image.open(path) as image:
            image = image.convert("L" if channels == 1 else "RGB")
            return _functional().pil_to_tensor(image)
    except Exception as exc:
        raise BadImageError(path, f"{type(exc).__name__}: {exc}") from exc


def fit(image: Tensor, size: int, resize: int) -> Tensor:
    """Shorter side to `resize` pixels (antialiased), then the centre `size` x `size` square."""
    return _functional().center_crop(_functional().resize(image, [resize], antialias=True), [size, size])


def sample_generator(data_seed: int, epoch: int, index: int) -> torch.Generator:
    """A generator whose state is a pure function of (data_seed, epoch, sample index)."""
    digest = hashlib.blake2b(f"{data_seed}:{epoch}:{index}".encode(), digest_size=8).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest, "little") & ((1 << 63) - 1))


def random_resized_crop(image: Tensor, size: int, generator: torch.Generator,
                        scale: tuple[float, float] = (0.08, 1.0), ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> Tensor:
    """Inception-style crop: a random area fraction in `scale` and aspect ratio in `ratio` (log-uniform),
    resized to size x size; after 10 misses, the centre crop of the largest allowed ratio."""
    height, width = image.shape[-2:]
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        u = torch.rand(4, generator=generator, dtype=torch.float64).tolist()
        target = area * (scale[0] + u[0] * (scale[1] - scale[0]))
        aspect = math.exp(log_ratio[0] + u[1] * (log_ratio[1] - log_ratio[0]))
        w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            top, left = int(u[2] * (height - h + 1)), int(u[3] * (width - w + 1))
            return _functional().resized_crop(image, top, left, h, w, [size, size], antialias=True)
    aspect = width / height
    if aspect < ratio[0]:
        w, h = width, round(width / ratio[0])
    elif aspect > ratio[1]:
        h, w = height, round(height * ratio[1])
    else:
        w, h = width, height
    top, left = (height - h) // 2, (width - w) // 2
    return _functional().resized_crop(image, top, left, h, w, [size, size], antialias=True)


def pad_crop_flip(image: Tensor, padding: int, hflip: bool, generator: torch.Generator) -> Tensor:
    """The in-memory path's augmentation for one sample: a crop at a random offset of the image
    zero-padded by `padding`, then a horizontal flip with probability 1/2."""
    if padding:
        dy, dx = torch.randint(0, 2 * padding + 1, (2,), generator=generator).tolist()
        height, width = image.shape[-2:]
        image = _functional().pad(image, [padding])[..., dy:dy + height, dx:dx + width]
    if hflip and bool(torch.rand((), generator=generator) < 0.5):
        image = _functional().horizontal_flip(image)
    return image
