"""The contract between the trainer and a way of training: one batch in, logits and named loss terms out."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Batch:
    x: torch.Tensor  # augmented, normalised inputs on the device
    y: torch.Tensor  # labels; -1 where a sample has none (kdrun/data/transfer.py)
    index: torch.Tensor  # positions of these samples in the training split
    epoch: int  # 1-based; 0 is a warm-up step (Runtime.warm_up)
    # Which samples have a label (bool); None: all. Label-using terms compute over these rows only,
    # distillation terms over every row.
    labelled: torch.Tensor | None = None


@dataclass
class StepOutput:
    logits: torch.Tensor  # the student's, for train accuracy
    losses: dict[str, torch.Tensor]  # weighted terms; the trainer minimises their sum
