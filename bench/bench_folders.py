"""`make bench`, image folders: kdrun's two data paths against a plain torchvision loader.

On a generated folder of JPEGs (so it runs offline), images per second over one training epoch
(decode + augment + normalise, up to a batch on the device; no model):
  streaming   kdrun's StreamingFolder, `workers` processes, RandomResizedCrop + flip (ImageNet style)
  plain       torchvision.datasets.ImageFolder + DataLoader, the same workers and the same transforms
              (v2.RandomResizedCrop + v2.RandomHorizontalFlip + normalise)
  in memory   kdrun's in-memory path (indexing + BatchAugment: padded crop + flip), after its one-time
              decode (timed apart), against the plain loader with those transforms
Each figure is the median of `reps` epochs after a warm-up epoch. `--tiny` runs it at toy sizes
(the test suite does; its timings mean nothing). Targets: streaming >= 1.0x plain, in memory >= 5x.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from rich.table import Table
from torch.utils.data import DataLoader
from torchvision import datasets
from torchvision.transforms import v2

from kdrun.console import console
from kdrun.sources.data import BatchAugment, batch_indices, drops_last, load_dataset

TARGETS = {"streaming_vs_plain": 1.0, "in_memory_vs_plain": 5.0}


@dataclass(frozen=True)
class Settings:
    images_per_class: int
    classes: int
    source_size: tuple[int, int]  # (height, width) of the generated JPEGs
    image_size: int  # training resolution
    crop_padding: int  # the in-memory path's augmentation
    batch_size: int
    workers: int
    reps: int


FULL = Settings(images_per_class=500, classes=4, source_size=(180, 240), image_size=112, crop_padding=8,
                batch_size=64, workers=2, reps=3)
TINY = Settings(images_per_class=8, classes=2, source_size=(40, 48), image_size=16, crop_padding=2,
                batch_size=4, workers=2, reps=1)


def write_folder(root: Path, s: Settings) -> Path:
    rng = np.random.default_rng(0)
    for c in range(s.classes):
        for i in range(s.images_per_class):
            path = root / "train" / f"class{c}" / f"{i:05d}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 255, (*s.source_size, 3), dtype=np.uint8)).save(path, quality=90)
    test = root / "test" / "class0" / "0.jpg"  # the layout needs a test split; not timed
    test.parent.mkdir(parents=True)
    test.write_bytes((root / "train" / "class0" / "00000.jpg").read_bytes())
    return root


def images_per_s(epoch, reps: int) -> float:
    """Median images/s of `reps` calls of epoch() (which returns the images it produced), after a warm-up."""
    epoch()
    rates = []
    for _ in range(reps):
        start = time.perf_counter()
        n = epoch()
        rates.append(n / (time.perf_counter() - start))
    return statistics.median(rates)


def folder_cfg(root: Path, s: Settings, in_memory: bool, cache_dir: Path) -> dict:
    return {"name": "image_folder", "root": str(root), "image_size": s.image_size, "eval_resize": None,
            "channels": 3, "val_fraction": 0.0, "on_bad_image": "error", "in_memory": in_memory, "memory_gb": 4.0,
            "workers": s.workers, "cache_dir": str(cache_dir), "mean": [0.5] * 3, "std": [0.25] * 3,
            "augment": {"crop_padding": s.crop_padding, "hflip": True, "random_resized_crop": not in_memory}}


def plain_loader(root: Path, s: Settings, transform, device) -> callable:
    data = datasets.ImageFolder(str(root / "train"), transform=transform)
    loader = DataLoader(data, batch_size=s.batch_size, shuffle=True, num_workers=s.workers, drop_last=True,
                        pin_memory=device.type == "cuda", persistent_workers=False)

    def epoch() -> int:
        n = 0
        for x, y in loader:
            x.to(device, non_blocking=True)
            n += len(y)
        return n

    return epoch


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="toy sizes: checks that it runs, timings mean nothing")
    parser.add_argument("--out", default="bench_folders.json", help="where to write the results")
    args = parser.parse_args(argv)
    s = TINY if args.tiny else FULL
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    normalise = [v2.ToDtype(torch.float32, scale=True), v2.Normalize([0.5] * 3, [0.25] * 3)]
    with tempfile.TemporaryDirectory(prefix="kdrun-bench-folders-") as tmp:
        root = write_folder(Path(tmp) / "folder", s)
        n = s.classes * s.images_per_class
        console.print(f"kdrun folder bench: {'tiny' if args.tiny else 'full'}, {n} JPEGs "
                      f"{s.source_size[1]}x{s.source_size[0]} -> {s.image_size}, {s.workers} workers, {device}")

        stream = load_dataset(folder_cfg(root, s, False, Path(tmp) / "cache"), device)
        generator = torch.Generator().manual_seed(0)
        epochs = iter(range(1, 10**6))

        def stream_epoch() -> int:
            order = torch.randperm(n, generator=generator)
            return sum(len(y) for _, y, _ in stream.batches(order, s.batch_size, next(epochs)))

        plain_rrc = plain_loader(root, s, v2.Compose([v2.PILToTensor(), v2.RandomResizedCrop(s.image_size),
                                                      v2.RandomHorizontalFlip(), *normalise]), device)
        start = time.perf_counter()
        memory = load_dataset(folder_cfg(root, s, True, Path(tmp) / "cache"), device)
        decode_s = time.perf_counter() - start
        augment = BatchAugment(s.crop_padding, True, memory.mean, memory.std)
        device_generator = torch.Generator(device=device).manual_seed(0)

        def memory_epoch() -> int:
            seen = 0
            for index in batch_indices(n, s.batch_size, generator=device_generator,
                                       drop_last=drops_last(n, s.batch_size), device=device):
                augment(memory.train_x[index], device_generator)
                seen += len(index)
            if device.type == "cuda":
                torch.cuda.synchronize()
            return seen

        plain_crop = plain_loader(root, s, v2.Compose([
            v2.PILToTensor(), v2.Resize(s.image_size, antialias=True), v2.CenterCrop(s.image_size),
            v2.RandomCrop(s.image_size, padding=s.crop_padding), v2.RandomHorizontalFlip(), *normalise]), device)
        rates = {"streaming": images_per_s(stream_epoch, s.reps), "plain_rrc": images_per_s(plain_rrc, s.reps),
                 "in_memory": images_per_s(memory_epoch, s.reps), "plain_crop": images_per_s(plain_crop, s.reps)}
    result = {
        "settings_name": "tiny" if args.tiny else "full", "settings": asdict(s), "device": str(device),
        "images_per_s": rates, "in_memory_decode_s": decode_s,
        "streaming_vs_plain": rates["streaming"] / rates["plain_rrc"],
        "in_memory_vs_plain": rates["in_memory"] / rates["plain_crop"], "targets": TARGETS,
    }
    table = Table(title="image folders: images/s over a training epoch (decode + augment)")
    for column in ("path", "images/s", "vs plain", "target"):
        table.add_column(column, justify="left" if column == "path" else "right")
    table.add_row("streaming (RRC + flip)", f"{rates['streaming']:.0f}", f"{result['streaming_vs_plain']:.2f}x",
                  f">= {TARGETS['streaming_vs_plain']}x")
    table.add_row("plain ImageFolder (RRC + flip)", f"{rates['plain_rrc']:.0f}", "", "")
    table.add_row("in memory (crop + flip)", f"{rates['in_memory']:.0f}", f"{result['in_memory_vs_plain']:.2f}x",
                  f">= {TARGETS['in_memory_vs_plain']}x")
    table.add_row("plain ImageFolder (crop + flip)", f"{rates['plain_crop']:.0f}", "", "")
    console.print(table)
    console.print(f"in-memory one-time decode + cache: {decode_s:.1f} s")
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    console.print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
