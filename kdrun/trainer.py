"""The training loop: batches in, a strategy step, optimiser, schedule, autocast, evaluation, checkpoints.

It knows nothing about distillation: a Strategy turns a batch into named loss terms, and the trainer
minimises their sum. What a resume needs lives in kdrun.train_state, the non-finite policy in
kdrun.nonfinite, signals in kdrun.interrupts and what the person watching sees in kdrun.progress.

With a validation split, each epoch is evaluated on it and best.pt is the best validation epoch; the
test split is evaluated once, at the end, on the final and the best weights. Without one, each epoch
is evaluated on the test split and best.pt is its best epoch (the published CIFAR convention).
"""

from __future__ import annotations

import json
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from omegaconf import DictConfig
from torch import nn

from kdrun.checkpoint import load_checkpoint, save_checkpoint, unwrap
from kdrun.data import BatchAugment, DatasetSplits, iterate_batches
from kdrun.data.feed import Data, eval_batches, has_val, make_feed
from kdrun.errors import ConfigError, Interrupted, NonFiniteLoss
from kdrun.interrupts import InterruptGuard
from kdrun.io import atomic_write_jsonl
from kdrun.models import count_parameters, model_size_mb
from kdrun.nonfinite import NonFinitePolicy
from kdrun.optim import build_optimizer, build_scheduler
from kdrun.progress import TrainingReport
from kdrun.runtime import Runtime
from kdrun.step import Batch
from kdrun.strategies.base import Strategy
from kdrun.train_state import EpochTotals, Training, TrainState, position, restore, save_last

CHECK_EVERY = 20  # steps between looks at the loss (each look syncs the device)


@dataclass
class TrainerConfig:
    epochs: int
    batch_size: int
    eval_batch_size: int
    data_seed: int
    progress: bool = True  # the live bar on a terminal
    label: str = "train"  # names the run in the bar and the log: "teacher", "kd", ...
    every_steps: int | None = None  # also write last.pt every N steps; None: at the end of each epoch only
    on_nonfinite: str = "stop"  # a NaN or inf loss term: "stop" the run, or "skip" the batch


def trainer_config(cfg: DictConfig, *, label: str, epochs: int | None = None,
                   data_seed: int | None = None) -> TrainerConfig:
    """The trainer's settings from a run's config; a teacher passes its own epochs and seed."""
    return TrainerConfig(
        epochs=cfg.trainer.epochs if epochs is None else epochs, batch_size=cfg.trainer.batch_size,
        eval_batch_size=cfg.trainer.eval_batch_size, data_seed=cfg.data_seed if data_seed is None else data_seed,
        progress=cfg.trainer.progress, label=label, every_steps=cfg.checkpoint.every_steps,
        on_nonfinite=cfg.trainer.on_nonfinite)


@torch.no_grad()
def accuracy(model: nn.Module, batches, runtime: Runtime) -> float:
    """Top-1 accuracy in percent over (normalised inputs, labels) batches."""
    was_training = model.training
    model.eval()
    correct, seen = None, 0
    for inputs, yb in batches:
        if runtime.channels_last:
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        with runtime.autocast():
            hits = (model(inputs).argmax(1) == yb).sum()
        correct = hits if correct is None else correct + hits
        seen += len(yb)
    model.train(was_training)
    return 100.0 * int(correct) / seen


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, augment: BatchAugment,
             runtime: Runtime, batch_size: int = 1024) -> float:
    """Top-1 accuracy in percent on un-augmented in-memory inputs."""
    return accuracy(model, ((augment(xb, None, train=False), yb)
                            for xb, yb in iterate_batches(x, y, batch_size, shuffle=False)), runtime)


def evaluate_split(model: nn.Module, data: Data, augment: BatchAugment, runtime: Runtime, batch_size: int,
                   split: str = "test") -> float:
    """Top-1 accuracy in percent on a split ("test" or "val") of in-memory or streamed data."""
    return accuracy(model, eval_batches(data, augment, split, batch_size), runtime)


class Trainer:
    def __init__(self, cfg: TrainerConfig, optim_cfg, runtime: Runtime):
        self.cfg, self.optim_cfg, self.runtime = cfg, optim_cfg, runtime

    def fit(self, strategy: Strategy, data: Data, augment: BatchAugment, run_dir: Path,
            on_epoch: Callable[[dict], None] | None = None, resume: bool = False) -> dict:
        """Train for cfg.epochs, evaluating every epoch; returns the facts for metrics.json.

        `on_epoch(record)` sees each metrics.jsonl record once it is written (e.g. a TensorBoard logger).
        With `resume`, training goes on from run_dir/checkpoints/last.pt. Raises Interrupted after saving
        last.pt on Ctrl-C or SIGTERM, NonFiniteLoss on a NaN/inf loss term (with on_nonfinite=stop;
        last.pt then stays the last good one).
        """
        cfg, runtime, run_dir = self.cfg, self.runtime, Path(run_dir)
        check_batchnorm_batches(strategy, len(data.train_y), cfg)
        feed = make_feed(data, augment, cfg.batch_size, cfg.data_seed, runtime)
        optimizer = build_optimizer(strategy.parameters(), self.optim_cfg)
        training = Training(strategy, optimizer,
                            build_scheduler(optimizer, self.optim_cfg, steps_per_epoch=feed.steps_per_epoch,
                                            epochs=cfg.epochs),
                            runtime.grad_scaler(), feed, feed.steps_per_epoch)
        last_path, best_path = run_dir / "checkpoints" / "last.pt", run_dir / "checkpoints" / "best.pt"
        st = restore(last_path, training, runtime, cfg.label) if resume else TrainState(totals=EpochTotals.new(runtime.device))
        started = time.perf_counter()
        saved_at = (st.epoch, st.step) if resume else None
        policy = NonFinitePolicy(cfg.on_nonfinite)
        evaluation = Evaluation(data, augment, runtime, cfg.eval_batch_size)

        def kept() -> str:  # what a stopped run leaves to resume from
            if saved_at is None:
                return "No checkpoint was written before this point."
            return f"The last good checkpoint is kept: {last_path} ({position(TrainState(*saved_at), training.steps_per_epoch)})."

        def save() -> None:
            nonlocal saved_at
            policy.check(kept())  # never save weights that a NaN has touched
            save_last(last_path, training, st, runtime, st.wall_time_s + time.perf_counter() - started)
            saved_at = (st.epoch, st.step)

        last_path.parent.mkdir(parents=True, exist_ok=True)
        # metrics.jsonl holds exactly the epochs last.pt knows (a kill can fall between the two writes).
        atomic_write_jsonl(run_dir / "metrics.jsonl", st.history)
        # With device.compile, compiling happens here, outside the timed epochs (streamed data: in epoch 1).
        if isinstance(data, DatasetSplits):
            runtime.warm_up(strategy, data, augment, cfg.batch_size)
        report = TrainingReport(cfg.label, cfg.epochs, training.steps_per_epoch, run_dir / "train.log",
                                live=cfg.progress)
        with report, InterruptGuard() as interrupt:
            report.resumed_at(st.epoch, st.step)
            while st.epoch <= cfg.epochs:
                totals, steps_per_epoch = st.totals, training.steps_per_epoch
                strategy.train()
                t0, since = time.perf_counter(), st.step
                for batch in feed.batches(st.epoch, st.step):
                    if totals.lr is None:
                        totals.lr = optimizer.param_groups[0]["lr"]
                    with runtime.autocast():
                        out = strategy.step(batch)
                    names = list(out.losses)
                    values = torch.stack([v.detach().float() for v in out.losses.values()])
                    optimizer.zero_grad(set_to_none=True)
                    if policy.admits(st.epoch, st.step + 1, steps_per_epoch, names, values, totals.skipped):
                        training.scaler.scale(sum(out.losses.values())).backward()
                        training.scaler.step(optimizer)
                        training.scaler.update()
                        training.scheduler.step()
                        for name, value in zip(names, values):
                            totals.term_sums[name] = totals.term_sums.get(name, 0) + value
                        totals.correct += (out.logits.detach().argmax(1) == batch.y).sum()
                        totals.seen += len(batch.y)
                        totals.steps += 1
                    else:
                        totals.skipped += 1
                        with warnings.catch_warnings():  # "scheduler stepped before the optimizer": on purpose
                            warnings.simplefilter("ignore", UserWarning)
                            training.scheduler.step()  # the schedule follows the step count, skipped or not
                    st.step += 1
                    if st.step % CHECK_EVERY == 1 or st.step == steps_per_epoch:
                        # Reading a loss syncs the device: do it rarely, and time the steps between reads.
                        policy.check(kept())
                        loss = values.sum().item()
                        now = time.perf_counter()
                        report.steps_done(st.epoch, st.step - since, now - t0, loss)
                        totals.seconds += now - t0
                        t0, since = now, st.step
                    global_step = (st.epoch - 1) * steps_per_epoch + st.step
                    periodic = cfg.every_steps and global_step % cfg.every_steps == 0
                    if st.step < steps_per_epoch and (interrupt.requested or periodic):
                        totals.seconds += time.perf_counter() - t0
                        t0 = time.perf_counter()
                        save()
                        if interrupt.requested:
                            raise Interrupted(f"interrupted ({interrupt.requested}) at epoch {st.epoch}, step {st.step}/"
                                              f"{steps_per_epoch} of {cfg.label}; saved {last_path}", interrupt.exit_status)
                runtime.synchronize()  # the epoch's time includes the device work still queued
                totals.seconds += time.perf_counter() - t0
                policy.check(kept())
                record = epoch_record(st, strategy, evaluation, policy.skips)
                st.history.append(record)
                st.skipped_steps += totals.skipped
                if record[evaluation.selects] > st.best_acc:
                    st.best_acc, st.best_epoch = record[evaluation.selects], st.epoch
                    save_checkpoint(best_path, strategy.student, epoch=st.epoch,
                                    **{evaluation.selects: record[evaluation.selects]})
                st.epoch, st.step, st.totals = st.epoch + 1, 0, EpochTotals.new(runtime.device)
                save()
                atomic_write_jsonl(run_dir / "metrics.jsonl", st.history)
                report.epoch_done(record)
                if on_epoch is not None:
                    on_epoch(record)
                if interrupt.requested and st.epoch <= cfg.epochs:
                    raise Interrupted(f"interrupted ({interrupt.requested}) after epoch {st.epoch - 1} of {cfg.label}; "
                                      f"saved {last_path}", interrupt.exit_status)
        return fit_summary(st, strategy, evaluation, best_path, cfg, runtime,
                           st.wall_time_s + time.perf_counter() - started)


class Evaluation:
    """Which split each epoch is evaluated on (validation when there is one, else test), and the test
    split's accuracy of any model."""

    def __init__(self, data: Data, augment: BatchAugment, runtime: Runtime, batch_size: int):
        self.data, self.augment, self.runtime, self.batch_size = data, augment, runtime, batch_size
        self.has_val = has_val(data)
        self.selects = "val_acc" if self.has_val else "test_acc"

    def epoch_acc(self, model: nn.Module) -> float:
        return evaluate_split(model, self.data, self.augment, self.runtime, self.batch_size,
                              "val" if self.has_val else "test")

    def test_acc(self, model: nn.Module) -> float:
        return evaluate_split(model, self.data, self.augment, self.runtime, self.batch_size)


def epoch_record(st: TrainState, strategy: Strategy, evaluation: Evaluation, skips: bool) -> dict:
    """The metrics.jsonl record of the epoch just trained."""
    totals = st.totals
    if totals.steps == 0:
        raise NonFiniteLoss(f"every step of epoch {st.epoch} had a non-finite loss ({totals.skipped} skipped); "
                            "stopping")
    terms = {f"loss_{name}": (total / totals.steps).item() for name, total in totals.term_sums.items()}
    seconds = max(totals.seconds, 1e-9)
    record = {
        "epoch": st.epoch,
        "loss": sum(terms.values()),
        **terms,
        "train_acc": 100.0 * int(totals.correct) / totals.seen,
        "lr": totals.lr,
        "seconds": round(seconds, 4),
        "images_per_s": round(totals.seen / seconds, 1),
        evaluation.selects: evaluation.epoch_acc(strategy.student),
        **strategy.epoch_metrics(evaluation.epoch_acc),
    }
    if skips:
        record["skipped_steps"] = totals.skipped
    return json.loads(json.dumps(record))  # plain numbers: JSON and a weights-only load both take them


def fit_summary(st: TrainState, strategy: Strategy, evaluation: Evaluation, best_path: Path, cfg: TrainerConfig,
                runtime: Runtime, wall_time_s: float) -> dict:
    """The facts of a finished fit for metrics.json: accuracy of the final and the best weights on the test
    split, and how the best were chosen."""
    student = strategy.student
    final = st.history[-1]
    summary = {"status": "completed", "epochs": cfg.epochs}
    if evaluation.has_val:
        summary.update(final_test_acc=evaluation.test_acc(student), final_val_acc=final["val_acc"],
                       best_val_acc=st.best_acc, best_test_acc=_best_weights_test_acc(student, best_path, evaluation),
                       selection="best.pt: best validation accuracy; test evaluated once on final and best weights")
    else:
        summary.update(final_test_acc=final["test_acc"], best_test_acc=st.best_acc,
                       selection="best.pt: best test accuracy (no validation split)")
    summary.update(best_epoch=st.best_epoch, arch=student.arch, params=count_parameters(student),
                   size_mb=round(model_size_mb(student), 4), wall_time_s=round(wall_time_s, 3),
                   device=str(runtime.device), precision=runtime.precision, **strategy.summary())
    if cfg.on_nonfinite == "skip":
        summary["skipped_steps"] = st.skipped_steps
    return summary


def _best_weights_test_acc(student: nn.Module, best_path: Path, evaluation: Evaluation) -> float:
    """Test accuracy of best.pt's weights, loaded into the student and put back after."""
    model = unwrap(student)
    final_weights = {k: v.clone() for k, v in model.state_dict().items()}
    model.load_state_dict(load_checkpoint(best_path)["state_dict"])
    acc = evaluation.test_acc(student)
    model.load_state_dict(final_weights)
    return acc


def check_batchnorm_batches(strategy: Strategy, n_train: int, cfg: TrainerConfig) -> None:
    if min(n_train, cfg.batch_size) < 2 and any(isinstance(m, nn.modules.batchnorm._BatchNorm)
                                                 for m in strategy.student.modules()):
        raise ConfigError(f"{cfg.label}: batches of {min(n_train, cfg.batch_size)} sample cannot train "
                          f"{strategy.student.arch}, whose BatchNorm needs at least 2; raise batch_size "
                          f"(or dataset.limit_train)")


__all__ = ["Batch", "Trainer", "TrainerConfig", "evaluate", "trainer_config"]
