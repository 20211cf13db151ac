"""`bench/gpu_check.sh`: what a lent CUDA GPU should tell us, in one go (< 8 minutes on one device).

Steps, each a whole process with its own time limit; a step that fails or runs out of time is recorded as
such and the others still run:
  cuda_tests   the tests marked `cuda` (pytest -m cuda)
  kd_matrix    a KD epoch of resnet56 -> resnet20 on a CIFAR-size synthetic tensor set (kdrun, live teacher),
               in fp32, bf16 and fp16, with and without channels_last, and device.compile with channels_last;
               each run's second epoch is the timed one (the first warms up and compiles)
  bench        `make bench`'s bench/bench.py on the device: the cached-teacher ratios, images/s
  reproduce    a one-epoch CIFAR-100-shaped smoke run: make reproduce-cifar100 PAIRS=resnet56_resnet20 REPRO_SMOKE=1
  torchrun     a world-size-1 run through torchrun (NCCL on a GPU)
Writes bench/results/gpu.json. `--device cpu --tiny` runs the CPU-safe parts (the matrix in fp32 on a few
images, torchrun on gloo) in seconds, for the tests; its timings mean nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from kdrun.io import atomic_write_json

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable


def kd_cells(device: str, tiny: bool) -> list[dict]:
    if tiny:
        return [{"precision": "fp32", "channels_last": cl, "compile": False} for cl in (False, True)]
    cells = [{"precision": p, "channels_last": cl, "compile": False} for p in ("fp32", "bf16", "fp16")
             for cl in (False, True)]
    return cells + [{"precision": p, "channels_last": True, "compile": True} for p in ("fp32", "bf16", "fp16")]


def run_step(command: list[str], timeout: int, cwd: Path = REPO) -> dict:
    start = time.perf_counter()
    try:
        proc = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout)
        outcome = {"rc": proc.returncode, "tail": (proc.stdout + proc.stderr)[-1500:] if proc.returncode else ""}
    except subprocess.TimeoutExpired:
        outcome = {"rc": None, "tail": f"timed out after {timeout} s"}
    return {"command": " ".join(command), "wall_s": round(time.perf_counter() - start, 2), **outcome}


def kd_matrix(device: str, tiny: bool, work: Path, budget_s: int) -> list[dict]:
    size = ["dataset.train_size=64", "dataset.test_size=32", "batch_size=32"] if tiny else \
        ["dataset.train_size=20000", "dataset.test_size=2000", "batch_size=128"]
    common = [PY, "-m", "kdrun", "strategy=kd", "teacher=resnet56", "student=resnet20", "dataset=synthetic", *size,
              "epochs=2", "teacher.epochs=1", "teacher.cache=false", "optim.lr=0.01", "trainer.progress=false",
              f"device={'cuda' if device == 'cuda' else 'cpu'}", f"paths.outputs={work / 'outputs'}"]
    results, deadline = [], time.perf_counter() + budget_s
    for i, cell in enumerate(kd_cells(device, tiny)):
        left = int(deadline - time.perf_counter())
        if left < 10:
            results.append({**cell, "skipped": "out of the step's time"})
            continue
        run_dir = work / f"kd_{i}"
        step = run_step([*common, f"device.precision={cell['precision']}",
                         f"device.channels_last={str(cell['channels_last']).lower()}",
                         f"device.compile={str(cell['compile']).lower()}", f"hydra.run.dir={run_dir}"], left)
        record = {**cell, "wall_s": step["wall_s"], "rc": step["rc"]}
        if step["rc"] == 0:
            epochs = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
            timed = epochs[-1]
            record.update(epoch_s=timed["seconds"], images_per_s=timed["images_per_s"], test_acc=timed.get("test_acc"))
        else:
            record["error"] = step["tail"]
        results.append(record)
    return results


def bench_summary(path: Path) -> dict:
    """The device's figures from bench.py's JSON: the cached-teacher ratios and images/s."""
    result = json.loads(path.read_text())
    pairs = {f"{p['teacher']}->{p['student']}": {
        "kd_warm_cache_over_student_step": p["a_warm_cache"], "kd_live_over_student_step": p["a_live"],
        "sweep_over_student_runs": p["b_ratio"],
        "images_per_s_warm_cache": 128 / (p["kd_warm_cache_step_ms"] / 1000),
        "speedup_over_plain_loop": p["c_speedup_live"]} for p in result["pairs"]}
    return {"pairs": pairs, "device_options": result["device_options"], "wall_s": result["wall_s"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "gpu.json"))
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--tiny", action="store_true", help="toy sizes (with --device cpu: the tests' check)")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_check: no CUDA device visible to torch (torch.cuda.is_available() is False); "
              "run it where a GPU is, or --device cpu --tiny for its CPU-safe parts", file=sys.stderr)
        return 2
    started = time.perf_counter()
    info = {"device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu", "torch": torch.__version__,
            "cuda": torch.version.cuda, "load_avg_start": os.getloadavg()[0], "tiny": args.tiny}
    steps: dict = {}
    with tempfile.TemporaryDirectory(prefix="kdrun-gpu-check-") as tmp:
        work = Path(tmp)
        if args.device == "cuda":
            steps["cuda_tests"] = run_step([PY, "-m", "pytest", "-m", "cuda", "-q", "-p", "no:cacheprovider"], 60)
        steps["kd_matrix"] = kd_matrix(args.device, args.tiny, work / "matrix", 400 if args.tiny else 170)
        if args.device == "cuda":
            bench_json = work / "bench.json"
            steps["bench"] = run_step([PY, "bench/bench.py", "--out", str(bench_json)], 110)
            if steps["bench"]["rc"] == 0:
                steps["bench"]["figures"] = bench_summary(bench_json)
            steps["reproduce"] = run_step(["make", "--no-print-directory", "reproduce-cifar100", "PAIRS=resnet56_resnet20",
                                           "REPRO_SMOKE=1", f"REPRO_OUT={work / 'reproduce'}"], 60)
        torchrun = [PY, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1", "-m", "kdrun",
                    "experiment=quickstart", "strategy=scratch", "epochs=1", "trainer.progress=false",
                    f"device={args.device}", f"paths.outputs={work / 'torchrun'}",
                    f"hydra.run.dir={work / 'torchrun' / 'run'}"]
        steps["torchrun"] = run_step(torchrun, 40 if args.device == "cuda" else 120)
        metrics = work / "torchrun" / "run" / "metrics.json"
        if metrics.is_file():
            facts = json.loads(metrics.read_text())
            steps["torchrun"]["world_size"] = facts.get("world_size")
            steps["torchrun"]["backend"] = "nccl" if args.device == "cuda" else "gloo"
    info["load_avg_end"] = os.getloadavg()[0]
    result = {"machine": info, "steps": steps, "wall_s": round(time.perf_counter() - started, 1)}
    atomic_write_json(args.out, result)
    failed = [name for name, step in steps.items() if isinstance(step, dict) and step.get("rc") != 0]
    failed += [f"kd_matrix {c['precision']}{' channels_last' if c['channels_last'] else ''}"
               f"{' compile' if c['compile'] else ''}" for c in steps["kd_matrix"] if c.get("rc") != 0]
    print(f"gpu_check: {len(steps)} steps in {result['wall_s']:.0f} s on {info['device']}; wrote {args.out}"
          + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
