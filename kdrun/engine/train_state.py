"""Where training stands, and checkpoints/last.pt: everything a resume needs to go on exactly as if
the run had never stopped.

last.pt holds the weights, optimiser, schedule, grad scaler, the strategy's own state, every RNG
(including the data feed's generator as it was when the epoch in progress began, which fixes its
shuffle), the position (epoch, step), the running sums of the epoch in progress, the best accuracy and
the metrics so far. The trainer writes it at the end of each epoch, every `every_steps` steps if set,
and after the step in progress when a signal stops the run.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from kdrun.sources.checkpoint import load_checkpoint, restore_rng, rng_state, save_checkpoint, unwrap
from kdrun.console import note
from kdrun.distributed import SOLO, World
from kdrun.errors import CheckpointError
from kdrun.runtime import Runtime
from kdrun.engine.contract import Strategy


@dataclass
class EpochTotals:
    """Running sums of the epoch in progress, saved mid-epoch so that a resumed epoch reports the same numbers."""

    term_sums: dict[str, torch.Tensor] = field(default_factory=dict)
    correct: torch.Tensor | int = 0
    seen: int = 0
    unlabelled: torch.Tensor | int = 0  # of those seen, images without a label: train accuracy counts the others
    steps: int = 0  # batches trained on
    skipped: int = 0  # batches skipped for a non-finite loss
    seconds: float = 0.0
    lr: float | None = None  # at the epoch's first step: the rate the epoch trained with

    @classmethod
    def new(cls, device: torch.device) -> EpochTotals:
        return cls(correct=torch.zeros((), dtype=torch.long, device=device))


@dataclass
class TrainState:
    epoch: int = 1  # the epoch in progress, 1-based
    step: int = 0  # batches of it done
    totals: EpochTotals = field(default_factory=EpochTotals)
    history: list[dict] = field(default_factory=list)  # the metrics.jsonl records
    best_acc: float = -1.0  # on the split that selects best.pt
    best_epoch: int = 0
    skipped_steps: int = 0  # over the whole run
    wall_time_s: float = 0.0  # before this process


@dataclass
class Training:
    """The objects being trained, whose state last.pt keeps."""

    strategy: Strategy
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler
    feed: Any  # kdrun.sources.data.feed: batches(epoch, start_step), state_dict(), load_state_dict()
    steps_per_epoch: int


def save_last(path: Path, training: Training, state: TrainState, runtime: Runtime, wall_time_s: float,
              world_size: int = 1) -> None:
    """`state.totals` are the sums over every rank (kdrun.engine.trainer.global_totals)."""
    train = {
        "world_size": world_size,
        "epoch": state.epoch,
        "step": state.step,
        "steps_per_epoch": training.steps_per_epoch,
        "device_type": runtime.device.type,
        "optimizer": training.optimizer.state_dict(),
        "scheduler": training.scheduler.state_dict(),
        "scaler": training.scaler.state_dict(),
        "strategy": training.strategy.state_dict(),
        "rng": {**rng_state(), **training.feed.state_dict()},
        "totals": asdict(state.totals),
        "history": state.history,
        "best_acc": state.best_acc,
        "best_epoch": state.best_epoch,
        "skipped_steps": state.skipped_steps,
        "wall_time_s": wall_time_s,
    }
    last = state.history[-1] if state.history else {"epoch": 0, "test_acc": None}
    save_checkpoint(path, training.strategy.student, epoch=last["epoch"], test_acc=last.get("test_acc"), train=train)


def restore(path: Path, training: Training, runtime: Runtime, label: str, world: World = SOLO) -> TrainState:
    """Load last.pt into the training objects and the RNGs; returns where training stands.

    Any world size resumes it: the data order and views do not depend on it, the weights and optimiser
    are the same on every rank, and the epoch's running sums (saved summed over ranks) go to rank 0."""
    payload = load_checkpoint(path)
    train = payload.get("train")
    if train is None:
        raise CheckpointError(f"{str(path)!r} holds weights only, no training state; it cannot be resumed")
    student = unwrap(training.strategy.student)
    if payload["model"]["arch"] != student.arch:
        raise CheckpointError(f"{str(path)!r} holds a {payload['model']['arch']}, this run trains a "
                              f"{student.arch}; it cannot be resumed with this config")
    if train["steps_per_epoch"] != training.steps_per_epoch:
        raise CheckpointError(
            f"{str(path)!r} was written with {train['steps_per_epoch']} steps per epoch, this config gives "
            f"{training.steps_per_epoch} (batch_size or the dataset size changed); it cannot be resumed")
    if train["device_type"] != runtime.device.type:
        raise CheckpointError(
            f"{str(path)!r} was written on {train['device_type']}, this run is on {runtime.device.type}; "
            f"resume on the same kind of device (its data order comes from a {train['device_type']} generator)")
    student.load_state_dict(payload["state_dict"])
    training.strategy.load_state_dict(train["strategy"])
    training.optimizer.load_state_dict(train["optimizer"])
    training.scheduler.load_state_dict(train["scheduler"])
    if train["scaler"] and training.scaler.is_enabled():
        training.scaler.load_state_dict(train["scaler"])
    restore_rng(train["rng"])
    training.feed.load_state_dict(train["rng"])
    totals = EpochTotals(**train["totals"])
    if not world.is_main:  # rank 0 carries the sums of the ranks before the stop
        totals = EpochTotals(term_sums={n: torch.zeros_like(v) for n, v in totals.term_sums.items()},
                             seconds=totals.seconds, lr=totals.lr)
    totals.correct = torch.as_tensor(totals.correct, dtype=torch.long).to(runtime.device)
    totals.term_sums = {name: value.to(runtime.device) for name, value in totals.term_sums.items()}
    state = TrainState(epoch=train["epoch"], step=train["step"], totals=totals, history=list(train["history"]),
                       best_acc=train["best_acc"], best_epoch=train["best_epoch"],
                       skipped_steps=train["skipped_steps"], wall_time_s=train["wall_time_s"])
    saved_world = train.get("world_size", 1)
    across = f"; written by {saved_world} process(es), now {world.size}" if saved_world != world.size else ""
    if world.is_main:
        note(f"[green]resuming[/] {label} from {path} ({position(state, training.steps_per_epoch)}{across})")
    return state


def position(state: TrainState, steps_per_epoch: int) -> str:
    """Where a saved state stands, in words."""
    if state.step == 0:
        return f"the end of epoch {state.epoch - 1}"
    return f"epoch {state.epoch}, step {state.step}/{steps_per_epoch}"
