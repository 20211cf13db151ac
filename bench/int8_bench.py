"""`make bench`, part (f): int8 onnxruntime against fp32 PyTorch eager, batch 1, one thread.

Per student (resnet20, cnn_student): trained on digits with kdrun (a real run), exported with
kdrun-export's code to ONNX fp32 and int8 (static, calibrated on training images); test accuracy of
both; latency at batch 1 on one thread of PyTorch eager fp32, onnxruntime fp32 and onnxruntime int8,
at the digits shape (1x8x8) and at the CIFAR shape (3x32x32, fresh weights: weights do not change
speed). Target: int8 >= 2x faster than fp32 eager, <= 1 point of accuracy lost.
"""

from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_module
from rich.table import Table

from kdrun.console import console
from kdrun.deploy.export import export
from kdrun.deploy.int8 import quantize_onnx
from kdrun.deploy.ship import ship
from kdrun.deploy.speed import time_onnx, time_torch
from kdrun.deploy.student import RawImageModel, load_run
from kdrun.sources.models import build_model
from kdrun.run import run_experiment

ARCHS = ("resnet20", "cnn_student")
TARGET_SPEEDUP, TARGET_POINTS = 2.0, 1.0
CIFAR_STATS = ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))


def _train(root: Path, arch: str, tiny: bool) -> Path:
    size = ["dataset.limit_train=64", "dataset.limit_test=32", "epochs=1"] if tiny else ["epochs=30"]
    overrides = ["dataset=digits", f"student={arch}", "strategy=scratch", "optim=adamw", "optim.lr=3e-3",
                 "trainer.progress=false", f"paths.outputs={root}", *size]
    with initialize_config_module(config_module="kdrun.conf", version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    run_dir = root / "int8" / arch
    run_experiment(cfg, run_dir)
    return run_dir


def _latencies(model, shape, fp32: Path, int8: Path, min_run_time: float) -> dict:
    eager = time_torch(model, shape, 1, 1, min_run_time).ms_per_image
    ort32 = time_onnx(fp32, shape, 1, 1, min_run_time).ms_per_image
    ort8 = time_onnx(int8, shape, 1, 1, min_run_time).ms_per_image
    return {"torch_fp32_ms": eager, "onnxruntime_fp32_ms": ort32, "onnxruntime_int8_ms": ort8,
            "int8_speedup_over_torch": eager / ort8, "int8_speedup_over_onnxruntime_fp32": ort32 / ort8}


def _cifar_shape(root: Path, arch: str, min_run_time: float) -> dict:
    import torch

    model = RawImageModel(build_model(arch, 3, 32, 10), *CIFAR_STATS).eval()
    fp32, int8 = root / "cifar" / f"{arch}.onnx", root / "cifar" / f"{arch}.int8.onnx"
    export(model, "onnx", fp32)
    calibration = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    quantize_onnx(fp32, int8, calibration.numpy())
    return _latencies(model, (3, 32, 32), fp32, int8, min_run_time)


def int8_vs_fp32(root: Path, tiny: bool) -> dict:
    min_run_time = 0.05 if tiny else 1.0
    out = {"targets": {"speedup": TARGET_SPEEDUP, "points_lost": TARGET_POINTS}, "models": {}}
    for arch in ARCHS[-1:] if tiny else ARCHS:  # tiny: the small CNN only, to stay within the test's minutes
        run = load_run(_train(root, arch, tiny))
        data = run.load_data()
        card = ship(run, run.run_dir / "export", "onnx", True, False, data)
        int8 = card["artefacts"]["int8"]
        shape = (data.in_channels, data.image_size, data.image_size)
        out["models"][arch] = {
            "dataset": "digits", "fp32_acc": int8["fp32_accuracy"], "int8_acc": int8["accuracy"],
            "points_lost": int8["accuracy_drop"],
            "digits_shape": _latencies(run.raw_model(data), shape, run.run_dir / "export" / "model.onnx",
                                       run.run_dir / "export" / "model.int8.onnx", min_run_time),
            "cifar_shape": _cifar_shape(root, arch, min_run_time),
        }
    return out


def print_int8(result: dict) -> None:
    table = Table(title="(f) int8 onnxruntime vs fp32 PyTorch eager (ms, batch 1, 1 thread)")
    # ms per image; x = eager fp32 / int8
    for column in ("model", "fp32 %", "int8 %", "shape", "eager", "ort", "int8", "x"):
        table.add_column(column, justify="left" if column in ("model", "shape") else "right")
    for arch, m in result["models"].items():
        for shape in ("digits_shape", "cifar_shape"):
            t = m[shape]
            table.add_row(arch, f"{m['fp32_acc']:.2f}", f"{m['int8_acc']:.2f}", "1x8x8" if shape == "digits_shape"
                          else "3x32x32", f"{t['torch_fp32_ms']:.3f}", f"{t['onnxruntime_fp32_ms']:.3f}",
                          f"{t['onnxruntime_int8_ms']:.3f}", f"{t['int8_speedup_over_torch']:.2f}x")
    console.print(table)
    console.print(f"target: int8 >= {TARGET_SPEEDUP:.0f}x faster than fp32 eager, <= {TARGET_POINTS:.0f} point lost")
