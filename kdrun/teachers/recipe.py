"""What decides a teacher's weights (its recipe, hashed into the cache's fingerprint) and the optimiser and
batch size it trains with: its own keys (teacher.optim, teacher.batch_size), not the student's."""

from __future__ import annotations

import hashlib
import json

from omegaconf import DictConfig, OmegaConf

from kdrun.sources.data.image_folder import folder_identity
from kdrun.sources.data.mix import MIX_KEYS
from kdrun.sources.data.transfer import TRANSFER_KEYS
from kdrun.sources.model_sources import arch_of
from kdrun.sources.models import model_options
from kdrun.config.schema import keys_with_role

# Dataset keys that say where files live, not what the data is.
_LOCATION_KEYS = tuple(k.removeprefix("dataset.") for k in keys_with_role("location") if k.startswith("dataset."))


def teacher_recipe(cfg) -> dict:
    """Everything that decides a trained teacher's weights, as plain JSON values (as recipe.json holds it)."""
    # A teacher trains on the whole labelled split: the keys that shape the student's transfer set are not its.
    dataset = {k: v for k, v in OmegaConf.to_container(cfg.dataset, resolve=True).items()
               if k not in _LOCATION_KEYS and k not in TRANSFER_KEYS}
    dataset["augment"] = {k: v for k, v in dataset.get("augment", {}).items() if k not in MIX_KEYS}  # student only
    dataset.update(folder_identity(cfg.dataset))  # an image folder's files, since its root is only a location
    return json.loads(json.dumps({
        "dataset": dataset,
        "arch": arch_of(cfg.teacher),
        **({"options": opts} if (opts := model_options(cfg.teacher, "teacher")) else {}),
        "epochs": cfg.teacher.epochs,
        "seed": cfg.teacher.seed,
        "batch_size": teacher_batch_size(cfg),
        "optim": OmegaConf.to_container(teacher_optim(cfg), resolve=True),
    }))


def teacher_optim(cfg) -> DictConfig:
    """The teacher's optimiser: teacher.optim (kdrun/config/recipes.py resolves it), else the run's (a config that
    bypassed the recipes, as some tests build)."""
    return cfg.teacher.get("optim") or cfg.optim


def teacher_batch_size(cfg) -> int:
    return cfg.teacher.get("batch_size") or cfg.trainer.batch_size


def fingerprint(recipe: dict) -> str:
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]
