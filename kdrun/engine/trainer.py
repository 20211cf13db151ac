"""The training loop: batches in, a strategy step, optimiser, schedule, autocast, evaluation, checkpoints.

It knows nothing about distillation: a Strategy turns a batch into named loss terms, and the trainer
minimises their sum. What a resume needs lives in kdrun.engine.train_state, the non-finite policy in
kdrun.engine.nonfinite, signals in kdrun.engine.interrupts and what the person watching sees in kdrun.engine.progress.

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
from omegaconf import DictConfig, OmegaConf
from torch import nn

from kdrun.sources.checkpoint import load_checkpoint, save_checkpoint, unwrap
from kdrun.sources.data import BatchAugment, DatasetSplits
from kdrun.sources.data.feed import Data, eval_batches, has_val, make_feed
from kdrun.engine.data_parallel import average_gradients, global_totals, same_start, use_sync_batchnorm
from kdrun.distributed import SOLO, World, check_divisible
from kdrun.errors import ConfigError, Interrupted, NonFiniteLoss
from kdrun.engine.interrupts import InterruptGuard
from kdrun.io import atomic_write_jsonl
from kdrun.sources.models import count_parameters, model_size_mb
from kdrun.engine.nonfinite import NonFinitePolicy
from kdrun.engine.dot import DistillationOrientedTrainer
from kdrun.engine.optim import build_optimizer, build_scheduler
from kdrun.config.plausibility import check_first_step, zero_weight_terms
from kdrun.engine.progress import TrainingReport
from kdrun.runtime import Runtime
from kdrun.config.schema import TrainerKeys
from kdrun.methods.terms.compose import term_configs
from kdrun.step import Batch
from kdrun.engine.contract import Strategy
from kdrun.engine.train_state import EpochTotals, Training, TrainState, position, restore, save_last

CHECK_EVERY = 20  # steps between looks at the loss (each look syncs the device)


@dataclass
class TrainerConfig(TrainerKeys):
    """The `trainer` group's keys (declared once, in kdrun.config.schema.TrainerKeys; defaults in conf/config.yaml)
    and the facts of the run the loop needs besides."""

    data_seed: int = 0
    label: str = "train"  # names the run in the bar and the log: "teacher", "kd", ...
    every_steps: int | None = None  # also write last.pt every N steps; None: at the end of each epoch only
    check_first_step: bool = False  # refuse a weighed term that is numerically zero at the first step
    zero_weight_terms: frozenset[str] = frozenset()  # terms weighed zero on purpose: not "vanishing"
    term_settings: str = ""  # what scales the terms (their temperatures), for the message when one vanishes


def trainer_config(cfg: DictConfig, *, label: str, epochs: int | None = None, data_seed: int | None = None,
                   batch_size: int | None = None) -> TrainerConfig:
    """The trainer's settings from a run's config; a teacher passes its own epochs, seed and batch size."""
    keys = OmegaConf.to_container(cfg.trainer, resolve=True)
    keys.update({k: v for k, v in (("epochs", epochs), ("batch_size", batch_size)) if v is not None})
    temperatures = ", ".join(f"loss.terms.{name}.T={config.T:g}" for name, _, config in term_configs(cfg)
                             if hasattr(config, "T"))
    return TrainerConfig(**keys, data_seed=cfg.data_seed if data_seed is None else data_seed, label=label,
                         every_steps=cfg.checkpoint.every_steps, check_first_step=True,
                         zero_weight_terms=zero_weight_terms(cfg.loss),
                         term_settings=f" ({temperatures})" if temperatures else "")


@torch.no_grad()
def accuracy(model: nn.Module, batches, runtime: Runtime, world: World = SOLO) -> float:
    """Top-1 accuracy in percent over (normalised inputs, labels) batches; with several processes each
    passes its own share and the counts are summed."""
    was_training = model.training
    model.eval()
    counts = torch.zeros(2, dtype=torch.long, device=runtime.device)  # correct, seen
    for inputs, yb in batches:
        if runtime.channels_last:
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        with runtime.autocast():
            counts[0] += (model(inputs).argmax(1) == yb).sum()
        counts[1] += len(yb)
    model.train(was_training)
    world.sum(counts)
    return 100.0 * int(counts[0]) / int(counts[1])


@torch.no_grad()
def class_counts(model: nn.Module, batches, runtime: Runtime, num_classes: int, world: World = SOLO) -> torch.Tensor:
    """(correct, seen) per class, a 2 x num_classes tensor, over (normalised inputs, labels) batches."""
    was_training = model.training
    model.eval()
    counts = torch.zeros(2, num_classes, dtype=torch.long, device=runtime.device)  # correct, seen per class
    for inputs, yb in batches:
        if runtime.channels_last:
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        with runtime.autocast():
            hit = model(inputs).argmax(1) == yb
        counts[0] += torch.bincount(yb[hit], minlength=num_classes)
        counts[1] += torch.bincount(yb, minlength=num_classes)
    model.train(was_training)
    world.sum(counts)
    return counts


def class_accuracy(counts: torch.Tensor) -> list:
    """Top-1 accuracy in percent of each class (None for a class with no sample) from class_counts."""
    return [None if seen == 0 else round(100.0 * correct / seen, 4) for correct, seen in zip(*counts.tolist())]


def weights_version(model: nn.Module) -> tuple[int, ...]:
    """Changes whenever any parameter or buffer is written in place (an optimiser step, BatchNorm statistics,
    load_state_dict): torch counts every in-place write of a tensor in its _version."""
    return tuple(t._version for t in (*model.parameters(), *model.buffers()))


def evaluate_split(model: nn.Module, data: Data, augment: BatchAugment, runtime: Runtime, batch_size: int,
                   split: str = "test", world: World = SOLO) -> float:
    """Top-1 accuracy in percent on a split ("test" or "val") of in-memory or streamed data."""
    return accuracy(model, eval_batches(data, augment, split, batch_size, world), runtime, world)


class Trainer:
    def __init__(self, cfg: TrainerConfig, optim_cfg, runtime: Runtime, world: World = SOLO):
        self.cfg, self.optim_cfg, self.runtime, self.world = cfg, optim_cfg, runtime, world

    def fit(self, strategy: Strategy, data: Data, augment: BatchAugment, run_dir: Path,
            on_epoch: Callable[[dict], None] | None = None, resume: bool = False) -> dict:
        """Train for cfg.epochs, evaluating every epoch; returns the facts for metrics.json.

        `on_epoch(record)` sees each metrics.jsonl record once it is written (e.g. a TensorBoard logger).
        With `resume`, training goes on from run_dir/checkpoints/last.pt. Raises Interrupted after saving
        last.pt on Ctrl-C or SIGTERM, NonFiniteLoss on a NaN/inf loss term (with on_nonfinite=stop;
        last.pt then stays the last good one).
        """
        run = FitRun(self, strategy, data, augment, Path(run_dir), resume)
        st, training, policy = run.st, run.training, run.policy
        with run.report, InterruptGuard() as interrupt:
            run.report.resumed_at(st.epoch, st.step)
            while st.epoch <= self.cfg.epochs:
                strategy.train()
                run.start_epoch()
                for batch in training.feed.batches(st.epoch, st.step):
                    run.note_lr()
                    training.optimizer.zero_grad(set_to_none=True)
                    names, values, correct = self._forward_backward(strategy, batch, training)
                    if self.cfg.check_first_step and st.epoch == 1 and st.step == 0:
                        self._check_first_step(names, values)
                    values, stop = run.agree(values, interrupt)
                    if policy.admits(st.epoch, st.step + 1, training.steps_per_epoch, names, values,
                                     st.totals.skipped):
                        run.optimiser_step()
                        run.count(names, values, correct, batch)
                    else:
                        run.skip()
                    st.step += 1
                    run.look(values)
                    run.save_mid_epoch(stop, interrupt)
                run.end_epoch(on_epoch)
                run.stop_if_signalled(interrupt)
        self.world.barrier()  # best.pt is on disk before any rank reads it back
        return run.summary()

    def _check_first_step(self, names: list[str], values: torch.Tensor) -> None:
        """Every term the config weighs is alive (plausibility.check_first_step); every rank takes rank 0's
        verdict, so that all stop or none."""
        try:
            check_first_step(names, values.tolist(), self.cfg.zero_weight_terms, label=self.cfg.label,
                             settings=self.cfg.term_settings)
            refusal = None
        except ConfigError as exc:
            refusal = str(exc)
        refusal = self.world.from_main(refusal)
        if refusal is not None:
            raise ConfigError(refusal)

    def _forward_backward(self, strategy: Strategy, batch: Batch, training: Training
                          ) -> tuple[list[str], torch.Tensor, torch.Tensor]:
        """The step's loss terms (their mean over trainer.accumulate micro-batches), gradients accumulated,
        and the count of correct predictions. optim=dot takes the task's and the distillation's apart."""
        scaler, optimizer = training.scaler, training.optimizer
        k = self.cfg.accumulate
        micro_batches = [batch] if k == 1 else split_batch(batch, k)
        total, correct = None, 0
        for micro in micro_batches:
            with self.runtime.autocast():
                out = strategy.step(micro)
            values = torch.stack([v.detach().float() for v in out.losses.values()])
            loss = sum(out.losses.values())
            if isinstance(optimizer, DistillationOrientedTrainer):  # no fp16 scaling (refused with dot)
                optimizer.backward(out.losses, 1.0 if k == 1 else 1.0 / k)
            else:
                scaler.scale(loss if k == 1 else loss / k).backward()
            total = values if total is None else total + values
            correct = correct + (out.logits.detach().argmax(1) == micro.y).sum()
        return list(out.losses), total if k == 1 else total / k, correct


class FitRun:
    """One fit in progress, beside the loop that drives it: the optimiser and schedule, the resume state,
    the non-finite policy, rank agreement, signals, clocks and the files (last.pt, best.pt, metrics.jsonl)."""

    def __init__(self, trainer: Trainer, strategy: Strategy, data: Data, augment: BatchAugment, run_dir: Path,
                 resume: bool):
        cfg, runtime, world = trainer.cfg, trainer.runtime, trainer.world
        self.cfg, self.runtime, self.world, self.strategy, self.run_dir = cfg, runtime, world, strategy, run_dir
        check_batchnorm_batches(strategy, len(data.train_y), cfg)
        check_divisible(cfg.batch_size, len(data.train_y), world, cfg.accumulate, cfg.label)
        if cfg.sync_bn and world.distributed:
            use_sync_batchnorm(strategy, runtime)
        self.params = [p for p in strategy.parameters() if p.requires_grad]
        same_start(strategy, world)
        feed = make_feed(data, augment, cfg.batch_size, cfg.data_seed, runtime, world)
        optimizer = build_optimizer(strategy.param_groups(), trainer.optim_cfg, strategy.task_losses())
        self.training = Training(strategy, optimizer,
                                 build_scheduler(optimizer, trainer.optim_cfg, steps_per_epoch=feed.steps_per_epoch,
                                                 epochs=cfg.epochs),
                                 runtime.grad_scaler(), feed, feed.steps_per_epoch)
        self.last_path, self.best_path = run_dir / "checkpoints" / "last.pt", run_dir / "checkpoints" / "best.pt"
        self.st = restore(self.last_path, self.training, runtime, cfg.label, world) if resume \
            else TrainState(totals=EpochTotals.new(runtime.device))
        self.started = time.perf_counter()
        self.saved_at = (self.st.epoch, self.st.step) if resume else None
        self.policy = NonFinitePolicy(cfg.on_nonfinite)
        self.evaluation = Evaluation(data, augment, runtime, cfg.eval_batch_size, world)
        if world.is_main:
            self.last_path.parent.mkdir(parents=True, exist_ok=True)
            # metrics.jsonl holds exactly the epochs last.pt knows (a kill can fall between the two writes).
            atomic_write_jsonl(run_dir / "metrics.jsonl", self.st.history)
        # With device.compile, compiling happens here, outside the timed epochs (streamed data: in epoch 1).
        if isinstance(data, DatasetSplits):
            runtime.warm_up(strategy, data, augment, cfg.batch_size)
        self.report = TrainingReport(cfg.label, cfg.epochs, self.training.steps_per_epoch,
                                     run_dir / "train.log" if world.is_main else None,
                                     live=cfg.progress and world.is_main)

    # ---- a step -----------------------------------------------------------------------------------------

    def start_epoch(self) -> None:
        self.t0, self.since = time.perf_counter(), self.st.step

    def note_lr(self) -> None:
        if self.st.totals.lr is None:
            self.st.totals.lr = self.training.optimizer.param_groups[0]["lr"]

    def agree(self, values: torch.Tensor, interrupt: InterruptGuard) -> tuple[torch.Tensor, bool]:
        """With several processes, one all-reduce: the gradients, whether any rank saw a NaN or a signal."""
        stop = interrupt.requested is not None
        if self.world.distributed:
            bad, stop = average_gradients(self.params, self.world, [~torch.isfinite(values).all(), stop])
            if bad and bool(torch.isfinite(values).all()):  # another rank's loss: the same verdict here
                values = values * float("nan")
        return values, stop

    def optimiser_step(self) -> None:
        training = self.training
        if self.cfg.clip_grad_norm is not None:
            training.scaler.unscale_(training.optimizer)
            torch.nn.utils.clip_grad_norm_(self.params, self.cfg.clip_grad_norm)
        training.scaler.step(training.optimizer)
        training.scaler.update()
        training.scheduler.step()

    def count(self, names: list[str], values: torch.Tensor, correct, batch: Batch) -> None:
        totals = self.st.totals
        for name, value in zip(names, values):
            totals.term_sums[name] = totals.term_sums.get(name, 0) + value
        totals.correct += correct
        totals.seen += len(batch.y)
        if batch.labelled is not None:
            totals.unlabelled = totals.unlabelled + (~batch.labelled).sum()  # no device sync
        totals.steps += 1

    def skip(self) -> None:
        self.st.totals.skipped += 1
        with warnings.catch_warnings():  # "scheduler stepped before the optimizer": on purpose
            warnings.simplefilter("ignore", UserWarning)
            self.training.scheduler.step()  # the schedule follows the step count, skipped or not

    def look(self, values: torch.Tensor) -> None:
        """Every CHECK_EVERY steps: the non-finite check and the progress report. Reading a loss syncs the
        device, so it is done rarely, and the steps between reads are timed."""
        st = self.st
        if st.step % CHECK_EVERY == 1 or st.step == self.training.steps_per_epoch:
            self.policy.check(self.kept())
            loss = values.sum().item()
            now = time.perf_counter()
            self.report.steps_done(st.epoch, st.step - self.since, now - self.t0, loss)
            st.totals.seconds += now - self.t0
            self.t0, self.since = now, st.step

    def save_mid_epoch(self, stop: bool, interrupt: InterruptGuard) -> None:
        """last.pt every checkpoint.every_steps, and on a signal (then stop)."""
        st, cfg = self.st, self.cfg
        global_step = (st.epoch - 1) * self.training.steps_per_epoch + st.step
        periodic = cfg.every_steps and global_step % cfg.every_steps == 0
        if st.step < self.training.steps_per_epoch and (stop or periodic):
            st.totals.seconds += time.perf_counter() - self.t0
            self.t0 = time.perf_counter()
            self.save()
            if stop:
                raise Interrupted(f"interrupted ({interrupt.requested or 'a signal to another process'}) "
                                  f"at epoch {st.epoch}, step {st.step}/{self.training.steps_per_epoch} of "
                                  f"{cfg.label}; saved {self.last_path}", interrupt.exit_status)

    # ---- an epoch ---------------------------------------------------------------------------------------

    def end_epoch(self, on_epoch: Callable[[dict], None] | None) -> None:
        """Evaluate, keep best.pt, save last.pt, append to metrics.jsonl."""
        st, world, evaluation = self.st, self.world, self.evaluation
        self.runtime.synchronize()  # the epoch's time includes the device work still queued
        st.totals.seconds += time.perf_counter() - self.t0
        self.policy.check(self.kept())
        totals = st.totals
        st.totals = global_totals(totals, world)
        record = epoch_record(st, self.strategy, evaluation, self.policy.skips)
        st.history.append(record)
        st.skipped_steps += totals.skipped  # this rank's count, as last.pt has always kept it
        if record[evaluation.selects] > st.best_acc:
            st.best_acc, st.best_epoch = record[evaluation.selects], st.epoch
            if world.is_main:
                save_checkpoint(self.best_path, self.strategy.student, epoch=st.epoch,
                                **{evaluation.selects: record[evaluation.selects]})
        st.epoch, st.step, st.totals = st.epoch + 1, 0, EpochTotals.new(self.runtime.device)
        self.save()
        if world.is_main:
            atomic_write_jsonl(self.run_dir / "metrics.jsonl", st.history)
            self.report.epoch_done(record)
            if on_epoch is not None:
                on_epoch(record)

    def stop_if_signalled(self, interrupt: InterruptGuard) -> None:
        """A signal that came after the epoch's last step: every rank must agree before stopping."""
        stopping = self.world.sum(torch.tensor([float(interrupt.requested is not None)])).item() > 0
        if stopping and self.st.epoch <= self.cfg.epochs:
            raise Interrupted(f"interrupted ({interrupt.requested or 'a signal to another process'}) after "
                              f"epoch {self.st.epoch - 1} of {self.cfg.label}; saved {self.last_path}",
                              interrupt.exit_status)

    # ---- files ------------------------------------------------------------------------------------------

    def kept(self) -> str:
        """What a stopped run leaves to resume from."""
        if self.saved_at is None:
            return "No checkpoint was written before this point."
        return (f"The last good checkpoint is kept: {self.last_path} "
                f"({position(TrainState(*self.saved_at), self.training.steps_per_epoch)}).")

    def save(self) -> None:
        self.policy.check(self.kept())  # never save weights that a NaN has touched
        st = self.st
        saving = TrainState(**{**vars(st), "totals": global_totals(st.totals, self.world)})  # every rank sums
        if self.world.is_main:
            save_last(self.last_path, self.training, saving, self.runtime, self.wall_time(), self.world.size)
        self.saved_at = (st.epoch, st.step)

    def wall_time(self) -> float:
        return self.st.wall_time_s + time.perf_counter() - self.started

    def summary(self) -> dict:
        return {**fit_summary(self.st, self.strategy, self.evaluation, self.best_path, self.cfg, self.runtime,
                              self.wall_time()), "world_size": self.world.size}


def split_batch(batch: Batch, k: int) -> list[Batch]:
    """k equal micro-batches of a batch (the global batch splits evenly: check_divisible)."""
    def chunks(t: torch.Tensor | None) -> list:
        return [None] * k if t is None else list(t.chunk(k))

    parts = zip(batch.x.chunk(k), batch.y.chunk(k), batch.index.chunk(k), chunks(batch.labelled),
                chunks(batch.partner_y), chunks(batch.own_share))
    return [Batch(x, y, index, batch.epoch, *rest) for x, y, index, *rest in parts]


class Evaluation:
    """Which split each epoch is evaluated on (validation when there is one, else test), and the test
    split's accuracy of any model."""

    def __init__(self, data: Data, augment: BatchAugment, runtime: Runtime, batch_size: int, world: World = SOLO):
        self.data, self.augment, self.runtime, self.batch_size = data, augment, runtime, batch_size
        self.world = world
        self.has_val = has_val(data)
        self.selects = "val_acc" if self.has_val else "test_acc"
        self._last_test: tuple | None = None  # (model, weights_version, class counts) of the latest test pass

    def epoch_acc(self, model: nn.Module) -> float:
        if self.has_val:
            return evaluate_split(model, self.data, self.augment, self.runtime, self.batch_size, "val", self.world)
        return self.test_acc(model)

    def test_acc(self, model: nn.Module) -> float:
        correct, seen = self._test_counts(model).sum(1).tolist()
        return 100.0 * correct / seen

    def per_class_test_acc(self, model: nn.Module) -> dict[str, float | None]:
        """Test accuracy of each class, keyed by class name (the label number where the data has no names)."""
        data = self.data
        names = data.class_names or [str(c) for c in range(data.num_classes)]
        return dict(zip(names, class_accuracy(self._test_counts(model))))

    def _test_counts(self, model: nn.Module) -> torch.Tensor:
        """Per-class counts on the test split. Weights unchanged since the last test pass reuse it: the final
        epoch's evaluation also gives metrics.json's per-class accuracies, without a second pass."""
        version = weights_version(model)
        if self._last_test is None or self._last_test[0] is not model or self._last_test[1] != version:
            counts = class_counts(model, eval_batches(self.data, self.augment, "test", self.batch_size, self.world),
                                  self.runtime, self.data.num_classes, self.world)
            self._last_test = (model, version, counts)
        return self._last_test[2]


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
        # On labelled images only (an unlabelled one has label -1, so it is never counted correct).
        "train_acc": 100.0 * int(totals.correct) / max(totals.seen - int(totals.unlabelled), 1),
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
    # What the final weights learnt of each class (a class omitted from the training split included).
    summary["per_class_test_acc"] = evaluation.per_class_test_acc(student)
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


__all__ = ["Batch", "Trainer", "TrainerConfig", "evaluate_split", "trainer_config"]
