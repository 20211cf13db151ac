"""kdrun's Optuna sweeper: `kdrun -m hydra/sweeper=optuna 'T=interval(1,16)' ...`.

Hydra loads sweepers only from the hydra_plugins package, so the plugin is this thin class; the study
itself is kdrun/tune/. It is kdrun's own rather than hydra-optuna-sweeper because that plugin requires
Optuna < 3, whose matplotlib plots fail on matplotlib >= 3.9 and whose parameter importance fails on
current scikit-learn (docs/design.md, "Optuna studies").
"""

from __future__ import annotations

from typing import Any

from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig


class OptunaSweeper(Sweeper):
    def __init__(self, n_trials: int = 20, n_jobs: int = 1, storage: str | None = None, study_name: str = "kdrun",
                 sampler: Any = None, params: DictConfig | None = None, confirm_seeds: int = 3) -> None:
        self.options = dict(n_trials=n_trials, n_jobs=n_jobs, storage=storage, study_name=study_name,
                            sampler=sampler, confirm_seeds=confirm_seeds)
        self.config: DictConfig | None = None
        self.launcher = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(config=config, hydra_context=hydra_context,
                                                                task_function=task_function)

    def sweep(self, arguments: list[str]) -> Any:
        # Optuna is an optional extra (kdrun[tune]); Hydra imports every plugin module at start-up.
        from kdrun.tune.sweep import run_sweep  # noqa: PLC0415

        return run_sweep(self.options, self.config, self.launcher, arguments)
