"""Static int8 quantization of an exported ONNX model with onnxruntime.

QDQ format, weights per channel (int8, symmetric), activations per tensor (uint8), ranges from
calibration batches of the training split (never the test split, whose accuracy is reported); for a
quantization-aware student, the inputs and outputs of its layers take the ranges it trained with.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
from torch import Tensor

from kdrun.io import atomic_write_via

CALIBRATION_IMAGES = 512
CALIBRATION_BATCH = 64
# The ops that carry the arithmetic. Others stay float between them: the CNN's max-pool reads a
# tensor padded with -inf, whose range no uint8 scale can hold.
QUANTIZED_OPS = ["Conv", "Gemm", "MatMul", "Add"]


class _Batches:
    """onnxruntime's CalibrationDataReader protocol: get_next() -> {input: array} or None."""

    def __init__(self, input_name: str, images: np.ndarray):
        self._feeds = iter([{input_name: images[i:i + CALIBRATION_BATCH]}
                            for i in range(0, len(images), CALIBRATION_BATCH)])

    def get_next(self):
        return next(self._feeds, None)


def calibration_images(train_x: Tensor, count: int = CALIBRATION_IMAGES, seed: int = 0) -> np.ndarray:
    """A fixed random sample of the training split (the same for a seed), as uint8 arrays."""
    import torch

    g = torch.Generator().manual_seed(seed)
    pick = torch.randperm(len(train_x), generator=g)[:count]
    return train_x[pick].numpy()


def _layers(graph) -> dict[str, tuple[str, str]]:
    """{layer: (input tensor, output tensor)} of the graph's Conv/Gemm/MatMul nodes, a layer found by its
    weight's name ("model.<layer>.weight", as RawImageModel exports it)."""
    return {node.input[1].removeprefix("model.").removesuffix(".weight"): (node.input[0], node.output[0])
            for node in graph.node if node.op_type in ("Conv", "Gemm", "MatMul") and len(node.input) > 1}


def trained_range_overrides(exported_path: str, prepared_path: str, ranges: dict[str, list[float]]) -> dict:
    """onnxruntime's TensorQuantOverrides for the tensors a QAT student's layers read and write.

    Only where graph preparation kept the exported tensor: one it fused into another node is no longer
    the tensor QAT measured, and keeps its calibrated range. (Batch norms are folded into their convs
    already by the export; QAT rounds those convs' outputs after the norm, as the graph has them.)"""
    import onnx

    exported, prepared = _layers(onnx.load(exported_path).graph), _layers(onnx.load(prepared_path).graph)
    overrides = {}
    for layer, tensors in prepared.items():
        for side, tensor, before in zip(("input", "output"), tensors, exported.get(layer, (None, None))):
            low_high = ranges.get(f"{layer}.{side}")
            if low_high and tensor == before:
                overrides[tensor] = [{"rmin": np.float32(low_high[0]), "rmax": np.float32(low_high[1])}]
    return overrides


def quantize_onnx(fp32_path: Path, int8_path: Path, calibration: np.ndarray,
                  ranges: dict[str, list[float]] | None = None) -> None:
    """`ranges`: a QAT student's trained ranges (kdrun.compress.qat.ranges_of), used where they apply."""
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    input_name = ort.InferenceSession(str(fp32_path), providers=["CPUExecutionProvider"]).get_inputs()[0].name
    with tempfile.TemporaryDirectory() as tmp:
        # Shape inference and graph clean-up first, as onnxruntime's quantization guide advises.
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)

        overrides = trained_range_overrides(str(fp32_path), str(prepared), ranges) if ranges else {}

        def write(out: str) -> None:
            quantize_static(str(prepared), out, _Batches(input_name, calibration),
                            quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            calibrate_method=CalibrationMethod.MinMax, op_types_to_quantize=QUANTIZED_OPS,
                            extra_options={"TensorQuantOverrides": overrides})

        atomic_write_via(int8_path, write)
