"""Experiment trackers beside TensorBoard: MLflow and Weights & Biases (optional extras).

Each gets the resolved config as parameters when the run starts, every metrics.jsonl record as it is
written, and at the end the run's files as artifacts: the checkpoints and the report (config.yaml,
metrics.json, metrics.jsonl, learning curves). A failed run is closed as failed.

    logger=mlflow   a local file store under outputs/mlruns, or logger.tracking_uri=http://host:5000
    logger=wandb    offline (files under the run directory, `wandb sync` later) unless logged in
"""

from __future__ import annotations

import os
from pathlib import Path

from kdrun.errors import ConfigError

# The run's report files, uploaded when the run ends (the checkpoints/ folder goes too).
REPORT_FILES = ("config.yaml", "metrics.json", "metrics.jsonl", "learning_curves.png", "learning_curves.pdf",
                "learning_curves.svg")


def flatten(config: dict, prefix: str = "") -> dict[str, str]:
    """Nested config -> {"optim.lr": "0.1", ...}: trackers take flat parameters."""
    out = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = str(value)
    return out


def numbers(record: dict) -> dict[str, float]:
    return {k: float(v) for k, v in record.items()
            if k != "epoch" and isinstance(v, (int, float)) and not isinstance(v, bool)}


def run_files(run_dir: Path) -> tuple[list[Path], list[Path]]:
    """(report files, checkpoint files) that exist now."""
    report = [run_dir / n for n in REPORT_FILES if (run_dir / n).is_file()]
    checkpoints = sorted((run_dir / "checkpoints").glob("*.pt"))
    return report, checkpoints


class MLflowLogger:
    def __init__(self, logger_cfg, run_dir: Path, params: dict, outputs: str):
        try:
            from mlflow.entities import Metric, Param, RunStatus
            from mlflow.tracking import MlflowClient
        except ImportError as exc:
            raise ConfigError("logger=mlflow needs the mlflow package: pip install 'kdrun[mlflow]'") from exc
        uri = logger_cfg.tracking_uri
        if not uri:  # the local file store: MLflow 3 keeps it behind this opt-in
            uri = Path(outputs, "mlruns").absolute().as_uri()
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self._Metric, self._status = Metric, RunStatus
        self.run_dir = Path(run_dir)
        self.client = MlflowClient(tracking_uri=uri)
        experiment = self.client.get_experiment_by_name(logger_cfg.experiment)
        experiment_id = (experiment.experiment_id if experiment is not None
                         else self.client.create_experiment(logger_cfg.experiment))
        self.run_id = self.client.create_run(experiment_id, run_name=self.run_dir.name,
                                             tags={"kdrun.run_dir": str(self.run_dir.absolute())}).info.run_id
        # MLflow caps one batch at 100 parameters
        items = [Param(k, v[:6000]) for k, v in flatten(params).items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[i:i + 100])
        self.tracking_uri = uri

    def log_epoch(self, record: dict) -> None:
        step, values = int(record["epoch"]), numbers(record)
        metrics = [self._Metric(k, v, 0, step) for k, v in values.items()]
        self.client.log_batch(self.run_id, metrics=metrics)

    def close(self, failed: bool = False) -> None:
        report, checkpoints = run_files(self.run_dir)
        for path in report:
            self.client.log_artifact(self.run_id, str(path), "report")
        for path in checkpoints:
            self.client.log_artifact(self.run_id, str(path), "checkpoints")
        status = self._status.to_string(self._status.FAILED if failed else self._status.FINISHED)
        self.client.set_terminated(self.run_id, status=status)


class WandbLogger:
    def __init__(self, logger_cfg, run_dir: Path, params: dict):
        try:
            import wandb
        except ImportError as exc:
            raise ConfigError("logger=wandb needs the wandb package: pip install 'kdrun[wandb]'") from exc
        mode = logger_cfg.mode
        if mode == "auto":  # online only with credentials: never a login prompt, never a failed upload
            mode = "online" if os.environ.get("WANDB_API_KEY") or _netrc_has_wandb() else "offline"
        self.wandb, self.run_dir = wandb, Path(run_dir)
        self.run = wandb.init(project=logger_cfg.project, name=self.run_dir.name, dir=str(self.run_dir),
                              config=params, mode=mode, reinit="finish_previous")

    def log_epoch(self, record: dict) -> None:
        self.run.log(numbers(record), step=int(record["epoch"]))

    def close(self, failed: bool = False) -> None:
        report, checkpoints = run_files(self.run_dir)
        for kind, paths in (("report", report), ("model", checkpoints)):
            if paths:
                artifact = self.wandb.Artifact(f"{kind}-{self.run.id}", type=kind)
                for path in paths:
                    artifact.add_file(str(path))
                self.run.log_artifact(artifact)
        self.run.finish(exit_code=1 if failed else 0)


def _netrc_has_wandb() -> bool:
    import netrc

    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (OSError, netrc.NetrcParseError):
        return False
