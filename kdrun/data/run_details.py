"""What a run records about an image folder, and the one path the trainer does not take yet."""

from __future__ import annotations

from kdrun.errors import ConfigError

from .datasets import DatasetSplits


def check_in_memory(data) -> None:
    """The trainer reads DatasetSplits; a StreamingFolder plugs into the trainer's batch interface."""
    if not isinstance(data, DatasetSplits):
        raise ConfigError(
            f"dataset {data.name!r} would stream (dataset.in_memory=false, or its decoded size is above "
            f"dataset.memory_gb), and this trainer trains from memory only; set dataset.in_memory=true, "
            f"raise dataset.memory_gb, or lower dataset.image_size")


def folder_details(data: DatasetSplits) -> dict:
    """metrics.json entries for an image folder: its classes, and the unreadable files skipped."""
    if data.class_names is None:
        return {}
    return {"class_names": list(data.class_names), "skipped_images": data.skipped_images,
            "val_samples": 0 if data.val_y is None else len(data.val_y)}
