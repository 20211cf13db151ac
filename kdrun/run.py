"""One experiment, from a composed config to the files of the output contract.

This is the one module that writes metrics.json: a completed fit's summary, a method's final summary
(born-again adds its table of generations), or a failure.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from kdrun.console import note
from kdrun.sources.data import BatchAugment, load_dataset
from kdrun.distributed import current_world
from kdrun.sources.data.run_details import folder_details
from kdrun.compress.prune import check_prune_config
from kdrun.sources.data.mix import Mix
from kdrun.sources.data.streaming import StreamingFolder
from kdrun.sources.data.transfer import load_transfer_images, transfer_details, transfer_split, uses_transfer_set
from kdrun.errors import ConfigError, DataError
from kdrun.config.plausibility import check_plausible
from kdrun.io import atomic_write_json, atomic_write_text
from kdrun.track.loggers import build_logger
from kdrun.report.plots import plot_learning_curves, run_title
from kdrun.config.resume import (check_can_start, check_completed_intact, check_same_config, checkpoint_digests,
                          is_completed, read_summary)
from kdrun.runtime import resolve_runtime
from kdrun.config.dot import check_dot
from kdrun.config.schema import check_config, check_value
from kdrun.methods.terms.compose import check_terms, complete_terms, term_configs
from kdrun.strategies.base import Setup, Strategy
from kdrun.strategies.catalog import STRATEGIES, import_plugins, strategy_class
from kdrun.engine.trainer import Trainer, trainer_config


def check_run_config(cfg: DictConfig) -> type[Strategy]:
    """Types, ranges and known keys (kdrun.config.schema), then how the chosen strategy's keys combine; returns
    the strategy's class."""
    check_value("plugins", cfg.get("plugins"), list[str], {})
    import_plugins(cfg.get("plugins"))
    method = strategy_class(cfg.strategy.name)
    complete_terms(cfg)  # each listed term's undeclared keys take its defaults, so config.yaml says what ran
    check_config(cfg, method.Config)
    if method.distills:  # the loss's terms are of kinds the strategy trains, and each agrees with the rest
        check_terms(cfg, method.name, method.term_kinds)
    check_data_regime(cfg, method)
    method.validate(cfg)
    check_dot(cfg, method.name)
    check_prune_config(cfg.student.get("prune") or {})  # before any teacher trains
    return method


def check_data_regime(cfg: DictConfig, method: type[Strategy]) -> None:
    """A transfer set or mixed images only for a strategy that trains on them, and label terms that can."""
    if method.transfer_set is None and uses_transfer_set(cfg.dataset):
        users = [name for name, c in STRATEGIES.items() if c.transfer_set is not None]
        raise ConfigError(f"strategy={method.name} does not train on a transfer set (dataset.labelled_fraction="
                          f"{cfg.dataset.get('labelled_fraction')}, omit_classes={cfg.dataset.get('omit_classes')}, "
                          f"transfer_root={cfg.dataset.get('transfer_root')}); use strategy={' or '.join(users)}, "
                          "or the defaults 1.0, [] and null")
    mix = Mix.from_config(cfg.dataset)
    if mix.active and not method.mixes:
        users = [name for name, c in STRATEGIES.items() if c.mixes]
        raise ConfigError(f"strategy={method.name} does not train on mixed images (dataset.augment.mixup={mix.mixup}, "
                          f"cutmix={mix.cutmix}); use strategy={' or '.join(users)}, or set both to 0")
    if not method.distills:
        return
    for name, cls, _ in term_configs(cfg):
        if cls.uses_labels and uses_transfer_set(cfg.dataset) and not cls.masks_unlabelled:
            raise ConfigError(f"loss.terms.{name} reads every image's label, and a transfer set (dataset."
                              f"labelled_fraction, omit_classes, transfer_root) has images without one; terms "
                              f"that read only the labelled ones: ce, dkd. Use those, or the full labelled split")
        if cls.uses_labels and mix.active and not cls.mixes_labels:
            raise ConfigError(f"loss.terms.{name} splits the classes at one true label, and a mixed image "
                              f"(dataset.augment.mixup={mix.mixup}, cutmix={mix.cutmix}) has two; drop the term, "
                              "or set both to 0")


def student_split(cfg: DictConfig, data, method: type[Strategy]):
    """What the student trains on: `data`, or its transfer set (kdrun/sources/data/transfer.py), mixed or not
    (kdrun/sources/data/mix.py)."""
    mix = Mix.from_config(cfg.dataset)
    if mix.active and isinstance(data, StreamingFolder):
        raise ConfigError(f"dataset {data.name!r} streams from its folder; mixup and cutmix (dataset.augment.mixup="
                          f"{mix.mixup}, cutmix={mix.cutmix}) are batch operations on the in-memory path: "
                          "dataset.in_memory=true, or set both to 0")
    if mix.active:
        data = replace(data, mix=mix)
    if not uses_transfer_set(cfg.dataset):
        return data
    if isinstance(data, StreamingFolder):
        raise ConfigError(f"dataset {data.name!r} streams from its folder; a transfer set (dataset.labelled_fraction, "
                          "omit_classes, transfer_root) needs the training split in memory: dataset.in_memory=true")
    extra = None
    if cfg.dataset.get("transfer_root") is not None and method.transfer_set == "unlabelled":
        extra = load_transfer_images(cfg.dataset, data)
    return transfer_split(data, cfg.dataset, cfg.data_seed, unlabelled=method.transfer_set == "unlabelled",
                          extra=extra)


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
            check_completed_intact(run_dir)  # a truncated last.pt is no completed run
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
    teacher_data, data = data, student_split(cfg, data, method)  # before any teacher trains: refusals change nothing
    augment = BatchAugment(cfg.dataset.augment.crop_padding, cfg.dataset.augment.hflip, data.mean, data.std)
    trainer = Trainer(trainer_config(cfg, label=label or cfg.strategy.name), cfg.optim, runtime, world)
    facts = {"strategy": cfg.strategy.name, "dataset": cfg.dataset.name, "seed": cfg.seed,
             "overrides": list(overrides)}
    if method.distills:  # what the student minimised: each term's weight, and the temperature it was read at
        facts["terms"] = {name: float(config.weight) for name, _, config in term_configs(cfg)}
        temperatures = [config.T for _, _, config in term_configs(cfg) if hasattr(config, "T")]
        if temperatures:
            facts["T"] = temperatures[0]

    if (mix := Mix.from_config(cfg.dataset)).active:
        facts.update(mixup=mix.mixup, cutmix=mix.cutmix)

    def fit(strategy: Strategy, out_dir: Path, extra: dict) -> dict:
        strategy.student.class_names = data.class_names  # saved with its checkpoints (model_meta)
        strategy.student.normalisation = (data.mean, data.std)
        go_on = resume and (out_dir / "checkpoints" / "last.pt").is_file()
        summary = {**trainer.fit(strategy, data, augment, out_dir, on_epoch=logger.log_epoch, resume=go_on),
                   **facts, **folder_details(data), **transfer_details(data), **extra}  # after training: streamed files skipped
        if world.is_main:
            atomic_write_json(out_dir / "metrics.json", summary)
        return summary

    failed = True
    try:
        summary = method.run(Setup(cfg, data, augment, runtime, teacher_data), run_dir, fit)
        if world.is_main:
            summary["checkpoints"] = checkpoint_digests(run_dir)  # what a resume checks before skipping it
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
