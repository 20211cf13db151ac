"""Write a model as ONNX, torch.export (.pt2) or TorchScript, and check each file against PyTorch.

Every format takes raw uint8 images (N, C, H, W) with a dynamic batch axis; see student.RawImageModel.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor, nn

from kdrun.io import atomic_write_via

FORMATS = ("onnx", "pt2", "torchscript")
SUFFIX = {"onnx": ".onnx", "pt2": ".pt2", "torchscript": ".torchscript.pt"}
ONNX_OPSET = 18
# fp32 graphs run the same maths in another order: logits agree to about 1e-5 of their scale.
TOLERANCE = 1e-3
CHECK_BATCH = 256


@dataclass
class Check:
    """How an exported file's logits compare with PyTorch eager's on the test split."""

    images: int
    max_abs_diff: float
    top1_differs: int  # images whose predicted class differs
    accuracy: float  # % of the test split the exported file gets right
    tolerance: float = TOLERANCE

    @property
    def passed(self) -> bool:
        return self.max_abs_diff <= self.tolerance and self.top1_differs == 0

    def as_dict(self) -> dict:
        return {"images": self.images, "max_abs_logit_diff": self.max_abs_diff, "tolerance": self.tolerance,
                "top1_differs": self.top1_differs, "accuracy": round(self.accuracy, 4), "passed": self.passed}


def _example(model: nn.Module) -> Tensor:
    inner = model.model
    # Batch 2: an export traced at batch 1 may specialise the batch axis to 1.
    return torch.zeros(2, inner.in_channels, inner.image_size, inner.image_size, dtype=torch.uint8)


def export_onnx(model: nn.Module, path: Path) -> None:
    x = _example(model)
    batch = torch.export.Dim("batch", min=1, max=65536)

    def write(tmp: str) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(model, (x,), input_names=["images"], output_names=["logits"],
                                        opset_version=ONNX_OPSET, dynamo=True,
                                        dynamic_shapes={"x": {0: batch}}, verbose=False)
        program.save(tmp)  # weights inside the one file: the models here are small

    atomic_write_via(path, write)


def export_pt2(model: nn.Module, path: Path) -> None:
    batch = torch.export.Dim("batch", min=1, max=65536)
    program = torch.export.export(model, (_example(model),), dynamic_shapes={"x": {0: batch}})
    atomic_write_via(path, lambda tmp: torch.export.save(program, tmp))


def export_torchscript(model: nn.Module, path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TorchScript is in maintenance; still what some runtimes load
        traced = torch.jit.trace(model, _example(model))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        atomic_write_via(path, lambda tmp: torch.jit.save(traced, tmp))


EXPORTERS = {"onnx": export_onnx, "pt2": export_pt2, "torchscript": export_torchscript}


def export(model: nn.Module, fmt: str, path: Path) -> None:
    model.eval()
    with torch.no_grad():
        EXPORTERS[fmt](model, path)


def onnx_session(path: Path, threads: int = 1):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def runner(fmt: str, path: Path) -> Callable[[Tensor], Tensor]:
    """Logits from the exported file, for a uint8 batch."""
    if fmt == "onnx":
        session = onnx_session(path)
        name = session.get_inputs()[0].name
        return lambda x: torch.from_numpy(session.run(None, {name: x.numpy()})[0])
    if fmt == "pt2":
        module = torch.export.load(str(path)).module()
        return lambda x: module(x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        module = torch.jit.load(str(path), map_location="cpu")
    return lambda x: module(x)


@torch.no_grad()
def check_export(model: nn.Module, run: Callable[[Tensor], Tensor], x: Tensor, y: Tensor,
                 tolerance: float = TOLERANCE) -> Check:
    """Compare `run` (an exported file) with the eager model on every image of (x, y)."""
    model.eval()
    max_diff, differs, correct = 0.0, 0, 0
    for i in range(0, len(x), CHECK_BATCH):
        xb, yb = x[i:i + CHECK_BATCH], y[i:i + CHECK_BATCH]
        expected, got = model(xb), run(xb).float()
        max_diff = max(max_diff, (expected - got).abs().max().item())
        differs += int((expected.argmax(1) != got.argmax(1)).sum())
        correct += int((got.argmax(1) == yb).sum())
    return Check(len(x), max_diff, differs, 100.0 * correct / max(len(x), 1), tolerance)


def file_size_mb(path: Path) -> float:
    return path.stat().st_size / 2**20

