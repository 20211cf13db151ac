"""Pruning a student before it trains: `student.prune.kind=unstructured|channel student.prune.amount=0.5`.

- unstructured: global magnitude pruning of every conv and linear weight (torch.nn.utils.prune's
  L1 criterion over all of them at once). The zeros are kept through training by masking the
  gradients, so the checkpoint stays a plain state dict. Dense kernels do not skip zeros: the
  file and the latency do not shrink, only the count of non-zero weights does.
- channel: structured pruning of the channels inside each block (a ResNet block's first conv,
  the CNN's convs, the MLP's hidden units), lowest L1 filter norm first (Li et al. 2017). The
  modules are rebuilt narrower, so size and latency fall for real. Channels that feed a
  residual sum are left alone: removing them would need the same cut in every block of a stage.

`student.prune.checkpoint` starts from a trained student's weights (prune, then distil to recover);
without it the fresh initialisation is pruned.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

from kdrun.sources.checkpoint import load_checkpoint
from kdrun.errors import ConfigError
from kdrun.sources.models.cnn import SmallCNN
from kdrun.sources.models.mlp import MLP
from kdrun.sources.models.resnet import BasicBlock, Bottleneck

KINDS = ("none", "unstructured", "channel")


@dataclass(frozen=True)
class ChannelGroup:
    """Channels made by `producer` (and normalised by `norm`) and read only by `consumer`.
    A linear consumer after a flatten reads `repeat` inputs per channel (the spatial positions)."""

    producer: str
    norm: str | None
    consumer: str
    repeat: int = 1


def channel_groups(model: nn.Module) -> list[ChannelGroup]:
    if isinstance(model, SmallCNN):
        final = -(-model.image_size // 4)
        return [ChannelGroup("conv1", None, "conv2"), ChannelGroup("conv2", None, "fc", final * final)]
    if isinstance(model, MLP):
        layers = [f"hidden.{i}" for i in range(len(model.hidden))] + ["classifier"]
        return [ChannelGroup(producer, None, consumer) for producer, consumer in zip(layers, layers[1:])]
    groups = []
    for name, module in model.named_modules():
        if isinstance(module, (BasicBlock, Bottleneck)):
            groups.append(ChannelGroup(f"{name}.conv1", f"{name}.bn1", f"{name}.conv2"))
        if isinstance(module, Bottleneck):
            groups.append(ChannelGroup(f"{name}.conv2", f"{name}.bn2", f"{name}.conv3"))
    if not groups:
        raise ConfigError(f"student.prune.kind=channel does not know the blocks of {type(model).__name__}; "
                          "use student.prune.kind=unstructured")
    return groups


def _narrow(model: nn.Module, group: ChannelGroup, keep: torch.Tensor) -> None:
    """Keep only channels `keep` of the group, in place, resizing the three modules."""
    producer, consumer = model.get_submodule(group.producer), model.get_submodule(group.consumer)
    with torch.no_grad():
        producer.weight = nn.Parameter(producer.weight[keep].clone())
        if producer.bias is not None:
            producer.bias = nn.Parameter(producer.bias[keep].clone())
        _set_width(producer, out=len(keep))
        if group.norm is not None:
            norm = model.get_submodule(group.norm)
            norm.weight, norm.bias = nn.Parameter(norm.weight[keep].clone()), nn.Parameter(norm.bias[keep].clone())
            norm.running_mean, norm.running_var = norm.running_mean[keep].clone(), norm.running_var[keep].clone()
            norm.num_features = len(keep)
        columns = keep
        if group.repeat > 1:  # flatten order is (channel, y, x): each channel owns `repeat` columns
            columns = (keep.view(-1, 1) * group.repeat + torch.arange(group.repeat)).flatten()
        consumer.weight = nn.Parameter(consumer.weight[:, columns].clone())
        _set_width(consumer, inp=len(columns))


def _set_width(module: nn.Module, out: int | None = None, inp: int | None = None) -> None:
    if isinstance(module, nn.Conv2d):
        module.out_channels = out or module.out_channels
        module.in_channels = inp or module.in_channels
    else:
        module.out_features = out or module.out_features
        module.in_features = inp or module.in_features


def prune_channels(model: nn.Module, amount: float) -> None:
    """Remove round(amount * C) channels of each group, those whose filters have the smallest L1 norm."""
    for group in channel_groups(model):
        weight = model.get_submodule(group.producer).weight
        n = weight.shape[0]
        kept = max(1, n - round(amount * n))
        norms = weight.detach().abs().flatten(1).sum(1)
        keep = norms.topk(kept).indices.sort().values
        _narrow(model, group, keep)


def shrink_to(model: nn.Module, state_dict: dict) -> None:
    """Narrow `model` to the widths a channel-pruned checkpoint holds, so that it can load it."""
    try:
        groups = channel_groups(model)
    except ConfigError:
        return
    for group in groups:
        saved = state_dict.get(f"{group.producer}.weight")
        current = model.get_submodule(group.producer).weight
        if saved is not None and saved.shape[0] < current.shape[0]:
            _narrow(model, group, torch.arange(saved.shape[0]))


def prunable_weights(model: nn.Module) -> list[tuple[nn.Module, str]]:
    return [(m, "weight") for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def prune_unstructured(model: nn.Module, amount: float) -> None:
    """Zero the `amount` fraction of all conv/linear weights with the smallest magnitude, and keep them zero."""
    params = prunable_weights(model)
    torch_prune.global_unstructured(params, pruning_method=torch_prune.L1Unstructured, amount=amount)
    for module, name in params:
        mask = getattr(module, f"{name}_mask").detach().clone()
        torch_prune.remove(module, name)  # bake the zeros into a plain weight: the state dict keeps its keys
        # A zero gradient keeps a zero weight zero under SGD (+momentum, weight decay) and AdamW alike.
        getattr(module, name).register_hook(lambda grad, mask=mask: grad * mask)


def sparsity(model: nn.Module) -> float:
    """Fraction of conv/linear weights that are exactly zero."""
    weights = [getattr(m, n) for m, n in prunable_weights(model)]
    return sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)


def check_prune_config(prune_cfg) -> tuple[str, float]:
    kind = prune_cfg.get("kind", "none")
    if kind not in KINDS:
        raise ConfigError(f"unknown student.prune.kind {kind!r}; allowed: {', '.join(KINDS)}")
    amount = prune_cfg.get("amount", 0.0)
    if isinstance(amount, bool) or not isinstance(amount, (int, float)) or not 0 <= amount < 1:
        raise ConfigError(f"student.prune.amount must be a number in [0, 1), the fraction to remove; got {amount!r}")
    if kind == "none" and amount:
        raise ConfigError(f"student.prune.amount={amount} needs student.prune.kind=unstructured or channel")
    return kind, float(amount)


def prune_student(model: nn.Module, prune_cfg) -> nn.Module:
    """The hook build_student calls: load student.prune.checkpoint if set, then prune as configured."""
    if prune_cfg is None:
        return model
    kind, amount = check_prune_config(prune_cfg)
    if prune_cfg.get("checkpoint"):
        payload = load_checkpoint(prune_cfg["checkpoint"])
        if payload["model"]["arch"] != model.arch:
            raise ConfigError(f"student.prune.checkpoint holds a {payload['model']['arch']}, "
                              f"but student={model.arch}")
        shrink_to(model, payload["state_dict"])
        model.load_state_dict(payload["state_dict"])
    if kind == "unstructured" and amount:
        prune_unstructured(model, amount)
    elif kind == "channel" and amount:
        prune_channels(model, amount)
    return model
