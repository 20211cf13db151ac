"""docs/scale.md's cache sizes for ImageNet are computed from the file format, not typed in."""

from __future__ import annotations

from pathlib import Path

import pytest

from kdrun.teachers.outputs.files import OutputCache, TargetFormat

IMAGENET_TRAIN, IMAGENET_CLASSES = 1_281_167, 1000
DOC = (Path(__file__).parents[1] / "docs" / "scale.md").read_text()


@pytest.mark.parametrize("topk, per_image, epoch, hundred", [
    (100, "404", "517.6 MB", "51.8 GB"),
    (10, "44", "56.4 MB", "5.6 GB"),
    (None, "2,002", "2.56 GB", "256.5 GB"),
])
def test_imagenet_cache_sizes_match_the_format(tmp_path, topk, per_image, epoch, hundred):
    cache = OutputCache(tmp_path, {}, IMAGENET_TRAIN, TargetFormat(IMAGENET_CLASSES, topk))
    size = cache.epoch_bytes
    assert f"{(size - 64) // IMAGENET_TRAIN:,}" == per_image
    unit, scale = epoch.split()[1], {"MB": 1e6, "GB": 1e9}[epoch.split()[1]]
    digits = len(epoch.split()[0].split(".")[1])
    assert f"{size / scale:.{digits}f} {unit}" == epoch
    assert f"{100 * size / 1e9:.1f} GB" == hundred
    row = [line for line in DOC.splitlines() if f"| {per_image} |" in line]
    assert row and epoch in row[0] and hundred in row[0]
