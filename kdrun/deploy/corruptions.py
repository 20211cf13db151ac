"""Common corruptions of uint8 image batches, on the fly and deterministic, in the style of CIFAR-10-C.

Severity 1..5 uses the CIFAR-10-C parameters (Hendrycks & Dietterich 2019) where they carry over
to a batch tensor; severity 0 returns the batch unchanged. Random corruptions draw from a
generator seeded by (seed, corruption, severity): the same call gives the same images.
Brightness is added to every channel (CIFAR-10-C adds it to the HSV value): the same for grey
images, a close cousin for colour ones.
"""

from __future__ import annotations

import io
import math

import numpy as np

import torch
import torch.nn.functional as F
from torch import Tensor

from kdrun.errors import ConfigError

SEVERITIES = (1, 2, 3, 4, 5)
PARAMS = {
    "gaussian_noise": (0.04, 0.06, 0.08, 0.09, 0.10),  # std, in [0, 1] pixel units
    "gaussian_blur": (0.4, 0.6, 0.7, 0.8, 1.0),  # sigma in pixels
    "contrast": (0.75, 0.5, 0.4, 0.3, 0.15),  # factor towards each image's mean
    "brightness": (0.05, 0.1, 0.15, 0.2, 0.3),  # added, in [0, 1] units
    "jpeg": (80, 65, 58, 50, 40),  # JPEG quality
}
CORRUPTIONS = tuple(PARAMS)


def _generator(seed: int, name: str, severity: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1000 + CORRUPTIONS.index(name) * 10 + severity)


def _to_uint8(x: Tensor) -> Tensor:
    return (x * 255).round_().clamp_(0, 255).to(torch.uint8)


def _jpeg(image: Tensor, quality: int) -> Tensor:
    """One (C, H, W) uint8 image through a JPEG encode and decode (Pillow; torchvision's codec is deprecated)."""
    from PIL import Image

    array = image.permute(1, 2, 0).numpy()
    pil = Image.fromarray(array[:, :, 0] if array.shape[2] == 1 else array)
    buffer = io.BytesIO()
    pil.save(buffer, format="JPEG", quality=quality)
    decoded = np.asarray(Image.open(io.BytesIO(buffer.getvalue())))
    return torch.from_numpy(decoded.copy()).reshape(image.shape[1], image.shape[2], -1).permute(2, 0, 1)


def gaussian_blur(x: Tensor, kernel: int, sigma: float) -> Tensor:
    """(N, C, H, W) float images blurred by a `kernel`-wide Gaussian of `sigma` pixels, edges reflected:
    torchvision's gaussian_blur, written here because importing torchvision costs every kdrun process
    about a second (tests check the two agree)."""
    offsets = torch.arange(kernel, dtype=x.dtype) - (kernel - 1) / 2
    weights = torch.exp(-0.5 * (offsets / sigma) ** 2)
    weights = weights / weights.sum()
    channels = x.shape[1]
    kernel2d = torch.outer(weights, weights).expand(channels, 1, kernel, kernel)
    padded = F.pad(x, [kernel // 2] * 4, mode="reflect")
    return F.conv2d(padded, kernel2d, groups=channels)


def corrupt(x: Tensor, name: str, severity: int, seed: int = 0) -> Tensor:
    """`x` (uint8, N x C x H x W, on the CPU) with corruption `name` at `severity` (0 = none)."""
    if name not in PARAMS:
        raise ConfigError(f"unknown corruption {name!r}; allowed: {', '.join(CORRUPTIONS)}")
    if severity not in (0, *SEVERITIES):
        raise ConfigError(f"corruption severity must be 0..5, got {severity!r}")
    if severity == 0:
        return x
    c = PARAMS[name][severity - 1]
    if name == "jpeg":
        return torch.stack([_jpeg(image, c) for image in x])
    xf = x.float() / 255
    if name == "gaussian_noise":
        noise = torch.randn(xf.shape, generator=_generator(seed, name, severity))
        return _to_uint8((xf + c * noise).clamp_(0, 1))
    if name == "gaussian_blur":
        kernel = 2 * math.ceil(3 * c) + 1
        return _to_uint8(gaussian_blur(xf, kernel, c))
    if name == "contrast":
        mean = xf.mean(dim=(1, 2, 3), keepdim=True)
        return _to_uint8(((xf - mean) * c + mean).clamp_(0, 1))
    return _to_uint8((xf + c).clamp_(0, 1))  # brightness


FGSM_EPSILONS = (1 / 255, 2 / 255, 4 / 255, 8 / 255)  # in [0, 1] pixel units


def fgsm(model: torch.nn.Module, x: Tensor, y: Tensor, eps: float) -> Tensor:
    """Fast gradient sign attack (Goodfellow et al. 2015) on raw images in 0..255: one step of
    eps * 255 along the sign of the loss gradient, kept in range. Returns float images."""
    xf = x.float().requires_grad_(True)
    loss = torch.nn.functional.cross_entropy(model(xf), y)
    (grad,) = torch.autograd.grad(loss, xf)
    return (xf + eps * 255 * grad.sign()).clamp_(0, 255).detach()
