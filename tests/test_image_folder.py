"""dataset=image_folder / imagenet: scanning, the validation split, both data paths, bad data, the CLI."""

from __future__ import annotations

import json
import re
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import only_run_dir
from kdrun.sources.data import load_dataset
from kdrun.sources.data.folder_cache import cache_key
from kdrun.sources.data.folder_index import scan_layout, stratified_split
from kdrun.sources.data.images import BadImageError, fit, sample_generator
from kdrun.sources.data.streaming import StreamingFolder
from kdrun.errors import ConfigError, DataError

CLASSES = ("cat", "dog", "eel")


def write_image(path: Path, rng: np.random.Generator, label: int, size=(20, 24), gray=False) -> None:
    """A learnable image: the class sets which third of the picture is bright."""
    h, w = size
    pixels = rng.integers(0, 80, (h, w, 3), dtype=np.uint8)
    band = label % 3
    pixels[:, band * w // 3:(band + 1) * w // 3] += 150
    image = Image.fromarray(pixels)
    if gray:
        image = image.convert("L")
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, quality=95) if path.suffix == ".jpg" else image.save(path)


def make_folder(root: Path, per_class=(12, 4), splits=("train", "test"), gray=False, seed=0,
                sizes=((20, 24), (30, 18)), classes=CLASSES) -> Path:
    """root/<split>/<class>/ with PNGs and JPEGs of two sizes in three classes."""
    rng = np.random.default_rng(seed)
    for split, n in zip(splits, per_class):
        for label, name in enumerate(classes):
            for i in range(n):
                suffix = ".png" if i % 2 else ".jpg"
                write_image(root / split / name / f"{i:04d}{suffix}", rng, label, sizes[i % len(sizes)], gray)
    return root


def folder_cfg(root: Path, **overrides) -> dict:
    cfg = {"name": "image_folder", "root": str(root), "image_size": 16, "eval_resize": None, "channels": None,
           "val_fraction": None, "on_bad_image": "error", "in_memory": "auto", "memory_gb": 4.0, "workers": 0,
           "cache_dir": str(root.parent / "cache"), "mean": None, "std": None,
           "augment": {"crop_padding": 2, "hflip": True, "random_resized_crop": False}}
    cfg.update(overrides)
    return cfg


# ---- the layout -----------------------------------------------------------------------------------------


def test_scan_reads_classes_labels_and_splits(tmp_path):
    layout = scan_layout(make_folder(tmp_path / "d", splits=("train", "val")))
    assert layout.train.class_names == list(CLASSES) and layout.test_folder == "val" and layout.val is None
    assert layout.train.labels.tolist() == [0] * 12 + [1] * 12 + [2] * 12
    assert all(Path(p).parent.name == CLASSES[y] for p, y in zip(layout.test.paths, layout.test.labels.tolist()))
    both = scan_layout(make_folder(tmp_path / "e", per_class=(6, 2, 2), splits=("train", "val", "test")))
    assert both.test_folder == "test" and len(both.val) == 6 and len(both.test) == 6


def test_layout_problems_are_named(tmp_path):
    root = make_folder(tmp_path / "d", per_class=(2, 1))
    (root / "train" / "fox").mkdir()
    with pytest.raises(DataError, match=r"train/fox: an empty class folder"):
        scan_layout(root)
    (root / "train" / "fox").rmdir()
    write_image(root / "test" / "owl" / "a.png", np.random.default_rng(0), 0)
    with pytest.raises(DataError, match=r"test/owl: class 'owl' is not among the training classes"):
        scan_layout(root)
    (root / "test" / "owl" / "a.png").unlink()
    (root / "test" / "owl").rmdir()
    (root / "train" / "cat" / "notes.txt").write_text("hello")
    with pytest.raises(DataError, match=r"cat/notes.txt: not an image file"):
        scan_layout(root)
    with pytest.raises(DataError, match="no train/ folder"):
        scan_layout(tmp_path)


def test_val_split_is_stratified_fixed_and_never_overlaps_train():
    labels = torch.tensor([0] * 50 + [1] * 30 + [2] * 20)
    train, val = stratified_split(labels, 0.1, seed=0)
    assert set(train.tolist()).isdisjoint(val.tolist())
    assert sorted(train.tolist() + val.tolist()) == list(range(100))
    assert torch.bincount(labels[val]).tolist() == [5, 3, 2]  # 10% of each class
    again = stratified_split(labels, 0.1, seed=0)
    assert torch.equal(again[1], val)
    with pytest.raises(ValueError, match=r"val_fraction must be in \[0, 1\), got 1.0"):
        stratified_split(labels, 1.0, seed=0)


def test_folder_without_val_holds_out_a_stratified_tenth(tmp_path):
    data = load_dataset(folder_cfg(make_folder(tmp_path / "d", per_class=(20, 4))))
    assert data.class_names == list(CLASSES) and data.num_classes == 3
    assert torch.bincount(data.val_y).tolist() == [2, 2, 2] and len(data.train_y) == 54
    train_rows = {bytes(x.numpy()) for x in data.train_x}
    assert not train_rows & {bytes(x.numpy()) for x in data.val_x}  # no image in both
    none = load_dataset(folder_cfg(tmp_path / "d", val_fraction=0.0))
    assert none.val_x is None and len(none.train_y) == 60


def test_val_fraction_applies_to_the_tensor_datasets_too():
    data = load_dataset({"name": "digits", "val_fraction": 0.2})
    assert len(data.val_y) == round(0.2 * (len(data.val_y) + len(data.train_y)))
    assert load_dataset({"name": "digits"}).val_x is None


# ---- in memory: decoded once, cached -----------------------------------------------------------------


def test_in_memory_decodes_once_and_the_cache_follows_the_files(tmp_path):
    root = make_folder(tmp_path / "d")
    cfg = folder_cfg(root)
    data = load_dataset(cfg)
    assert data.train_x.dtype == torch.uint8 and data.train_x.shape[1:] == (3, 16, 16)
    cached = sorted((tmp_path / "cache").glob("*.pt"))
    assert len(cached) == 3  # train, val, test
    stamps = [p.stat().st_mtime_ns for p in cached]
    again = load_dataset(cfg)
    assert torch.equal(again.train_x, data.train_x) and [p.stat().st_mtime_ns for p in cached] == stamps
    layout = scan_layout(root)
    key = cache_key(layout.test, 16, 16, 3)
    touched = Path(layout.test.paths[0])
    os.utime(touched, ns=(touched.stat().st_atime_ns, touched.stat().st_mtime_ns + 10**9))
    assert cache_key(layout.test, 16, 16, 3) != key


def test_grayscale_folders_load_one_channel(tmp_path):
    data = load_dataset(folder_cfg(make_folder(tmp_path / "d", gray=True)))
    assert data.in_channels == 1 and len(data.mean) == 1
    rgb = load_dataset(folder_cfg(tmp_path / "d", channels=3, cache_dir=None))
    assert rgb.in_channels == 3


def test_a_corrupt_image_is_named_or_skipped_and_counted(tmp_path):
    root = make_folder(tmp_path / "d")
    bad = root / "train" / "dog" / "0003.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(BadImageError, match=f"{bad}: cannot read this image.*on_bad_image=skip"):
        load_dataset(folder_cfg(root, cache_dir=None))
    data = load_dataset(folder_cfg(root, on_bad_image="skip", val_fraction=0.0, cache_dir=None))
    assert data.skipped_images == 1 and len(data.train_y) == 35


@pytest.mark.parametrize("in_memory", [True, False], ids=["in_memory", "streamed"])
@pytest.mark.parametrize("name", ["0000.jpg", "0003.png"], ids=["first", "later"])
def test_an_empty_image_is_named_or_skipped_even_when_it_is_the_first(tmp_path, in_memory, name):
    """Issue 23 items 7 and 8: a 0-byte file gave torch.frombuffer's error, naming no file, and
    on_bad_image=skip did not skip a bad first image (the channel count was read from it)."""
    root = make_folder(tmp_path / "d")
    bad = root / "train" / "cat" / name
    bad.write_bytes(b"")
    settings = {"val_fraction": 0.0, "cache_dir": None, "in_memory": in_memory}

    def every_training_image(data) -> int:
        if isinstance(data, StreamingFolder):
            return sum(len(y) for _, y, _ in data.batches(torch.arange(36), 12, 1))
        return len(data.train_y)

    with pytest.raises(BadImageError, match=re.escape(f"{bad}: cannot read this image (an empty file, 0 bytes)")):
        every_training_image(load_dataset(folder_cfg(root, **settings)))
    data = load_dataset(folder_cfg(root, on_bad_image="skip", **settings))
    assert every_training_image(data) == 35 and data.skipped_images == 1 and data.in_channels == 3


# ---- streaming ------------------------------------------------------------------------------------------


def streaming(root: Path, workers=0, **overrides) -> StreamingFolder:
    cfg = folder_cfg(root, in_memory=False, workers=workers, mean=[0.5, 0.5, 0.5], std=[0.25, 0.25, 0.25],
                     **overrides)
    data = load_dataset(cfg, data_seed=3)
    assert isinstance(data, StreamingFolder)
    return data


def test_auto_streams_what_does_not_fit_under_memory_gb(tmp_path):
    root = make_folder(tmp_path / "d")
    assert isinstance(load_dataset(folder_cfg(root, memory_gb=1e-6)), StreamingFolder)
    with pytest.raises(ConfigError, match="dataset.in_memory='maybe' is not allowed; allowed: true, false, auto"):
        load_dataset(folder_cfg(root, in_memory="maybe"))


def test_both_paths_give_the_same_samples(tmp_path):
    """Without augmentation, the streamed batches are the in-memory pixels, normalised alike (exactly:
    both decode and resize through the same functions)."""
    root = make_folder(tmp_path / "d")
    stats = dict(mean=[0.5, 0.5, 0.5], std=[0.25, 0.25, 0.25])
    memory = load_dataset(folder_cfg(root, in_memory=True, **stats))
    stream = streaming(root, augment={"crop_padding": 0, "hflip": False, "random_resized_crop": False})

    def normalised(x):
        return (x.float() / 255 - 0.5) / 0.25

    order = torch.randperm(len(memory.train_y), generator=torch.Generator().manual_seed(0))
    seen = 0
    for x, y, index in stream.batches(order, 8, epoch=1, start_step=0):
        torch.testing.assert_close(x, normalised(memory.train_x[index]), rtol=0, atol=1e-5)
        assert torch.equal(y, memory.train_y[index])
        seen += len(y)
    assert seen == len(order) // 8 * 8  # the short last batch is dropped, as in memory
    test = list(stream.evaluate(7))
    torch.testing.assert_close(torch.cat([x for x, _, _ in test]), normalised(memory.test_x), rtol=0, atol=1e-5)
    val = torch.cat([y for _, y, _ in stream.evaluate(7, split="val")])
    assert torch.equal(val, memory.val_y)


def test_streamed_views_depend_on_seed_epoch_and_index_only(tmp_path):
    root = make_folder(tmp_path / "d")
    augment = {"crop_padding": 0, "hflip": True, "random_resized_crop": True}
    data = streaming(root, augment=augment, val_fraction=0.0)
    order = torch.arange(len(data.train_y))
    first = {int(i): x for xb, _, ib in data.batches(order, 6, 1) for x, i in zip(xb, ib)}
    reversed_order = {int(i): x for xb, _, ib in data.batches(order.flip(0), 6, 1) for x, i in zip(xb, ib)}
    for i in first:
        assert torch.equal(first[i], reversed_order[i])
    second_epoch = {int(i): x for xb, _, ib in data.batches(order, 6, 2) for x, i in zip(xb, ib)}
    assert any(not torch.equal(first[i], second_epoch[i]) for i in first)
    resumed = list(data.batches(order, 6, 1, start_step=2))
    assert torch.equal(resumed[0][2], order[12:18])
    g1, g2 = sample_generator(3, 1, 5), sample_generator(3, 1, 5)
    assert torch.equal(torch.rand(4, generator=g1), torch.rand(4, generator=g2))


def test_the_same_batches_for_zero_one_and_two_workers(tmp_path):
    root = make_folder(tmp_path / "d")
    augment = {"crop_padding": 0, "hflip": True, "random_resized_crop": True}
    order = torch.randperm(30, generator=torch.Generator().manual_seed(1))
    runs = [list(streaming(root, workers=w, augment=augment).batches(order, 5, 4)) for w in (0, 1, 2)]
    for other in runs[1:]:
        assert len(other) == len(runs[0])
        for (x0, y0, i0), (x, y, i) in zip(runs[0], other):
            assert torch.equal(x0, x) and torch.equal(y0, y) and torch.equal(i0, i)


def test_streaming_skips_and_counts_bad_images(tmp_path):
    root = make_folder(tmp_path / "d")
    bad = root / "train" / "eel" / "0000.jpg"
    bad.write_bytes(b"\xff\xd8\xff garbage")
    data = streaming(root, on_bad_image="skip", val_fraction=0.0)
    order = torch.arange(36)
    sizes = [len(y) for _, y, _ in data.batches(order, 12, 1)]
    assert sizes == [12, 12, 11] and data.skipped_images == 1
    with pytest.raises(BadImageError, match=str(bad)):
        list(streaming(root, val_fraction=0.0).batches(order, 12, 1))


def test_imagenet_eval_view_is_resize_256_then_centre_crop_224():
    image = torch.arange(3 * 300 * 400, dtype=torch.int64).remainder(251).to(torch.uint8).view(3, 300, 400)
    out = fit(image, 224, 256)
    assert out.shape == (3, 224, 224)
    from torchvision.transforms import v2

    expected = v2.Compose([v2.Resize(256, antialias=True), v2.CenterCrop(224)])(image)
    assert torch.equal(out, expected)


@pytest.mark.slow
def test_streams_a_2000_image_folder_with_two_workers(tmp_path):
    root = make_folder(tmp_path / "d", per_class=(667, 2), sizes=((32, 32),))
    data = streaming(root, workers=2, val_fraction=0.0,
                     augment={"crop_padding": 0, "hflip": True, "random_resized_crop": True})
    order = torch.randperm(len(data.train_y), generator=torch.Generator().manual_seed(0))
    seen = torch.cat([index for _, _, index in data.batches(order, 64, 1)])
    assert len(data.train_y) == 2001 and torch.equal(seen, order[: len(seen)]) and len(seen) == 31 * 64


# ---- from the command line ------------------------------------------------------------------------------


def test_kdrun_trains_on_an_image_folder_and_records_the_classes(tmp_path, kdrun):
    root = make_folder(tmp_path / "photos", per_class=(8, 3))
    kdrun("dataset=image_folder", f"dataset.root={root}", "dataset.image_size=12", "strategy=scratch",
          "student=cnn_student", "epochs=1", "batch_size=8", "trainer.progress=false")
    run = only_run_dir(tmp_path)
    summary = json.loads((run / "metrics.json").read_text())
    assert summary["class_names"] == list(CLASSES) and summary["val_samples"] == 3
    meta = torch.load(run / "checkpoints" / "last.pt", weights_only=True)["model"]
    assert meta["class_names"] == list(CLASSES) and meta["image_size"] == 12
    assert list((tmp_path / "outputs" / "datasets").glob("*.pt"))


def test_kdrun_names_a_bad_image_without_a_traceback(tmp_path, kdrun):
    root = make_folder(tmp_path / "photos", per_class=(4, 2))
    (root / "test" / "cat" / "0001.png").write_bytes(b"nope")
    proc = kdrun("dataset=image_folder", f"dataset.root={root}", "strategy=scratch", "student=cnn_student",
                 "epochs=1", "trainer.progress=false", check=False)
    assert proc.returncode != 0
    assert f"{root}/test/cat/0001.png: cannot read this image" in proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr


def test_kdrun_without_root_says_what_to_set(kdrun):
    proc = kdrun("dataset=image_folder", "strategy=scratch", "student=cnn_student", check=False)
    assert proc.returncode != 0 and "dataset=image_folder needs dataset.root=DIR" in proc.stdout + proc.stderr


def test_imagenet_preset_composes_and_runs_one_step(tmp_path, kdrun):
    conf = Path(__file__).resolve().parents[1] / "conf"
    if not (conf / "teacher" / "torchvision.yaml").is_file():
        pytest.skip("teacher=torchvision (issue 11, part 2) is not on this branch yet")
    root = make_folder(tmp_path / "imagenet", per_class=(2, 1), splits=("train", "val"), sizes=((64, 64),),
                       classes=tuple(f"n{i:08d}" for i in range(10)))
    kdrun("experiment=imagenet_resnet34_resnet18", f"dataset.root={root}", "dataset.image_size=32",
          "dataset.eval_resize=36", "dataset.in_memory=true", "teacher.weights=null", "epochs=1", "batch_size=4",
          "trainer.progress=false")


def test_kdrun_trains_from_a_stream_and_its_numbers_mean_what_memorys_mean(tmp_path, kdrun):
    """dataset.in_memory=false: the trainer's streaming feed, a validation split held out of train/, best.pt on
    it, and a final test accuracy that the in-memory path gives the same weights on the same images."""
    from kdrun.sources.checkpoint import load_checkpoint
    from kdrun.sources.data import BatchAugment
    from kdrun.sources.models import build_model
    from kdrun.runtime import Runtime
    from kdrun.engine.trainer import evaluate_split

    root = make_folder(tmp_path / "photos", per_class=(10, 4))
    kdrun("dataset=image_folder", f"dataset.root={root}", "dataset.in_memory=false", "dataset.image_size=16",
          "dataset.val_fraction=0.2", "strategy=scratch", "student=cnn_student", "epochs=2", "batch_size=8",
          "trainer.progress=false")
    run_dir = only_run_dir(tmp_path)
    summary = json.loads((run_dir / "metrics.json").read_text())
    assert summary["status"] == "completed" and summary["val_samples"] == 6 and summary["class_names"] == list(CLASSES)
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2] and all("val_acc" in r for r in records)

    memory = load_dataset({"name": "image_folder", "root": str(root), "image_size": 16, "val_fraction": 0.2,
                           "in_memory": True, "augment": {"crop_padding": 0, "hflip": False}},
                          data_seed=0)
    payload = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    model = build_model("cnn_student", memory.in_channels, memory.image_size, memory.num_classes)
    model.load_state_dict(payload["state_dict"])
    acc = evaluate_split(model, memory, BatchAugment(0, False, memory.mean, memory.std),
                         Runtime(torch.device("cpu"), "fp32"), batch_size=1024)
    assert acc == pytest.approx(summary["final_test_acc"])


# ---- failed downloads leave nothing behind (issue 10, item 15) ---------------------------------------------


@pytest.mark.parametrize("name, root_exists", [("fashion_mnist", True), ("cifar10", False)])
def test_a_failed_download_leaves_no_empty_folders(tmp_path, monkeypatch, name, root_exists):
    import urllib.error
    import urllib.request

    def urlopen(*args, **kwargs):
        raise urllib.error.URLError("no network in tests")

    monkeypatch.setattr(urllib.request, "urlopen", urlopen)
    root = tmp_path / "data"
    if root_exists:
        root.mkdir()
    with pytest.raises(FileNotFoundError, match="download failed"):
        load_dataset({"name": name, "root": str(root)})
    assert (list(root.iterdir()) == []) if root_exists else not root.exists()


def test_streaming_feed_keeps_the_feed_contract_and_resumes_mid_epoch(tmp_path):
    from kdrun.sources.data.streaming import StreamingFeed

    root = make_folder(tmp_path / "d")
    data = streaming(root, val_fraction=0.0, augment={"crop_padding": 2, "hflip": True, "random_resized_crop": False})
    feed = StreamingFeed(data, batch_size=8)
    assert feed.steps_per_epoch == 4  # 36 samples: the short last batch is dropped
    epoch = list(feed.batches(epoch=2))
    assert sorted(torch.cat([b.index for b in epoch]).tolist()) == sorted(feed.order(2)[:32].tolist())
    fresh = StreamingFeed(streaming(root, val_fraction=0.0,
                                    augment={"crop_padding": 2, "hflip": True, "random_resized_crop": False}), 8)
    fresh.load_state_dict(feed.state_dict())
    resumed = list(fresh.batches(epoch=2, start_step=2))
    for a, b in zip(epoch[2:], resumed):
        assert torch.equal(a.x, b.x) and torch.equal(a.index, b.index) and b.epoch == 2
    assert not torch.equal(feed.order(1), feed.order(2))


def test_a_cached_teacher_is_never_shared_between_two_folders(tmp_path):
    from omegaconf import OmegaConf

    from kdrun.teachers.resolve import teacher_cache_dir

    def cache_dir(root):
        cfg = OmegaConf.create({"dataset": folder_cfg(root), "paths": {"teachers": "t"},
                                "teacher": {"arch": "cnn_teacher", "epochs": 1, "seed": 0},
                                "trainer": {"batch_size": 8}, "optim": {"name": "sgd"}})
        return teacher_cache_dir(cfg)

    a, b = make_folder(tmp_path / "a"), make_folder(tmp_path / "b", seed=1)
    assert cache_dir(a) == cache_dir(a) != cache_dir(b)
    before = cache_dir(b)
    (b / "train" / "cat" / "extra.png").write_bytes((b / "train" / "cat" / "0001.png").read_bytes())
    assert cache_dir(b) != before  # the same folder with another file: another teacher


@pytest.mark.slow
def test_a_streamed_kd_sweep_records_the_teacher_outputs_once(tmp_path, kdrun):
    """The teacher-output cache keys a streamed folder by its files and views: the second job reads what the
    first recorded, and the checksums of the views match (they are a function of data_seed, epoch, index)."""
    root = make_folder(tmp_path / "photos", per_class=(10, 4))
    kdrun("-m", "dataset=image_folder", f"dataset.root={root}", "dataset.in_memory=false", "dataset.image_size=16",
          "strategy=kd", "teacher=mlp", "teacher.epochs=1", "student=cnn_student", "epochs=1", "batch_size=8",
          "T=2,8", "trainer.progress=false")
    jobs = sorted((tmp_path / "outputs" / "sweeps").glob("*/*/[0-9]"))
    summaries = [json.loads((job / "metrics.json").read_text()) for job in jobs]
    assert [s["teacher_cache_recorded"] for s in summaries] == [1, 0]
    assert [s["teacher_cache_hits"] for s in summaries] == [0, 1]
