"""Every config key, declared once: its type, what it may be, and its role.

A group's keys are the fields of one dataclass (a strategy's own keys are declared by its class,
`Strategy.Config`). A field's metadata holds its role and its bounds:

    result    changes what is trained or measured (the default)
    seed      a random seed: runs that differ only here are repeats of one setting
    location  where files are read or written
    display   how a run is shown or logged
    speed     how fast it runs, never what it computes

Resume checks, the teacher fingerprint and report grouping read the roles through `keys_with_role`
instead of keeping lists of their own. `check_config` refuses wrong types, out-of-range values and
unknown keys with a message that names the key, the value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass
from typing import Any, Iterator, Union

from omegaconf import DictConfig, ListConfig, OmegaConf

from kdrun.compress.prune import KINDS as PRUNE_KINDS
from kdrun.errors import ConfigError
from kdrun.keys import key
from kdrun.methods.terms.catalog import TERMS, refuse_stage_key, term_class, term_fields
from kdrun.sources.models import MODEL_NAMES
from kdrun.sources.models.external import check_name

# What `objective=` may name (kdrun/tune/objective.py reads each from a job's metrics.json): validation and
# cost metrics only, since a setting is never chosen on the test split.
OBJECTIVES = ("val_acc", "best_val_acc", "params", "size_mb", "latency_ms")


# ---- the groups ------------------------------------------------------------------------------------


@dataclass
class Augment:
    crop_padding: int = key(low=0)
    hflip: bool = key()
    random_resized_crop: bool = key()  # streamed folders: Inception-style crop to image_size (ImageNet)
    mixup: float = key(low=0, doc="the student's batches: mixup's Beta(alpha, alpha), 0 = off (kdrun/sources/data/mix.py)")
    cutmix: float = key(low=0, doc="the student's batches: cutmix's Beta(alpha, alpha), 0 = off")


@dataclass
class DatasetKeys:
    name: str = key()
    root: str | None = key(role="location")
    download: bool = key(role="location")
    augment: Augment = key()
    limit_train: int | None = key(low=1)
    limit_test: int | None = key(low=1)
    # synthetic data: its shape and the seed it is drawn from
    num_classes: int = key(low=1)
    image_size: int = key(low=1)
    channels: int | None = key(low=1)  # image folders: null = from the first image
    train_size: int = key(low=1)
    test_size: int = key(low=1)
    seed: int = key(low=0)
    # image folders (kdrun/sources/data/image_folder.py)
    eval_resize: int | None = key(low=1)
    val_fraction: float | None = key(low=0)
    on_bad_image: str = key(choices=("error", "skip"))
    in_memory: bool | str = key(role="speed", choices=(True, False, "auto"))
    memory_gb: float = key(role="speed", low=0)
    workers: int = key(role="speed", low=0)
    cache_dir: str = key(role="location")
    mean: list[float] | None = key()
    std: list[float] | None = key()
    # the student's transfer set (kdrun/sources/data/transfer.py); the teacher trains on every label
    labelled_fraction: float = key(low=0, strict=True, doc="share of the training split that keeps its labels, in (0, 1]")
    omit_classes: list[str | int] = key(doc="classes left out of the student's training split (the test split keeps them)")
    transfer_root: str | None = key(doc="a folder of extra unlabelled images for the distillation terms")


SOURCES = ("zoo", "torchvision", "timm", "custom")  # where a teacher/student comes from (kdrun/sources/model_sources.py)
INPUT_STATS = ("auto", "imagenet", "dataset")


@dataclass
class ModelKeys:
    arch: str = key(doc="a zoo name, or the torchvision/timm model name when source is not zoo")
    source: str = key(choices=SOURCES)
    weights: str | None = key(doc="pretrained weights: a torchvision weights name or a state_dict file")
    pretrained: bool = key(doc="timm's own pretrained weights")
    input_stats: str = key(choices=INPUT_STATS)
    _target_: str | None = key(doc="source=custom: the nn.Module class; other keys are its arguments")
    recipe: Recipe = key(doc="keys this model needs unless the command sets them (kdrun/config/recipes.py)")
    # Architecture options (models.MODEL_OPTIONS says which architecture takes which; null = its default).
    hidden: list[int] | None = key(low=1, doc="mlp: the width of each hidden layer")
    dropout: float | None = key(low=0, doc="mlp: dropout on the hidden units, in [0, 1)")
    input_dropout: float | None = key(low=0, doc="mlp: dropout on the input pixels, in [0, 1)")


@dataclass
class PruneKeys:
    """Pruning the student before it trains (kdrun/compress/prune.py)."""

    kind: str = key(choices=PRUNE_KINDS)
    amount: float = key(low=0)  # below 1: checked with the kind (kdrun.compress.prune.check_prune_config)
    checkpoint: str | None = key()


@dataclass
class StudentKeys(ModelKeys):
    prune: PruneKeys = key()
    qat: bool = key(doc="train through int8 rounding (kdrun/compress/qat.py), for kdrun-export --int8")


@dataclass
class TeacherKeys(ModelKeys):
    checkpoint: str | None = key()
    epochs: int = key(low=1)
    batch_size: int = key(low=1)
    optim: OptimKeys | None = key(doc="the teacher's optimiser (kdrun/config/recipes.py: null = the files' recipe)")
    seed: int = key(role="seed", low=0)
    cache: bool = key(role="speed")
    topk: int | None = key(low=1)
    finetune_epochs: int = key(low=0)


class Terms(dict):
    """The type of `loss.terms`: term name -> that term's keys, each term declaring its own
    (kdrun.methods.terms: a term's `Config`)."""


@dataclass
class LossKeys:
    name: str = key(doc="the preset the terms came from (conf/loss/<name>.yaml): a label for tables")
    terms: Terms = key(doc="the weighted terms the run minimises, in order")
    standardize: bool = key(doc="z-score both models' logits per sample before every term with a temperature "
                            "(logit standardisation, Sun et al. CVPR 2024)")


@dataclass
class DeviceKeys:
    name: str = key(choices=("auto", "cpu", "cuda"))
    precision: str = key(choices=("auto", "fp32", "bf16", "fp16"))  # numerics: results differ in the last bits
    channels_last: bool = key(role="speed")
    compile: bool = key(role="speed")
    # Same global batch at any count (batch_size is global), so only float reduction order changes.
    processes: int = key(role="speed", low=1, doc="processes on this machine (one per GPU): relaunches the run "
                         "through torch.distributed.run; under torchrun, torchrun's own count rules")


@dataclass
class OptimKeys:
    name: str = key(choices=("sgd", "adamw", "dot"))
    lr: float = key(low=0, strict=True)
    betas: list[float] = key()
    momentum: float = key(low=0)
    nesterov: bool = key()
    delta: float = key(low=0, doc="dot: the task momentum is momentum - delta, the distillation's momentum + delta")
    weight_decay: float = key(low=0)
    schedule: str = key(choices=("cosine", "multistep", "constant"))
    milestones: list[int] = key()
    gamma: float = key(low=0, strict=True)
    warmup_epochs: float = key(low=0)


@dataclass
class Recipe:
    """What a model or strategy file may carry as defaults (kdrun/config/recipes.py): a whole optimiser, loss weights."""

    optim: OptimKeys = key()
    loss: LossKeys = key()


@dataclass
class LoggerKeys:
    name: str = key(role="display", choices=("none", "tensorboard", "mlflow", "wandb"))
    log_dir: str = key(role="display")
    tracking_uri: str | None = key(role="display")  # mlflow
    experiment: str = key(role="display")  # mlflow
    project: str = key(role="display")  # wandb
    mode: str = key(role="display", choices=("auto", "online", "offline"))  # wandb


@dataclass
class TrainerKeys:
    epochs: int = key(low=1)
    batch_size: int = key(low=1)
    eval_batch_size: int = key(role="speed", low=1)
    progress: bool = key(role="display")
    on_nonfinite: str = key(choices=("stop", "skip"))
    sync_bn: bool = key(doc="BatchNorm statistics over the global batch across processes (SyncBatchNorm)")
    accumulate: int = key(low=1, doc="micro-batches per optimiser step: batch_size stays the global batch")
    clip_grad_norm: float | None = key(low=0, strict=True, doc="clip the global gradient norm to this; null: off")


@dataclass
class CheckpointKeys:
    every_steps: int | None = key(role="location", low=1)


@dataclass
class Paths:
    outputs: str = key(role="location")
    teachers: str = key(role="location")
    teacher_outputs: str = key(role="location")


@dataclass
class StrategyKeys:
    """`name` only: each strategy class declares the rest (Strategy.Config)."""

    name: str = key()
    recipe: Recipe = key(doc="keys this strategy needs unless the command sets them (kdrun/config/recipes.py)")


@dataclass
class RootKeys:
    T: float = key(low=0, strict=True)
    seed: int = key(role="seed", low=0)
    data_seed: int = key(role="seed", low=0)
    epochs: int = key(low=1)
    batch_size: int = key(low=1)
    dkd_beta: float = key(low=0, doc="DKD's non-target weight, read by loss=dkd as loss.nckd_weight")
    name: str = key(role="display")
    plugins: list[str] = key(doc="modules imported before the run: a user's strategies or losses register there")
    paths: Paths = key(role="location")
    resume: str | None = key(role="location")
    objective: str | list[str] = key(role="display", choices=OBJECTIVES,
                                     doc="what an Optuna sweep (hydra/sweeper=optuna) optimises: validation metrics only")
    dataset: DatasetKeys = key()
    teacher: TeacherKeys = key()
    student: StudentKeys = key()
    loss: LossKeys = key()
    strategy: StrategyKeys = key()
    device: DeviceKeys = key()
    optim: OptimKeys = key()
    logger: LoggerKeys = key(role="display")
    trainer: TrainerKeys = key()
    checkpoint: CheckpointKeys = key(role="location")


# ---- reading the declarations ----------------------------------------------------------------------

def _fields(schema: type, strategy_config: type | None = None) -> dict[str, dataclasses.Field]:
    fields = {f.name: f for f in dataclasses.fields(schema)}
    if schema is StrategyKeys and strategy_config is not None:
        fields.update({f.name: f for f in dataclasses.fields(strategy_config)})
    return fields


def _hints(schema: type, strategy_config: type | None = None) -> dict[str, Any]:
    hints = typing.get_type_hints(schema)
    if schema is StrategyKeys and strategy_config is not None:
        hints.update(typing.get_type_hints(strategy_config))
    return hints


def declared_keys(strategy_config: type | None = None) -> Iterator[tuple[str, dataclasses.Field]]:
    """(dotted key, field) for every leaf key, the chosen strategy's own keys included. A group tagged
    with a role other than result (paths, logger, checkpoint) passes its role to every key in it."""

    def walk(schema: type, prefix: str, forced: str | None):
        hints = _hints(schema, strategy_config)
        for name, f in _fields(schema, strategy_config).items():
            role = forced or f.metadata["role"]
            if hints[name] is Terms:  # every registered term's keys
                for term in TERMS:
                    yield from walk(term_class(term).Config, f"{prefix}{name}.{term}.", None if role == "result" else role)
                continue
            group = group_of(hints[name])
            if group is not None:
                if group is not hints[name]:  # a group that may also be null: the key itself is a leaf too
                    yield f"{prefix}{name}", f if role == f.metadata["role"] else _with_role(f, role)
                yield from walk(group, f"{prefix}{name}.", None if role == "result" else role)
            else:
                yield f"{prefix}{name}", f if role == f.metadata["role"] else _with_role(f, role)

    yield from walk(RootKeys, "", None)


def group_of(kind: Any) -> type | None:
    """The dataclass of a group of keys (`X`, or `X | None` for a group that may be null), else None."""
    if dataclasses.is_dataclass(kind):
        return kind
    groups = [arg for arg in typing.get_args(kind) if dataclasses.is_dataclass(arg)]
    return groups[0] if groups else None


def _with_role(f: dataclasses.Field, role: str) -> dataclasses.Field:
    copy = dataclasses.field(default=None, metadata={**f.metadata, "role": role})
    copy.name = f.name
    return copy


def keys_with_role(*roles: str, strategy_config: type | None = None) -> tuple[str, ...]:
    """Dotted keys whose role is one of `roles` (a group tagged as a whole passes its role down)."""
    return tuple(k for k, f in declared_keys(strategy_config) if f.metadata["role"] in roles)


# ---- checking a config -----------------------------------------------------------------------------


def check_config(cfg: DictConfig, strategy_config: type | None = None) -> None:
    """Raise ConfigError on the first key of `cfg` that is unknown, of the wrong type or out of range.
    `strategy_config` declares the keys of the chosen strategy."""
    node = OmegaConf.to_container(cfg, resolve=True)
    groups = [role for role in ("student", "teacher") if isinstance(node.get(role), dict)]
    for role in groups:  # a custom class's arguments are its own to check
        if node[role].get("source") == "custom":
            node[role] = {k: v for k, v in node[role].items() if k in model_group_keys()}
    _check_node(node, RootKeys, "", strategy_config)
    for role in groups:
        _check_model_name(node[role], role)


def source_of(model_cfg) -> str:
    source = model_cfg.get("source", "zoo")
    if source not in SOURCES:
        raise ConfigError(f"model source {source!r} is not allowed; allowed: {', '.join(SOURCES)}")
    return source


def model_group_keys() -> set[str]:
    """Every key a teacher/student group declares; with source=custom any other key is a class argument."""
    return set(_fields(TeacherKeys)) | set(_fields(StudentKeys))


def _check_model_name(group: dict, role: str) -> None:
    """A zoo arch must be a zoo name; a torchvision or timm name must exist there, a custom class import."""
    source = group.get("source", "zoo")
    if source == "zoo" and group.get("arch") not in MODEL_NAMES:
        raise ConfigError(f"{role}.arch: {group.get('arch')!r} is not allowed; allowed: {', '.join(MODEL_NAMES)} "
                          f"(or {role}=torchvision / timm / custom for models beyond the zoo)")
    if source in SOURCES[1:]:  # before any teacher trains: a typo in a name costs nothing
        name = group.get("_target_") if source == "custom" else group.get("arch")
        if not name:
            raise ConfigError(f"{role}={source} needs the class to build: {role}._target_=mypkg.nets.TinyNet "
                              f"(it is given num_classes=)")
        try:
            check_name(source, name)
        except ValueError as exc:
            raise ConfigError(f"{role}: {exc}") from None


def _check_terms(node, dotted: str) -> None:
    """Each listed term must be registered, and its keys those its Config declares."""
    if not isinstance(node, dict):
        raise ConfigError(f"{dotted} is a group of loss terms (term name -> its keys), got {node!r}")
    for name, keys in node.items():
        cls = term_class(name)
        if keys is not None and not isinstance(keys, dict):
            raise ConfigError(f"{dotted}.{name} is a group of keys ({', '.join(term_fields(cls))}), got {keys!r}")
        for key_name in keys or {}:
            refuse_stage_key(name, key_name)
        _check_node(keys or {}, cls.Config, f"{dotted}.{name}.", None)


def _check_node(node: dict, schema: type, prefix: str, strategy_config: type | None) -> None:
    fields = _fields(schema, strategy_config)
    hints = _hints(schema, strategy_config)
    for name, value in node.items():
        dotted = f"{prefix}{name}"
        if name not in fields:
            raise ConfigError(unknown_key_message(dotted, list(fields)))
        kind, group = hints[name], group_of(hints[name])
        if kind is Terms:
            _check_terms(value, dotted)
            continue
        if group is not None:
            if value is None and group is not kind:
                continue
            if not isinstance(value, dict):
                nullable = " or null" if group is not kind else ""
                raise ConfigError(f"{dotted} must be a group of keys ({', '.join(_fields(group))}){nullable}, "
                                  f"got {value!r}")
            _check_node(value, group, f"{dotted}.", strategy_config if group is StrategyKeys else None)
        else:
            check_value(dotted, value, kind, fields[name].metadata)


def unknown_key_message(dotted: str, siblings: list[str]) -> str:
    parent, _, leaf = dotted.rpartition(".")
    match = difflib.get_close_matches(leaf, siblings, n=1)
    hint = f"; did you mean {parent + '.' if parent else ''}{match[0]}?" if match else ""
    where = f"{parent}: {', '.join(siblings)}" if parent else ", ".join(siblings)
    return f"unknown config key {dotted!r}{hint} (known keys of {where})"


def check_value(dotted: str, value: Any, kind: Any, meta: dict) -> None:
    if not _is_instance(value, kind):
        raise ConfigError(f"{dotted} must be {describe(kind)}, got {value!r}")
    if value is None:
        return
    choices = meta.get("choices")
    if callable(choices):
        choices = choices()
    for item in value if isinstance(value, list) else [value]:
        if choices is not None and item not in choices:
            raise ConfigError(f"{dotted}: {item!r} is not allowed; allowed: {', '.join(map(str, choices))}")
        if isinstance(item, (int, float)) and not isinstance(item, bool):
            _check_bounds(dotted, item, meta, nullable=_is_instance(None, kind))


def _check_bounds(dotted: str, number: float, meta: dict, nullable: bool) -> None:
    if not math.isfinite(number):
        raise ConfigError(f"{dotted} must be a finite number, got {number!r}")
    low = meta.get("low")
    if low is not None and (number <= low if meta.get("strict") else number < low):
        bound = f"{'>' if meta.get('strict') else '>='} {low}" + (" or null" if nullable else "")
        raise ConfigError(f"{dotted} must be {bound}, got {number!r}")


def _is_instance(value: Any, kind: Any) -> bool:
    origin = typing.get_origin(kind)
    if origin in (Union, types.UnionType):
        return any(_is_instance(value, arg) for arg in typing.get_args(kind))
    if kind is type(None):
        return value is None
    if origin is list:
        (item,) = typing.get_args(kind)
        return isinstance(value, (list, ListConfig)) and all(_is_instance(v, item) for v in value)
    if kind is bool:
        return isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is str:
        return isinstance(value, str)
    return isinstance(value, kind)


def describe(kind: Any) -> str:
    """How a type reads in a message: 'an integer or null', 'a list of numbers', ..."""
    origin = typing.get_origin(kind)
    if origin in (Union, types.UnionType):
        return " or ".join(describe(arg) for arg in typing.get_args(kind))
    if origin is list:
        (item,) = typing.get_args(kind)
        return f"a list of {_PLURAL.get(item) or '(' + describe(item) + ')'}"
    return _NAMES[kind]


_NAMES = {int: "an integer", float: "a number", bool: "true or false", str: "a string", type(None): "null"}
_PLURAL = {int: "integers", float: "numbers", str: "strings", bool: "booleans"}


def _check_term_key(parts: list[str], dotted: str) -> None:
    if not parts:
        return
    cls = term_class(parts[0])
    if len(parts) > 1:
        refuse_stage_key(parts[0], parts[1])
    if len(parts) > 1 and parts[1] not in term_fields(cls):
        raise ConfigError(unknown_key_message(f"{dotted}.{parts[0]}.{parts[1]}", list(term_fields(cls))))


def check_override_keys(overrides: list[str], groups: set[str], any_strategy: type) -> None:
    """Refuse `a.b=v` overrides whose key no kdrun config declares, before Hydra sees them (Hydra's own
    message would suggest forcing the typo in with `+`). Group choices (`loss=dkd`, names in `groups`),
    `~` overrides and `hydra.*` are left to Hydra (and `+` ones, but for loss terms); strategy keys are checked against every
    strategy's (`any_strategy`), since the chosen one may come from an experiment preset."""
    for override in overrides:
        adds_term = override.lstrip("+").startswith("loss.terms.")
        if override.startswith(("~", "-")) or (override.startswith("+") and not adds_term) or "=" not in override:
            continue
        dotted = override.split("=", 1)[0].lstrip("+")
        if dotted.startswith("hydra") or "/" in dotted or dotted in groups:
            continue
        schema, prefix, parts = RootKeys, "", dotted.split(".")
        for i, part in enumerate(parts):
            fields = _fields(schema, any_strategy)
            if part not in fields:
                raise ConfigError(unknown_key_message(prefix + part, list(fields)))
            kind = _hints(schema, any_strategy)[part]
            if kind is Terms:  # loss.terms.<term>.<key>: a registered term and one of its keys
                _check_term_key(parts[i + 1:], f"{prefix}{part}")
                break
            kind = group_of(kind)
            if kind is None:
                break
            schema, prefix = kind, f"{prefix}{part}."
