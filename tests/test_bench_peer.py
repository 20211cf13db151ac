"""`make bench-peer` (bench/peer/): its dataset is CIFAR-10's on-disk layout that kdrun's cifar10 loader and
torchvision's CIFAR10 both read, pixel for pixel; kdrun's side of the job runs end to end in tiny mode;
torchdistill's side too where its environment (bench/.peer-venv, `make bench-peer-env`) exists. No timing is
asserted. Also: a kdrun process does not import torchvision (a second of every run's start-up)."""

from __future__ import annotations

import gzip
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from kdrun.sources.data import load_dataset

PEER = Path(__file__).resolve().parents[1] / "bench" / "peer"
PEER_VENV = PEER.parent / ".peer-venv"
sys.path.insert(0, str(PEER))
from cifar_layout import FashionCifar10  # noqa: E402  (bench/peer/: torchvision's CIFAR10 on our files)
from fashion_cifar import write_dataset  # noqa: E402


def write_idx(path: Path, array: np.ndarray) -> None:
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


@pytest.fixture(scope="module")
def fashion(tmp_path_factory) -> tuple[Path, dict]:
    """A small Fashion-MNIST lookalike in IDX files: random grey 28x28 images, labels 0..9."""
    folder = tmp_path_factory.mktemp("fashion")
    rng = np.random.default_rng(0)
    arrays = {"train": (rng.integers(0, 256, (300, 28, 28)), rng.integers(0, 10, 300)),
              "t10k": (rng.integers(0, 256, (150, 28, 28)), rng.integers(0, 10, 150))}
    for split, (images, labels) in arrays.items():
        write_idx(folder / f"{split}-images-idx3-ubyte.gz", images)
        write_idx(folder / f"{split}-labels-idx1-ubyte.gz", labels)
    return folder, arrays


def expected_pixels(images: np.ndarray) -> torch.Tensor:
    """Independently: each image in the middle of a black 32x32 square, the same in all three channels."""
    out = torch.zeros(len(images), 3, 32, 32, dtype=torch.uint8)
    out[:, :, 2:30, 2:30] = torch.from_numpy(images.astype(np.uint8))[:, None]
    return out


def test_the_peer_dataset_is_cifar10_on_disk_for_kdrun_and_for_torchvision(fashion, tmp_path):
    source, arrays = fashion
    manifest = write_dataset(source, tmp_path, train_size=256, test_size=128)
    assert sorted(manifest["md5"]) == ["batches.meta", *(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]
    train_images, train_labels = arrays["train"][0][:256], arrays["train"][1][:256]
    test_images, test_labels = arrays["t10k"][0][:128], arrays["t10k"][1][:128]

    data = load_dataset({"name": "cifar10", "root": str(tmp_path), "download": False,
                         "augment": {"crop_padding": 4, "hflip": True}, "limit_train": None, "limit_test": None})
    assert torch.equal(data.train_x, expected_pixels(train_images))
    assert torch.equal(data.train_y, torch.from_numpy(train_labels.astype(np.int64)))
    assert torch.equal(data.test_x, expected_pixels(test_images))
    assert torch.equal(data.test_y, torch.from_numpy(test_labels.astype(np.int64)))

    # torchvision's reader (what torchdistill uses), with its md5 check pointed at the manifest's sums.
    train = FashionCifar10(str(tmp_path), train=True, download=False)
    test = FashionCifar10(str(tmp_path), train=False, download=False)
    assert train.classes[0] == "T-shirt/top" and len(train.classes) == 10
    assert np.array_equal(train.data, expected_pixels(train_images).permute(0, 2, 3, 1).numpy())
    assert train.targets == train_labels.tolist() and test.targets == test_labels.tolist()
    image, label = train[3]
    assert np.array_equal(np.asarray(image), train.data[3]) and label == train_labels[3]

    # A file that is not the one written fails torchvision's check, as a corrupt CIFAR-10 would.
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(b"not a batch")
    with pytest.raises(RuntimeError, match="not found or corrupted"):
        FashionCifar10(str(tmp_path), train=False, download=False)


def bench_peer(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(PEER / "bench_peer.py"), "--tiny", *args], cwd=tmp_path,
                          capture_output=True, text=True, timeout=900, env={**os.environ, "COLUMNS": "200"})


def test_bench_peer_refuses_without_fashion_mnist_in_one_line(tmp_path):
    out = tmp_path / "peer.json"
    proc = bench_peer(tmp_path, "--kdrun-only", "--source", str(tmp_path / "nowhere"), "--out", str(out))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == (f"bench-peer: no Fashion-MNIST in {tmp_path / 'nowhere'} (its IDX files); "
                                   "apt-get install dataset-fashion-mnist, or --source <folder>")
    assert not out.exists()


@pytest.mark.slow
def test_bench_peer_kdrun_side_runs_the_job_in_tiny_mode(fashion, tmp_path):
    out = tmp_path / "peer.json"
    proc = bench_peer(tmp_path, "--kdrun-only", "--source", str(fashion[0]), "--out", str(out))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(out.read_text())
    assert result["settings_name"] == "tiny" and result["job"]["train_images"] == 256
    assert result["job"]["reps_done"] == result["job"]["reps"] == 1
    (sweep,) = result["kdrun_sweep"]["runs"]
    assert len(sweep["test_acc"]) == 2  # one finished job per temperature
    assert all(0 <= a <= 100 for a in sweep["test_acc"]) and sweep["wall_s"] > 0
    assert len(result["kdrun_student"]["runs"][0]["test_acc"]) == 1
    assert {"load_before", "load_after"} <= set(sweep) and "load_avg_start" in result["machine"]
    assert "torchdistill_sweep" not in result and "sweep_ratio" not in result
    assert not list(tmp_path.glob("outputs"))  # every run lived in a temporary folder


@pytest.mark.slow
@pytest.mark.skipif(not (PEER_VENV / "bin" / "python").is_file(), reason="no torchdistill environment (make bench-peer-env)")
def test_bench_peer_both_tools_run_the_job_in_tiny_mode(fashion, tmp_path):
    out = tmp_path / "peer.json"
    proc = bench_peer(tmp_path, "--source", str(fashion[0]), "--out", str(out))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(out.read_text())
    assert len(result["torchdistill_sweep"]["runs"][0]["test_acc"]) == 2
    assert result["sweep_ratio"] > 0 and result["student_ratio"] > 0
    assert "T sweep" in proc.stdout and "wrote" in proc.stdout


def test_a_kdrun_process_does_not_import_torchvision():
    # kdrun.cli.main and the sweep callback Hydra instantiates for every run: importing torchvision cost each run
    # about a second of start-up; only an image folder or torchvision's pretrained weights need it.
    code = "import sys, kdrun.cli.main, kdrun.run, kdrun.report.sweep; print('torchvision' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False"


def test_gpu_check_without_a_gpu_says_so_in_one_line(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a GPU is here: gpu_check.sh runs for real")
    out = tmp_path / "gpu.json"
    proc = subprocess.run([sys.executable, str(PEER.parent / "gpu_check.py"), "--out", str(out)], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("gpu_check: no CUDA device visible to torch") and len(proc.stderr.splitlines()) == 1
    assert not out.exists()


@pytest.mark.slow
def test_gpu_check_cpu_safe_parts_run_and_write_their_json(tmp_path):
    out = tmp_path / "gpu.json"
    proc = subprocess.run([sys.executable, str(PEER.parent / "gpu_check.py"), "--device", "cpu", "--tiny", "--out",
                           str(out)], cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(out.read_text())
    cells = result["steps"]["kd_matrix"]
    assert [(c["precision"], c["channels_last"]) for c in cells] == [("fp32", False), ("fp32", True)]
    assert all(c["rc"] == 0 and c["epoch_s"] > 0 and c["images_per_s"] > 0 for c in cells), cells
    assert result["steps"]["torchrun"]["rc"] == 0 and result["steps"]["torchrun"]["world_size"] == 1
    assert not list(tmp_path.glob("outputs"))
