"""Latency at batch 1 and throughput at batch 64, for PyTorch eager and onnxruntime, on the CPU.

torch.utils.benchmark.Timer does the warm-up and repetitions (blocked_autorange) for both
runtimes; its median is reported. One thread is the edge case (a phone core, a busy
server); "all" is every core this machine has.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from kdrun.deploy.export import onnx_session

BATCHES = (1, 64)
MIN_RUN_TIME_S = 0.2


@dataclass(frozen=True)
class Speed:
    runtime: str  # "torch" or "onnxruntime"
    threads: int
    batch: int
    seconds: float  # median per batch

    @property
    def ms_per_image(self) -> float:
        return 1e3 * self.seconds / self.batch

    @property
    def images_per_s(self) -> float:
        return self.batch / self.seconds

    @property
    def key(self) -> str:
        """A column name: torch_1t_b1, onnxruntime_allt_b64, ..."""
        threads = "allt" if self.threads == all_threads() and self.threads > 1 else f"{self.threads}t"
        return f"{self.runtime}_{threads}_b{self.batch}"


def all_threads() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def thread_counts() -> list[int]:
    return sorted({1, all_threads()})


def _images(shape: tuple[int, int, int], batch: int) -> torch.Tensor:
    return torch.randint(0, 256, (batch, *shape), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


def _timer(stmt: str, env: dict, threads: int):
    # Imported when timing: torch.utils.benchmark loads cpp_extension, which warns about CUDA on every
    # `kdrun` start on a machine without it.
    from torch.utils.benchmark import Timer

    return Timer(stmt, globals=env, num_threads=threads)


def time_torch(model: nn.Module, shape: tuple[int, int, int], batch: int, threads: int,
               min_run_time: float = MIN_RUN_TIME_S) -> Speed:
    model.eval()
    x = _images(shape, batch)
    with torch.inference_mode():
        timer = _timer("model(x)", {"model": model, "x": x}, threads)
        timer.timeit(3)  # warm-up: first calls allocate and pick kernels
        seconds = timer.blocked_autorange(min_run_time=min_run_time).median
    return Speed("torch", threads, batch, seconds)


def time_onnx(path: Path, shape: tuple[int, int, int], batch: int, threads: int,
              min_run_time: float = MIN_RUN_TIME_S, label: str = "onnxruntime") -> Speed:
    session = onnx_session(path, threads)
    feed = {session.get_inputs()[0].name: _images(shape, batch).numpy()}
    timer = _timer("session.run(None, feed)", {"session": session, "feed": feed}, 1)
    timer.timeit(3)
    return Speed(label, threads, batch, timer.blocked_autorange(min_run_time=min_run_time).median)


def measure_all(model: nn.Module, shape: tuple[int, int, int], onnx_files: dict[str, Path],
                min_run_time: float = MIN_RUN_TIME_S) -> list[Speed]:
    """Every (runtime, threads, batch): PyTorch eager, then each ONNX file ({"onnxruntime": fp32, ...})."""
    speeds = []
    for threads in thread_counts():
        for batch in BATCHES:
            speeds.append(time_torch(model, shape, batch, threads, min_run_time))
            for label, path in onnx_files.items():
                speeds.append(time_onnx(path, shape, batch, threads, min_run_time, label))
    return speeds
