"""Where each epoch's record goes besides metrics.jsonl: nowhere (the default), TensorBoard, MLflow or W&B.

`logger=` picks one (conf/logger/). The trainer calls `log_epoch` with the same
record it appends to metrics.jsonl, so every logger sees exactly what the files hold.
"""

from __future__ import annotations

from pathlib import Path

from kdrun.errors import ConfigError
from kdrun.track.trackers import MLflowLogger, WandbLogger

LOGGERS = ("none", "tensorboard", "mlflow", "wandb")


class EpochLogger:
    """Files only: metrics.jsonl is written by the trainer, this adds nothing."""

    def log_epoch(self, record: dict) -> None:
        pass

    def close(self, failed: bool = False) -> None:
        pass


def scalar_tag(key: str) -> str:
    """TensorBoard tag for a metrics.jsonl key: loss terms and accuracies share a section each."""
    if key == "loss":
        return "loss/total"
    if key.startswith("loss_"):
        return f"loss/{key[5:]}"
    if key.endswith("_acc"):
        return f"accuracy/{key[:-4]}"
    return f"train/{key}"


class TensorBoardLogger(EpochLogger):
    def __init__(self, log_dir: Path):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:  # torch raises ImportError when the tensorboard package is missing
            raise ConfigError(
                "logger=tensorboard needs the tensorboard package: pip install tensorboard "
                "(the 'tensorboard' extra of kdrun), or use logger=none, the default, which writes files only"
            ) from exc
        self.log_dir = Path(log_dir)
        self.writer = SummaryWriter(log_dir=str(self.log_dir))

    def log_epoch(self, record: dict) -> None:
        step = record["epoch"]
        for key, value in record.items():
            if key != "epoch" and isinstance(value, (int, float)) and not isinstance(value, bool):
                self.writer.add_scalar(scalar_tag(key), value, step)
        self.writer.flush()  # a live `tensorboard --logdir` sees each epoch as it ends

    def close(self, failed: bool = False) -> None:
        self.writer.close()


def build_logger(logger_cfg, run_dir: Path, params: dict | None = None, outputs: str = "outputs") -> EpochLogger:
    """The logger named by the `logger` config group, writing under `run_dir`; trackers also record
    `params` (the resolved config) and, on close, the run's files (kdrun/track/trackers.py)."""
    name = logger_cfg.name
    if name not in LOGGERS:
        raise ConfigError(f"unknown logger {name!r}; allowed: {', '.join(LOGGERS)}")
    if name == "tensorboard":
        return TensorBoardLogger(Path(run_dir) / logger_cfg.log_dir)
    if name == "mlflow":
        return MLflowLogger(logger_cfg, run_dir, params or {}, outputs)
    if name == "wandb":
        return WandbLogger(logger_cfg, run_dir, params or {})
    return EpochLogger()
