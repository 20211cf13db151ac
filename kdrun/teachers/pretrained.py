"""A pretrained teacher: no training, evaluated once on the test split and cached with its accuracy.

Its cache entry sits beside trained teachers (<paths.teachers>/<dataset>/<arch>/<fingerprint>/, the
same files and checks), keyed by the dataset, the architecture and the weights' identity (URL, timm
tag or file sha256). When its head does not fit the dataset's classes, `teacher.finetune_epochs=N`
fine-tunes a new head and the body on the training split first, and the recipe then joins the key.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from kdrun.sources.checkpoint import save_checkpoint
from kdrun.console import note
from kdrun.io import atomic_write_json
from kdrun.sources.model_sources import arch_of, build_configured
from kdrun.sources.pretrained import weights_identity
from kdrun.runtime import seed_everything
from kdrun.strategies.scratch import Scratch
from kdrun.teachers.recipe import teacher_batch_size, teacher_optim, teacher_recipe
from kdrun.engine.trainer import Trainer, evaluate_split, trainer_config


def pretrained_recipe(cfg) -> dict:
    """What decides this teacher: its weights, plus the fine-tuning recipe when it is fine-tuned."""
    recipe = teacher_recipe(cfg)
    finetune = cfg.teacher.get("finetune_epochs", 0)
    if not finetune:  # evaluated as is: the training recipe does not touch it
        for key in ("epochs", "seed", "batch_size", "optim"):
            recipe.pop(key)
    recipe.update(weights=weights_identity(cfg.teacher), input_stats=cfg.teacher.get("input_stats", "auto"),
                  finetune_epochs=finetune)
    return json.loads(json.dumps(recipe))


def prepare_pretrained(cfg, data, augment, runtime, work_dir: Path, recipe: dict) -> str:
    """Load the weights, fine-tune if asked, evaluate on the test split and leave teacher.pt in work_dir for
    the cache (kdrun.teachers.resolve.cached_teacher seals it); returns the teacher's source."""
    finetune = cfg.teacher.get("finetune_epochs", 0)
    seed_everything(cfg.teacher.seed)  # a fine-tuned head starts from the teacher's seed
    model = runtime.prepare(build_configured(cfg.teacher, data, "teacher", new_head_ok=bool(finetune)))
    shutil.rmtree(work_dir, ignore_errors=True)
    atomic_write_json(work_dir / "recipe.json", recipe)
    if finetune:
        note(f"[yellow]fine-tuning[/] pretrained teacher {arch_of(cfg.teacher)} for {finetune} epochs "
             f"on {cfg.dataset.name}")
        trainer = Trainer(trainer_config(cfg, label=f"fine-tune teacher {arch_of(cfg.teacher)}", epochs=finetune,
                                         data_seed=cfg.teacher.seed, batch_size=teacher_batch_size(cfg)),
                          teacher_optim(cfg), runtime)
        trainer.fit(Scratch(model), data, augment, work_dir)
        shutil.rmtree(work_dir / "checkpoints", ignore_errors=True)
    test_acc = evaluate_split(model, data, augment, runtime, cfg.trainer.eval_batch_size)
    weights = work_dir / "teacher.pt"
    model.normalisation = (data.mean, data.std)  # what its input_norm was set from: applied when it is reused
    save_checkpoint(weights, model, epoch=finetune, test_acc=test_acc)
    return "finetuned" if finetune else "pretrained"
