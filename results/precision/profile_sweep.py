"""Where a sweep job's time goes beyond the student's forward and backward (issue 24, item 3).

Profiles two jobs of `make bench`'s 5-T sweep (synthetic CIFAR-shaped data, resnet56 -> resnet20, bench's
sizes), each with cProfile around run_experiment as the CLI calls it: a student-only job, and a KD job
whose teacher outputs are already cached (the sweep's jobs after its first). The teacher is trained and the
cache recorded first, not profiled. Also times the import of kdrun's run path in a fresh process.
    OMP_NUM_THREADS=1 .venv/bin/python results/precision/profile_sweep.py [--epochs 4]
Prints one table: seconds per part, cumulative (a part's callees are inside it).
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from hydra import compose, initialize_config_module

from kdrun.run import run_experiment

# (label, file suffix, function names joined by |): the sum of their cumulative times (none calls another).
PARTS = [
    ("whole job (run_experiment)", "kdrun/run.py", "run_experiment"),
    ("student fwd+bwd (trainer)", "kdrun/engine/trainer.py", "_forward_backward"),
    ("  of which teacher outputs", "kdrun/teachers/outputs/serve.py", "__call__"),
    ("optimiser step", "kdrun/engine/trainer.py", "optimiser_step"),
    ("data: load dataset", "kdrun/sources/data/datasets.py", "load_dataset"),
    ("data: batches + augment", "kdrun/sources/data/feed.py", "batches"),
    ("teacher: resolve (cache)", "kdrun/teachers/resolve.py", "resolve_teacher"),
    ("teacher outputs: open cache", "kdrun/teachers/outputs/serve.py", "build_teacher_outputs"),
    ("evaluation (per epoch)", "kdrun/engine/trainer.py", "end_epoch"),
    ("  of which test passes", "kdrun/engine/trainer.py", "evaluate_split|class_accuracy|class_counts"),
    ("  of which save_checkpoint", "kdrun/sources/checkpoint.py", "save_checkpoint"),
    ("final summary (per-class test)", "kdrun/engine/trainer.py", "summary"),
    ("checkpoint digests", "kdrun/config/resume.py", "checkpoint_digests"),
    ("learning-curve figure", "kdrun/report/plots.py", "plot_learning_curves"),
    ("logger", "kdrun/track/loggers.py", "build_logger"),
]


def cumulative(stats: pstats.Stats, suffix: str, name: str) -> float:
    names = name.split("|")
    return sum(v[3] for (file, _, func), v in stats.stats.items() if func in names and file.endswith(suffix))


def import_seconds() -> float:
    """A fresh interpreter importing what `kdrun` imports before a job runs (best of 3)."""
    code = "import time; t = time.perf_counter(); import kdrun.cli.main; print(time.perf_counter() - t)"
    return min(float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                    check=True).stdout) for _ in range(3))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--train-size", type=int, default=1536)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="kdrun_profile_"))
    common = ["dataset=synthetic", f"dataset.train_size={args.train_size}", "dataset.test_size=256",
              "batch_size=128", f"epochs={args.epochs}", "teacher.epochs=1", "optim.lr=0.01",
              "trainer.progress=false", f"paths.outputs={root}", "teacher=resnet56", "student=resnet20",
              "device=cpu", "device.precision=fp32"]  # as before auto chose bf16 on CPUs that have it

    def job(name: str, *overrides: str, profile: bool) -> tuple[float, pstats.Stats | None]:
        with initialize_config_module(config_module="kdrun.conf", version_base="1.3"):
            cfg = compose(config_name="config", overrides=[*common, *overrides])
        profiler = cProfile.Profile() if profile else None
        start = time.perf_counter()
        if profiler:
            profiler.enable()
        run_experiment(cfg, root / name)
        if profiler:
            profiler.disable()
        return time.perf_counter() - start, pstats.Stats(profiler) if profiler else None

    job("record", "strategy=kd", "T=1", profile=False)  # trains the teacher, records its outputs
    timed = {"student-only": job("student", "strategy=scratch", profile=True),
             "cached KD": job("kd", "strategy=kd", "T=4", profile=True)}
    print(f"{'part (s, cumulative)':32}" + "".join(f"{k:>14}" for k in timed))
    for label, suffix, name in PARTS:
        print(f"{label:32}" + "".join(f"{cumulative(s, suffix, name):14.2f}" for _, s in timed.values()))
    print(f"{'wall (profiled)':32}" + "".join(f"{w:14.2f}" for w, _ in timed.values()))
    print(f"{'import kdrun.cli.main (fresh process)':32}{import_seconds():14.2f}")


if __name__ == "__main__":
    main()
