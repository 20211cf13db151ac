"""One experiment, from a composed config to the files of the output contract.

This is the one module that writes metrics.json: a completed fit's summary, a method's final summary
(born-again adds its table of generations), or a failure.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from kdrun.console import note
from kdrun.data import BatchAugment, load_dataset
from kdrun.distributed import current_world
from kdrun.data.run_details import folder_details
from kdrun.deploy.prune import check_prune_config
from kdrun.errors import DataError
from kdrun.plausibility import check_plausible
from kdrun.io import atomic_write_json, atomic_write_text
from kdrun.report.loggers import build_logger
from kdrun.report.plots import plot_learning_curves, run_title
from kdrun.resume import check_can_start, check_same_config, is_completed, read_summary
from kdrun.runtime import resolve_runtime
from kdrun.schema import check_config, check_value
from kdrun.strategies.base import Setup, Strategy
from kdrun.strategies.catalog import import_plugins, strategy_class
from kdrun.trainer import Trainer, trainer_config


def check_run_config(cfg: DictConfig) -> type[Strategy]:
    """Types, ranges and known keys (kdrun.schema), then how the chosen strategy's keys combine; returns
    the strategy's class."""
    check_value("plugins", cfg.get("plugins"), list[str], {})
    import_plugins(cfg.get("plugins"))
    method = strategy_class(cfg.strategy.name)
    check_config(cfg, method.Config)
    method.validate(cfg)
    check_prune_config(cfg.student.get("prune") or {})  # before any teacher trains
    return method


def run_experiment(cfg: DictConfig, run_dir: Path, overrides: list[str] = (), label: str | None = None) -> dict:
    """Check the config, load data, build the strategy, train; returns the metrics.json summary.

    With `resume` set, a completed run is skipped and a stopped one goes on from its last.pt.
    """
    method = check_run_config(cfg)
    world = current_world()  # several processes under torchrun: rank 0 alone writes files
    check_can_start(cfg, run_dir)
    resume = cfg.resume is not None
    if resume:
        check_same_config(cfg, run_dir)
        if is_completed(run_dir):
            note(f"[green]already completed:[/] {run_dir} (its metrics.json); skipping it")
            return read_summary(run_dir)
    world.barrier()  # every rank has looked at run_dir before rank 0 writes into it
    if world.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    # before any training: a missing tensorboard/mlflow/wandb fails fast (rank 0 alone logs)
    logger = build_logger(cfg.logger if world.is_main else OmegaConf.create({"name": "none"}), run_dir,
                          OmegaConf.to_container(cfg, resolve=True), cfg.paths.outputs)
    runtime = resolve_runtime(cfg.device)
    try:
        data = load_dataset(cfg.dataset, runtime.device, cfg.data_seed)
    except ValueError as exc:  # empty, malformed or inconsistent files: the message names them
        raise DataError(str(exc)) from exc
    check_plausible(cfg, data)  # values that are legal alone but meaningless for this data
    augment = BatchAugment(cfg.dataset.augment.crop_padding, cfg.dataset.augment.hflip, data.mean, data.std)
    trainer = Trainer(trainer_config(cfg, label=label or cfg.strategy.name), cfg.optim, runtime, world)
    facts = {"strategy": cfg.strategy.name, "dataset": cfg.dataset.name, "seed": cfg.seed,
             "overrides": list(overrides)}
    if method.distills:
        facts.update(T=cfg.loss.T, alpha=cfg.loss.alpha, beta=cfg.loss.beta)

    def fit(strategy: Strategy, out_dir: Path, extra: dict) -> dict:
        strategy.student.class_names = data.class_names  # saved with its checkpoints (model_meta)
        go_on = resume and (out_dir / "checkpoints" / "last.pt").is_file()
        summary = {**trainer.fit(strategy, data, augment, out_dir, on_epoch=logger.log_epoch, resume=go_on),
                   **facts, **folder_details(data), **extra}  # after training: streamed files skipped
        if world.is_main:
            atomic_write_json(out_dir / "metrics.json", summary)
        return summary

    failed = True
    try:
        summary = method.run(Setup(cfg, data, augment, runtime), run_dir, fit)
        if world.is_main:
            atomic_write_json(run_dir / "metrics.json", summary)
            plot_learning_curves(run_dir, run_title(cfg.strategy.name, summary["arch"], cfg.dataset.name, cfg.seed,
                                                    facts.get("T")))
        failed = False
    finally:
        logger.close(failed=failed)  # trackers upload the checkpoints and the report
    return summary


def record_failure(run_dir: Path, error: BaseException, overrides: list[str] = (), status: str = "failed",
                   **details) -> None:
    """Leave a metrics.json that says the run failed (or was interrupted) and why, so sweeps can report it.
    A completed run's metrics.json is never replaced."""
    if is_completed(run_dir) or not current_world().is_main:
        return
    atomic_write_json(run_dir / "metrics.json", {
        "status": status,
        "error": f"{type(error).__name__}: {error}",
        "overrides": list(overrides),
        **details,
    })
