"""FLOPs of one forward pass at batch 1, counted by torch.utils.flop_counter.

torch counts a multiply-add as 2 FLOPs; papers that quote "FLOPs" for CIFAR ResNets (resnet20:
~41 M) count multiply-adds. Both are given, named for what they are.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


@torch.no_grad()
def count_flops(model: nn.Module, input_shape: tuple[int, int, int]) -> int:
    """FLOPs (2 per multiply-add) of `model` on one float image of `input_shape` (C, H, W)."""
    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False)
    with counter:
        model(torch.zeros(1, *input_shape))
    model.train(was_training)
    return int(counter.get_total_flops())


def count_macs(model: nn.Module, input_shape: tuple[int, int, int]) -> int:
    """Multiply-adds: the unit of the "FLOPs" in most CNN papers."""
    return count_flops(model, input_shape) // 2
