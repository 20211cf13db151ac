"""The peer bench's dataset: Fashion-MNIST written in CIFAR-10's on-disk layout, so that kdrun
(`dataset=cifar10`) and torchdistill (torchvision's CIFAR10) read the same pixels from the same files.

Each 28x28 grey image is padded with 2 black pixels to 32x32 and repeated to 3 channels; the first
`train_size` training and `test_size` test images are kept. The files are what CIFAR-10's python
version holds: `cifar-10-batches-py/data_batch_1..5`, `test_batch` and `batches.meta`, pickles of
dicts whose keys (and the array's raw bytes) are Python 2 strings, so that both readers find them:
kdrun's (encoding="bytes", b"data") and torchvision's (encoding="latin1", "data"). torchvision checks
each file's md5 against the original's; `manifest.json` records ours for the peer's loader.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import pickle
import struct
import sys
from io import BytesIO
from pathlib import Path

import numpy as np

from kdrun.sources.data.readers import read_idx
from kdrun.io import atomic_open, atomic_write_json

FOLDER = "cifar-10-batches-py"
TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILE = "test_batch"
META_FILE = "batches.meta"
LABEL_NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
               "Ankle boot")
IDX = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
       "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


class Py2Str(bytes):
    """Bytes that pickle as a Python 2 `str` (BINSTRING), as in the original CIFAR files."""


class _Py2Pickler(pickle._Pickler):  # the Python implementation: its dispatch table can be extended
    dispatch = pickle._Pickler.dispatch.copy()

    def save_py2_str(self, obj: Py2Str) -> None:
        n = len(obj)
        header = pickle.SHORT_BINSTRING + bytes([n]) if n < 256 else pickle.BINSTRING + struct.pack("<i", n)
        self.write(header + bytes(obj))
        self.memoize(obj)

    dispatch[Py2Str] = save_py2_str

    def reducer_override(self, obj):
        if isinstance(obj, np.ndarray):  # numpy's own reduction, its bytes (typecode and data) as Python 2 str
            rebuild, args, state = obj.__reduce__()
            return rebuild, _as_py2(args), _as_py2(state)
        return NotImplemented


def _as_py2(value):
    if isinstance(value, bytes):
        return Py2Str(value)
    if isinstance(value, tuple):
        return tuple(_as_py2(v) for v in value)
    return value


def py2_pickle(obj) -> bytes:
    buffer = BytesIO()
    _Py2Pickler(buffer, protocol=2).dump(obj)
    return buffer.getvalue()


def _load_idx(source: Path, split: str, count: int) -> tuple[np.ndarray, np.ndarray]:
    images_name, labels_name = IDX[split]

    def find(name: str) -> Path:
        for path in (source / name, source / f"{name}.gz"):
            if path.is_file():
                return path
        raise FileNotFoundError(f"{source / name}[.gz] not found (Fashion-MNIST's IDX files: "
                                "apt-get install dataset-fashion-mnist)")

    images, labels = read_idx(find(images_name)), read_idx(find(labels_name))
    if count > len(images):
        raise ValueError(f"{split}: {count} images asked for, {find(images_name)} holds {len(images)}")
    return images[:count], labels[:count]


def to_cifar(images: np.ndarray) -> np.ndarray:
    """(N, 28, 28) grey -> (N, 3072) uint8 rows in CIFAR's order: red plane, green, blue, each 32x32."""
    padded = np.pad(images, ((0, 0), (2, 2), (2, 2)))
    return np.repeat(padded[:, None], 3, axis=1).reshape(len(images), -1).astype(np.uint8)


def _batch(name: str, data: np.ndarray, labels: np.ndarray, first_index: int) -> dict:
    return {Py2Str(b"batch_label"): Py2Str(name.encode()),
            Py2Str(b"labels"): [int(y) for y in labels],
            Py2Str(b"data"): data,
            Py2Str(b"filenames"): [Py2Str(f"fashion_{first_index + i:05d}.png".encode()) for i in range(len(data))]}


def write_dataset(source: str | os.PathLike, root: str | os.PathLike, train_size: int, test_size: int) -> dict:
    """Write `root`/cifar-10-batches-py and `root`/manifest.json; returns the manifest."""
    if train_size < len(TRAIN_FILES) or test_size < 1:
        raise ValueError(f"train_size must be >= {len(TRAIN_FILES)} (one image per batch file) and test_size >= 1, "
                         f"got {train_size} and {test_size}")
    source, root = Path(source), Path(root)
    train_x, train_y = _load_idx(source, "train", train_size)
    test_x, test_y = _load_idx(source, "test", test_size)
    folder = root / FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    bounds = np.linspace(0, train_size, len(TRAIN_FILES) + 1).astype(int)
    rows = to_cifar(train_x)
    for i, name in enumerate(TRAIN_FILES):
        lo, hi = bounds[i], bounds[i + 1]
        files[name] = py2_pickle(_batch(f"training batch {i + 1} of 5", rows[lo:hi], train_y[lo:hi], lo))
    files[TEST_FILE] = py2_pickle(_batch("testing batch 1 of 1", to_cifar(test_x), test_y, 0))
    files[META_FILE] = py2_pickle({Py2Str(b"label_names"): [Py2Str(n.encode()) for n in LABEL_NAMES],
                                   Py2Str(b"num_cases_per_batch"): int(bounds[1]), Py2Str(b"num_vis"): 3072})
    for name, payload in files.items():
        with atomic_open(folder / name, "wb") as f:
            f.write(payload)
    manifest = {"source": str(source), "train_size": train_size, "test_size": test_size,
                "md5": {name: hashlib.md5(payload).hexdigest() for name, payload in files.items()}}
    atomic_write_json(root / "manifest.json", manifest)
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", default="/usr/share/datasets/fashion-mnist", help="folder of Fashion-MNIST's IDX files")
    parser.add_argument("--root", required=True, help="where to write cifar-10-batches-py/ and manifest.json")
    parser.add_argument("--train-size", type=int, default=6000)
    parser.add_argument("--test-size", type=int, default=2000)
    args = parser.parse_args(argv)
    try:
        write_dataset(args.source, args.root, args.train_size, args.test_size)
    except (OSError, ValueError) as exc:
        print(f"fashion_cifar: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {args.train_size} training and {args.test_size} test images to {Path(args.root) / FOLDER}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
