"""`dataset=image_folder` and `dataset=imagenet`: a folder of images, in memory or streamed.

In memory when the decoded splits fit under `dataset.memory_gb` (or `dataset.in_memory=true`): each
split is decoded once, fitted to image_size, cached under `dataset.cache_dir`, and then uses the
tensor pipeline of every other dataset. Otherwise (or `dataset.in_memory=false`) a StreamingFolder.
"""

from __future__ import annotations

import os
from typing import Any, Mapping

import torch

from kdrun.errors import ConfigError, DataError

from .splits import FOLDER_DATASETS, DatasetSplits, channel_stats
from .folder_cache import cache_key, decoded_split
from .folder_index import FolderLayout, FolderSplit, scan_layout, stratified_split
from .images import BadImageError, first_image_channels, fit, read_image
from .streaming import StreamAugment, StreamingFolder

VAL_SEED = 0  # the validation split is drawn with a fixed seed: every run holds out the same images
STATS_SAMPLES = 256  # images (spread over train) that estimate mean/std for a streamed folder
DEFAULT_VAL_FRACTION = 0.1  # image_folder without a val/ folder


def open_image_folder(cfg: Mapping[str, Any], device: torch.device | str = "cpu",
                      data_seed: int = 0) -> DatasetSplits | StreamingFolder:
    root = cfg.get("root")
    if not root:
        raise ConfigError(f"dataset={cfg['name']} needs dataset.root=DIR, a folder holding train/<class>/<images> "
                          f"and val/ or test/")
    if not os.path.isdir(os.path.expanduser(str(root))):
        raise ConfigError(f"dataset.root={root!r} is not a folder")
    layout = scan_layout(root)
    train, val = _train_and_val(cfg, layout)
    test = layout.test
    size = int(cfg["image_size"])
    resize = int(cfg.get("eval_resize") or size)
    if resize < size:
        raise ConfigError(f"dataset.eval_resize={resize} is smaller than dataset.image_size={size}; it is the "
                          f"shorter side before the centre {size}x{size} crop, so it must be >= {size} (or null)")
    skip_bad = _choice(cfg, "on_bad_image", ("error", "skip"), "error") == "skip"
    channels = cfg.get("channels") or first_image_channels(train.paths, skip_bad)
    if channels not in (1, 3):
        raise ConfigError(f"dataset.channels={channels} is not allowed; allowed: 1 (grayscale), 3 (RGB), "
                          f"null (from the first readable training image)")
    split_sizes = [len(train), len(test), len(val) if val is not None else 0]
    if _in_memory(cfg, sum(split_sizes) * channels * size * size):
        return _decoded(cfg, layout, train, val, size=size, resize=resize, channels=channels, skip_bad=skip_bad,
                        device=device)
    augment = cfg["augment"]
    mean, std = cfg.get("mean"), cfg.get("std")
    if mean is None or std is None:
        mean, std = _sampled_stats(train, size, resize, channels)
    return StreamingFolder(
        train, test, val, size=size, resize=resize, channels=channels,
        augment=StreamAugment(bool(augment.get("random_resized_crop") or False), int(augment["crop_padding"]),
                              bool(augment["hflip"])),
        mean=_per_channel(mean, channels, "mean"), std=_per_channel(std, channels, "std"), data_seed=data_seed,
        workers=int(cfg.get("workers") or 0), device=device, skip_bad=skip_bad, name=cfg["name"])


def folder_identity(cfg: Mapping[str, Any]) -> dict:
    """{"files": digest of the training files' paths, sizes and mtimes} for a folder dataset, else {}: what a
    cached teacher's fingerprint adds, so that two folders (or one whose files changed) never share one."""
    if cfg.get("name") not in FOLDER_DATASETS or not cfg.get("root"):
        return {}
    train = scan_layout(cfg["root"]).train
    return {"files": cache_key(train, 0, 0, 0)}


def _train_and_val(cfg: Mapping[str, Any], layout: FolderLayout) -> tuple[FolderSplit, FolderSplit | None]:
    """The training files and the validation split: val/ beside test/, or a stratified part of train/."""
    fraction = cfg.get("val_fraction")
    if layout.val is not None:
        if fraction:
            raise ConfigError(f"dataset.val_fraction={fraction}: the folder has its own val/ split (beside "
                              f"test/); set dataset.val_fraction=0 or null")
        return layout.train, layout.val
    if fraction is None:  # auto: hold out a part of train when the folder has no val/ folder at all
        fraction = DEFAULT_VAL_FRACTION if layout.test_folder == "test" and cfg["name"] == "image_folder" else 0.0
    if not 0 <= fraction < 1:
        raise ConfigError(f"dataset.val_fraction={fraction} is not allowed; allowed: 0 <= val_fraction < 1 "
                          f"(null: {DEFAULT_VAL_FRACTION} for a folder without val/)")
    if fraction == 0:
        return layout.train, None
    train_index, val_index = stratified_split(layout.train.labels, fraction, VAL_SEED)
    return layout.train.subset(train_index), layout.train.subset(val_index)


def _in_memory(cfg: Mapping[str, Any], decoded_bytes: int) -> bool:
    choice = cfg.get("in_memory", "auto")
    if choice not in (True, False, "auto"):
        raise ConfigError(f"dataset.in_memory={choice!r} is not allowed; allowed: true, false, auto")
    if choice != "auto":
        return choice
    memory_gb = cfg.get("memory_gb")
    if isinstance(memory_gb, bool) or not isinstance(memory_gb, (int, float)) or memory_gb < 0:
        raise ConfigError(f"dataset.memory_gb must be a number >= 0, got {memory_gb!r}")
    return decoded_bytes <= memory_gb * 2**30


def _decoded(cfg, layout: FolderLayout, train: FolderSplit, val: FolderSplit | None, *, size: int, resize: int,
             channels: int, skip_bad: bool, device) -> DatasetSplits:
    cache_dir = cfg.get("cache_dir")

    def decode(split: FolderSplit):
        return decoded_split(split, size=size, resize=resize, channels=channels, skip_bad=skip_bad,
                             cache_dir=cache_dir)

    train_d, test_d = decode(train), decode(layout.test)
    val_d = decode(val) if val is not None else None
    mean, std = cfg.get("mean"), cfg.get("std")
    if mean is None or std is None:
        mean, std = channel_stats(train_d.x)
    skipped = len(train_d.skipped) + len(test_d.skipped) + (len(val_d.skipped) if val_d else 0)
    return DatasetSplits(
        name=cfg["name"], train_x=train_d.x.to(device), train_y=train_d.y.to(device),
        test_x=test_d.x.to(device), test_y=test_d.y.to(device), num_classes=len(train.class_names),
        mean=_per_channel(mean, channels, "mean"), std=_per_channel(std, channels, "std"),
        val_x=val_d.x.to(device) if val_d else None, val_y=val_d.y.to(device) if val_d else None,
        class_names=list(train.class_names), skipped_images=skipped,
    )


def _sampled_stats(train: FolderSplit, size: int, resize: int, channels: int):
    """Channel mean/std from up to STATS_SAMPLES training images, spread evenly over the split."""
    step = max(1, len(train) // STATS_SAMPLES)
    images = []
    for path in train.paths[::step][:STATS_SAMPLES]:
        try:
            images.append(fit(read_image(path, channels), size, resize))
        except BadImageError:  # named when the training batch that holds it is loaded
            continue
    if not images:
        raise DataError(f"none of the {len(train.paths[::step][:STATS_SAMPLES])} training images sampled for the "
                        f"normalisation statistics can be read (the first is {train.paths[0]}); set dataset.mean "
                        f"and dataset.std, or replace the files")
    return channel_stats(torch.stack(images))


def _per_channel(values, channels: int, key: str) -> tuple[float, ...]:
    values = tuple(float(v) for v in values)
    if len(values) != channels or (key == "std" and min(values) <= 0):
        raise ConfigError(f"dataset.{key}={list(values)} needs one value per channel ({channels})"
                          + (", each > 0" if key == "std" else ""))
    return values


def _choice(cfg: Mapping[str, Any], key: str, allowed: tuple[str, ...], default: str) -> str:
    value = cfg.get(key) or default
    if value not in allowed:
        raise ConfigError(f"dataset.{key}={value!r} is not allowed; allowed: {', '.join(allowed)}")
    return value
