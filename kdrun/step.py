"""The contract between the trainer and a way of training: one batch in, logits and named loss terms out."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Batch:
    x: torch.Tensor  # augmented, normalised inputs on the device
    y: torch.Tensor  # labels; -1 where a sample has none (kdrun/sources/data/transfer.py)
    index: torch.Tensor  # positions of these samples in the training split
    epoch: int  # 1-based; 0 is a warm-up step (Runtime.warm_up)
    # Which samples have a label (bool); None: all. Label-using terms compute over these rows only,
    # distillation terms over every row.
    labelled: torch.Tensor | None = None
    # mixup / cutmix (kdrun/sources/data/mix.py): each row's partner label, and the share of the row's own image and
    # label in its mixed view; None when not mixed.
    partner_y: torch.Tensor | None = None
    own_share: torch.Tensor | None = None

    @property
    def mixed(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(partner labels, own share) for a label-using term, or None."""
        return None if self.partner_y is None else (self.partner_y, self.own_share)


@dataclass
class StepOutput:
    logits: torch.Tensor  # the student's, for train accuracy
    losses: dict[str, torch.Tensor]  # weighted terms; the trainer minimises their sum
