"""kdrun checkpoints: a versioned dict of tensors and plain values.

Loading uses `torch.load(weights_only=True)`, so a file never runs code. Each
checkpoint carries the model's architecture, class count and input shape, so a
checkpoint for another dataset is named as such instead of failing deep in
`load_state_dict`.

Layout (version 2):
    format, version        "kdrun-checkpoint", 2
    model                  {arch, num_classes, in_channels, image_size[, options]}
    state_dict             the model's weights
    epoch, test_acc        the last evaluated epoch and its accuracy
    train                  last.pt only: everything a resume needs (see Trainer)
Version 1 files (no `train`) still load as models.
"""

from __future__ import annotations

import os
import pickle
import random
from pathlib import Path

import numpy as np
import torch
from torch import nn

from kdrun.errors import CheckpointError
from kdrun.io import atomic_torch_save

FORMAT = "kdrun-checkpoint"
VERSION = 2


def model_meta(model: nn.Module) -> dict:
    meta = {
        "arch": model.arch,
        "num_classes": model.num_classes,
        "in_channels": model.in_channels,
        "image_size": model.image_size,
    }
    if getattr(model, "options", None):  # e.g. an MLP's hidden widths: needed to rebuild it
        meta["options"] = dict(model.options)
    return meta


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


def check_fits(meta: dict, *, role: str, dataset: str, num_classes: int, in_channels: int, path,
               image_size: int | None = None) -> None:
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
    if image_size is not None and meta["image_size"] != image_size:
        raise CheckpointError(
            f"{role} checkpoint {str(path)!r} takes {meta['image_size']}x{meta['image_size']} images, "
            f"dataset {dataset} has {image_size}x{image_size}"
        )


def rng_state() -> dict:
    """Every global RNG state, as values a weights-only load accepts (no numpy objects)."""
    _, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos), "has_gauss": int(has_gauss),
                  "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict) -> None:
    random.setstate(_as_tuples(state["python"]))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuples(value):
    """random.setstate wants the nested tuples that getstate gave (a load may return lists)."""
    return tuple(_as_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value
