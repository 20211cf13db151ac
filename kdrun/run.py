"""One experiment, from a composed config to the files of the output contract."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from kdrun.config import validate
from kdrun.data import BatchAugment, load_dataset
from kdrun.io import atomic_write_json, atomic_write_text
from kdrun.report.loggers import build_logger
from kdrun.report.plots import plot_learning_curves
from kdrun.runtime import resolve_runtime
from kdrun.strategies import build_strategy
from kdrun.strategies.born_again import fit_generations
from kdrun.trainer import Trainer, TrainerConfig


def run_experiment(cfg: DictConfig, run_dir: Path, overrides: list[str] = ()) -> dict:
    """Validate, load data, build the strategy, train; returns the metrics.json summary."""
    validate(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    logger = build_logger(cfg.logger, run_dir)  # before any training: a missing tensorboard fails fast
    runtime = resolve_runtime(cfg.device)
    data = load_dataset(cfg.dataset, runtime.device)
    augment = BatchAugment(cfg.dataset.augment.crop_padding, cfg.dataset.augment.hflip, data.mean, data.std)
    trainer = Trainer(
        TrainerConfig(epochs=cfg.trainer.epochs, batch_size=cfg.trainer.batch_size,
                      eval_batch_size=cfg.trainer.eval_batch_size, data_seed=cfg.data_seed,
                      progress=cfg.trainer.progress, label=cfg.strategy.name),
        cfg.optim, runtime,
    )
    extra = {
        "strategy": cfg.strategy.name,
        "dataset": cfg.dataset.name,
        "seed": cfg.seed,
        "overrides": list(overrides),
    }
    if cfg.strategy.name != "scratch":
        extra.update(T=cfg.loss.T, alpha=cfg.loss.alpha, beta=cfg.loss.beta)

    def fit(strategy, out_dir: Path, extra: dict) -> dict:
        return trainer.fit(strategy, data, augment, out_dir, extra=extra, on_epoch=logger.log_epoch)

    try:
        if cfg.strategy.name == "born_again":  # several fits, one per generation
            summary = fit_generations(cfg, data, augment, runtime, run_dir, fit, extra)
        else:
            summary = fit(build_strategy(cfg, data, augment, runtime), run_dir, extra)
    finally:
        logger.close()
    plot_learning_curves(run_dir, f"{cfg.strategy.name}: {summary['arch']} on {cfg.dataset.name} ({run_dir.name})")
    return summary


def record_failure(run_dir: Path, error: BaseException, overrides: list[str] = ()) -> None:
    """Leave a metrics.json that says the run failed and why, so sweeps can report it."""
    atomic_write_json(run_dir / "metrics.json", {
        "status": "failed",
        "error": f"{type(error).__name__}: {error}",
        "overrides": list(overrides),
    })
