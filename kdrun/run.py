"""One experiment, from a composed config to the files of the output contract."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from kdrun.config import validate
from kdrun.console import console
from kdrun.data import BatchAugment, load_dataset
from kdrun.data.run_details import check_in_memory, folder_details
from kdrun.errors import DataError
from kdrun.io import atomic_write_json, atomic_write_text
from kdrun.report.loggers import build_logger
from kdrun.report.plots import plot_learning_curves
from kdrun.resume import check_can_start, check_same_config, is_completed, read_summary
from kdrun.runtime import resolve_runtime
from kdrun.strategies import build_strategy
from kdrun.strategies.born_again import fit_generations
from kdrun.trainer import Trainer, TrainerConfig


def run_experiment(cfg: DictConfig, run_dir: Path, overrides: list[str] = ()) -> dict:
    """Validate, load data, build the strategy, train; returns the metrics.json summary.

    With `resume` set, a completed run is skipped and a stopped one goes on from its last.pt.
    """
    validate(cfg)
    check_can_start(cfg, run_dir)
    resume = cfg.resume is not None
    if resume:
        check_same_config(cfg, run_dir)
        if is_completed(run_dir):
            console.print(f"[green]already completed:[/] {run_dir} (its metrics.json); skipping it", soft_wrap=True)
            return read_summary(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    logger = build_logger(cfg.logger, run_dir)  # before any training: a missing tensorboard fails fast
    runtime = resolve_runtime(cfg.device)
    try:
        data = load_dataset(cfg.dataset, runtime.device, cfg.data_seed)
    except ValueError as exc:  # empty, malformed or inconsistent files: the message names them
        raise DataError(str(exc)) from exc
    check_in_memory(data)
    augment = BatchAugment(cfg.dataset.augment.crop_padding, cfg.dataset.augment.hflip, data.mean, data.std)
    trainer = Trainer(
        TrainerConfig(epochs=cfg.trainer.epochs, batch_size=cfg.trainer.batch_size,
                      eval_batch_size=cfg.trainer.eval_batch_size, data_seed=cfg.data_seed,
                      progress=cfg.trainer.progress, label=cfg.strategy.name,
                      every_steps=cfg.checkpoint.every_steps, on_nonfinite=cfg.trainer.on_nonfinite),
        cfg.optim, runtime,
    )
    extra = {
        "strategy": cfg.strategy.name,
        "dataset": cfg.dataset.name,
        "seed": cfg.seed,
        "overrides": list(overrides),
        **folder_details(data),
    }
    if cfg.strategy.name != "scratch":
        extra.update(T=cfg.loss.T, alpha=cfg.loss.alpha, beta=cfg.loss.beta)

    def fit(strategy, out_dir: Path, extra: dict) -> dict:
        strategy.student.class_names = data.class_names  # saved with its checkpoints (model_meta)
        go_on = resume and (out_dir / "checkpoints" / "last.pt").is_file()
        return trainer.fit(strategy, data, augment, out_dir, extra=extra, on_epoch=logger.log_epoch, resume=go_on)

    try:
        if cfg.strategy.name == "born_again":  # several fits, one per generation
            summary = fit_generations(cfg, data, augment, runtime, run_dir, fit, extra)
        else:
            summary = fit(build_strategy(cfg, data, augment, runtime), run_dir, extra)
    finally:
        logger.close()
    plot_learning_curves(run_dir, f"{cfg.strategy.name}: {summary['arch']} on {cfg.dataset.name} ({run_dir.name})")
    return summary


def record_failure(run_dir: Path, error: BaseException, overrides: list[str] = (), status: str = "failed",
                   **details) -> None:
    """Leave a metrics.json that says the run failed (or was interrupted) and why, so sweeps can report it.
    A completed run's metrics.json is never replaced."""
    if is_completed(run_dir):
        return
    atomic_write_json(run_dir / "metrics.json", {
        "status": status,
        "error": f"{type(error).__name__}: {error}",
        "overrides": list(overrides),
        **details,
    })
