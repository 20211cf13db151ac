"""Where a teacher comes from: a checkpoint, the cache, or training it first.

Cached teachers live in <paths.teachers>/<dataset>/<arch>/<fingerprint>/, where
the fingerprint hashes everything that shapes the trained weights (dataset,
architecture, recipe). Any run that needs the same teacher reuses it.

An entry is teacher.pt, recipe.json and entry.json (teacher.pt's sha256 and size),
and appears in one rename once complete. An entry that fails its checks is
reported, moved aside (<fingerprint>.corrupt-<time>) and retrained, never trusted.
A file lock (<fingerprint>.lock) makes runs that need the same missing teacher at
the same time train it once: the others wait, then read the cache. A teacher
training that was interrupted resumes from <fingerprint>.partial/.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from omegaconf import DictConfig
from torch import nn

from kdrun.sources.checkpoint import PlainStateDict, check_fits, load_checkpoint, save_checkpoint, stored_normalisation
from kdrun.console import console, note
from kdrun.sources.data import BatchAugment, DatasetSplits
from kdrun.errors import CheckpointError, NonFiniteLoss
from kdrun.io import atomic_write_json, file_sha256
from kdrun.sources.model_sources import arch_of, is_pretrained, path_safe
from kdrun.sources.models import MODEL_OPTIONS, build_model, count_parameters, model_options, model_size_mb
from kdrun.sources.models.external import InputNorm
from kdrun.runtime import Runtime, seed_everything
from kdrun.strategies.scratch import Scratch
from kdrun.teachers.pretrained import prepare_pretrained, pretrained_recipe
from kdrun.teachers.recipe import fingerprint, teacher_batch_size, teacher_optim, teacher_recipe
from kdrun.engine.trainer import Trainer, evaluate_split, trainer_config

try:
    import fcntl
except ImportError:  # not POSIX: no lock; the atomic rename still keeps the cache whole
    fcntl = None

@dataclass
class Teacher:
    model: nn.Module
    test_acc: float
    source: str  # "checkpoint", "cache" or "trained"
    path: Path

    def summary(self) -> dict:
        return {
            "teacher_arch": self.model.arch,
            "teacher_test_acc": self.test_acc,
            "teacher_params": count_parameters(self.model),
            "teacher_size_mb": round(model_size_mb(self.model), 4),
            "teacher_source": self.source,
            "teacher_path": str(self.path),
        }


def freeze(model: nn.Module) -> nn.Module:
    """Eval mode (fixed BatchNorm statistics) and no gradients, for good: how a teacher teaches."""
    model.eval()
    model.requires_grad_(False)
    return model


def with_teacher(cfg: DictConfig, arch: str, checkpoint: str | None = None) -> DictConfig:
    """A copy of `cfg` whose teacher is `arch` (from `checkpoint`, else the cache or trained),
    so resolve_teacher serves every teacher of a run the same way."""
    cfg = copy.deepcopy(cfg)
    if arch != cfg.teacher.arch:  # the group's architecture options belong to its own architecture
        for option in {o for options in MODEL_OPTIONS.values() for o in options} & set(cfg.teacher):
            cfg.teacher[option] = None
    cfg.teacher.arch = arch
    cfg.teacher.checkpoint = checkpoint
    return cfg


def teacher_cache_dir(cfg, recipe: dict | None = None) -> Path:
    """Where the teacher `recipe` (default: the config's trained teacher's) is cached."""
    recipe = teacher_recipe(cfg) if recipe is None else recipe
    return Path(cfg.paths.teachers) / cfg.dataset.name / path_safe(arch_of(cfg.teacher)) / fingerprint(recipe)


def cached_teacher(cfg, recipe: dict, data: DatasetSplits, runtime: Runtime, build: Callable[[Path], str],
                   what: str) -> Teacher:
    """The one cache of teachers, trained, fine-tuned or pretrained alike: under the entry's lock, the entry
    `recipe` keys; else `build(work_dir)` leaves teacher.pt in <fingerprint>.partial/ (returning the
    teacher's source), which is sealed (entry.json) and renamed into place."""
    cache_dir = teacher_cache_dir(cfg, recipe)
    with cache_lock(cache_dir):
        cached = load_cached(cache_dir, recipe, data, runtime)
        if cached is not None:
            note(f"[green]teacher[/] {what} from cache {cache_dir} (test acc {cached.test_acc:.2f}%)")
            return cached
        work_dir = cache_dir.with_name(f"{cache_dir.name}.partial")
        source = build(work_dir)
        weights = work_dir / "teacher.pt"
        atomic_write_json(work_dir / "entry.json", {"sha256": file_sha256(weights), "bytes": weights.stat().st_size})
        os.rename(work_dir, cache_dir)
        teacher = load_cached(cache_dir, recipe, data, runtime)
    if teacher is None:
        raise CheckpointError(f"the teacher just made in {cache_dir} does not pass its own checks")
    note(f"[green]teacher[/] {what} cached in {cache_dir} (test acc {teacher.test_acc:.2f}%)")
    teacher.source = source
    return teacher


def load_model(path: Path, data: DatasetSplits, runtime: Runtime, *, role: str, expect_arch: str | None = None):
    """Build the checkpoint's architecture and load its weights; returns (model, payload)."""
    try:
        payload = load_checkpoint(path)
    except PlainStateDict as exc:  # weights without the model they belong to: the weights= key takes those
        raise CheckpointError(f"{role}.checkpoint: {exc}; pass a state_dict as {role}.weights={path} "
                              f"(with {role}= its architecture), which loads it weights-only") from exc
    meta = payload["model"]
    check_fits(meta, role=role, dataset=data.name, num_classes=data.num_classes, in_channels=data.in_channels,
               image_size=data.image_size, path=path)
    if expect_arch is not None and meta["arch"] != expect_arch:
        raise CheckpointError(
            f"{role} checkpoint {str(path)!r} holds a {meta['arch']}, but {role}={expect_arch}; "
            f"add {role}={meta['arch']} to the command"
        )
    model = build_model(meta["arch"], data.in_channels, data.image_size, data.num_classes, meta.get("options"))
    model.load_state_dict(payload["state_dict"])
    feed_as_trained(model, stored_normalisation(meta), data)
    return runtime.prepare(model), payload


def feed_as_trained(model: nn.Module, trained: tuple | None, data: DatasetSplits) -> None:
    """Where the model was trained on inputs normalised otherwise than this data's (the other data path
    estimates its statistics differently, or dataset.mean/std changed), re-normalise what it is given:
    x * std_data + mean_data is the image again, then (image - mean_trained) / std_trained."""
    model.normalisation = trained or (data.mean, data.std)
    if trained is None or (tuple(trained[0]), tuple(trained[1])) == (tuple(data.mean), tuple(data.std)):
        return
    renorm = InputNorm(data.in_channels, data.in_channels)
    renorm.set_statistics(data.mean, data.std, *trained)
    model.input_renorm = renorm  # a submodule: it moves with the model to its device
    features = model.forward_features  # forward() and the feature terms both go through it
    model.forward_features = lambda x: features(model.input_renorm(x))


# A sweep's jobs share their teacher checkpoint: its test accuracy is measured once per process, not once per
# job (for 1-epoch jobs, the teacher's pass over the test split cost as much as a third of each job).
_checkpoint_accuracies: dict[tuple, float] = {}


def checkpoint_accuracy(model: nn.Module, path: Path, data, augment: BatchAugment, runtime: Runtime,
                        batch_size: int) -> float:
    """The teacher's test accuracy, measured once for the same file, test split, normalisation and precision."""
    if not isinstance(data, DatasetSplits):  # streamed data: no cheap identity for its test split
        return evaluate_split(model, data, augment, runtime, batch_size)
    stat = path.stat()
    split = hashlib.sha256(data.test_x.cpu().numpy().tobytes())
    split.update(data.test_y.cpu().numpy().tobytes())
    key = (str(path.resolve()), stat.st_mtime_ns, stat.st_size, split.hexdigest(), tuple(data.mean), tuple(data.std),
           runtime.device.type, runtime.precision)
    if key not in _checkpoint_accuracies:
        _checkpoint_accuracies[key] = evaluate_split(model, data, augment, runtime, batch_size)
    return _checkpoint_accuracies[key]


def resolve_teacher(cfg, data: DatasetSplits, augment: BatchAugment, runtime: Runtime) -> Teacher:
    if cfg.teacher.checkpoint:
        path = Path(cfg.teacher.checkpoint)
        model, _ = load_model(path, data, runtime, role="teacher", expect_arch=arch_of(cfg.teacher))
        acc = checkpoint_accuracy(model, path, data, augment, runtime, cfg.trainer.eval_batch_size)
        return Teacher(model, acc, "checkpoint", path)
    if is_pretrained(cfg.teacher):  # evaluated (or fine-tuned) once, never trained from scratch
        recipe = pretrained_recipe(cfg)
        return cached_teacher(cfg, recipe, data, runtime,
                              lambda work_dir: prepare_pretrained(cfg, data, augment, runtime, work_dir, recipe),
                              f"pretrained {arch_of(cfg.teacher)}")
    recipe = teacher_recipe(cfg)
    return cached_teacher(cfg, recipe, data, runtime,
                          lambda work_dir: train_teacher(cfg, data, augment, runtime, work_dir, recipe),
                          cfg.teacher.arch)


@contextlib.contextmanager
def cache_lock(cache_dir: Path) -> Iterator[None]:
    """Hold <fingerprint>.lock: one process at a time looks at, trains and writes this entry.

    The kernel drops the lock when its holder dies, even by SIGKILL, so it never goes stale.
    """
    lock_path = cache_dir.with_name(f"{cache_dir.name}.lock")
    try:
        cache_dir.parent.mkdir(parents=True, exist_ok=True)
        lock = open(lock_path, "a")
    except OSError:  # a read-only shared cache: reading needs no lock, and writing fails with its own message
        yield
        return
    with lock:
        if fcntl is not None:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                console.print(f"[yellow]waiting[/] for another kdrun process that is training this teacher "
                              f"(lock {lock_path})", soft_wrap=True)
                fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def entry_problem(cache_dir: Path, recipe: dict) -> str | None:
    """Why the entry in cache_dir cannot be trusted, or None if its files are whole."""
    weights, entry_file, recipe_file = (cache_dir / n for n in ("teacher.pt", "entry.json", "recipe.json"))
    for needed in (weights, entry_file, recipe_file):
        if not needed.is_file():
            return f"it has no {needed.name} (an incomplete entry)"
    try:
        entry = json.loads(entry_file.read_text())
        stored_recipe = json.loads(recipe_file.read_text())
        expected_sha, expected_bytes = entry["sha256"], entry["bytes"]
    except (ValueError, KeyError, TypeError) as exc:
        return f"its entry.json or recipe.json is unreadable ({type(exc).__name__}: {exc})"
    if stored_recipe != recipe:
        return "its recipe.json is not this run's teacher recipe"
    size = weights.stat().st_size
    if size != expected_bytes:
        return f"teacher.pt has {size} bytes, entry.json says {expected_bytes} (truncated or replaced)"
    actual_sha = file_sha256(weights)
    if actual_sha != expected_sha:
        return f"teacher.pt has sha256 {actual_sha[:12]}…, entry.json says {str(expected_sha)[:12]}… (corrupt)"
    return None


def load_cached(cache_dir: Path, recipe: dict, data: DatasetSplits, runtime: Runtime) -> Teacher | None:
    """The cached teacher, or None if there is none; a bad entry is reported and moved aside."""
    if not cache_dir.exists():
        return None
    problem = entry_problem(cache_dir, recipe)
    if problem is None:
        weights = cache_dir / "teacher.pt"
        try:
            model, payload = load_model(weights, data, runtime, role="teacher")
            return Teacher(model, float(payload["test_acc"]), "cache", weights)
        except (CheckpointError, RuntimeError) as exc:  # a whole file that still does not load
            problem = str(exc)
    quarantine = cache_dir.with_name(f"{cache_dir.name}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}")
    try:
        os.rename(cache_dir, quarantine)
    except OSError as exc:
        raise CheckpointError(f"cached teacher {cache_dir} is not trusted: {problem}. It could not be moved "
                              f"aside ({exc.strerror}); remove it, and kdrun trains a new one") from exc
    console.print(f"[bold red]cached teacher {cache_dir} is not trusted:[/] {problem}. "
                  f"Moved it to {quarantine.name}; training a new one.", soft_wrap=True)
    return None


def train_teacher(cfg, data: DatasetSplits, augment: BatchAugment, runtime: Runtime, work_dir: Path,
                  recipe: dict) -> str:
    """Train a teacher in work_dir (resuming an interrupted one there), leaving its teacher.pt; the caller
    (cached_teacher) holds the cache lock and seals the entry."""
    note(f"[yellow]no cached {cfg.teacher.arch} teacher for {cfg.dataset.name}[/]; training it first")
    resume = (work_dir / "checkpoints" / "last.pt").is_file() and _read_json(work_dir / "recipe.json") == recipe
    if not resume:
        shutil.rmtree(work_dir, ignore_errors=True)
        atomic_write_json(work_dir / "recipe.json", recipe)
    trainer = Trainer(trainer_config(cfg, label=f"teacher {cfg.teacher.arch}", epochs=cfg.teacher.epochs,
                                     data_seed=cfg.teacher.seed, batch_size=teacher_batch_size(cfg)),
                      teacher_optim(cfg), runtime)

    def fit(resume: bool) -> tuple[nn.Module, dict]:
        seed_everything(cfg.teacher.seed)
        model = runtime.prepare(build_model(arch_of(cfg.teacher), data.in_channels, data.image_size, data.num_classes,
                                            model_options(cfg.teacher, "teacher")))
        return model, trainer.fit(Scratch(model), data, augment, work_dir, resume=resume)

    try:
        model, summary = fit(resume)
    except NonFiniteLoss as exc:  # resuming would diverge again: keep no partial teacher
        shutil.rmtree(work_dir, ignore_errors=True)
        raise NonFiniteLoss(diverged_teacher_message(cfg, exc)) from exc
    except CheckpointError as exc:  # an unusable partial checkpoint: start the teacher over
        if not resume:
            raise
        console.print(f"[yellow]cannot resume the teacher from {work_dir}[/] ({exc}); training it from the start", soft_wrap=True)
        shutil.rmtree(work_dir, ignore_errors=True)
        atomic_write_json(work_dir / "recipe.json", recipe)
        model, summary = fit(False)
    # The final weights are the teacher, as in the published recipes (not the test-selected best).
    weights = work_dir / "teacher.pt"
    model.normalisation = (data.mean, data.std)  # kept in teacher.pt, applied wherever it is used later
    save_checkpoint(weights, model, epoch=cfg.teacher.epochs, test_acc=summary["final_test_acc"])
    shutil.rmtree(work_dir / "checkpoints")  # the training state is not needed once the teacher is done
    return "trained"


def diverged_teacher_message(cfg, exc: NonFiniteLoss) -> str:
    optim = teacher_optim(cfg)
    advice = str(exc).replace("lower optim.lr", "lower the teacher's learning rate: teacher.optim={lr:...}")
    return (f"the teacher {arch_of(cfg.teacher)}, which kdrun was training for this run (teacher.optim: "
            f"{optim.name} lr={optim.lr}, teacher.batch_size={teacher_batch_size(cfg)}), diverged: {advice}")


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None
