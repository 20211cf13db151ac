"""The contract between the trainer and a way of training: one batch in, logits and named loss terms out."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Batch:
    x: torch.Tensor  # augmented, normalised inputs on the device
    y: torch.Tensor  # labels
    index: torch.Tensor  # positions of these samples in the training split
    epoch: int  # 1-based; 0 is a warm-up step (Runtime.warm_up)


@dataclass
class StepOutput:
    logits: torch.Tensor  # the student's, for train accuracy
    losses: dict[str, torch.Tensor]  # weighted terms; the trainer minimises their sum
