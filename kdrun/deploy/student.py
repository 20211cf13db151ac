"""A finished run's model, read back from its directory, with the input normalisation folded in.

Exported graphs take raw images: uint8 (or float in 0..255) tensors (N, C, H, W), as the
dataset stores them. `RawImageModel` applies the run's normalisation first, so no caller
has to know the dataset's mean and std.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from torch import Tensor, nn

from kdrun.sources.checkpoint import load_checkpoint, stored_normalisation
from kdrun.sources.data import DatasetSplits, load_dataset
from kdrun.sources.data.augment import normalisation
from kdrun.sources.data.streaming import StreamingFolder
from kdrun.deploy.int8 import CALIBRATION_IMAGES
from kdrun.compress.prune import shrink_to
from kdrun.errors import CheckpointError, KdrunError
from kdrun.sources.models import KDModel, build_model


class RawImageModel(nn.Module):
    """model((x / 255 - mean) / std) for x in 0..255, any dtype: the normalisation is part of the graph."""

    def __init__(self, model: nn.Module, mean, std):
        super().__init__()
        self.model = model
        scale, shift = normalisation(mean, std)
        self.register_buffer("scale", scale)
        self.register_buffer("shift", shift)

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x.to(torch.float32) * self.scale + self.shift)


@dataclass
class RunModel:
    """The student of one run (or any kdrun checkpoint), ready to export and evaluate."""

    run_dir: Path
    checkpoint: Path
    model: KDModel  # eval mode, on the CPU
    config: dict  # the run's resolved config.yaml
    metrics: dict  # its metrics.json ({} if missing)

    @property
    def dataset_cfg(self) -> dict:
        return self.config["dataset"]

    def load_data(self) -> DatasetSplits:
        """The run's dataset with its test split in memory, whichever path the run trained on."""
        try:
            data = load_dataset(self.dataset_cfg, "cpu")
            return in_memory_for_evaluation(data) if isinstance(data, StreamingFolder) else data
        except ValueError as exc:
            raise KdrunError(f"the dataset of {self.run_dir} could not be loaded: {exc}") from exc

    def raw_model(self, data: DatasetSplits) -> RawImageModel:
        check_serves(self.model, data, self.checkpoint)
        return raw_image_model(self.model, data)


def in_memory_for_evaluation(folder: StreamingFolder) -> DatasetSplits:
    """A streamed folder's test split decoded into memory (what an export's check and the robustness
    evaluation read), with the training images int8 calibration would pick from the whole split, so that
    neither needs the training split decoded."""
    pick = torch.randperm(len(folder.train), generator=torch.Generator().manual_seed(0))[:CALIBRATION_IMAGES]
    train_x, train_y = folder.raw_images("train", sorted(pick.tolist()))
    test_x, test_y = folder.raw_images("test")
    return DatasetSplits(name=folder.name, train_x=train_x, train_y=train_y, test_x=test_x, test_y=test_y,
                         num_classes=folder.num_classes, mean=folder.mean, std=folder.std,
                         class_names=list(folder.class_names))


def raw_image_model(model: KDModel, data: DatasetSplits) -> RawImageModel:
    """The model on raw images, normalised as it was trained (its checkpoint's statistics; the data's for a
    checkpoint from before kdrun kept them), whichever data path loads the images."""
    mean, std = model.normalisation or (data.mean, data.std)
    return RawImageModel(model, mean, std).eval()


def check_serves(model: KDModel, data: DatasetSplits, path: Path) -> None:
    """Refuse data the checkpoint was not trained for, naming both sides: other classes under the same
    labels give a wrong accuracy silently, another input shape a traceback."""
    def shape(channels, size, classes):
        return f"{channels}x{size}x{size} images and {classes} classes"

    trained = shape(model.in_channels, model.image_size, model.num_classes)
    given = shape(data.in_channels, data.image_size, data.num_classes)
    if trained != given:
        raise KdrunError(f"checkpoint {str(path)!r} takes {trained}; the data it is evaluated on (dataset "
                         f"{data.name}) has {given}: evaluate it on the dataset it was trained on")
    names, data_names = getattr(model, "class_names", None), getattr(data, "class_names", None)
    if names and data_names and list(names) != list(data_names):
        raise KdrunError(f"checkpoint {str(path)!r} was trained on the classes {list(names)} (model.class_names); "
                         f"the data it is evaluated on has {list(data_names)}: an accuracy over other classes "
                         f"would be wrong, so it is not measured")


def model_from_checkpoint(path: Path) -> KDModel:
    """Build the checkpoint's architecture and load its weights (a channel-pruned student is rebuilt
    at its pruned widths, read from the weights' shapes)."""
    payload = load_checkpoint(path)
    meta = payload["model"]
    model = build_model(meta["arch"], meta["in_channels"], meta["image_size"], meta["num_classes"], meta.get("options"))
    state = payload["state_dict"]
    shrink_to(model, state)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise CheckpointError(f"{str(path)!r} does not match architecture {meta['arch']}: "
                              f"{str(exc).splitlines()[0]}") from exc
    model.class_names = meta.get("class_names")  # checked against the data's (check_serves)
    model.normalisation = stored_normalisation(meta)
    model.qat_ranges = payload.get("qat_ranges", {})  # what a quantization-aware student trained with
    return model.eval()


def load_run(run_dir: str | Path) -> RunModel:
    """The student of a run directory: its checkpoints/last.pt (the model of final_test_acc)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise KdrunError(f"run directory {str(run_dir)!r} does not exist")
    config_file = run_dir / "config.yaml"
    if not config_file.is_file():
        raise KdrunError(f"{str(run_dir)!r} is not a kdrun run directory: it has no config.yaml")
    checkpoint = next((run_dir / "checkpoints" / n for n in ("last.pt", "best.pt")
                       if (run_dir / "checkpoints" / n).is_file()), None)
    if checkpoint is None:
        raise KdrunError(f"{str(run_dir)!r} has no checkpoints/last.pt or best.pt: the run did not train")
    config = yaml.safe_load(config_file.read_text())
    metrics_file = run_dir / "metrics.json"
    metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
    return RunModel(run_dir, checkpoint, model_from_checkpoint(checkpoint), config, metrics)


def find_run_dirs(path: str | Path) -> list[Path]:
    """`path` itself if it is a run, else every run below it (a sweep), in order."""
    path = Path(path)
    if not path.exists():
        raise KdrunError(f"{str(path)!r} does not exist; give a run directory or a sweep directory")
    if not path.is_dir():
        raise KdrunError(f"{str(path)!r} is not a directory; give a run directory or a sweep directory")
    if (path / "config.yaml").is_file():
        return [path]
    runs = sorted(p.parent for p in path.rglob("config.yaml")
                  if (p.parent / "checkpoints").is_dir() and "teachers" not in p.parts)
    if not runs:
        raise KdrunError(f"no kdrun run under {str(path)!r} (a run directory holds config.yaml and checkpoints/)")
    return runs
