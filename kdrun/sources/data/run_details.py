"""What a run records about an image folder."""

from __future__ import annotations

from .splits import DatasetSplits
from .streaming import StreamingFolder


def folder_details(data: DatasetSplits | StreamingFolder) -> dict:
    """metrics.json entries for an image folder: its classes, and the unreadable files skipped."""
    if data.class_names is None:
        return {}
    val = data.val if isinstance(data, StreamingFolder) else data.val_y
    return {"class_names": list(data.class_names), "skipped_images": data.skipped_images,
            "val_samples": 0 if val is None else len(val)}
