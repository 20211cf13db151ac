"""mixup and cutmix as batch operations (Zhang et al. 2018; Yun et al. 2019), for consistent teaching.

Each training sample i of an epoch is mixed with a partner j of the training split: mixup blends the
two images, lam * x_i + (1 - lam) * x_j; cutmix pastes a box of x_j into x_i, lam being the share of x_i
left. lam ~ Beta(alpha, alpha); with both on, each sample picks one of the two with probability 1/2.
The partner, lam and the box are drawn from a generator seeded by (data_seed, epoch, sample index)
alone (numpy's SeedSequence), so they do not depend on the batch a sample falls in, the order, resume or
the world size. The mixed image then goes through the usual crop, flip and normalisation, and the
teacher is asked about that same view (Beyer et al. 2022: the teacher sees the student's mixed image),
so the teacher-output cache keeps working.

A mixed sample's label is two labels: `Batch.partner_y` and `Batch.own_share` (lam); a label-using
term's target is own_share * y + (1 - own_share) * partner_y (kdrun.losses.cross_entropy). In a
transfer set a mixed sample counts as labelled when both images are.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

MIX_SALT = 0x6D6978  # keeps these draws apart from any other per-sample stream
MIX_KEYS = ("mixup", "cutmix")  # dataset.augment keys for the student's batches alone (never the teacher's)


@dataclass(frozen=True)
class Mix:
    """dataset.augment.mixup and .cutmix: the Beta(alpha, alpha) parameter of each, 0 = off."""

    mixup: float = 0.0
    cutmix: float = 0.0

    @classmethod
    def from_config(cls, dataset_cfg) -> Mix:
        augment = dataset_cfg.get("augment") or {}
        return cls(float(augment.get("mixup") or 0.0), float(augment.get("cutmix") or 0.0))

    @property
    def active(self) -> bool:
        return self.mixup > 0 or self.cutmix > 0

    def draws(self, data_seed: int, epoch: int, index: Tensor, n: int) -> tuple[Tensor, Tensor, Tensor]:
        """Per sample: (partner index, lam, cutmix box (cy, cx, cut ratio), with cut ratio 0 for mixup), each
        a pure function of (data_seed, epoch, index)."""
        partners, lams, boxes = [], [], []
        for i in index.tolist():
            rng = np.random.default_rng([MIX_SALT, int(data_seed), int(epoch), int(i)])
            partner = int(rng.integers(n))
            use_cutmix = self.cutmix > 0 and (self.mixup == 0 or rng.random() < 0.5)
            lam = float(rng.beta(self.cutmix, self.cutmix) if use_cutmix else rng.beta(self.mixup, self.mixup))
            cy, cx = rng.random(), rng.random()
            partners.append(partner)
            lams.append(lam)
            boxes.append((cy, cx, float(np.sqrt(1 - lam)) if use_cutmix else 0.0))
        device = index.device
        return (torch.tensor(partners, dtype=torch.long, device=device),
                torch.tensor(lams, dtype=torch.float32, device=device),
                torch.tensor(boxes, dtype=torch.float32, device=device).view(-1, 3))

    def __call__(self, train_x: Tensor, index: Tensor, data_seed: int, epoch: int
                 ) -> tuple[Tensor, Tensor, Tensor]:
        """(mixed images, float in pixel units (B, C, H, W); partner indices; own share of each image)."""
        partner, lam, box = self.draws(data_seed, epoch, index, len(train_x))
        x, other = train_x[index].float(), train_x[partner].float()
        h, w = x.shape[-2:]
        own = lam.view(-1, 1, 1, 1).expand(-1, 1, h, w).clone()
        cut = box[:, 2] > 0
        if bool(cut.any()):
            rows = torch.arange(h, device=x.device).view(1, h, 1)
            cols = torch.arange(w, device=x.device).view(1, 1, w)
            cy, cx = box[:, 0] * h, box[:, 1] * w
            half_h, half_w = box[:, 2] * h / 2, box[:, 2] * w / 2
            top, bottom = (cy - half_h).round().clamp(0, h), (cy + half_h).round().clamp(0, h)
            left, right = (cx - half_w).round().clamp(0, w), (cx + half_w).round().clamp(0, w)
            inside = ((rows >= top.view(-1, 1, 1)) & (rows < bottom.view(-1, 1, 1))
                      & (cols >= left.view(-1, 1, 1)) & (cols < right.view(-1, 1, 1)))  # (B, H, W)
            pasted = torch.where(inside, 0.0, 1.0).unsqueeze(1)
            own = torch.where(cut.view(-1, 1, 1, 1), pasted, own)
            # The label follows the pixels: lam is the share of x_i the clipped box left.
            lam = torch.where(cut, pasted.mean(dim=(1, 2, 3)), lam)
        return x * own + other * (1 - own), partner, lam
