"""What a training run tells the person watching it.

On a terminal (and with trainer.progress=true): one live bar for the whole run, the key numbers first.
Otherwise (output to a file, nohup, SLURM): one plain line per epoch, flushed at once. The same lines
always go to train.log in the run directory, so a killed run still says how far it got. Once the
first steps are timed, a run that will take over a minute says how long it expects to take.
In a sweep's job (kdrun.console.job_log) the per-epoch lines go to train.log alone, and the live bar
leaves no trace when the job ends: the sweep prints one line per finished job.
"""

from __future__ import annotations

import time
from pathlib import Path

from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeRemainingColumn

from kdrun.console import append_line, console, job_log

ESTIMATE_AFTER_STEPS = 20  # steps timed before the estimate of the whole run
ESTIMATE_ABOVE_S = 60.0  # shorter runs say nothing


class TrainingReport:
    def __init__(self, label: str, epochs: int, steps_per_epoch: int, log_path: Path | None, live: bool):
        self.label, self.epochs, self.steps_per_epoch = label, epochs, steps_per_epoch
        self.log_path = log_path
        self.live = live and console.is_terminal
        self.in_sweep = job_log() is not None  # the console keeps one line per job
        self.total_steps = epochs * steps_per_epoch
        self.steps_timed = 0
        self.seconds_timed = 0.0
        self.estimated = False
        self.started = time.perf_counter()
        self.first_epoch: int | None = None  # of this process: a resumed run times only its own epochs
        self._progress: Progress | None = None

    def __enter__(self) -> TrainingReport:
        if self.live:
            self._progress = Progress(
                TextColumn("[bold]{task.description}"), TextColumn("{task.fields[numbers]}"),
                BarColumn(bar_width=12), TaskProgressColumn(), TimeRemainingColumn(compact=True),
                console=console, transient=self.in_sweep)
            self._progress.__enter__()
            self._task = self._progress.add_task(self.label, total=self.total_steps, numbers="")
        return self

    def __exit__(self, *exc) -> None:
        if self._progress is not None:
            self._progress.__exit__(*exc)

    def resumed_at(self, epoch: int, step: int) -> None:
        if self._progress is not None:
            self._progress.update(self._task, completed=(epoch - 1) * self.steps_per_epoch + step)

    def steps_done(self, epoch: int, count: int, seconds: float, loss: float | None = None) -> None:
        """`count` more steps of `epoch` took `seconds` (the device synced); `loss` the latest loss, if read."""
        self.steps_timed += count
        self.seconds_timed += seconds
        if self._progress is not None:
            numbers = f"ep {epoch}/{self.epochs}" + (f" loss {loss:.3f}" if loss is not None else "")
            self._progress.update(self._task, advance=count, numbers=numbers)
        if not self.estimated and self.steps_timed >= min(ESTIMATE_AFTER_STEPS, self.steps_per_epoch):
            self.estimated = True
            per_step = self.seconds_timed / self.steps_timed
            total = per_step * self.total_steps
            if total > ESTIMATE_ABOVE_S:
                self._say(f"{self.label}: about {clock(total)} for {self.epochs} epochs x {self.steps_per_epoch} "
                          f"steps ({per_step * 1000:.0f} ms a step, from the first {self.steps_timed}; "
                          f"evaluation not counted)")

    def epoch_done(self, record: dict) -> None:
        elapsed = time.perf_counter() - self.started
        epoch = record["epoch"]
        self.first_epoch = self.first_epoch or epoch
        per_epoch = elapsed / (epoch - self.first_epoch + 1)
        split, acc = eval_split(record)
        line = (f"{self.label} epoch {epoch}/{self.epochs}  {loss_terms(record)}  "
                f"train {record['train_acc']:.1f}% {split} {acc:.1f}%  "
                f"{record['images_per_s']:.0f} img/s  {clock(elapsed)} elapsed  "
                f"ETA {clock(per_epoch * (self.epochs - epoch))}")
        if self._progress is not None:
            self._progress.update(self._task, numbers=f"ep {epoch}/{self.epochs} {split} {acc:.1f}%")
            self._log(line)
        elif self.in_sweep:
            self._log(line)
        else:
            self._say(line)

    def _say(self, line: str) -> None:
        if self.in_sweep:
            pass
        elif self._progress is not None:
            self._progress.console.print(line, markup=False, highlight=False, soft_wrap=True)
        else:
            console.print(line, markup=False, highlight=False, soft_wrap=True)
        self._log(line)

    def _log(self, line: str) -> None:
        if self.log_path is not None:
            append_line(self.log_path, line)


def loss_terms(record: dict) -> str:
    terms = [(k[5:], v) for k, v in record.items() if k.startswith("loss_")]
    shown = " ".join(f"{name} {value:.4g}" for name, value in terms[:4])
    more = f" +{len(terms) - 4}" if len(terms) > 4 else ""
    return f"loss {record['loss']:.4g} ({shown}{more})"


def clock(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def eval_split(record: dict) -> tuple[str, float]:
    """The split an epoch was evaluated on (validation when there is one) and its accuracy."""
    return ("val", record["val_acc"]) if "val_acc" in record else ("test", record["test_acc"])
