"""One run's student to files: the export, its check, int8, FLOPs, speed and the model card."""

from __future__ import annotations

from pathlib import Path

from kdrun.console import results
from kdrun.deploy import export as ex
from kdrun.deploy.card import card_path, model_card
from kdrun.deploy.flops import count_flops
from kdrun.deploy.int8 import calibration_images, quantize_onnx
from kdrun.deploy.speed import measure_all
from kdrun.sources.data import DatasetSplits
from kdrun.deploy.student import RunModel, load_run
from kdrun.io import atomic_dir, atomic_write_json


def ship_run(run_dir: Path, out_dir: Path, fmt: str, int8: bool, speed: bool) -> dict:
    """Write the run's student to `out_dir`; returns the model card (also written as model_card.json)."""
    return ship(load_run(run_dir), out_dir, fmt, int8, speed)


def ship(run: RunModel, out_dir: Path, fmt: str, int8: bool, speed: bool, data: DatasetSplits | None = None) -> dict:
    """`run`'s model to files in `out_dir` (see ship_run); `data`: its dataset, if already loaded. The files are
    written into a temporary folder that becomes `out_dir` only once all of them are: a failed export leaves
    no model file without its card."""
    data = data or run.load_data()
    with atomic_dir(out_dir) as work_dir:
        return _ship_into(work_dir, run, data, fmt, int8, speed)


def _ship_into(out_dir: Path, run: RunModel, data: DatasetSplits, fmt: str, int8: bool, speed: bool) -> dict:
    model = run.raw_model(data)
    shape = (data.in_channels, data.image_size, data.image_size)
    artefacts: dict[str, dict] = {}

    def write(kind: str, fmt: str) -> Path:
        path = out_dir / f"model{ex.SUFFIX[fmt]}"
        ex.export(model, fmt, path)
        check = ex.check_export(model, ex.runner(fmt, path), data.test_x, data.test_y)
        artefacts[kind] = {"format": fmt, "path": path.name, "size_mb": round(ex.file_size_mb(path), 5),
                           "check": check.as_dict()}
        if fmt == "onnx":
            artefacts[kind]["opset"] = ex.ONNX_OPSET
        return path

    write(fmt, fmt)
    if int8:
        onnx_fp32 = out_dir / "model.onnx" if fmt == "onnx" else write("onnx", "onnx")  # int8 goes through ONNX
        int8_path = out_dir / "model.int8.onnx"
        trained_ranges = getattr(run.model, "qat_ranges", {})
        quantize_onnx(onnx_fp32, int8_path, calibration_images(data.train_x), trained_ranges)
        check = ex.check_export(model, ex.runner("onnx", int8_path), data.test_x, data.test_y, tolerance=float("inf"))
        fp32_acc = artefacts["onnx"]["check"]["accuracy"]
        artefacts["int8"] = {"format": "onnx", "path": int8_path.name, "size_mb": round(ex.file_size_mb(int8_path), 5),
                             "accuracy": round(check.accuracy, 4), "fp32_accuracy": fp32_acc,
                             "accuracy_drop": round(fp32_acc - check.accuracy, 4),
                             "top1_differs_from_fp32": check.top1_differs,
                             "quantization": "onnxruntime quantize_static: QDQ, int8 per-channel weights, uint8 "
                                             "activations, MinMax calibration on 512 training images"
                                             + (", the layers' ranges from quantization-aware training"
                                                if trained_ranges else "")}
    card = model_card(run, data, artefacts, count_flops(run.model, shape))
    if speed:
        onnx_files = {label: out_dir / artefacts[key]["path"] for key, label in
                      (("onnx", "onnxruntime"), ("int8", "onnxruntime_int8")) if key in artefacts}
        card["speed"] = {s.key: {"ms_per_image": round(s.ms_per_image, 5), "images_per_s": round(s.images_per_s, 1)}
                         for s in measure_all(model, shape, onnx_files)}
    atomic_write_json(card_path(out_dir), card)
    return card


def summary_line(card: dict) -> str:
    parts = [f"{card['model']}: {card['flops'] / 1e6:.2f} MFLOPs"]
    for kind, art in card["artefacts"].items():
        if kind == "int8":
            parts.append(f"int8 {art['size_mb'] * 1024:.1f} KiB acc {art['accuracy']:.2f}% "
                         f"(fp32 {art['fp32_accuracy']:.2f}%)")
        else:
            c = art["check"]
            verdict = "agrees" if c["passed"] else f"DIFFERS on {c['top1_differs']} images"
            parts.append(f"{kind} {art['size_mb'] * 1024:.1f} KiB acc {c['accuracy']:.2f}% "
                         f"(max |logit diff| {c['max_abs_logit_diff']:.1e}, {verdict})")
    return "; ".join(parts)


def report_line(card: dict) -> None:
    results.print(summary_line(card), markup=False, highlight=False, soft_wrap=True)
