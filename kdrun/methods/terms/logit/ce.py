"""Cross-entropy on the labels: the hard-label term of almost every method's loss."""

from __future__ import annotations

from torch import Tensor

from kdrun.losses import cross_entropy
from kdrun.methods.terms.base import LogitTerm, TermInputs, register_term


@register_term
class CrossEntropy(LogitTerm):
    """weight * CE(student, y). Our `weight` is RepDistiller's -r (gamma), mdistiller's CE_WEIGHT, Hinton's
    and torchdistill's 1 - alpha."""

    name = "ce"
    uses_labels = True
    distils = False
    masks_unlabelled = True  # a transfer set's unlabelled rows add nothing (kdrun.losses.cross_entropy)
    mixes_labels = True  # a mixed image's target is its two labels, by their shares

    def forward(self, inputs: TermInputs) -> dict[str, Tensor]:
        return self.weighted(cross_entropy(inputs.logits, inputs.labels, inputs.labelled, inputs.mixed))
