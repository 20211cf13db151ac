"""The student's training split when not every image keeps its label (a transfer set).

Model compression as Buciluă et al. (2006) defined it, and Hinton et al. (2015) section 3: a teacher
(here trained on the full labelled split, standing for a large pretrained model) labels images the
student has no label for. Three dataset keys shape the student's split, never the teacher's:

    dataset.labelled_fraction=f   a stratified fraction f of the training split keeps its labels (drawn
                                  with data_seed); the rest stay as unlabelled images
    dataset.omit_classes=[...]    every training image of these classes is dropped (the test split
                                  keeps them): what does the student learn of a class it never sees?
    dataset.transfer_root=PATH    a folder of extra unlabelled images joins the training split

An unlabelled image has the label -1 and `labelled` False. Label-using terms (cross-entropy, DKD)
read `Batch.labelled` and compute over labelled rows only; distillation terms see every row. A
strategy that trains on labels alone (scratch) gets the labelled images only, and as many steps per epoch
as the split they were drawn from gives (fresh shuffles of them, one after another): at the same `epochs`,
scratch and kd take the same number of optimiser steps, with the same schedule. (A transfer_root folder
adds steps to kd's epoch alone.)
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import Tensor

from kdrun.errors import ConfigError

from .splits import DatasetSplits
from .folder_cache import decoded_split
from .folder_index import IMAGE_EXTENSIONS, FolderSplit, images_under

UNLABELLED = -1  # the label an unlabelled image carries; F.cross_entropy refuses it, so a leak is loud
TRANSFER_KEYS = ("labelled_fraction", "omit_classes", "transfer_root")  # shape the student's split only


def class_names(data: DatasetSplits) -> list[str]:
    """The classes' names in label order: an image folder's, else the label numbers as strings."""
    return list(data.class_names) if data.class_names is not None else [str(c) for c in range(data.num_classes)]


def uses_transfer_set(dataset_cfg: Mapping[str, Any]) -> bool:
    """Whether any of the transfer keys changes the student's split from the plain training split."""
    return (dataset_cfg.get("labelled_fraction", 1.0) not in (None, 1, 1.0) or bool(dataset_cfg.get("omit_classes"))
            or dataset_cfg.get("transfer_root") is not None)


def omitted_classes(data: DatasetSplits, omit: list) -> list[int]:
    """Label numbers of the classes dataset.omit_classes names (by name, or by number for built-in data)."""
    names = class_names(data)
    wanted = [str(c) for c in omit or []]
    unknown = [c for c in wanted if c not in names]
    if unknown:
        raise ConfigError(f"dataset.omit_classes names {', '.join(map(repr, unknown))}, which dataset {data.name} "
                          f"lacks; its classes: {', '.join(names)}")
    labels = sorted({names.index(c) for c in wanted})
    if len(labels) == len(names):
        raise ConfigError(f"dataset.omit_classes={wanted} omits every class of {data.name}; the student would "
                          "have no training image. Omit fewer classes")
    return labels


def labelled_mask(labels: Tensor, fraction: float, data_seed: int, names: list[str]) -> Tensor:
    """A stratified mask over `labels`: round(fraction * n_c) images of each present class c keep their
    label, drawn with data_seed (so the same images stay labelled in every run that shares it)."""
    if not 0 < fraction <= 1:
        raise ConfigError(f"dataset.labelled_fraction must be in (0, 1] (the share of training images that keep "
                          f"their label), got {fraction!r}")
    generator = torch.Generator().manual_seed(int(data_seed))
    labels = labels.cpu()
    mask = torch.zeros(len(labels), dtype=torch.bool)
    for c in torch.unique(labels).tolist():
        members = torch.nonzero(labels == c).flatten()
        keep = round(fraction * len(members))
        if keep == 0:
            smallest = min(int((labels == k).sum()) for k in torch.unique(labels).tolist())
            raise ConfigError(f"dataset.labelled_fraction={fraction} leaves class {names[c]!r} ({len(members)} "
                              f"training images) with no labelled image; use at least {0.5 / smallest:.4g} so "
                              "that every class keeps one")
        mask[members[torch.randperm(len(members), generator=generator)[:keep]]] = True
    return mask


def transfer_split(data: DatasetSplits, dataset_cfg: Mapping[str, Any], data_seed: int, *,
                   unlabelled: bool, extra: Tensor | None = None) -> DatasetSplits:
    """The student's training split: omitted classes dropped, then a labelled_fraction keeps its labels.
    With `unlabelled`, the other images (and `extra`, uint8 images from transfer_root) stay with label -1
    and `train_labelled` marks the labelled ones; without, only the labelled images are kept (scratch).
    `data` itself is not changed: the teacher trains on it."""
    names = class_names(data)
    x, y = data.train_x, data.train_y
    omit = omitted_classes(data, list(dataset_cfg.get("omit_classes") or []))
    if omit:
        keep = ~torch.isin(y, torch.tensor(omit, device=y.device))
        x, y = x[keep], y[keep]
    fraction = dataset_cfg.get("labelled_fraction")
    mask = labelled_mask(y, 1.0 if fraction is None else float(fraction), data_seed, names).to(y.device)
    if not unlabelled:  # as many steps per epoch as the split it was drawn from: kd and scratch step alike
        return replace(data, train_x=x[mask], train_y=y[mask], train_labelled=None, epoch_samples=len(y))
    if extra is not None:
        x = torch.cat([x, extra.to(x.device)])
        y = torch.cat([y, y.new_full((len(extra),), UNLABELLED)])
        mask = torch.cat([mask, mask.new_zeros(len(extra))])
    y = torch.where(mask, y, UNLABELLED)
    return replace(data, train_x=x, train_y=y, train_labelled=None if bool(mask.all()) else mask)


def load_transfer_images(dataset_cfg: Mapping[str, Any], data: DatasetSplits) -> Tensor:
    """dataset.transfer_root's images (every image file under it, flat or in class folders whose names are
    ignored), decoded and fitted to the dataset's size and channels as an image folder's are: uint8
    (N, C, H, W). Unreadable files follow dataset.on_bad_image; decoded images are cached under
    dataset.cache_dir when the dataset has one."""
    root = dataset_cfg.get("transfer_root")
    folder = Path(os.path.expanduser(str(root)))
    if not folder.is_dir():
        raise ConfigError(f"dataset.transfer_root={root!r} is not a folder")
    paths = images_under(folder)
    if not paths:
        raise ConfigError(f"dataset.transfer_root={root!r} holds no image (allowed extensions: "
                          f"{', '.join(IMAGE_EXTENSIONS)})")
    split = FolderSplit(paths, torch.full((len(paths),), UNLABELLED, dtype=torch.long), [])
    skip_bad = dataset_cfg.get("on_bad_image") == "skip"
    decoded = decoded_split(split, size=data.image_size, resize=data.image_size, channels=data.in_channels,
                            skip_bad=skip_bad, cache_dir=dataset_cfg.get("cache_dir"))
    if len(decoded.x) == 0:
        raise ConfigError(f"dataset.transfer_root={root!r}: none of its {len(paths)} files could be read")
    return decoded.x


def transfer_details(data) -> dict:
    """metrics.json entries: how many training images the student had with and without a label."""
    n = len(data.train_y)
    mask = getattr(data, "train_labelled", None)  # a streamed folder has no transfer set
    labelled = n if mask is None else int(mask.sum())
    return {"labelled_images": labelled, "unlabelled_images": n - labelled}
