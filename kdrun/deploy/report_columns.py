"""`kdrun-report --deploy`: the comparison table grown with what a deployed model costs.

Per row (teacher, students from scratch, distilled students): FLOPs, ONNX size fp32 and int8,
the weights' sparsity, accuracy fp32 and int8 (int8 averaged over the group's seeds), latency at batch 1 and images/s at
batch 64 for PyTorch eager and onnxruntime (fp32 and int8), one thread and all threads. Every
column goes to comparison.csv; the console gets a compact table of the batch-1, one-thread case.
The exports land in <report>/deploy/<row>/, each with its model card.
"""

from __future__ import annotations

import statistics
from pathlib import Path

from kdrun.deploy.ship import ship
from kdrun.deploy.student import RunModel, load_run, model_from_checkpoint
from kdrun.report.aggregate import Study
from kdrun.report.tables import Table

DEPLOY_DIR = "deploy"


def _teacher_run(ref, first: RunModel) -> RunModel | None:
    path = ref.paths[0]
    if "," in path:  # an ensemble of teachers is not one exportable model
        return None
    checkpoint = ref.job.resolve(path)
    return RunModel(ref.job.path, checkpoint, model_from_checkpoint(checkpoint), first.config, {})


def measure_rows(s: Study, out_dir: Path) -> list[dict | None]:
    """One dict of deploy columns per comparison row, in the comparison table's order."""
    first = load_run(s.groups[0].jobs[0].path)
    data = first.load_data()
    rows: list[dict | None] = []
    for i, ref in enumerate(s.teachers):
        run = _teacher_run(ref, first)
        rows.append(None if run is None else _columns(
            ship(run, out_dir / DEPLOY_DIR / f"teacher_{i}", "onnx", True, True, data), []))
    scratch = [g for g in s.groups if not g.distills]
    distilled = [g for g in s.groups if g.distills]
    for i, group in enumerate([*scratch, *distilled]):
        where = out_dir / DEPLOY_DIR / f"group_{i}"
        card = ship(load_run(group.jobs[0].path), where, "onnx", True, True, data)
        other_seeds = [ship(load_run(job.path), where / f"seed_{k}", "onnx", True, False, data)
                       for k, job in enumerate(group.jobs[1:], 1)]
        rows.append(_columns(card, other_seeds))
    return rows


def _columns(card: dict, other_seeds: list[dict]) -> dict:
    arts = card["artefacts"]
    int8_accs = [c["artefacts"]["int8"]["accuracy"] for c in (card, *other_seeds)]
    fp32_accs = [c["artefacts"]["onnx"]["check"]["accuracy"] for c in (card, *other_seeds)]
    out = {"flops": card["flops"], "onnx_fp32_kb": round(arts["onnx"]["size_mb"] * 1024, 2),
           "onnx_int8_kb": round(arts["int8"]["size_mb"] * 1024, 2),
           "acc_fp32_onnx": round(statistics.fmean(fp32_accs), 3), "acc_int8": round(statistics.fmean(int8_accs), 3),
           "weight_sparsity": card["weight_sparsity"]}  # unstructured pruning's zeros: the file and speed stay
    for key, value in card["speed"].items():
        if key.endswith("_b1"):
            out[f"ms_{key}"] = value["ms_per_image"]
        else:
            out[f"img_s_{key}"] = value["images_per_s"]
    return out


def add_deploy_columns(comparison: Table, s: Study, out_dir: Path) -> Table:
    """Append the deploy columns to comparison's CSV; return the compact console table."""
    measured = measure_rows(s, out_dir)
    keys: list[str] = []
    for row in measured:
        keys += [k for k in (row or {}) if k not in keys]
    comparison.csv_columns += keys
    for csv_row, row in zip(comparison.csv_rows, measured):
        csv_row.update({k: (row or {}).get(k, "") for k in keys})
    # Eight columns, the model and how it was trained in one: 80 console columns hold them.
    columns = ["model", "MFLOPs", "KB", "KB int8", "acc int8", "pt ms", "ort ms", "int8 ms"]
    rows = []
    for csv_row, row in zip(comparison.csv_rows, measured):
        row = row or {}

        def get(key, fmt, scale=1.0):
            return fmt.format(row[key] * scale) if key in row else "n/a"
        rows.append([f"{csv_row['model']} {csv_row['trained_as']}", get("flops", "{:.3f}", 1e-6),
                     get("onnx_fp32_kb", "{:.1f}"), get("onnx_int8_kb", "{:.1f}"), get("acc_int8", "{:.2f}"),
                     get("ms_torch_1t_b1", "{:.3f}"), get("ms_onnxruntime_1t_b1", "{:.3f}"),
                     get("ms_onnxruntime_int8_1t_b1", "{:.3f}")])
    notes = ["Batch 1, one CPU thread: pt = PyTorch eager, ort = onnxruntime fp32, int8 = onnxruntime int8 (QDQ, "
             "calibrated on 512 training images; a QAT student: over the ranges it trained with). KB = ONNX file "
             "size (fp32, int8). acc int8 = mean over the group's seeds. Batch 64 images/s and all-thread figures "
             "are in comparison.csv. Unstructured sparsity does not make dense kernels faster: a pruned model's "
             "latency and file size drop only with channel pruning.",
             "FLOPs: torch.utils.flop_counter, 2 per multiply-add, one image."]
    return Table("deployment", columns, rows, [], [], notes)
