"""The training loop: optimiser, schedule, autocast, evaluation, checkpoints, metrics.

It knows nothing about distillation: a Strategy turns a batch into named loss
terms, and the trainer minimises their sum.

Nothing is lost when a run stops. checkpoints/last.pt holds all a resume needs to
go on exactly as if the run had never stopped: weights, optimiser, schedule, grad
scaler, the strategy's own state, every RNG (including the data generator's state
at the start of the epoch in progress, which fixes its shuffle), the position
(epoch, step), the running sums of the epoch in progress, the best accuracy and
the metrics so far. It is written at the end of each epoch, every
`every_steps` steps if set, and after the step in progress on Ctrl-C.
"""

from __future__ import annotations

import json
import math
import os
import signal
import threading
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from torch import nn

from kdrun.checkpoint import load_checkpoint, restore_rng, rng_state, save_checkpoint, unwrap
from kdrun.console import console
from kdrun.data import BatchAugment, DatasetSplits, batch_indices, drops_last, iterate_batches, num_batches
from kdrun.errors import CheckpointError, ConfigError, Interrupted, NonFiniteLoss
from kdrun.io import atomic_write_json, atomic_write_jsonl
from kdrun.models import count_parameters, model_size_mb
from kdrun.optim import build_optimizer, build_scheduler
from kdrun.runtime import Runtime, data_generator
from kdrun.strategies.base import Batch, Strategy

ON_NONFINITE = ("stop", "skip")
CHECK_EVERY = 20  # steps between looks at the loss (each look syncs the device)


@dataclass
class TrainerConfig:
    epochs: int
    batch_size: int
    eval_batch_size: int
    data_seed: int
    progress: bool = True
    label: str = "train"  # shown in the progress bar: "teacher", "student", ...
    every_steps: int | None = None  # also write last.pt every N steps; None: at the end of each epoch only
    on_nonfinite: str = "stop"  # a NaN or inf loss term: "stop" the run, or "skip" the batch


@dataclass
class EpochTotals:
    """Running sums of the epoch in progress, saved mid-epoch so that a resumed epoch reports the same numbers."""

    term_sums: dict[str, torch.Tensor] = field(default_factory=dict)
    correct: torch.Tensor | int = 0
    seen: int = 0
    steps: int = 0  # batches trained on
    skipped: int = 0  # batches skipped for a non-finite loss
    seconds: float = 0.0


@dataclass
class TrainState:
    """Where training stands; with the model, optimiser, schedule and RNGs, this is what last.pt holds."""

    epoch: int = 1  # the epoch in progress, 1-based
    step: int = 0  # batches of it done
    epoch_rng: torch.Tensor | None = None  # the data generator's state when `epoch` began: its shuffle
    totals: EpochTotals = field(default_factory=EpochTotals)
    history: list[dict] = field(default_factory=list)  # the metrics.jsonl records
    best_acc: float = -1.0
    best_epoch: int = 0
    skipped_steps: int = 0  # over the whole run
    wall_time_s: float = 0.0  # before this process


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, augment: BatchAugment,
             runtime: Runtime, batch_size: int = 1024) -> float:
    """Top-1 accuracy in percent on un-augmented inputs."""
    was_training = model.training
    model.eval()
    correct = torch.zeros((), dtype=torch.long, device=x.device)
    for xb, yb in iterate_batches(x, y, batch_size, shuffle=False):
        inputs = augment(xb, None, train=False)
        if runtime.channels_last:
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        with runtime.autocast():
            correct += (model(inputs).argmax(1) == yb).sum()
    model.train(was_training)
    return 100.0 * correct.item() / len(y)


class Trainer:
    def __init__(self, cfg: TrainerConfig, optim_cfg, runtime: Runtime):
        if cfg.on_nonfinite not in ON_NONFINITE:
            raise ValueError(f"on_nonfinite must be one of {ON_NONFINITE}, got {cfg.on_nonfinite!r}")
        self.cfg = cfg
        self.optim_cfg = optim_cfg
        self.runtime = runtime

    def fit(self, strategy: Strategy, data: DatasetSplits, augment: BatchAugment, run_dir: Path,
            extra: dict | None = None, on_epoch: Callable[[dict], None] | None = None,
            resume: bool = False) -> dict:
        """Train for cfg.epochs, evaluating every epoch; returns the metrics.json summary (plus `extra`).

        `on_epoch(record)` sees each metrics.jsonl record once it is written (e.g. a TensorBoard logger).
        With `resume`, training goes on from run_dir/checkpoints/last.pt.
        Raises Interrupted after saving last.pt on Ctrl-C, NonFiniteLoss on a NaN/inf loss term
        (with on_nonfinite=stop; last.pt then stays the last good one).
        """
        fit = _Fit(self, strategy, data, augment, Path(run_dir))
        if resume:
            fit.restore()
        return fit.run(extra or {}, on_epoch)

    def _progress(self) -> Progress:
        return Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[terms]}"),
            console=console,
            disable=not self.cfg.progress,
        )


class _Fit:
    """One call of Trainer.fit: the objects being trained and where training stands."""

    def __init__(self, trainer: Trainer, strategy: Strategy, data: DatasetSplits, augment: BatchAugment,
                 run_dir: Path):
        cfg, runtime = trainer.cfg, trainer.runtime
        self.trainer, self.cfg, self.runtime = trainer, cfg, runtime
        self.strategy, self.data, self.augment = strategy, data, augment
        self.run_dir = run_dir
        self.last_path = run_dir / "checkpoints" / "last.pt"
        self.best_path = run_dir / "checkpoints" / "best.pt"
        n_train = len(data.train_y)
        if min(n_train, cfg.batch_size) < 2 and any(isinstance(m, nn.modules.batchnorm._BatchNorm)
                                                     for m in strategy.student.modules()):
            raise ConfigError(f"{cfg.label}: batches of {min(n_train, cfg.batch_size)} sample cannot train "
                              f"{strategy.student.arch}, whose BatchNorm needs at least 2; raise batch_size "
                              f"(or dataset.limit_train)")
        self.drop_last = drops_last(n_train, cfg.batch_size)
        self.steps_per_epoch = num_batches(n_train, cfg.batch_size, self.drop_last)
        self.optimizer = build_optimizer(strategy.parameters(), trainer.optim_cfg)
        self.scheduler = build_scheduler(self.optimizer, trainer.optim_cfg, steps_per_epoch=self.steps_per_epoch,
                                         epochs=cfg.epochs)
        self.scaler = runtime.grad_scaler()
        self.generator = data_generator(cfg.data_seed, runtime.device)
        self.state = TrainState(totals=self._new_totals())
        self.watch = _FiniteWatch()
        self.saved_at: tuple[int, int] | None = None  # (epoch, step) of the last.pt on disk
        self.started = time.perf_counter()

    def _new_totals(self) -> EpochTotals:
        return EpochTotals(correct=torch.zeros((), dtype=torch.long, device=self.runtime.device))

    # ---- the loop ---------------------------------------------------------------------------------

    def run(self, extra: dict, on_epoch: Callable[[dict], None] | None) -> dict:
        cfg, st = self.cfg, self.state
        self.last_path.parent.mkdir(parents=True, exist_ok=True)
        # metrics.jsonl holds exactly the epochs last.pt knows (a kill can fall between the two writes).
        atomic_write_jsonl(self.run_dir / "metrics.jsonl", st.history)
        # With device.compile, compiling happens here, outside the timed epochs.
        self.runtime.warm_up(self.strategy, self.data, self.augment, cfg.batch_size)
        with self.trainer._progress() as progress, _InterruptGuard() as interrupt:
            while st.epoch <= cfg.epochs:
                task = progress.add_task(f"{cfg.label} {st.epoch}/{cfg.epochs}", total=self.steps_per_epoch,
                                         completed=st.step, terms="")
                if not self._train_epoch(progress, task, interrupt):
                    raise Interrupted(f"interrupted at epoch {st.epoch}, step {st.step}/{self.steps_per_epoch} "
                                      f"of {cfg.label}; saved {self.last_path}")
                record = self._end_epoch()
                progress.update(task, terms=_format_terms(record))
                if on_epoch is not None:
                    on_epoch(record)
                if interrupt.requested and st.epoch <= cfg.epochs:
                    raise Interrupted(f"interrupted after epoch {st.epoch - 1} of {cfg.label}; "
                                      f"saved {self.last_path}")
        return self._summary(extra)

    def _epoch_batches(self) -> list[torch.Tensor]:
        """The index batches of the epoch in progress: its shuffle is drawn from the generator state at its
        start, so a resumed epoch sees the same order; then the generator goes on from where it was."""
        st, generator = self.state, self.generator
        if st.step == 0:
            st.epoch_rng = generator.get_state()
        now = generator.get_state()
        generator.set_state(st.epoch_rng)
        batches = list(batch_indices(len(self.data.train_y), self.cfg.batch_size, generator=generator,
                                     drop_last=self.drop_last, device=self.runtime.device))
        if st.step > 0:
            generator.set_state(now)
        return batches

    def _train_epoch(self, progress: Progress, task, interrupt: _InterruptGuard) -> bool:
        """Train the rest of the epoch in progress; False if Ctrl-C stopped it (last.pt is then saved)."""
        cfg, runtime, st, data = self.cfg, self.runtime, self.state, self.data
        batches = self._epoch_batches()
        self.strategy.train()
        totals = st.totals
        t0 = time.perf_counter()
        for i in range(st.step, self.steps_per_epoch):
            index = batches[i]
            inputs = self.augment(data.train_x[index], self.generator, train=True)
            if runtime.channels_last:
                inputs = inputs.contiguous(memory_format=torch.channels_last)
            yb = data.train_y[index]
            with runtime.autocast():
                out = self.strategy.step(Batch(inputs, yb, index, st.epoch))
            names = list(out.losses)
            values = torch.stack([v.detach().float() for v in out.losses.values()])
            if cfg.on_nonfinite == "skip" and not bool(torch.isfinite(values).all()):
                totals.skipped += 1
                if totals.skipped == 1:
                    console.print(f"[yellow]skipping[/] {_nonfinite(st.epoch, i + 1, self.steps_per_epoch, names, values)}"
                                  " (trainer.on_nonfinite=skip; further skips this epoch are only counted)")
                self.optimizer.zero_grad(set_to_none=True)
                with warnings.catch_warnings():  # "scheduler stepped before the optimizer": on purpose here
                    warnings.simplefilter("ignore", UserWarning)
                    self.scheduler.step()  # the schedule follows the step count, skipped or not
            else:
                self.watch.add(st.epoch, i + 1, names, values)
                loss = sum(out.losses.values())
                self.optimizer.zero_grad(set_to_none=True)
                self.scaler.scale(loss).backward()
                self.scaler.step(self.optimizer)
                self.scaler.update()
                self.scheduler.step()
                for name, value in zip(names, values):
                    totals.term_sums[name] = totals.term_sums.get(name, 0) + value
                totals.correct += (out.logits.detach().argmax(1) == yb).sum()
                totals.seen += len(yb)
                totals.steps += 1
            st.step = i + 1
            progress.advance(task)
            if i % CHECK_EVERY == 0:  # reading a loss value syncs the device; do it rarely
                self.watch.check(self._kept())
                progress.update(task, terms=f"loss {values.sum().item():.4f}")
            global_step = (st.epoch - 1) * self.steps_per_epoch + st.step
            periodic = cfg.every_steps and global_step % cfg.every_steps == 0
            if st.step < self.steps_per_epoch and (interrupt.requested or periodic):
                totals.seconds += time.perf_counter() - t0
                t0 = time.perf_counter()
                self._save_last()
                if interrupt.requested:
                    return False
        runtime.synchronize()  # the epoch's time includes the device work still queued
        totals.seconds += time.perf_counter() - t0
        self.watch.check(self._kept())
        return True

    def _end_epoch(self) -> dict:
        """Evaluate, record, and write best.pt, last.pt and metrics.jsonl for the epoch just trained."""
        st, totals, runtime = self.state, self.state.totals, self.runtime
        if totals.steps == 0:
            raise NonFiniteLoss(f"every step of epoch {st.epoch} of {self.cfg.label} had a non-finite loss "
                                f"({totals.skipped} skipped); stopping. {self._kept()}")
        terms = {f"loss_{name}": (total / totals.steps).item() for name, total in totals.term_sums.items()}

        def test_acc(model: nn.Module) -> float:
            return evaluate(model, self.data.test_x, self.data.test_y, self.augment, runtime,
                            self.cfg.eval_batch_size)

        seconds = max(totals.seconds, 1e-9)
        record = {
            "epoch": st.epoch,
            "loss": sum(terms.values()),
            **terms,
            "train_acc": 100.0 * int(totals.correct) / totals.seen,
            "lr": self.optimizer.param_groups[0]["lr"],
            "seconds": round(seconds, 4),
            "images_per_s": round(totals.seen / seconds, 1),
            "test_acc": test_acc(self.strategy.student),
            **self.strategy.epoch_metrics(test_acc),
        }
        if self.cfg.on_nonfinite == "skip":
            record["skipped_steps"] = totals.skipped
        record = json.loads(json.dumps(record))  # plain numbers: JSON and a weights-only load both take them
        st.history.append(record)
        st.skipped_steps += totals.skipped
        if record["test_acc"] > st.best_acc:
            st.best_acc, st.best_epoch = record["test_acc"], st.epoch
            save_checkpoint(self.best_path, self.strategy.student, epoch=st.epoch, test_acc=record["test_acc"])
        st.epoch, st.step, st.totals = st.epoch + 1, 0, self._new_totals()
        self._save_last()
        atomic_write_jsonl(self.run_dir / "metrics.jsonl", st.history)
        return record

    def _summary(self, extra: dict) -> dict:
        st, student = self.state, self.strategy.student
        summary = {
            "status": "completed",
            "final_test_acc": st.history[-1]["test_acc"],
            "best_test_acc": st.best_acc,
            "best_epoch": st.best_epoch,
            "epochs": self.cfg.epochs,
            "arch": student.arch,
            "params": count_parameters(student),
            "size_mb": round(model_size_mb(student), 4),
            "wall_time_s": round(self._wall_time(), 3),
            "device": str(self.runtime.device),
            "precision": self.runtime.precision,
            **self.strategy.summary(),
            **extra,
        }
        if self.cfg.on_nonfinite == "skip":
            summary["skipped_steps"] = st.skipped_steps
        atomic_write_json(self.run_dir / "metrics.json", summary)
        return summary

    def _wall_time(self) -> float:
        return self.state.wall_time_s + time.perf_counter() - self.started

    def _kept(self) -> str:
        """What a stopped run leaves to resume from."""
        if self.saved_at is None:
            return "No checkpoint was written before this point."
        epoch, step = self.saved_at
        where = f"the end of epoch {epoch - 1}" if step == 0 else f"epoch {epoch}, step {step}"
        return f"The last good checkpoint is kept: {self.last_path} ({where})."

    # ---- last.pt ----------------------------------------------------------------------------------

    def _save_last(self) -> None:
        self.watch.check(self._kept())  # never save weights that a NaN has touched
        st = self.state
        train = {
            "epoch": st.epoch,
            "step": st.step,
            "steps_per_epoch": self.steps_per_epoch,
            "device_type": self.runtime.device.type,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "strategy": self.strategy.state_dict(),
            "rng": {**rng_state(), "data": self.generator.get_state(), "data_epoch_start": st.epoch_rng},
            "totals": asdict(st.totals),
            "history": st.history,
            "best_acc": st.best_acc,
            "best_epoch": st.best_epoch,
            "skipped_steps": st.skipped_steps,
            "wall_time_s": self._wall_time(),
        }
        last = st.history[-1] if st.history else {"epoch": 0, "test_acc": None}
        save_checkpoint(self.last_path, self.strategy.student, epoch=last["epoch"], test_acc=last["test_acc"],
                        train=train)
        self.saved_at = (st.epoch, st.step)

    def restore(self) -> None:
        """Load last.pt into the model, optimiser, schedule, scaler, strategy, RNGs and the train state."""
        path = self.last_path
        payload = load_checkpoint(path)
        train = payload.get("train")
        if train is None:
            raise CheckpointError(f"{str(path)!r} holds weights only, no training state; it cannot be resumed")
        student = unwrap(self.strategy.student)
        if payload["model"]["arch"] != student.arch:
            raise CheckpointError(f"{str(path)!r} holds a {payload['model']['arch']}, this run trains a "
                                  f"{student.arch}; it cannot be resumed with this config")
        if train["steps_per_epoch"] != self.steps_per_epoch:
            raise CheckpointError(
                f"{str(path)!r} was written with {train['steps_per_epoch']} steps per epoch, this config gives "
                f"{self.steps_per_epoch} (batch_size or the dataset size changed); it cannot be resumed")
        if train["device_type"] != self.runtime.device.type:
            raise CheckpointError(
                f"{str(path)!r} was written on {train['device_type']}, this run is on {self.runtime.device.type}; "
                f"resume on the same kind of device (its data order comes from a {train['device_type']} generator)")
        student.load_state_dict(payload["state_dict"])
        self.strategy.load_state_dict(train["strategy"])
        self.optimizer.load_state_dict(train["optimizer"])
        self.scheduler.load_state_dict(train["scheduler"])
        if train["scaler"] and self.scaler.is_enabled():
            self.scaler.load_state_dict(train["scaler"])
        restore_rng(train["rng"])
        self.generator.set_state(train["rng"]["data"])
        device = self.runtime.device
        totals = EpochTotals(**train["totals"])
        totals.correct = torch.as_tensor(totals.correct, dtype=torch.long).to(device)
        totals.term_sums = {name: value.to(device) for name, value in totals.term_sums.items()}
        self.state = TrainState(
            epoch=train["epoch"], step=train["step"], epoch_rng=train["rng"]["data_epoch_start"], totals=totals,
            history=list(train["history"]), best_acc=train["best_acc"], best_epoch=train["best_epoch"],
            skipped_steps=train["skipped_steps"], wall_time_s=train["wall_time_s"],
        )
        self.saved_at = (self.state.epoch, self.state.step)
        where = (f"the end of epoch {self.state.epoch - 1}" if self.state.step == 0
                 else f"epoch {self.state.epoch}, step {self.state.step}/{self.steps_per_epoch}")
        console.print(f"[green]resuming[/] {self.cfg.label} from {path} ({where})", soft_wrap=True)


class _FiniteWatch:
    """Finds NaN/inf loss terms without a device sync per step: the values stay on the device until
    the loop looks anyway (every few steps, before a checkpoint, at the end of an epoch)."""

    def __init__(self):
        self.pending: list[tuple[int, int, list[str], torch.Tensor]] = []  # (epoch, step, names, values)

    def add(self, epoch: int, step: int, names: list[str], values: torch.Tensor) -> None:
        self.pending.append((epoch, step, names, values))

    def check(self, kept: str) -> None:
        if not self.pending:
            return
        finite = torch.stack([torch.isfinite(values).all() for *_, values in self.pending]).tolist()
        pending, self.pending = self.pending, []
        if all(finite):
            return
        epoch, step, names, values = pending[finite.index(False)]
        raise NonFiniteLoss(f"{_nonfinite(epoch, step, None, names, values)}; stopping. {kept} "
                            f"Set trainer.on_nonfinite=skip to skip such batches, or lower optim.lr.")


def _nonfinite(epoch: int, step: int, steps_per_epoch: int | None, names: list[str], values: torch.Tensor) -> str:
    of = f"/{steps_per_epoch}" if steps_per_epoch else ""
    bad = ", ".join(f"{name} = {value}" for name, value in zip(names, values.tolist()) if not math.isfinite(value))
    return f"non-finite loss at epoch {epoch}, step {step}{of}: loss term {bad}"


class _InterruptGuard:
    """While training: the first Ctrl-C asks the loop to stop after the step in progress (it then saves
    last.pt); a second one exits at once."""

    def __enter__(self) -> _InterruptGuard:
        self.requested = False
        self._previous = None
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.requested:
            os.write(2, b"\nsecond Ctrl-C: exiting now\n")
            os._exit(130)
        self.requested = True
        os.write(2, b"\nCtrl-C: finishing this step, then saving checkpoints/last.pt "
                    b"(press Ctrl-C again to quit at once)\n")

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def _format_terms(record: dict) -> str:
    terms = " ".join(f"{k[5:]} {v:.4f}" for k, v in record.items() if k.startswith("loss_"))
    return (f"{terms} | train {record['train_acc']:.1f}% test {record['test_acc']:.1f}% "
            f"| {record['images_per_s']:.0f} img/s")
