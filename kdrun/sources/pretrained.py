"""Pretrained weights for a teacher or student: torchvision's weights API, timm, or a state_dict file.

    teacher.weights=IMAGENET1K_V1     torchvision weights by name (downloaded into the torch hub cache)
    teacher.pretrained=true           timm's default pretrained weights (downloaded by timm)
    teacher.weights=path/to/file.pt   a state_dict, or a kdrun checkpoint, loaded weights-only

Weights whose classifier head has another class count than the dataset leave the head freshly
initialised where that is allowed (a student, or a teacher with finetune_epochs), and are refused,
naming both counts, where it is not. When the weights expect other input statistics than the
dataset's (ImageNet's mean and std), the model's InputNorm re-normalises its inputs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from torch import Tensor, nn

from kdrun.sources.checkpoint import load_weights_only, refusal_reason
from kdrun.console import console
from kdrun.errors import CheckpointError, ConfigError
from kdrun.io import file_sha256
from kdrun.sources.models.external import ExternalModel, import_timm
from kdrun.sources.models.layers import feature_root
from kdrun.config.schema import source_of

IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


@dataclass
class Weights:
    state_dict: dict[str, Tensor]
    stats: tuple[tuple[float, ...], tuple[float, ...]] | None  # the (mean, std) the weights expect, if known
    label: str  # for messages: where they come from


def weights_identity(model_cfg) -> str:
    """What names the weights without loading them: a URL, a timm tag or a file's sha256 (for cache keys)."""
    source, weights = source_of(model_cfg), model_cfg.get("weights")
    if weights and _is_path(weights):
        return f"sha256:{file_sha256(Path(weights))}"
    if weights and source == "torchvision":
        return _torchvision_weights(model_cfg.arch, weights).url
    if source == "timm" and model_cfg.get("pretrained", False):
        return f"timm:{model_cfg.arch}:pretrained"
    raise ConfigError(f"weights={weights!r} is neither a file nor a torchvision weights name; "
                      f"give a path to a state_dict file" + _weights_hint(source))


def read_weights(model_cfg) -> Weights:
    source, weights = source_of(model_cfg), model_cfg.get("weights")
    if weights and _is_path(weights):
        return Weights(_read_state_dict(Path(weights)), None, str(weights))
    if weights and source == "torchvision":
        entry = _torchvision_weights(model_cfg.arch, weights)
        transform = entry.transforms()
        state = entry.get_state_dict(progress=True, weights_only=True)
        return Weights(state, (tuple(transform.mean), tuple(transform.std)), f"torchvision {entry}")
    if source == "timm" and model_cfg.get("pretrained", False):
        net = import_timm().create_model(model_cfg.arch, pretrained=True)
        cfg = net.pretrained_cfg
        return Weights(net.state_dict(), (tuple(cfg["mean"]), tuple(cfg["std"])), f"timm {model_cfg.arch} pretrained")
    raise ConfigError(f"weights={weights!r}: no such file" + _weights_hint(source))


def load_pretrained(model: nn.Module, model_cfg, data, role: str, *, new_head_ok: bool) -> None:
    """Load the group's weights into `model` (built for `data`), checking the head and input statistics."""
    weights = read_weights(model_cfg)
    state = weights.state_dict
    # A kdrun checkpoint of an external model holds the wrapper's keys; a plain state_dict the inner model's.
    target = model if any(k.startswith(("net.", "input_norm.")) for k in state) else feature_root(model)
    kept = fit_head(target, state, role=role, label=weights.label, data=data, new_head_ok=new_head_ok)
    target.load_state_dict(kept, strict=False)
    stats = {"imagenet": IMAGENET_STATS, "dataset": None}.get(model_cfg.get("input_stats", "auto"), weights.stats)
    if stats is not None and target is not model and isinstance(model, ExternalModel):
        model.input_norm.set_statistics(data.mean, data.std, *stats)


def fit_head(target: nn.Module, state: dict[str, Tensor], *, role: str, label: str, data,
             new_head_ok: bool) -> dict[str, Tensor]:
    """The entries of `state` to load into `target`: all of them, or all but a classifier head whose class
    count differs from the dataset's (where new_head_ok). Anything else that does not fit is an error."""
    own = target.state_dict()
    missing = sorted(k for k in own if k not in state and not k.endswith("num_batches_tracked"))
    unexpected = sorted(k for k in state if k not in own)
    if missing or unexpected:
        raise CheckpointError(
            f"{role} weights {label} do not fit {getattr(target, 'arch', type(target).__name__)}: "
            f"missing {missing[:4]}{'...' if len(missing) > 4 else ''}, "
            f"unexpected {unexpected[:4]}{'...' if len(unexpected) > 4 else ''}")
    mismatched = [k for k in own if k in state and state[k].shape != own[k].shape]
    if not mismatched:
        return state
    head_classes = {state[k].shape[0] for k in mismatched}
    is_head = (len(head_classes) == 1 and all(own[k].shape[0] == data.num_classes for k in mismatched)
               and all(state[k].shape[1:] == own[k].shape[1:] for k in mismatched))
    if not is_head:
        k = mismatched[0]
        raise CheckpointError(f"{role} weights {label} do not fit: {k} has shape {tuple(state[k].shape)}, "
                              f"the model's is {tuple(own[k].shape)}")
    weights_classes = head_classes.pop()
    if not new_head_ok:
        raise ConfigError(
            f"{role} weights {label} have a {weights_classes}-class head, but dataset {data.name} has "
            f"{data.num_classes} classes: set {role}.finetune_epochs=N to fine-tune a new {data.num_classes}-class "
            f"head on the training split first")
    console.print(f"[yellow]{role}[/]: the weights' {weights_classes}-class head ({', '.join(mismatched)}) does not "
                  f"fit {data.num_classes} classes; it starts freshly initialised", soft_wrap=True)
    return {k: v for k, v in state.items() if k not in mismatched}


def _is_path(weights: str) -> bool:
    return Path(str(weights)).expanduser().is_file()


def _read_state_dict(path: Path) -> dict[str, Tensor]:
    try:
        payload = load_weights_only(path)
    except Exception as exc:
        reason = refusal_reason(exc) or f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else 'no detail'}"
        raise CheckpointError(f"weights file {str(path)!r} was refused: it is not a state_dict that a weights-only "
                              f"load accepts, and kdrun never runs code from a weights file ({reason})") from exc
    if isinstance(payload, dict) and payload.get("format") == "kdrun-checkpoint":
        payload = payload["state_dict"]
    if not isinstance(payload, dict) or not all(isinstance(v, Tensor) for v in payload.values()):
        raise CheckpointError(f"weights file {str(path)!r} holds no state_dict (a dict of tensors)")
    return payload


def _torchvision_weights(arch: str, name: str):
    from torchvision.models import get_model_weights

    try:
        enum = get_model_weights(arch)
    except (ValueError, KeyError) as exc:
        raise ConfigError(f"torchvision has no weights for model {arch!r}") from exc
    if name not in enum.__members__:
        raise ConfigError(f"torchvision {arch} has no weights {name!r}; allowed: {', '.join(enum.__members__)}, "
                          f"or a path to a state_dict file")
    return enum[name]


def _weights_hint(source: str) -> str:
    if source == "torchvision":
        return " or a torchvision weights name (e.g. IMAGENET1K_V1)"
    if source == "timm":
        return ", or pretrained=true for timm's own weights"
    return ""
