"""Latency per image and images/s at batch 1, measured from a run's checkpoint on the run's device.

The checkpoint is read with kdrun's weights-only loader, so measuring never runs
code from a file. Weights do not change the speed of a model, so one measurement
per architecture, layer shapes, input shape, device and precision serves every seed
(the layer shapes tell a channel-pruned student from its full-width architecture).

On the CPU the measurement uses one thread: at batch 1 a second thread buys little,
and on a busy machine the threads wait for each other and the number becomes
noise (a 6 k-parameter CNN measured 64 ms with two threads, 0.03 ms with one).
"""

from __future__ import annotations

import contextlib
import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from kdrun.sources.checkpoint import load_checkpoint
from kdrun.compress.prune import shrink_to
from kdrun.errors import CheckpointError
from kdrun.sources.models import build_model
from kdrun.runtime import Runtime

WARMUP = 5
MIN_ITERS = 20
MAX_ITERS = 1000
BUDGET_S = 0.3  # per model, after warm-up
CPU_THREADS = 1


@dataclass(frozen=True)
class Latency:
    ms: float  # median milliseconds per image at batch 1
    images_per_s: float
    device: str  # where it was measured; names the run's device too when that one is not here


def usable_device(run_device: str) -> tuple[torch.device, str]:
    """The run's device if this machine has it, else the CPU, with a label that says which."""
    device = torch.device(run_device or "cpu")
    missing = ((device.type == "cuda" and not torch.cuda.is_available())
               or (device.type == "mps" and not torch.backends.mps.is_available()))
    if device.type == "cpu" or missing:
        return torch.device("cpu"), f"cpu, {CPU_THREADS} thread" + (f" (ran on {run_device})" if missing else "")
    return device, str(device)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def cpu_threads(n: int):
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@torch.inference_mode()
def time_model(model: torch.nn.Module, runtime: Runtime, input_shape: tuple[int, ...]) -> float:
    """Median seconds per forward pass of one image."""
    threads = cpu_threads(CPU_THREADS) if runtime.device.type == "cpu" else contextlib.nullcontext()
    with threads:
        return _time_model(model, runtime, input_shape)


def _time_model(model: torch.nn.Module, runtime: Runtime, input_shape: tuple[int, ...]) -> float:
    model.eval()
    x = torch.randn(1, *input_shape, device=runtime.device)
    if runtime.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with runtime.autocast():
        for _ in range(WARMUP):
            model(x)
        _sync(runtime.device)
        times = []
        start = time.perf_counter()
        while len(times) < MIN_ITERS or (time.perf_counter() - start < BUDGET_S and len(times) < MAX_ITERS):
            t0 = time.perf_counter()
            model(x)
            _sync(runtime.device)
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


class LatencyMeter:
    """Measures checkpoints, once per (architecture, layer shapes, input shape, device, precision)."""

    def __init__(self):
        self._cache: dict[tuple, Latency] = {}
        self.problems: list[str] = []  # checkpoints that could not be measured, and why

    def measure(self, checkpoint: Path, run_device: str, precision: str = "fp32",
                channels_last: bool = False) -> Latency | None:
        try:
            payload = load_checkpoint(checkpoint)
        except CheckpointError as exc:
            self.problems.append(str(exc))
            return None
        meta = payload["model"]
        device, label = usable_device(run_device)
        precision = precision if device.type == torch.device(run_device or "cpu").type else "fp32"
        shapes = tuple(tuple(tensor.shape) for tensor in payload["state_dict"].values())
        key = (meta["arch"], json.dumps(meta.get("options"), sort_keys=True), shapes, meta["in_channels"],
               meta["image_size"], meta["num_classes"], label, precision, channels_last)
        if key not in self._cache:
            model = build_model(meta["arch"], meta["in_channels"], meta["image_size"], meta["num_classes"],
                                meta.get("options"))
            shrink_to(model, payload["state_dict"])  # a channel-pruned student is narrower than its arch
            model.load_state_dict(payload["state_dict"])
            runtime = Runtime(device, precision, channels_last)
            seconds = time_model(runtime.prepare(model), runtime, (meta["in_channels"], meta["image_size"],
                                                                   meta["image_size"]))
            self._cache[key] = Latency(seconds * 1e3, 1.0 / seconds, label)
        return self._cache[key]
