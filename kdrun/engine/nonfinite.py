"""trainer.on_nonfinite: what a NaN or inf loss term does to a run.

    stop   the run stops with a message naming the epoch, step and term; last.pt stays the last good one
    skip   the batch is skipped (no optimiser step, the schedule still advances) and counted

Looking at a loss value syncs the device, so under `stop` the values stay on the device until the
loop looks anyway (every few steps, before a checkpoint, at the end of an epoch).
"""

from __future__ import annotations

import math

import torch

from kdrun.console import console
from kdrun.errors import NonFiniteLoss

MODES = ("stop", "skip")


class NonFinitePolicy:
    def __init__(self, mode: str):
        if mode not in MODES:
            raise ValueError(f"on_nonfinite must be one of {MODES}, got {mode!r}")
        self.mode = mode
        self.pending: list[tuple[int, int, list[str], torch.Tensor]] = []  # (epoch, step, names, values)

    @property
    def skips(self) -> bool:
        return self.mode == "skip"

    def admits(self, epoch: int, step: int, steps_per_epoch: int, names: list[str], values: torch.Tensor,
               skipped_so_far: int) -> bool:
        """Whether to train on this batch. Under `skip` a non-finite batch is refused (and reported once per
        epoch); under `stop` every batch is admitted and its values are kept to be checked later."""
        if self.mode == "skip":
            if bool(torch.isfinite(values).all()):
                return True
            if skipped_so_far == 0:
                console.print(f"[yellow]skipping[/] {describe(epoch, step, steps_per_epoch, names, values)}"
                              " (trainer.on_nonfinite=skip; further skips this epoch are only counted)")
            return False
        self.pending.append((epoch, step, names, values))
        return True

    def check(self, kept: str) -> None:
        """Raise NonFiniteLoss if a loss seen since the last check was NaN or inf; `kept` says what a
        resume would start from."""
        if not self.pending:
            return
        finite = torch.stack([torch.isfinite(values).all() for *_, values in self.pending]).tolist()
        pending, self.pending = self.pending, []
        if all(finite):
            return
        epoch, step, names, values = pending[finite.index(False)]
        raise NonFiniteLoss(f"{describe(epoch, step, None, names, values)}; stopping. {kept} "
                            f"Set trainer.on_nonfinite=skip to skip such batches, or lower optim.lr.")


def describe(epoch: int, step: int, steps_per_epoch: int | None, names: list[str], values: torch.Tensor) -> str:
    of = f"/{steps_per_epoch}" if steps_per_epoch else ""
    bad = ", ".join(f"{name} = {value}" for name, value in zip(names, values.tolist()) if not math.isfinite(value))
    return f"non-finite loss at epoch {epoch}, step {step}{of}: loss term {bad}"
