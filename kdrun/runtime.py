"""Where and how a run computes: device, autocast precision, seeds."""

from __future__ import annotations

import contextlib
import random
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from kdrun.errors import ConfigError
from kdrun.precision import auto_precision, cpu_flags
from kdrun.step import Batch

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    precision: str  # fp32 | bf16 | fp16, never auto
    channels_last: bool = False
    compile: bool = False
    why: str = ""  # why device.precision=auto chose this precision; empty when the config named it

    def describe(self) -> str:
        """How the run computes, in one line: `cpu, bf16 (auto: the CPU has avx512_bf16), channels_last`."""
        precision = f"{self.precision} (auto: {self.why})" if self.why else self.precision
        return ", ".join([self.device.type, precision] + ["channels_last"] * self.channels_last
                         + ["compile"] * self.compile)

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        return _DTYPES[self.precision]

    def autocast(self):
        """Autocast for forward passes, or nothing in fp32."""
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def synchronize(self) -> None:
        """Wait for the device's queued work (a no-op on the CPU), e.g. before reading a clock."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def grad_scaler(self) -> torch.amp.GradScaler:
        """A GradScaler that is only active for fp16, where small gradients underflow."""
        return torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")

    def prepare(self, model: nn.Module) -> nn.Module:
        """Move a model to the device in the run's memory format, and compile it if asked.

        Compiling is in place (nn.Module.compile): the module, its attributes and its state_dict keys stay
        as they are, so checkpoints do not change. It happens at the first call; see warm_up.
        """
        model = model.to(self.device)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        if self.compile:
            model.compile()
        return model

    def warm_up(self, strategy, data, augment, batch_size: int) -> None:
        """With `compile`: one training step's forward and backward on un-augmented training images, then
        undone (no optimiser step; buffers such as BatchNorm statistics, gradients and RNG states are as
        before), so that compiling happens here and not inside the first timed epoch. Its Batch has
        epoch 0, which the teacher-output cache never records."""
        if not self.compile:
            return
        n = min(batch_size, len(data.train_y))
        x = augment(data.train_x[:n], None, train=False)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        labelled = None if data.train_labelled is None else data.train_labelled[:n]
        batch = Batch(x, data.train_y[:n], torch.arange(n, device=self.device), epoch=0, labelled=labelled)
        modules = _modules(strategy)
        saved = [{name: t.clone() for name, t in module.state_dict().items()} for module in modules]
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            strategy.train()
            with self.autocast():
                out = strategy.step(batch)
            sum(out.losses.values()).backward()
        for module, state in zip(modules, saved):
            module.load_state_dict(state)
        for param in strategy.parameters():
            param.grad = None


def resolve_runtime(device_cfg) -> Runtime:
    """Turn the `device` config group into a concrete Runtime."""
    name = device_cfg.name
    if name == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    elif name == "cpu":
        device = torch.device("cpu")
    elif name == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("device=cuda but no CUDA GPU is visible to torch; use device=cpu or device=auto")
        device = torch.device("cuda")
    else:
        raise ConfigError(f"unknown device.name {name!r}; allowed: auto, cpu, cuda")

    precision = device_cfg.precision
    if precision not in PRECISIONS:
        raise ConfigError(f"device.precision={precision!r} is not allowed; allowed: {', '.join(PRECISIONS)}")
    why = ""
    if precision == "auto":
        cuda_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
        precision, why = auto_precision(device.type, cpu_flags=cpu_flags(), cuda_bf16=cuda_bf16)
    return Runtime(device, precision, bool(device_cfg.channels_last), bool(device_cfg.compile), why)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device


def data_generator(seed: int, device: torch.device) -> torch.Generator:
    """The generator for data order and augmentation, kept apart from model init."""
    g = torch.Generator(device=device)
    g.manual_seed(seed)
    return g


def _modules(owner) -> list[nn.Module]:
    """The modules an object holds as attributes, directly or in a list."""
    found = []
    for value in vars(owner).values():
        for item in value if isinstance(value, (list, tuple)) else [value]:
            if isinstance(item, nn.Module):
                found.append(item)
    return found
