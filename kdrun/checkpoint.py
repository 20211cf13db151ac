"""kdrun checkpoints: a versioned dict of tensors and plain values.

Loading uses `torch.load(weights_only=True)`, so a file never runs code. Each
checkpoint carries the model's architecture, class count and input shape, so a
checkpoint for another dataset is named as such instead of failing deep in
`load_state_dict`.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import torch
from torch import nn

from kdrun.errors import CheckpointError
from kdrun.io import atomic_torch_save

FORMAT = "kdrun-checkpoint"
VERSION = 1


def model_meta(model: nn.Module) -> dict:
    return {
        "arch": model.arch,
        "num_classes": model.num_classes,
        "in_channels": model.in_channels,
        "image_size": model.image_size,
    }


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module behind torch.compile."""
    return getattr(model, "_orig_mod", model)


def save_checkpoint(path: str | os.PathLike, model: nn.Module, **state) -> None:
    """Write the model's weights and metadata, plus any extra training state, atomically."""
    model = unwrap(model)
    payload = {"format": FORMAT, "version": VERSION, "model": model_meta(model), "state_dict": model.state_dict()}
    payload.update(state)
    atomic_torch_save(payload, path)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Read a kdrun checkpoint without executing anything from it."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"{str(path)!r} was refused: it holds objects that a weights-only load does not allow "
            f"(kdrun never unpickles code from a checkpoint). Details: {str(exc).splitlines()[0]}"
        ) from exc
    except Exception as exc:  # truncated files, zip errors, random bytes
        raise CheckpointError(f"{str(path)!r} is not a readable kdrun checkpoint: {exc}") from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{str(path)!r} is not a kdrun checkpoint (no '{FORMAT}' format tag)")
    if payload.get("version", 0) > VERSION:
        raise CheckpointError(
            f"{str(path)!r} has checkpoint format version {payload['version']}; this kdrun reads up to {VERSION}"
        )
    return payload


def check_fits(meta: dict, *, role: str, dataset: str, num_classes: int, in_channels: int, path) -> None:
    """Refuse a checkpoint whose model cannot serve this dataset, naming both sides."""
    if meta["num_classes"] != num_classes:
        raise CheckpointError(
            f"{role} checkpoint {str(path)!r} has {meta['num_classes']} classes, dataset {dataset} has {num_classes}"
        )
    if meta["in_channels"] != in_channels:
        raise CheckpointError(
            f"{role} checkpoint {str(path)!r} takes {meta['in_channels']} input channels, "
            f"dataset {dataset} has {in_channels}"
        )
