"""kdrun.sources.data: loading (offline, from small generated files), batching, augmentation."""

from __future__ import annotations

import gzip
import io
import os
import pickle
import socket
import struct
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from kdrun.sources.data import (
    DATASET_NAMES,
    BatchAugment,
    DatasetNotFoundError,
    DatasetSplits,
    iterate_batches,
    load_dataset,
    num_batches,
    read_idx,
)

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Safety net: any attempt to reach the network fails instead of downloading."""

    def refuse(*args, **kwargs):
        raise OSError("network access is disabled in tests")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)


# ---- writers for the on-disk formats ----------------------------------------------------------

_IDX_TYPES = {np.dtype(np.uint8): 0x08, np.dtype(np.int32): 0x0C, np.dtype(np.float32): 0x0D}


def write_idx(path: Path, array: np.ndarray) -> Path:
    """Write `array` as an IDX file, gzip-compressed if the name ends in .gz."""
    header = bytes([0, 0, _IDX_TYPES[array.dtype], array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.astype(array.dtype.newbyteorder(">")).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(payload) if path.suffix == ".gz" else payload)
    return path


def write_mnist_files(folder: Path, n_train=12, n_test=6, size=28, seed=0, suffix=".gz") -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, size, size), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train, dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, size, size), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    for name, array in arrays.items():
        write_idx(folder / f"{name}{suffix}", array)
    return arrays


class Py2Pickler(pickle._Pickler):
    """Pickles the way Python 2 wrote the original CIFAR files: every str as a
    byte string (BINSTRING), numpy arrays via numpy.core.multiarray._reconstruct."""

    dispatch = dict(pickle._Pickler.dispatch)

    def save_py2_str(self, obj):
        data = obj.encode("latin1") if isinstance(obj, str) else obj
        self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(obj)

    dispatch[str] = save_py2_str
    dispatch[bytes] = save_py2_str


def py2_pickle(obj) -> bytes:
    buffer = io.BytesIO()
    Py2Pickler(buffer, protocol=2).dump(obj)
    return buffer.getvalue().replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")


def modern_pickle(obj) -> bytes:
    """What re-saving a batch with today's Python and numpy gives (protocol 5, bytes keys)."""
    to_bytes = lambda value: value.encode() if isinstance(value, str) else value  # noqa: E731
    return pickle.dumps({to_bytes(k): v for k, v in obj.items()}, protocol=5)


def cifar_batch(rng, n: int, label_key: str, num_classes: int) -> dict:
    batch = {
        "batch_label": "training batch",
        "data": rng.integers(0, 256, (n, 3 * 32 * 32), dtype=np.uint8),
        label_key: [int(v) for v in rng.integers(0, num_classes, n)],
        "filenames": [f"img_{i}.png" for i in range(n)],
    }
    if label_key == "fine_labels":
        batch["coarse_labels"] = [label // 5 for label in batch[label_key]]
    return batch


def write_cifar10(root: Path, dump=py2_pickle, per_batch=4, n_test=6) -> dict[str, dict]:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    batches = {f"data_batch_{i}": cifar_batch(rng, per_batch, "labels", 10) for i in range(1, 6)}
    batches["test_batch"] = cifar_batch(rng, n_test, "labels", 10)
    for name, batch in batches.items():
        (folder / name).write_bytes(dump(batch))
    (folder / "batches.meta").write_bytes(
        dump({"label_names": [f"class{i}" for i in range(10)], "num_cases_per_batch": per_batch, "num_vis": 3072})
    )
    return batches


def write_cifar100(root: Path, dump=py2_pickle, n_train=10, n_test=5) -> dict[str, dict]:
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    batches = {"train": cifar_batch(rng, n_train, "fine_labels", 100), "test": cifar_batch(rng, n_test, "fine_labels", 100)}
    for name, batch in batches.items():
        (folder / name).write_bytes(dump(batch))
    (folder / "meta").write_bytes(
        dump({"fine_label_names": [f"f{i}" for i in range(100)], "coarse_label_names": [f"c{i}" for i in range(20)]})
    )
    return batches


def as_images(data: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(data.reshape(-1, 3, 32, 32))


# ---- digits and synthetic ---------------------------------------------------------------------


def test_digits_loads_a_fixed_stratified_split():
    data = load_dataset({"name": "digits"}, "cpu")
    assert isinstance(data, DatasetSplits)
    assert data.train_x.shape == (1437, 1, 8, 8) and data.test_x.shape == (360, 1, 8, 8)
    assert data.train_x.dtype == torch.uint8 and data.train_y.dtype == torch.int64
    assert data.num_classes == 10 and data.in_channels == 1 and data.image_size == 8
    assert int(data.train_x.max()) == 255 and int(data.train_x.min()) == 0
    per_class = torch.cat([data.train_y, data.test_y]).bincount()
    assert ((data.test_y.bincount() - per_class * 0.2).abs() <= 1).all()  # stratified
    assert len(data.mean) == len(data.std) == 1 and 0 < data.mean[0] < 1 and 0 < data.std[0] < 1

    again = load_dataset(OmegaConf.create({"name": "digits", "root": "unused"}), torch.device("cpu"))
    assert torch.equal(again.train_x, data.train_x) and torch.equal(again.test_y, data.test_y)


def test_limits_take_the_first_samples_and_keep_the_statistics():
    full = load_dataset({"name": "digits"})
    small = load_dataset({"name": "digits", "limit_train": 100, "limit_test": 7})
    assert len(small.train_x) == 100 and len(small.test_y) == 7
    assert torch.equal(small.train_x, full.train_x[:100]) and torch.equal(small.test_y, full.test_y[:7])
    assert small.mean == full.mean and small.std == full.std
    assert len(load_dataset({"name": "digits", "limit_train": None}).train_x) == 1437
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="limit_train"):
            load_dataset({"name": "digits", "limit_train": bad})


def synthetic_cfg(**overrides):
    cfg = dict(name="synthetic", num_classes=5, image_size=12, channels=3, train_size=200, test_size=50, seed=3)
    return OmegaConf.create({**cfg, **overrides})


def test_synthetic_shapes_classes_and_determinism():
    data = load_dataset(synthetic_cfg())
    assert data.train_x.shape == (200, 3, 12, 12) and data.test_x.shape == (50, 3, 12, 12)
    assert data.train_x.dtype == torch.uint8 and data.train_y.dtype == torch.int64
    assert data.num_classes == 5 and data.in_channels == 3 and data.image_size == 12
    assert torch.equal(data.train_y.bincount(), torch.full((5,), 40))
    assert len(data.mean) == 3 and all(0 < s < 1 for s in data.std)

    same = load_dataset(synthetic_cfg())
    assert torch.equal(same.train_x, data.train_x) and torch.equal(same.test_y, data.test_y)
    other = load_dataset(synthetic_cfg(seed=4))
    assert not torch.equal(other.train_x, data.train_x)

    gray = load_dataset(synthetic_cfg(channels=1, image_size=7, num_classes=3))
    assert gray.train_x.shape == (200, 1, 7, 7) and gray.num_classes == 3


def test_synthetic_is_learnable():
    """Nearest class mean on the train split classifies the test split far above chance."""
    data = load_dataset(synthetic_cfg())
    centroids = torch.stack([data.train_x[data.train_y == k].float().mean(0) for k in range(5)])
    predicted = torch.cdist(data.test_x.flatten(1).float(), centroids.flatten(1)).argmin(1)
    assert (predicted == data.test_y).float().mean() > 0.9


def test_synthetic_rejects_empty_splits():
    with pytest.raises(ValueError, match="train_size"):
        load_dataset(synthetic_cfg(train_size=0))


def test_unknown_dataset_names_the_value_and_the_choices():
    with pytest.raises(ValueError, match="'svhn'") as info:
        load_dataset({"name": "svhn"})
    assert all(name in str(info.value) for name in DATASET_NAMES)


# ---- IDX: read_idx, mnist, fashion_mnist ------------------------------------------------------


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_read_idx_round_trips(tmp_path, suffix):
    images = np.random.default_rng(0).integers(0, 256, (3, 4, 5), dtype=np.uint8)
    values = np.array([1, -2, 70000], dtype=np.int32)  # big-endian on disk
    floats = np.array([[0.5, -1.25]], dtype=np.float32)
    for name, array in (("images", images), ("values", values), ("floats", floats)):
        read = read_idx(write_idx(tmp_path / f"{name}{suffix}", array))
        assert read.dtype == array.dtype and read.shape == array.shape and np.array_equal(read, array)
        assert read.flags.writeable


@pytest.mark.parametrize(
    "content, message",
    [
        (b"\x00\x00\x08", "not an IDX file"),
        (b"\x12\x34\x08\x01" + struct.pack(">I", 2) + b"ab", "not an IDX file"),
        (b"\x00\x00\x07\x01" + struct.pack(">I", 2) + b"ab", "not an IDX file"),
        (b"\x00\x00\x08\x03" + struct.pack(">I", 2), "truncated"),
        (b"\x00\x00\x08\x02" + struct.pack(">II", 2, 3) + b"12345", r"shape \(2, 3\)"),
        (b"\x00\x00\x08\x01" + struct.pack(">I", 2) + b"abc", "malformed IDX"),
    ],
)
def test_read_idx_refuses_malformed_files(tmp_path, content, message):
    path = tmp_path / "bad-idx1-ubyte"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=message) as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_read_idx_refuses_a_corrupt_gzip(tmp_path):
    path = write_idx(tmp_path / "x-idx1-ubyte.gz", np.arange(100, dtype=np.uint8))
    path.write_bytes(path.read_bytes()[:-12])  # truncated stream
    with pytest.raises(ValueError, match="cannot decompress"):
        read_idx(path)
    path.write_bytes(b"not gzip at all")
    with pytest.raises(ValueError, match="cannot decompress"):
        read_idx(path)


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist"])
def test_mnist_like_loads_idx_files_at_root_level(tmp_path, name):
    arrays = write_mnist_files(tmp_path)
    data = load_dataset({"name": name, "root": str(tmp_path), "download": False})
    assert data.train_x.shape == (12, 1, 28, 28) and data.test_x.shape == (6, 1, 28, 28)
    assert data.train_x.dtype == torch.uint8 and data.train_y.dtype == torch.int64
    assert torch.equal(data.train_x[:, 0], torch.from_numpy(arrays["train-images-idx3-ubyte"]))
    assert torch.equal(data.test_y, torch.from_numpy(arrays["t10k-labels-idx1-ubyte"]).long())
    assert data.num_classes == 10
    assert data.mean == ((0.1307,) if name == "mnist" else (0.2860,))


def test_mnist_prefers_torchvision_layout_over_root(tmp_path):
    write_mnist_files(tmp_path, n_train=12)
    write_mnist_files(tmp_path / "MNIST" / "raw", n_train=8, suffix="")
    assert len(load_dataset({"name": "mnist", "root": str(tmp_path)}).train_x) == 8
    assert len(load_dataset({"name": "fashion_mnist", "root": str(tmp_path)}).train_x) == 12


def test_mnist_label_problems_are_clear_errors(tmp_path):
    arrays = write_mnist_files(tmp_path)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", arrays["t10k-labels-idx1-ubyte"][:5])
    with pytest.raises(ValueError, match="5 labels"):
        load_dataset({"name": "mnist", "root": str(tmp_path)})
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.full(6, 10, dtype=np.uint8))
    with pytest.raises(ValueError, match="10 classes"):
        load_dataset({"name": "mnist", "root": str(tmp_path)})
    write_mnist_files(tmp_path, n_train=0)
    with pytest.raises(ValueError, match="train split is empty"):
        load_dataset({"name": "mnist", "root": str(tmp_path)})


@pytest.mark.skipif(not DEBIAN_FASHION_MNIST.is_dir(), reason="Debian's dataset-fashion-mnist is not installed")
def test_real_fashion_mnist_from_debian():
    data = load_dataset({"name": "fashion_mnist", "root": str(DEBIAN_FASHION_MNIST), "download": False})
    assert data.train_x.shape == (60000, 1, 28, 28) and data.test_x.shape == (10000, 1, 28, 28)
    assert torch.equal(data.train_y.bincount(), torch.full((10,), 6000))
    assert abs(data.train_x.float().mean().item() / 255 - data.mean[0]) < 1e-3


# ---- CIFAR ------------------------------------------------------------------------------------


@pytest.mark.parametrize("dump", [py2_pickle, modern_pickle])
def test_cifar10_reads_the_python_batches(tmp_path, dump):
    batches = write_cifar10(tmp_path, dump)
    data = load_dataset({"name": "cifar10", "root": str(tmp_path), "download": False})
    assert data.train_x.shape == (20, 3, 32, 32) and data.test_x.shape == (6, 3, 32, 32)
    assert data.train_x.dtype == torch.uint8 and data.train_y.dtype == torch.int64
    train = [batches[f"data_batch_{i}"] for i in range(1, 6)]
    assert torch.equal(data.train_x, as_images(np.concatenate([b["data"] for b in train])))
    assert data.train_y.tolist() == [label for b in train for label in b["labels"]]
    assert torch.equal(data.test_x, as_images(batches["test_batch"]["data"]))
    assert data.num_classes == 10 and data.mean == (0.4914, 0.4822, 0.4465)


@pytest.mark.parametrize("dump", [py2_pickle, modern_pickle])
def test_cifar100_reads_the_fine_labels(tmp_path, dump):
    batches = write_cifar100(tmp_path, dump)
    data = load_dataset({"name": "cifar100", "root": str(tmp_path), "download": False})
    assert data.train_x.shape == (10, 3, 32, 32) and data.test_x.shape == (5, 3, 32, 32)
    assert data.train_y.tolist() == batches["train"]["fine_labels"]
    assert torch.equal(data.test_x, as_images(batches["test"]["data"]))
    assert data.num_classes == 100 and data.std == (0.2673, 0.2564, 0.2762)


class RunsCommand:
    """A pickle payload that would run a shell command when unpickled without restriction."""

    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


class EvalsCode:
    def __reduce__(self):
        return eval, ("print('pwned')",)


@pytest.mark.parametrize("payload", ["os.system", "eval"])
def test_cifar_reader_refuses_pickles_that_run_code(tmp_path, payload):
    write_cifar10(tmp_path)
    marker = tmp_path / "pwned"
    evil = RunsCommand(f"touch {marker}") if payload == "os.system" else EvalsCode()
    batch = {b"data": evil, b"labels": [0]}
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").write_bytes(pickle.dumps(batch, protocol=2))
    with pytest.raises(ValueError, match="refusing to load global") as info:
        load_dataset({"name": "cifar10", "root": str(tmp_path), "download": False})
    assert "data_batch_3" in str(info.value)
    assert not marker.exists()


def test_cifar_reader_refuses_a_malformed_batch(tmp_path):
    write_cifar10(tmp_path)
    bad = {"data": np.zeros((4, 100), dtype=np.uint8), "labels": [0, 1, 2, 3]}
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(py2_pickle(bad))
    with pytest.raises(ValueError, match=r"test_batch: malformed CIFAR batch"):
        load_dataset({"name": "cifar10", "root": str(tmp_path), "download": False})


# ---- missing datasets -------------------------------------------------------------------------

EXPECTED_PATH = {
    "cifar10": "cifar-10-batches-py/data_batch_1",
    "cifar100": "cifar-100-python/train",
    "mnist": "MNIST/raw/train-images-idx3-ubyte",
    "fashion_mnist": "FashionMNIST/raw/train-images-idx3-ubyte",
}


def assert_helpful(error: DatasetNotFoundError, root: Path, name: str):
    message = str(error)
    assert isinstance(error, FileNotFoundError)
    assert str(root / EXPECTED_PATH[name]) in message
    assert "dataset.root=" in message and "dataset=digits" in message and repr(name) in message


@pytest.mark.parametrize("name", sorted(EXPECTED_PATH))
def test_missing_dataset_offline_says_where_it_looked(tmp_path, name):
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset({"name": name, "root": str(tmp_path / "nowhere"), "download": False})
    assert_helpful(info.value, tmp_path / "nowhere", name)
    assert "download=false" in str(info.value)
    assert not (tmp_path / "nowhere").exists()


@pytest.mark.parametrize("name", sorted(EXPECTED_PATH))
def test_failed_download_is_a_dataset_not_found_error(tmp_path, monkeypatch, name):
    attempts = []

    def urlopen(request, *args, **kwargs):
        attempts.append(getattr(request, "full_url", request))
        raise urllib.error.URLError("no network in tests")

    monkeypatch.setattr(urllib.request, "urlopen", urlopen)
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset({"name": name, "root": str(tmp_path)})  # download defaults to true
    assert attempts, "torchvision should have tried to download"
    assert_helpful(info.value, tmp_path, name)
    assert "download failed" in str(info.value)
    assert isinstance(info.value.__cause__, (OSError, RuntimeError))


# ---- batches and augmentation -----------------------------------------------------------------


@pytest.mark.parametrize("shuffle", [True, False])
@pytest.mark.parametrize("drop_last", [True, False])
def test_iterate_batches_covers_each_sample_once(shuffle, drop_last):
    x = torch.arange(23).view(23, 1, 1, 1).to(torch.uint8)
    y = torch.arange(23) * 10
    generator = torch.Generator().manual_seed(0)
    batches = list(iterate_batches(x, y, 5, shuffle=shuffle, generator=generator, drop_last=drop_last))
    assert len(batches) == num_batches(23, 5, drop_last) == (4 if drop_last else 5)
    assert [len(xb) for xb, _ in batches] == ([5] * 4 if drop_last else [5, 5, 5, 5, 3])
    seen = torch.cat([xb.flatten() for xb, _ in batches]).long()
    assert all(torch.equal(yb, xb.flatten().long() * 10) for xb, yb in batches)  # pairs stay together
    if drop_last:
        assert len(seen) == 20 and len(set(seen.tolist())) == 20
    else:
        assert sorted(seen.tolist()) == list(range(23))
    assert (seen.tolist() != list(range(len(seen)))) == shuffle


def test_iterate_batches_is_reproducible_and_validates():
    x, y = torch.zeros(10, 1, 2, 2), torch.arange(10)
    order = lambda seed: [yb.tolist() for _, yb in iterate_batches(x, y, 4, shuffle=True, generator=torch.Generator().manual_seed(seed))]  # noqa: E501,E731
    assert order(1) == order(1) and order(1) != order(2)
    assert num_batches(0, 4) == 0 and list(iterate_batches(x[:0], y[:0], 4, shuffle=True)) == []
    with pytest.raises(ValueError, match="batch_size"):
        next(iterate_batches(x, y, 0, shuffle=False))
    with pytest.raises(ValueError, match="samples"):
        next(iterate_batches(x, y[:9], 4, shuffle=False))


MEAN, STD = (0.5, 0.4, 0.3), (0.25, 0.2, 0.3)


def images(n=64, size=8, seed=0) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, size, size), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def normalised(x: torch.Tensor) -> torch.Tensor:
    return (x.float() / 255 - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


def test_augment_without_crop_or_flip_only_normalises():
    x = images()
    out = BatchAugment(0, False, MEAN, STD)(x, torch.Generator().manual_seed(0), train=True)
    assert out.dtype == torch.float32 and out.shape == x.shape
    assert torch.allclose(out, normalised(x), atol=1e-6)


def test_augment_eval_mode_is_deterministic_normalisation():
    x = images()
    augment = BatchAugment(4, True, MEAN, STD)
    for generator in (None, torch.Generator().manual_seed(5)):
        assert torch.allclose(augment(x, generator, train=False), normalised(x), atol=1e-6)


def test_augment_is_reproducible_per_seed_and_keeps_shapes():
    x = images()
    augment = BatchAugment(4, True, MEAN, STD)
    run = lambda seed: augment(x, torch.Generator().manual_seed(seed), train=True)  # noqa: E731
    first = run(0)
    assert first.shape == x.shape and first.dtype == torch.float32
    assert torch.equal(first, run(0))
    assert not torch.equal(first, run(1))
    assert augment(x, None, train=True).shape == x.shape  # global RNG
    assert torch.equal(x, images())  # the input is left alone


def test_augment_flip_mirrors_some_samples():
    x = images()
    out = BatchAugment(0, True, MEAN, STD)(x, torch.Generator().manual_seed(0), train=True)
    plain, mirrored = normalised(x), normalised(x.flip(-1))
    is_plain = torch.isclose(out, plain, atol=1e-6).flatten(1).all(1)
    is_mirrored = torch.isclose(out, mirrored, atol=1e-6).flatten(1).all(1)
    assert (is_plain | is_mirrored).all()
    assert 10 < int(is_mirrored.sum()) < 54


def test_augment_crop_shifts_each_sample_within_the_padding():
    x, pad = images(n=32), 2
    out = BatchAugment(pad, False, MEAN, STD)(x, torch.Generator().manual_seed(0), train=True)
    padded = normalised(torch.nn.functional.pad(x, (pad,) * 4))  # zero padding, normalised like the rest
    windows = {(dy, dx): padded[:, :, dy : dy + 8, dx : dx + 8] for dy in range(2 * pad + 1) for dx in range(2 * pad + 1)}
    offsets = []
    for i in range(len(x)):
        matches = [offset for offset, window in windows.items() if torch.allclose(out[i], window[i], atol=1e-6)]
        assert matches, f"sample {i} is not a crop of its padded image"
        offsets.append(matches[0])
    assert len(set(offsets)) > 5  # offsets differ per sample
    assert sum(offset != (pad, pad) for offset in offsets) > 16  # most samples moved


def test_augment_validates_its_arguments():
    with pytest.raises(ValueError, match="crop_padding"):
        BatchAugment(-1, False, MEAN, STD)
    with pytest.raises(ValueError, match="std"):
        BatchAugment(0, False, MEAN, (0.2, 0.0, 0.3))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_augment_and_batches_on_cuda():
    x = images().cuda()
    augment = BatchAugment(4, True, MEAN, STD)
    run = lambda seed: augment(x, torch.Generator(device="cuda").manual_seed(seed), train=True)  # noqa: E731
    assert run(0).device.type == "cuda" and torch.equal(run(0), run(0)) and not torch.equal(run(0), run(1))
    assert torch.allclose(augment(x, None, train=False).cpu(), normalised(x.cpu()), atol=1e-6)
    y = torch.arange(64, device="cuda")
    batches = list(iterate_batches(x, y, 10, shuffle=True, generator=torch.Generator(device="cuda").manual_seed(0)))
    assert sorted(torch.cat([yb for _, yb in batches]).tolist()) == list(range(64))
    data = load_dataset({"name": "digits"}, "cuda")
    assert data.train_x.device.type == "cuda" and data.test_y.device.type == "cuda"


def test_computed_statistics_are_exact_whatever_the_thread_count():
    """digits' mean/std feed the teacher-output cache key: a float reduction gave std values that moved in
    the last bits with the thread count, so two identical runs recorded the teacher twice."""
    import math
    from fractions import Fraction

    from kdrun.sources.data.splits import channel_stats

    x = torch.randint(0, 256, (997, 3, 9, 9), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    threads = torch.get_num_threads()
    try:
        results = []
        for n in (1, 2):
            torch.set_num_threads(n)
            results.append(channel_stats(x))
    finally:
        torch.set_num_threads(threads)
    assert results[0] == results[1]
    pixels = [int(v) for v in x[:, 1].flatten()]
    mean = Fraction(sum(pixels), 255 * len(pixels))
    var = sum((Fraction(v, 255) - mean) ** 2 for v in pixels) / len(pixels)
    assert results[0][0][1] == float(mean) and results[0][1][1] == math.sqrt(var)
