"""kdrun checkpoints: a versioned dict of tensors and plain values.

Loading uses `torch.load(weights_only=True)`, so a file never runs code. Each
checkpoint carries the model's architecture, class count and input shape, so a
checkpoint for another dataset is named as such instead of failing deep in
`load_state_dict`.

Layout (version 2):
    format, version        "kdrun-checkpoint", 2
    model                  {arch, num_classes, in_channels, image_size[, options, class_names,
                           input_mean, input_std]}: input_* the normalisation it was trained with
    state_dict             the model's weights
    epoch, test_acc        the last evaluated epoch and its accuracy
    train                  last.pt only: everything a resume needs (see Trainer)
Version 1 files (no `train`) still load as models.
"""

from __future__ import annotations

import os
import pickle
import random
import re
import warnings
import zipfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from kdrun.errors import CheckpointError
from kdrun.compress.qat import ranges_of
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
    if getattr(model, "class_names", None):  # an image folder's classes, in label order
        meta["class_names"] = list(model.class_names)
    if getattr(model, "normalisation", None):  # the (mean, std) its inputs were normalised with
        mean, std = model.normalisation
        meta["input_mean"], meta["input_std"] = [float(v) for v in mean], [float(v) for v in std]
    return meta


def stored_normalisation(meta: dict) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """The (mean, std) a checkpoint's model was trained with; None for a file from before kdrun kept them."""
    if "input_mean" in meta and "input_std" in meta:
        return tuple(meta["input_mean"]), tuple(meta["input_std"])
    return None


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module behind torch.compile."""
    return getattr(model, "_orig_mod", model)


def save_checkpoint(path: str | os.PathLike, model: nn.Module, **state) -> None:
    """Write the model's weights and metadata, plus any extra training state, atomically."""
    model = unwrap(model)
    payload = {"format": FORMAT, "version": VERSION, "model": model_meta(model), "state_dict": model.state_dict()}
    ranges = ranges_of(model)
    if ranges:  # a quantization-aware student: the int8 export quantizes over the ranges it trained with
        payload["qat_ranges"] = ranges
    payload.update(state)
    atomic_torch_save(payload, path)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Read a kdrun checkpoint without executing anything from it."""
    path = Path(path)
    check_checkpoint_file(path)
    try:
        payload = load_weights_only(path, map_location)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"{str(path)!r} was refused: it holds objects that a weights-only load does not allow, so it is not "
            f"a kdrun checkpoint (kdrun never unpickles code from a checkpoint){_unpickler_detail(exc)}"
        ) from exc
    except Exception as exc:  # truncated archives, bad zip members
        raise CheckpointError(f"{str(path)!r} is not a readable kdrun checkpoint "
                              f"({type(exc).__name__}: {exc or 'no detail'}); a copy cut short?") from exc
    if is_state_dict(payload):
        raise PlainStateDict(f"{str(path)!r} is not a kdrun checkpoint but a plain state_dict "
                             f"(a dict of tensors)")
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{str(path)!r} is not a kdrun checkpoint (no '{FORMAT}' format tag)")
    if payload.get("version", 0) > VERSION:
        raise CheckpointError(
            f"{str(path)!r} has checkpoint format version {payload['version']}; this kdrun reads up to {VERSION}"
        )
    return payload


class PlainStateDict(CheckpointError):
    """A file of bare weights where a kdrun checkpoint (weights plus what model they are) was expected."""


def is_state_dict(payload) -> bool:
    return isinstance(payload, dict) and bool(payload) and all(isinstance(v, torch.Tensor) for v in payload.values())


def check_checkpoint_file(path: Path) -> None:
    """Name what the path is when it cannot be a checkpoint: torch's own errors for these cases are
    empty, about text decoding, or suggest an unsafe load."""
    if path.is_dir():
        raise CheckpointError(f"checkpoint {str(path)!r} is a directory; give the .pt file inside a run's "
                              f"checkpoints/ (e.g. checkpoints/best.pt)")
    if not path.exists():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {str(path)!r} is an empty file (0 bytes), not a kdrun checkpoint; "
                              f"a copy or a save that was cut short?")
    if not zipfile.is_zipfile(path):
        with open(path, "rb") as f:
            if f.read(4) == b"PK\x03\x04":  # a zip's start without its end: cut short
                raise CheckpointError(f"{str(path)!r} is not a readable kdrun checkpoint: the archive is incomplete "
                                      f"(a copy or a save that was cut short?)")
        raise CheckpointError(f"{str(path)!r} is not a kdrun checkpoint: kdrun checkpoints are the zip archives "
                              f"torch.save writes, and this file is not one")


def load_weights_only(path: Path, map_location: str | torch.device = "cpu"):
    """torch.load(weights_only=True), quiet: torch's unpickler warns about some files with a line of its own
    source; a refusal is for the caller to word (see refusal_reason)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.load(path, map_location=map_location, weights_only=True)


def refusal_reason(exc: Exception) -> str:
    """Why torch's weights-only load refused a file, without torch's advice on loading it anyway (retrying with
    weights_only=False, or allow-listing the file's classes: both would run what the file names)."""
    text = str(exc)
    at = text.lower().find("unpickler error:")
    if at < 0:
        return ""
    reason = " ".join(text[at + len("unpickler error:"):].split())
    reason = re.split(r"\s*(?:Please use|Check the documentation|Re-running)", reason)[0].rstrip(" .")
    return reason if "weights_only" not in reason else ""


def _unpickler_detail(exc: Exception) -> str:
    reason = refusal_reason(exc)
    return f". Details: {reason}" if reason else ""


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
