"""An image folder in the torchvision ImageFolder layout, as lists of files and labels.

    root/train/<class>/*.jpg|png|...     required
    root/test/<class>/...                the test split (reported numbers); without it, root/val/
    root/val/<class>/...                 the validation split when root/test/ exists too

Problems a user can fix are DataErrors that name the path: an empty class folder, a non-image
file, a class in an evaluation split that train/ lacks.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from kdrun.errors import DataError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")


@dataclass
class FolderSplit:
    """One split: image paths, their labels (int64), and the class names the labels index."""

    paths: list[str]
    labels: Tensor
    class_names: list[str]

    def __len__(self) -> int:
        return len(self.paths)

    def subset(self, index: Tensor) -> FolderSplit:
        return FolderSplit([self.paths[i] for i in index.tolist()], self.labels[index], self.class_names)


@dataclass
class FolderLayout:
    train: FolderSplit
    test: FolderSplit
    val: FolderSplit | None  # a val/ folder used for validation (only when test/ exists too)
    test_folder: str  # "test" or "val"


def scan_layout(root: str | os.PathLike) -> FolderLayout:
    root = Path(os.path.expanduser(str(root)))
    if not (root / "train").is_dir():
        raise DataError(f"image folder {root}: no train/ folder (expected {root}/train/<class>/<images>, "
                        f"and {root}/val/ or {root}/test/ beside it)")
    train = scan_split(root / "train")
    has_test, has_val = (root / "test").is_dir(), (root / "val").is_dir()
    if not (has_test or has_val):
        raise DataError(f"image folder {root}: no val/ or test/ folder beside train/ "
                        f"(expected {root}/val/<class>/<images> or {root}/test/<class>/<images>)")
    test_folder = "test" if has_test else "val"
    test = scan_split(root / test_folder, train.class_names)
    val = scan_split(root / "val", train.class_names) if has_test and has_val else None
    return FolderLayout(train=train, test=test, val=val, test_folder=test_folder)


def scan_split(folder: Path, train_classes: list[str] | None = None) -> FolderSplit:
    """Every image under folder/<class>/ (sorted); with `train_classes`, labels index those names."""
    classes = sorted(entry.name for entry in os.scandir(folder) if entry.is_dir() and not entry.name.startswith("."))
    stray = sorted(entry.name for entry in os.scandir(folder) if entry.is_file() and not entry.name.startswith("."))
    if stray:
        raise DataError(f"{folder / stray[0]}: a file where class folders belong (expected {folder}/<class>/<images>)")
    if not classes:
        raise DataError(f"{folder}: no class folders (expected {folder}/<class>/<images>)")
    names = train_classes if train_classes is not None else classes
    if train_classes is not None:
        unknown = [c for c in classes if c not in train_classes]
        if unknown:
            raise DataError(f"{folder / unknown[0]}: class {unknown[0]!r} is not among the training classes "
                            f"({', '.join(train_classes[:10])}{', ...' if len(train_classes) > 10 else ''})")
    label_of = {name: i for i, name in enumerate(names)}
    paths, labels = [], []
    for name in classes:
        files = images_under(folder / name)
        if not files:
            raise DataError(f"{folder / name}: an empty class folder (no {'/'.join(IMAGE_EXTENSIONS)} files)")
        paths += files
        labels += [label_of[name]] * len(files)
    return FolderSplit(paths, torch.tensor(labels, dtype=torch.long), list(names))


def images_under(class_dir: Path) -> list[str]:
    files = []
    for dirpath, dirnames, filenames in os.walk(class_dir):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith("."):
                continue  # .DS_Store and friends
            if not name.lower().endswith(IMAGE_EXTENSIONS):
                raise DataError(f"{Path(dirpath) / name}: not an image file (allowed extensions: "
                                f"{', '.join(IMAGE_EXTENSIONS)}); move it out of the data folder")
            files.append(os.path.join(dirpath, name))
    return files


def stratified_split(labels: Tensor, fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """(train index, val index): from each class, round(fraction * its count) samples (at least one where
    the class has two or more) go to validation, drawn with `seed`; both sorted, never overlapping."""
    if not 0 <= fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {fraction!r}")
    generator = torch.Generator().manual_seed(seed)
    val = []
    for c in torch.unique(labels).tolist():
        members = torch.nonzero(labels == c).flatten()
        take = round(fraction * len(members))
        if fraction > 0 and take == 0 and len(members) >= 2:
            take = 1
        take = min(take, len(members) - 1)  # every class keeps a training sample
        val.append(members[torch.randperm(len(members), generator=generator)[:take]])
    val_index = torch.cat(val).sort().values if val else torch.zeros(0, dtype=torch.long)
    keep = torch.ones(len(labels), dtype=torch.bool)
    keep[val_index] = False
    return torch.nonzero(keep).flatten(), val_index
