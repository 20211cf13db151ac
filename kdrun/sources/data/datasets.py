"""Datasets as whole tensors: each split is loaded once, as uint8 images and
int64 labels, and moved to the device; batching and augmentation happen there."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from kdrun.errors import ConfigError

from .folder_index import stratified_split
from .image_folder import open_image_folder
from .readers import read_cifar_batch, read_idx
from .splits import FOLDER_DATASETS, DatasetSplits, channel_stats

DATASET_NAMES = ("cifar10", "cifar100", "mnist", "fashion_mnist", "digits", "synthetic", "image_folder", "imagenet")

# Standard per-channel statistics (in [0, 1] units); digits and synthetic are computed from the train split.
_STATS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "mnist": ((0.1307,), (0.3081,)),
    "fashion_mnist": ((0.2860,), (0.3530,)),
}

Split = tuple[Tensor, Tensor]  # (uint8 images (N, C, H, W), int64 labels (N,)), on the CPU while loading
T = TypeVar("T")


class DatasetNotFoundError(FileNotFoundError):
    """A dataset's files are not on disk and could not be downloaded."""


def load_dataset(cfg: Mapping[str, Any], device: torch.device | str = "cpu", data_seed: int = 0):
    """Load the dataset `cfg` names (a `dataset` config group) onto `device`: a DatasetSplits, or for an
    image folder too large for memory a StreamingFolder (kdrun/sources/data/streaming.py)."""
    name = cfg.get("name")
    if name not in DATASET_NAMES:
        raise ValueError(f"unknown dataset {name!r}; known datasets: {', '.join(DATASET_NAMES)}")
    if name in FOLDER_DATASETS:
        return open_image_folder(cfg, device, data_seed)
    train, test, num_classes = _LOADERS[name](name, cfg)
    for split_name, split in (("train", train), ("test", test)):
        _check_split(name, split_name, split, num_classes)
    if train[0].shape[1:] != test[0].shape[1:]:
        raise ValueError(
            f"dataset {name!r}: train images are {tuple(train[0].shape[1:])} but test images are "
            f"{tuple(test[0].shape[1:])}"
        )
    # Statistics of the full train split, so limit_train does not change the normalisation.
    mean, std = _STATS[name] if name in _STATS else channel_stats(train[0])
    train, val = _hold_out(train, float(_option(cfg, "val_fraction", 0.0)))
    train = _first(train, _option(cfg, "limit_train", None), "limit_train")
    test = _first(test, _option(cfg, "limit_test", None), "limit_test")
    return DatasetSplits(
        name=name,
        train_x=train[0].to(device),
        train_y=train[1].to(device),
        test_x=test[0].to(device),
        test_y=test[1].to(device),
        num_classes=num_classes,
        mean=tuple(mean),
        std=tuple(std),
        val_x=val[0].to(device) if val else None,
        val_y=val[1].to(device) if val else None,
    )


def _hold_out(train: Split, fraction: float) -> tuple[Split, Split | None]:
    """(train, validation): a stratified `fraction` of train drawn with a fixed seed, or no validation split."""
    if not 0 <= fraction < 1:
        raise ValueError(f"dataset.val_fraction must be in [0, 1), got {fraction!r}")
    if fraction == 0:
        return train, None
    train_index, val_index = stratified_split(train[1], fraction, seed=0)
    return (train[0][train_index], train[1][train_index]), (train[0][val_index], train[1][val_index])


def _option(cfg: Mapping[str, Any], key: str, default: Any) -> Any:
    """cfg[key], or `default` where the key is missing or null (works for dicts and DictConfigs)."""
    value = cfg.get(key)
    return default if value is None else value


def _first(split: Split, limit: int | None, key: str) -> Split:
    if limit is None:
        return split
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ValueError(f"dataset.{key} must be a positive integer or null (all samples), got {limit!r}")
    return split[0][:limit].clone(), split[1][:limit].clone()  # copies, so the full split can be freed


def _check_split(name: str, split_name: str, split: Split, num_classes: int) -> None:
    x, y = split
    where = f"dataset {name!r}, {split_name} split"
    if len(x) == 0:
        raise ValueError(f"{where} is empty")
    if x.dtype != torch.uint8 or x.ndim != 4:
        raise ValueError(f"{where}: images must be uint8 (N, C, H, W), got {x.dtype} {tuple(x.shape)}")
    if len(y) != len(x):
        raise ValueError(f"{where} has {len(x)} images but {len(y)} labels")
    low, high = int(y.min()), int(y.max())
    if low < 0 or high >= num_classes:
        raise ValueError(f"{where} has labels in [{low}, {high}] but the dataset has {num_classes} classes")


# ---- files on disk, or torchvision's download ---------------------------------------------------


def _root(cfg: Mapping[str, Any]) -> Path:
    root = _option(cfg, "root", "data")
    if root is None or not str(root).strip():
        raise ConfigError(f"dataset.root={root!r} is empty; give the folder that holds (or will hold) the "
                          f"dataset files, e.g. dataset.root=data")
    path = Path(os.path.expanduser(str(root))).absolute()
    if path.exists() and not path.is_dir():  # else a download attempt ends in NotADirectoryError
        raise ConfigError(f"dataset.root={root} is a file, not a folder; give the folder that holds (or will hold) "
                          f"the {cfg.get('name', 'dataset')} files, e.g. dataset.root=data")
    return path


def _find_or_download(
    name: str, cfg: Mapping[str, Any], find: Callable[[], T | None], looked_in: list[Path], torchvision_class: str
) -> T:
    """Return what `find` finds; if nothing, let torchvision download into root, then find again."""
    found = find()
    if found is not None:
        return found
    if not _option(cfg, "download", True):
        raise _not_found(name, looked_in, "dataset.download=false", offer_download=True)
    import torchvision.datasets

    root = _root(cfg)
    candidates = [root / torchvision_class / "raw", root / torchvision_class, root, *root.parents]
    missing_before = [p for p in candidates if not p.exists()]
    try:
        # Only fetches; the files are then read by our own readers. torchvision
        # parses only files that passed its md5 check, so this is safe too.
        getattr(torchvision.datasets, torchvision_class)(str(root), download=True)
    except (OSError, RuntimeError) as exc:  # URLError is an OSError; torchvision wraps some in RuntimeError
        remove_empty_dirs(missing_before)
        raise _not_found(name, looked_in, "download failed", f"{type(exc).__name__}: {exc}".strip()) from exc
    found = find()
    if found is None:
        raise _not_found(name, looked_in, f"torchvision.datasets.{torchvision_class} did not leave them there")
    return found


def remove_empty_dirs(made_by_download: list[Path]) -> None:
    """Undo the folders a failed download made (torchvision makes root/<Class>/raw/ or root before
    fetching), so an offline attempt leaves no empty data/ behind. `made_by_download`: the candidates
    that did not exist before, deepest first; a folder that now holds anything is kept."""
    for folder in made_by_download:
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()


def _not_found(
    name: str, looked_in: list[Path], why: str, detail: str = "", offer_download: bool = False
) -> DatasetNotFoundError:
    places = "\n".join(f"  {path}" for path in looked_in)
    fetch = "set dataset.download=true to fetch them, " if offer_download else ""
    return DatasetNotFoundError(
        f"dataset {name!r} not found ({why}). Looked in:\n{places}\n"
        f"Point dataset.root=/path/to/folder at a folder holding the files, {fetch}"
        f"or use dataset=digits, which works offline." + (f"\n{detail}" if detail else "")
    )


# ---- the datasets -------------------------------------------------------------------------------


@dataclass(frozen=True)
class _CifarLayout:
    folder: str
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    label_key: bytes
    num_classes: int
    torchvision_class: str


_CIFAR = {
    "cifar10": _CifarLayout(
        "cifar-10-batches-py", tuple(f"data_batch_{i}" for i in range(1, 6)), ("test_batch",), b"labels", 10, "CIFAR10"
    ),
    "cifar100": _CifarLayout("cifar-100-python", ("train",), ("test",), b"fine_labels", 100, "CIFAR100"),
}


def _cifar(name: str, cfg: Mapping[str, Any]) -> tuple[Split, Split, int]:
    layout = _CIFAR[name]
    folder = _root(cfg) / layout.folder
    files = layout.train_files + layout.test_files

    def find() -> Path | None:
        return folder if all((folder / f).is_file() for f in files) else None

    folder = _find_or_download(name, cfg, find, [folder / f for f in files], layout.torchvision_class)

    def read(file_names: tuple[str, ...]) -> Split:
        batches = [read_cifar_batch(folder / f, layout.label_key) for f in file_names]
        return (
            torch.from_numpy(np.concatenate([x for x, _ in batches])),
            torch.from_numpy(np.concatenate([y for _, y in batches])),
        )

    return read(layout.train_files), read(layout.test_files), layout.num_classes


_IDX_FILES = {
    "train_x": "train-images-idx3-ubyte",
    "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte",
    "test_y": "t10k-labels-idx1-ubyte",
}
_TORCHVISION_IDX = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST"}


def _find_idx_files(folder: Path) -> dict[str, Path] | None:
    """The four IDX files (each plain or .gz) if all are in `folder`, else None."""
    found = {}
    for key, base in _IDX_FILES.items():
        found[key] = next((p for p in (folder / base, folder / f"{base}.gz") if p.is_file()), None)
        if found[key] is None:
            return None
    return found


def _mnist_like(name: str, cfg: Mapping[str, Any]) -> tuple[Split, Split, int]:
    root = _root(cfg)
    torchvision_class = _TORCHVISION_IDX[name]
    # torchvision's own folder first: it is specific to the dataset, while root
    # itself (how Debian's dataset-fashion-mnist installs them) uses the same names for both.
    folders = [root / torchvision_class / "raw", root]

    def find() -> dict[str, Path] | None:
        return next(filter(None, map(_find_idx_files, folders)), None)

    looked_in = [folder / f"{base}[.gz]" for folder in folders for base in _IDX_FILES.values()]
    paths = _find_or_download(name, cfg, find, looked_in, torchvision_class)

    def read(images_path: Path, labels_path: Path) -> Split:
        images, labels = read_idx(images_path), read_idx(labels_path)
        if images.ndim != 3 or images.dtype != np.uint8:
            raise ValueError(f"{images_path}: expected uint8 images (N, H, W), got {images.dtype} {images.shape}")
        if labels.ndim != 1:
            raise ValueError(f"{labels_path}: expected labels (N,), got shape {labels.shape}")
        if len(labels) != len(images):
            raise ValueError(f"{labels_path} has {len(labels)} labels but {images_path} has {len(images)} images")
        return torch.from_numpy(images).unsqueeze(1), torch.from_numpy(labels.astype(np.int64))

    return read(paths["train_x"], paths["train_y"]), read(paths["test_x"], paths["test_y"]), 10


def _digits(name: str, cfg: Mapping[str, Any]) -> tuple[Split, Split, int]:
    from sklearn.datasets import load_digits  # ships with scikit-learn: works offline
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = np.round(digits.images * (255 / 16)).astype(np.uint8)[:, None]  # 0..16 -> 0..255, (N, 1, 8, 8)
    labels = digits.target.astype(np.int64)
    # A fixed stratified 80/20 split, so every run sees the same test set.
    train_x, test_x, train_y, test_y = train_test_split(
        images, labels, test_size=0.2, random_state=0, stratify=labels
    )
    train = torch.from_numpy(train_x), torch.from_numpy(train_y)
    test = torch.from_numpy(test_x), torch.from_numpy(test_y)
    return train, test, 10


SYNTHETIC_NOISE = 0.25  # std of the per-pixel noise around each class template, in [0, 1] units


def _synthetic(name: str, cfg: Mapping[str, Any]) -> tuple[Split, Split, int]:
    """Each class is a smooth random template image plus noise: learnable, and
    the class survives crops and flips. Fully determined by the seed."""
    num_classes = int(_option(cfg, "num_classes", 10))
    size = int(_option(cfg, "image_size", 32))
    channels = int(_option(cfg, "channels", 3))
    train_size = int(_option(cfg, "train_size", 5000))
    test_size = int(_option(cfg, "test_size", 1000))
    sizes = dict(
        num_classes=num_classes, image_size=size, channels=channels, train_size=train_size, test_size=test_size
    )
    if min(sizes.values()) < 1:
        raise ValueError(f"synthetic dataset: every size must be >= 1, got {sizes}")
    generator = torch.Generator().manual_seed(int(_option(cfg, "seed", 0)))
    coarse = torch.rand(num_classes, channels, 4, 4, generator=generator)
    templates = F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)

    def sample(n: int) -> Split:
        labels = (torch.arange(n) % num_classes)[torch.randperm(n, generator=generator)]  # balanced classes
        noise = SYNTHETIC_NOISE * torch.randn(n, channels, size, size, generator=generator)
        images = (templates[labels] + noise).clamp(0, 1).mul(255).round().to(torch.uint8)
        return images, labels

    return sample(train_size), sample(test_size), num_classes


_LOADERS: dict[str, Callable[[str, Mapping[str, Any]], tuple[Split, Split, int]]] = {
    "cifar10": _cifar,
    "cifar100": _cifar,
    "mnist": _mnist_like,
    "fashion_mnist": _mnist_like,
    "digits": _digits,
    "synthetic": _synthetic,
}
