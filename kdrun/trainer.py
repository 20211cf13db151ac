"""The training loop: optimiser, schedule, autocast, evaluation, checkpoints, metrics.

It knows nothing about distillation: a Strategy turns a batch into named loss
terms, and the trainer minimises their sum.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from torch import nn

from kdrun.checkpoint import save_checkpoint
from kdrun.console import console
from kdrun.data import BatchAugment, DatasetSplits, batch_indices, iterate_batches, num_batches
from kdrun.io import append_jsonl, atomic_write_json
from kdrun.models import count_parameters, model_size_mb
from kdrun.optim import build_optimizer, build_scheduler
from kdrun.runtime import Runtime, data_generator
from kdrun.strategies.base import Batch, Strategy


@dataclass
class TrainerConfig:
    epochs: int
    batch_size: int
    eval_batch_size: int
    data_seed: int
    progress: bool = True
    label: str = "train"  # shown in the progress bar: "teacher", "student", ...


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
        self.cfg = cfg
        self.optim_cfg = optim_cfg
        self.runtime = runtime

    def fit(self, strategy: Strategy, data: DatasetSplits, augment: BatchAugment, run_dir: Path,
            extra: dict | None = None, on_epoch: Callable[[dict], None] | None = None) -> dict:
        """Train for cfg.epochs, evaluating every epoch; returns the metrics.json summary (plus `extra`).

        `on_epoch(record)` sees each metrics.jsonl record once it is written (e.g. a TensorBoard logger).
        """
        cfg, runtime = self.cfg, self.runtime
        run_dir = Path(run_dir)
        (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
        metrics_path = run_dir / "metrics.jsonl"
        metrics_path.unlink(missing_ok=True)

        n_train = len(data.train_y)
        drop_last = n_train > cfg.batch_size  # a last batch of one would break BatchNorm
        steps_per_epoch = num_batches(n_train, cfg.batch_size, drop_last)
        optimizer = build_optimizer(strategy.parameters(), self.optim_cfg)
        scheduler = build_scheduler(optimizer, self.optim_cfg, steps_per_epoch=steps_per_epoch, epochs=cfg.epochs)
        scaler = runtime.grad_scaler()
        generator = data_generator(cfg.data_seed, runtime.device)

        best_acc, best_epoch, history = -1.0, 0, []
        start = time.perf_counter()
        with self._progress() as progress:
            for epoch in range(1, cfg.epochs + 1):
                task = progress.add_task(f"{cfg.label} {epoch}/{cfg.epochs}", total=steps_per_epoch, terms="")
                record = self._train_epoch(strategy, data, augment, optimizer, scheduler, scaler, generator,
                                           epoch, drop_last, progress, task)

                def test_acc(model: nn.Module) -> float:
                    return evaluate(model, data.test_x, data.test_y, augment, runtime, cfg.eval_batch_size)

                record = {"epoch": epoch, **record, "test_acc": test_acc(strategy.student),
                          **strategy.epoch_metrics(test_acc)}
                append_jsonl(metrics_path, record)
                if on_epoch is not None:
                    on_epoch(record)
                history.append(record)
                progress.update(task, terms=_format_terms(record))
                state = {"epoch": epoch, "test_acc": record["test_acc"]}
                if record["test_acc"] > best_acc:
                    best_acc, best_epoch = record["test_acc"], epoch
                    save_checkpoint(run_dir / "checkpoints" / "best.pt", strategy.student, **state)
                save_checkpoint(
                    run_dir / "checkpoints" / "last.pt", strategy.student, **state,
                    optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(),
                    scaler=scaler.state_dict(), best_acc=best_acc, best_epoch=best_epoch,
                )

        student = strategy.student
        summary = {
            "status": "completed",
            "final_test_acc": history[-1]["test_acc"],
            "best_test_acc": best_acc,
            "best_epoch": best_epoch,
            "epochs": cfg.epochs,
            "arch": student.arch,
            "params": count_parameters(student),
            "size_mb": round(model_size_mb(student), 4),
            "wall_time_s": round(time.perf_counter() - start, 3),
            "device": str(runtime.device),
            "precision": runtime.precision,
            **strategy.summary(),
            **(extra or {}),
        }
        atomic_write_json(run_dir / "metrics.json", summary)
        return summary

    def _train_epoch(self, strategy, data, augment, optimizer, scheduler, scaler, generator, epoch, drop_last,
                     progress, task) -> dict:
        runtime = self.runtime
        strategy.train()
        term_sums: dict[str, torch.Tensor] = {}
        correct = torch.zeros((), dtype=torch.long, device=runtime.device)
        seen = 0
        t0 = time.perf_counter()
        for i, index in enumerate(batch_indices(len(data.train_y), self.cfg.batch_size, generator=generator,
                                                drop_last=drop_last, device=runtime.device)):
            inputs = augment(data.train_x[index], generator, train=True)
            if runtime.channels_last:
                inputs = inputs.contiguous(memory_format=torch.channels_last)
            yb = data.train_y[index]
            with runtime.autocast():
                out = strategy.step(Batch(inputs, yb, index, epoch))
            loss = sum(out.losses.values())
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()

            for name, value in out.losses.items():
                term_sums[name] = term_sums.get(name, 0) + value.detach().float()
            correct += (out.logits.detach().argmax(1) == yb).sum()
            seen += len(yb)
            if i % 20 == 0:  # reading a loss value syncs the device; do it rarely
                progress.update(task, terms=f"loss {loss.item():.4f}")
            progress.advance(task)
        seconds = time.perf_counter() - t0
        steps = i + 1
        terms = {f"loss_{name}": (total / steps).item() for name, total in term_sums.items()}
        return {
            "loss": sum(terms.values()),
            **terms,
            "train_acc": 100.0 * correct.item() / seen,
            "lr": optimizer.param_groups[0]["lr"],
            "seconds": round(seconds, 4),
            "images_per_s": round(seen / seconds, 1),
        }

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


def _format_terms(record: dict) -> str:
    terms = " ".join(f"{k[5:]} {v:.4f}" for k, v in record.items() if k.startswith("loss_"))
    return (f"{terms} | train {record['train_acc']:.1f}% test {record['test_acc']:.1f}% "
            f"| {record['images_per_s']:.0f} img/s")
