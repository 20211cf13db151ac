"""Quantization-aware training: `student.qat=true` trains the student through the rounding int8 applies.

`kdrun-export --int8` quantizes with onnxruntime (kdrun/deploy/int8.py): weights int8, symmetric, one scale
per output channel (range -127..127); activations uint8, one scale and zero point per tensor, from their
min/max. Here every conv and linear layer of the student computes with that rounding during training
(fake quantization, straight-through gradients): its weight per output channel, its input and its
output per tensor over a running min/max. So the student learns weights and activations that survive
the rounding, and with `strategy=kd` the teacher's outputs are the target it learns them against.

The parameters stay plain fp32 under the same names: checkpoints, resume, export and reports read them
as before. The ranges the student trained with go into its checkpoints beside the weights
(`qat_ranges`), and `kdrun-export --int8` quantizes with them rather than calibrating afresh: a student
trained under one rounding is deployed under the same one (calibrated ranges, which do not clip where
the running ones did, cost a QAT student several points in results/qat/).

Batch norm: the exported graph folds it into the conv before quantizing. Its weight is scaled per output
channel, and symmetric per-channel rounding commutes with such a factor, so rounding the raw conv weight
here is rounding the folded one there; its output is the norm's output, so for a conv followed by a
norm, the output rounding is applied after the norm. Not simulated: onnxruntime also rounds the sums of
residual connections (its Add), which are functional code, not modules.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

WEIGHT_LEVELS = 127  # symmetric int8: -127..127, as onnxruntime's symmetric weights
ACTIVATION_MAX = 255  # uint8
RANGE_MOMENTUM = 0.01  # running min/max of a tensor: torch's MovingAverageMinMaxObserver constant


def fake_quantize_weight(weight: Tensor) -> Tensor:
    """Round to int8 with one symmetric scale per output channel (dim 0), back to float."""
    absmax = weight.detach().abs().flatten(1).amax(1).clamp_min(1e-12)
    scale = absmax / WEIGHT_LEVELS
    zero = torch.zeros_like(scale, dtype=torch.int32)
    return torch.fake_quantize_per_channel_affine(weight, scale, zero, 0, -WEIGHT_LEVELS, WEIGHT_LEVELS)


def fake_quantize_activation(x: Tensor, low: Tensor, high: Tensor) -> Tensor:
    """Round to uint8 over [low, high] (widened to hold 0, as onnxruntime does), back to float."""
    low, high = low.clamp(max=0), high.clamp(min=0)
    scale = ((high - low) / ACTIVATION_MAX).clamp_min(1e-8)
    zero = (-low / scale).round().clamp(0, ACTIVATION_MAX).to(torch.int32)
    return torch.fake_quantize_per_tensor_affine(x, scale.float(), zero, 0, ACTIVATION_MAX)


class Range(nn.Module):
    """A tensor's running min/max, and the uint8 rounding over it. Its numbers are non-persistent
    buffers: the state dict keeps the plain layer's keys (checkpoints carry them as `qat_ranges`)."""

    def __init__(self, device: torch.device):
        super().__init__()
        self.register_buffer("low", torch.full((), float("inf"), device=device), persistent=False)
        self.register_buffer("high", torch.full((), float("-inf"), device=device), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        if self.training:
            with torch.no_grad():
                low, high = x.detach().amin().float(), x.detach().amax().float()
                first = torch.isinf(self.low)
                self.low.copy_(torch.where(first, low, torch.lerp(self.low, low, RANGE_MOMENTUM)))
                self.high.copy_(torch.where(first, high, torch.lerp(self.high, high, RANGE_MOMENTUM)))
        elif torch.isinf(self.low):  # evaluated before any training step: no range to round over yet
            return x
        return fake_quantize_activation(x.float(), self.low, self.high).to(x.dtype)


class _FakeQuantized:
    """Mixed into nn.Conv2d / nn.Linear: what onnxruntime's QDQ graph rounds, rounded here: the input
    and the output per tensor, the weight per output channel."""

    output_after_norm = False  # a batch norm follows: its forward hook rounds the output (see enable_qat)

    def _add_ranges(self) -> None:
        self.input_range = Range(self.weight.device)
        self.output_range = Range(self.weight.device)

    def _round_output(self, out: Tensor) -> Tensor:
        return out if self.output_after_norm else self.output_range(out)


class FakeQuantizedConv2d(_FakeQuantized, nn.Conv2d):
    def forward(self, x: Tensor) -> Tensor:
        out = self._conv_forward(self.input_range(x), fake_quantize_weight(self.weight), self.bias)
        return self._round_output(out)


class FakeQuantizedLinear(_FakeQuantized, nn.Linear):
    def forward(self, x: Tensor) -> Tensor:
        return self._round_output(F.linear(self.input_range(x), fake_quantize_weight(self.weight), self.bias))


SWAPS = {nn.Conv2d: FakeQuantizedConv2d, nn.Linear: FakeQuantizedLinear}
NORMS = (nn.BatchNorm1d, nn.BatchNorm2d)


def layers_followed_by_a_norm(model: nn.Module) -> list[tuple[nn.Module, nn.Module]]:
    """(layer, norm) pairs where a batch norm runs right after a conv/linear layer, seen in one forward
    pass of a blank image (the order of the calls, which the module tree alone does not give)."""
    calls: list[nn.Module] = []
    leaves = [m for m in model.modules() if isinstance(m, (*SWAPS, *NORMS))]
    hooks = [m.register_forward_pre_hook(lambda m, args: calls.append(m)) for m in leaves]
    was_training = model.training
    try:
        param = next(model.parameters())
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, model.in_channels, model.image_size, model.image_size, device=param.device))
    finally:
        model.train(was_training)
        for hook in hooks:
            hook.remove()
    return [(a, b) for a, b in zip(calls, calls[1:]) if type(a) in SWAPS and isinstance(b, NORMS)]


def enable_qat(model: nn.Module) -> nn.Module:
    """Make every conv and linear layer of `model` fake-quantized, in place."""
    followed = layers_followed_by_a_norm(model)
    for module in list(model.modules()):
        swap = SWAPS.get(type(module))
        if swap is not None:
            # The same object under a subclass: parameters, hooks and the modules holding it stay as they are.
            module.__class__ = swap
            module._add_ranges()
    for layer, norm in followed:
        layer.output_after_norm = True
        # The norm holds the layer's output range too (one module, two parents), so a replica of the
        # model (DataParallel) rounds with its own copy.
        norm.qat_output_range = layer.output_range
        norm.register_forward_hook(_round_norm_output)
    return model


def _round_norm_output(norm: nn.Module, args, out: Tensor) -> Tensor:
    return norm.qat_output_range(out)


def ranges_of(model: nn.Module) -> dict[str, list[float]]:
    """The trained ranges, {"<layer>.input" | "<layer>.output": [low, high]}; {} without QAT."""
    ranges = {}
    for name, module in model.named_modules():
        if isinstance(module, _FakeQuantized):
            for side, r in (("input", module.input_range), ("output", module.output_range)):
                if torch.isfinite(r.low):
                    ranges[f"{name}.{side}"] = [float(r.low), float(r.high)]
    return ranges


def quantized_layers(model: nn.Module) -> int:
    """How many layers compute with the int8 rounding."""
    return sum(isinstance(m, _FakeQuantized) for m in model.modules())
