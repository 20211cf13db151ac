"""`make bench-peer`: kdrun against torchdistill 1.1.5 on the same job and the same pixels.

The job (bench/peer/kdrun_conf/experiment/peer.yaml and torchdistill_{kd,student}.yaml say it in each
tool's words): resnet56 -> resnet20 on Fashion-MNIST written in CIFAR-10's layout (fashion_cifar.py),
batch 128, SGD lr 0.1 constant, RandomCrop(32, 4) + flip, one epoch per job, then the test split. Each
repetition runs, as whole processes timed from outside, in an order that alternates between the tools:
  - the 5-point temperature sweep (T = 1, 2, 4, 8, 16): `kdrun -m ... T=1,2,4,8,16` (its teacher-output
    cache fresh each time: the first job records, the others read), and torchdistill_job.py with the same
    five temperatures in one process (the peer too pays its start-up once per sweep);
  - one student-only run: `kdrun ... strategy=scratch`, and torchdistill_job.py with the CE-only config.
Both tools get the same teacher: resnet56 trained by kdrun first (not timed), its weights renamed to
torchdistill's keys and checked to give the same logits. Same thread count for both (OMP_NUM_THREADS).
Prints the medians, the ratios (torchdistill / kdrun: above 1 is kdrun faster) and each run's test
accuracy, and writes a JSON file (bench/results/peer.json by default) with the machine's load beside
every figure. torchdistill lives in its own environment, bench/.peer-venv (`make bench-peer-env`).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from rich.table import Table

from fashion_cifar import write_dataset  # bench/peer/fashion_cifar.py
from kdrun.sources.checkpoint import load_checkpoint
from kdrun.console import console
from kdrun.io import atomic_write_json
from kdrun.sources.models import build_model

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
PEER_VENV = REPO / "bench" / ".peer-venv"
KDRUN = [sys.executable, "-m", "kdrun"]
TEMPERATURES = (1, 2, 4, 8, 16)
FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


def torchdistill_keys(state_dict: dict) -> dict:
    """kdrun's CIFAR ResNet parameter names -> torchdistill's ResNet4Cifar's (the same layers)."""
    renamed = {}
    for key, value in state_dict.items():
        key = re.sub(r"^stem\.0\.", "conv1.", key)
        key = re.sub(r"^stem\.1\.", "bn1.", key)
        key = re.sub(r"^stages\.(\d+)\.", lambda m: f"layer{int(m.group(1)) + 1}.", key)
        renamed[key.replace(".shortcut.", ".downsample.")] = value
    return renamed


def load_avg() -> float:
    return round(os.getloadavg()[0], 2)


def timed(command: list[str], cwd: Path, env: dict) -> dict:
    """Run a whole process; its wall time and the load average (1 min) before and after."""
    before = load_avg()
    start = time.perf_counter()
    proc = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed (rc={proc.returncode}):\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}")
    return {"wall_s": round(wall, 3), "load_before": before, "load_after": load_avg()}


class PeerBench:
    def __init__(self, work: Path, args: argparse.Namespace):
        self.work, self.args = work, args
        self.env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads),
                    "COLUMNS": "120"}
        self.kdrun_common = [f"hydra.searchpath=[file://{HERE / 'kdrun_conf'}]", "experiment=peer"]

    def kdrun(self, *overrides: str, multirun: bool = False) -> list[str]:
        return [*KDRUN, *(["-m"] if multirun else []), *self.kdrun_common, *overrides]

    def torchdistill(self, config: str, out: Path, *extra: str) -> list[str]:
        return [str(PEER_VENV / "bin" / "python"), str(HERE / "torchdistill_job.py"), "--config", str(HERE / config),
                "--out", str(out), *extra]

    def teacher(self) -> tuple[Path, Path, float]:
        """resnet56 trained by kdrun (not timed); its checkpoint and the same weights under torchdistill's names."""
        run = self.work / "teacher"
        timed(self.kdrun("strategy=scratch", "student=resnet56", f"epochs={self.args.teacher_epochs}",
                         f"paths.outputs={self.work / 'teacher_outputs_unused'}", f"hydra.run.dir={run}"),
              self.work, self.env)
        checkpoint = run / "checkpoints" / "last.pt"
        payload = load_checkpoint(checkpoint)
        peer = self.work / "teacher_torchdistill.pt"
        torch.save(torchdistill_keys(payload["state_dict"]), peer)
        # What the peer's teacher must answer on a few inputs, checked there (torchdistill_job.py --teacher-check).
        model = build_model("resnet56", 3, 32, 10)
        model.load_state_dict(payload["state_dict"])
        inputs = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            torch.save({"inputs": inputs, "logits": model.eval()(inputs)}, self.work / "teacher_check.pt")
        return checkpoint, peer, float(payload.get("test_acc") or 0.0)

    def kdrun_sweep(self, rep: int, teacher: Path) -> dict:
        folder = self.work / f"rep{rep}" / "kdrun_sweep"
        temps = ",".join(str(t) for t in self.args.temperatures)
        timing = timed(self.kdrun(f"T={temps}", f"teacher.checkpoint={teacher}", f"paths.outputs={folder / 'outputs'}",
                                  f"hydra.sweep.dir={folder / 'sweep'}", *self.args.kdrun_extra, multirun=True),
                       self.work, self.env)
        jobs = sorted(p for p in (folder / "sweep").iterdir() if (p / "metrics.json").is_file())
        return {**timing, "test_acc": [read_acc(p) for p in jobs]}

    def kdrun_student(self, rep: int) -> dict:
        run = self.work / f"rep{rep}" / "kdrun_student"
        timing = timed(self.kdrun("strategy=scratch", f"paths.outputs={run.parent / 'kdrun_student_outputs'}",
                                  f"hydra.run.dir={run}", *self.args.kdrun_extra), self.work, self.env)
        return {**timing, "test_acc": [read_acc(run)]}

    def torchdistill_sweep(self, rep: int, teacher: Path) -> dict:
        out = self.work / f"rep{rep}" / "torchdistill_sweep" / "jobs.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        timing = timed(self.torchdistill("torchdistill_kd.yaml", out, "--teacher", str(teacher),
                                         "--teacher-check", str(self.work / "teacher_check.pt"),
                                         "--T", *map(str, self.args.temperatures), *self.args.peer_extra),
                       self.work, self.env)
        return {**timing, **peer_jobs(out)}

    def torchdistill_student(self, rep: int) -> dict:
        out = self.work / f"rep{rep}" / "torchdistill_student" / "jobs.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        timing = timed(self.torchdistill("torchdistill_student.yaml", out, *self.args.peer_extra), self.work, self.env)
        return {**timing, **peer_jobs(out)}


def read_acc(run_dir: Path) -> float:
    return json.loads((run_dir / "metrics.json").read_text())["final_test_acc"]


def peer_jobs(out: Path) -> dict:
    result = json.loads(out.read_text())
    return {"test_acc": [job["test_acc"] for job in result["jobs"]], "threads": result["threads"]}


def median(values) -> float:
    return round(statistics.median(values), 3)


def summary(runs: list[dict]) -> dict:
    return {"median_s": median(r["wall_s"] for r in runs), "runs": runs}


def check_environment(args: argparse.Namespace) -> str | None:
    if not (Path(args.source) / "train-images-idx3-ubyte.gz").is_file() and \
            not (Path(args.source) / "train-images-idx3-ubyte").is_file():
        return (f"bench-peer: no Fashion-MNIST in {args.source} (its IDX files); "
                "apt-get install dataset-fashion-mnist, or --source <folder>")
    if not args.kdrun_only and not (PEER_VENV / "bin" / "python").is_file():
        return f"bench-peer: no torchdistill environment at {PEER_VENV}; make bench-peer-env makes it"
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "peer.json"))
    parser.add_argument("--source", default=str(FASHION_MNIST), help="Fashion-MNIST's IDX files")
    parser.add_argument("--train-size", type=int, default=640)
    parser.add_argument("--test-size", type=int, default=320)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--teacher-epochs", type=int, default=2)
    parser.add_argument("--temperatures", type=float, nargs="+", default=list(TEMPERATURES))
    parser.add_argument("--tiny", action="store_true",
                        help="a few steps per job on a few hundred images, one repetition: checks the job runs "
                             "in both tools (the tests do); its timings mean nothing")
    parser.add_argument("--kdrun-only", action="store_true", help="kdrun's side alone (no torchdistill environment)")
    args = parser.parse_args(argv)
    if args.tiny:
        args.train_size, args.test_size, args.reps, args.teacher_epochs = 256, 128, 1, 1
        args.temperatures = [1.0, 4.0]
    args.kdrun_extra, args.peer_extra = [], []
    problem = check_environment(args)
    if problem:
        print(problem, file=sys.stderr)
        return 2
    started = time.perf_counter()
    machine = {"cpu": cpu_name(), "cpu_count": os.cpu_count(), "threads": args.threads, "torch": torch.__version__,
               "load_avg_start": load_avg()}
    work = Path(tempfile.mkdtemp(prefix="kdrun-bench-peer-"))
    try:
        bench = PeerBench(work, args)
        write_dataset(args.source, work / "data", args.train_size, args.test_size)
        console.print(f"bench-peer: {args.train_size} training and {args.test_size} test images, "
                      f"{args.threads} threads, {args.reps} repetitions, load average {machine['load_avg_start']}")
        teacher, peer_teacher, teacher_acc = bench.teacher()
        runs = {"kdrun_sweep": [], "torchdistill_sweep": [], "kdrun_student": [], "torchdistill_student": []}
        for rep in range(args.reps):
            # Alternate which tool goes first, so that a machine getting busier weighs on both alike.
            order = ["kdrun", "torchdistill"] if rep % 2 == 0 else ["torchdistill", "kdrun"]
            for kind in ("sweep", "student"):
                for tool in order:
                    if tool == "torchdistill" and args.kdrun_only:
                        continue
                    if kind == "sweep":
                        run = (bench.kdrun_sweep(rep, teacher) if tool == "kdrun"
                               else bench.torchdistill_sweep(rep, peer_teacher))
                    else:
                        run = bench.kdrun_student(rep) if tool == "kdrun" else bench.torchdistill_student(rep)
                    runs[f"{tool}_{kind}"].append(run)
                    console.print(f"  rep {rep + 1} {tool} {kind}: {run['wall_s']:.1f} s, "
                                  f"test acc {', '.join(f'{a:.1f}' for a in run['test_acc'])}, "
                                  f"load {run['load_before']} -> {run['load_after']}")
            # Each finished repetition is written: a bench stopped early keeps what it measured.
            atomic_write_json(args.out, results(args, machine, runs, teacher_acc, rep + 1, started))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result = results(args, machine, runs, teacher_acc, args.reps, started)
    print_table(result)
    atomic_write_json(args.out, result)
    console.print(f"wrote {args.out}")
    return 0


def results(args: argparse.Namespace, machine: dict, runs: dict, teacher_acc: float, reps_done: int,
            started: float) -> dict:
    result = {
        "settings_name": "tiny" if args.tiny else "full",
        "job": {"teacher": "resnet56", "student": "resnet20", "batch_size": 128, "lr": 0.1, "schedule": "constant",
                "epochs": 1, "temperatures": args.temperatures, "train_images": args.train_size,
                "test_images": args.test_size, "dataset": "Fashion-MNIST in CIFAR-10's layout (32x32x3)",
                "teacher_epochs": args.teacher_epochs, "teacher_test_acc": teacher_acc, "reps": args.reps,
                "reps_done": reps_done, "torchdistill_dataloader_workers": 2},
        "machine": {**machine, "load_avg_end": load_avg()},
        **{name: summary(r) for name, r in runs.items() if r},
    }
    if not args.kdrun_only:
        result["sweep_ratio"] = round(result["torchdistill_sweep"]["median_s"] / result["kdrun_sweep"]["median_s"], 3)
        result["student_ratio"] = round(
            result["torchdistill_student"]["median_s"] / result["kdrun_student"]["median_s"], 3)
    result["wall_s"] = round(time.perf_counter() - started, 1)
    return result


def cpu_name() -> str:
    try:
        return next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name"))
    except (OSError, StopIteration):
        return "unknown"


def print_table(result: dict) -> None:
    table = Table(title=f"kdrun against torchdistill: {result['job']['teacher']} -> {result['job']['student']}, "
                        f"{result['job']['train_images']} images, 1 epoch per job, {result['machine']['threads']} threads")
    for column in ("run", "kdrun (s)", "torchdistill (s)", "ratio", "kdrun test acc", "torchdistill test acc"):
        table.add_column(column, justify="left" if column == "run" else "right")

    def accuracies(name: str) -> str:
        runs = result.get(name, {}).get("runs", [])
        values = [a for r in runs for a in r["test_acc"]]
        return f"{statistics.mean(values):.1f} ({min(values):.1f}-{max(values):.1f})" if values else "-"

    for kind, label in (("sweep", f"{len(result['job']['temperatures'])}-point T sweep"), ("student", "student only")):
        kd, peer = result.get(f"kdrun_{kind}"), result.get(f"torchdistill_{kind}")
        ratio = result.get(f"{kind}_ratio")
        table.add_row(label, f"{kd['median_s']:.1f}", f"{peer['median_s']:.1f}" if peer else "-",
                      f"{ratio:.2f}x" if ratio else "-", accuracies(f"kdrun_{kind}"), accuracies(f"torchdistill_{kind}"))
    console.print(table)
    machine = result["machine"]
    console.print(f"medians of {result['job']['reps_done']} repetitions, whole processes; ratio = torchdistill / kdrun; "
                  f"load average {machine['load_avg_start']} at the start, {machine['load_avg_end']} at the end "
                  f"({machine['cpu_count']} CPUs: {machine['cpu']})")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
