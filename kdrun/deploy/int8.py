"""Post-training static int8 quantization of an exported ONNX model with onnxruntime.

QDQ format, weights per channel (int8, symmetric), activations per tensor (uint8), ranges from
calibration batches of the training split (never the test split, whose accuracy is reported).
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


def quantize_onnx(fp32_path: Path, int8_path: Path, calibration: np.ndarray) -> None:
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    input_name = ort.InferenceSession(str(fp32_path), providers=["CPUExecutionProvider"]).get_inputs()[0].name
    with tempfile.TemporaryDirectory() as tmp:
        # Shape inference and graph clean-up first, as onnxruntime's quantization guide advises.
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)

        def write(out: str) -> None:
            quantize_static(str(prepared), out, _Batches(input_name, calibration),
                            quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            calibrate_method=CalibrationMethod.MinMax, op_types_to_quantize=QUANTIZED_OPS)

        atomic_write_via(int8_path, write)
