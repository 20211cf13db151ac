"""Decode a folder split once into a uint8 tensor, cached on disk.

The cache file is keyed by what decides its pixels: every file's path, size and mtime, the
resolution, the resize and the channel count. Any change to the folder makes a new key, so a
stale cache is never read. Files are written atomically and loaded weights-only.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from kdrun.console import console
from kdrun.io import atomic_torch_save

from .folder_index import FolderSplit
from .images import BadImageError, fit, read_image

CACHE_VERSION = 1


@dataclass
class DecodedSplit:
    x: Tensor  # uint8 (N, C, size, size)
    y: Tensor  # int64 (N,)
    skipped: list[str]  # unreadable files left out (dataset.on_bad_image=skip)


def cache_key(split: FolderSplit, size: int, resize: int, channels: int) -> str:
    digest = hashlib.sha256(json.dumps([CACHE_VERSION, size, resize, channels, split.class_names]).encode())
    for path, label in zip(split.paths, split.labels.tolist()):
        stat = os.stat(path)
        digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\0{label}\n".encode())
    return digest.hexdigest()[:24]


def decoded_split(split: FolderSplit, *, size: int, resize: int, channels: int, skip_bad: bool,
                  cache_dir: str | os.PathLike | None) -> DecodedSplit:
    """The split decoded and fitted to size x size: from the cache when it holds it, else decoded now
    (and cached when `cache_dir` is given)."""
    path = None
    if cache_dir is not None:
        path = Path(cache_dir) / f"{cache_key(split, size, resize, channels)}.pt"
        if path.is_file():
            try:
                cached = torch.load(path, map_location="cpu", weights_only=True)
                if not skip_bad and cached["skipped"]:
                    raise BadImageError(cached["skipped"][0], "it failed to decode when this cache was made")
                return DecodedSplit(cached["x"], cached["y"], list(cached["skipped"]))
            except (RuntimeError, KeyError, EOFError) as exc:  # a damaged cache file: decode again
                console.print(f"[yellow]decoded-image cache {path} is unreadable ({exc}); decoding again[/]")
    decoded = decode_split(split, size=size, resize=resize, channels=channels, skip_bad=skip_bad)
    if path is not None:
        atomic_torch_save({"x": decoded.x, "y": decoded.y, "skipped": decoded.skipped}, path)
    return decoded


def decode_split(split: FolderSplit, *, size: int, resize: int, channels: int, skip_bad: bool) -> DecodedSplit:
    x = torch.empty(len(split), channels, size, size, dtype=torch.uint8)
    kept, skipped = [], []
    for i, path in enumerate(split.paths):
        try:
            x[len(kept)] = fit(read_image(path, channels), size, resize)
        except BadImageError:
            if not skip_bad:
                raise
            skipped.append(path)
            continue
        kept.append(i)
    return DecodedSplit(x[: len(kept)].clone() if skipped else x, split.labels[kept], skipped)
