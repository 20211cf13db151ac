"""`make bench`: how close distillation with kdrun comes to the cost of training the student alone.

Measured on this machine, in one run, on synthetic data with CIFAR shapes (so it runs offline):
  (a) KD step time / student-only step time, live and with a warm teacher-output cache
  (b) a 5-point temperature sweep's total time / 5 student-only runs of the same length
  (c) kdrun's KD epoch against a plain PyTorch loop doing the same work with a torchvision
      DataLoader and per-sample transforms, as in the classic tutorials
  (d) batch augmentation throughput against torchvision's per-sample transforms
  (e) the process's peak memory
  (f) int8 onnxruntime against fp32 PyTorch eager, batch 1, one thread (bench/int8_bench.py)
plus the device options (memory format, precision, compile) on one student step.

Runs are real kdrun runs (run_experiment, as the CLI calls it), each teacher trained first into kdrun's
teacher cache (not timed), as a sweep finds it. A run's step time is its epoch's training time
(metrics.jsonl "seconds", evaluation excluded) over its steps. The first epoch of every run, and a whole
run before any of them, are warm-ups; every number is a median over repetitions. Student-only runs
alternate with the sweep's jobs, so that a change in the machine's load weighs on both alike.
Prints a table and writes bench.json. `--tiny` runs every part at toy sizes in seconds (the test suite
does; its timings mean nothing).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_module
from rich.table import Table

from int8_bench import int8_vs_fp32, print_int8  # bench/int8_bench.py: part (f)
from kdrun.console import console, results
from kdrun.sources.data import BatchAugment, load_dataset, num_batches
from kdrun.sources.models import build_model
from kdrun.run import run_experiment
from kdrun.runtime import Runtime, resolve_runtime

TARGETS = {"a_warm": 1.10, "b_over_teacher_pass": 1.15, "c_cpu": 1.0, "c_gpu": 3.0, "d": 20.0}


@dataclass(frozen=True)
class Settings:
    pairs: tuple[tuple[str, str], ...]  # (teacher, student)
    train_size: int
    test_size: int
    batch_size: int
    epochs: int  # per run, the first a warm-up
    students: int  # student-only runs, one per seed
    temperatures: tuple[float, ...]  # the sweep
    plain_epochs: int  # plain-loop epochs, the first a warm-up
    augment_images: int
    reps: int  # repetitions of the micro-benchmarks (augmentation, device options)


FULL = Settings(pairs=(("resnet56", "resnet20"), ("cnn_teacher", "cnn_student")), train_size=1536, test_size=256,
                batch_size=128, epochs=4, students=5, temperatures=(1, 2, 4, 8, 16), plain_epochs=3,
                augment_images=2048, reps=5)
TINY = Settings(pairs=(("cnn_teacher", "cnn_student"),), train_size=32, test_size=16, batch_size=16, epochs=2,
                students=1, temperatures=(1, 4), plain_epochs=2, augment_images=32, reps=1)

ALPHA, BETA = 0.1, 0.9  # kdrun's defaults, used by the plain loop too


@dataclass
class Run:
    wall_s: float  # the whole run_experiment call: data, models, training, evaluation, files
    step_s: list[float]  # per timed epoch (the first epoch left out): training seconds / steps
    epoch_s: list[float]  # per timed epoch: training seconds
    summary: dict


def median(values) -> float:
    return statistics.median(values)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KB on Linux


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


class Bench:
    def __init__(self, settings: Settings, root: Path):
        self.s, self.root = settings, root
        self.memory: dict[str, float] = {}
        self.runtime = resolve_runtime(self.compose().device)

    def compose(self, *overrides: str):
        s = self.s
        # teacher.epochs=1 and a gentle lr: the teacher's training is setup, and no run may diverge
        common = ["dataset=synthetic", f"dataset.train_size={s.train_size}", f"dataset.test_size={s.test_size}",
                  f"batch_size={s.batch_size}", f"epochs={s.epochs}", "teacher.epochs=1", "optim.lr=0.01",
                  "trainer.progress=false", f"paths.outputs={self.root}"]
        with initialize_config_module(config_module="kdrun.conf", version_base="1.3"):
            return compose(config_name="config", overrides=[*common, *overrides])

    def run(self, name: str, *overrides: str) -> Run:
        cfg = self.compose(*overrides)
        run_dir = self.root / "runs" / name
        start = time.perf_counter()
        summary = run_experiment(cfg, run_dir)
        wall = time.perf_counter() - start
        records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()][1:]
        steps = num_batches(self.s.train_size, self.s.batch_size, drop_last=self.s.train_size > self.s.batch_size)
        return Run(wall, [r["seconds"] / steps for r in records], [r["seconds"] for r in records], summary)

    def train_teacher(self, *overrides: str) -> None:
        """Put the teacher in kdrun's teacher cache (teacher.epochs=1: what it knows does not change what
        it costs), as a sweep finds it after its first run; not timed."""
        from kdrun.teachers.resolve import resolve_teacher

        cfg = self.compose(*overrides)
        data = load_dataset(cfg.dataset, self.runtime.device)
        augment = BatchAugment(cfg.dataset.augment.crop_padding, cfg.dataset.augment.hflip, data.mean, data.std)
        resolve_teacher(cfg, data, augment, self.runtime)

    # ---- (a), (b) and kdrun's side of (c) ---------------------------------------------------------

    def pair(self, teacher: str, student: str) -> dict:
        s = self.s
        kd = ["strategy=kd", f"teacher={teacher}", f"student={student}"]
        self.train_teacher(*kd)
        # Student-only runs alternate with the sweep's jobs, and live KD runs come before and after them,
        # so that a machine getting busier or quieter meanwhile weighs on every side alike.
        live = [self.run(f"{teacher}_{student}_live_first", *kd, "teacher.cache=false")]
        students, sweep = [], []
        for i in range(max(s.students, len(s.temperatures))):
            if i < s.students:
                students.append(self.run(f"{student}_alone_seed{i}", "strategy=scratch", f"student={student}",
                                         f"seed={i}"))
            if i < len(s.temperatures):
                sweep.append(self.run(f"{teacher}_{student}_T{s.temperatures[i]}", *kd, f"T={s.temperatures[i]}"))
        live.append(self.run(f"{teacher}_{student}_live_last", *kd, "teacher.cache=false"))
        self.memory[f"after {teacher}->{student} runs"] = peak_rss_mb()

        student_step = median(x for r in students for x in r.step_s)
        live_step = median(x for r in live for x in r.step_s)
        live_epoch = median(x for r in live for x in r.epoch_s)
        warm_epoch = median(x for r in sweep[1:] for x in r.epoch_s)
        cold_step = median(sweep[0].step_s)
        warm_step = median(x for r in sweep[1:] for x in r.step_s)
        steps = num_batches(s.train_size, s.batch_size, drop_last=s.train_size > s.batch_size)
        students_s = sum(r.wall_s for r in students[: len(sweep)])
        if len(students) < len(sweep):  # tiny mode: as many student runs as sweep points, at the median
            students_s = median(r.wall_s for r in students) * len(sweep)
        sweep_s = sum(r.wall_s for r in sweep)
        # One teacher pass: what running the teacher on every view of a run adds, from every run that did
        # (the live ones and the sweep's recording job).
        teacher_step = median(x for r in [*live, sweep[0]] for x in r.step_s)
        teacher_pass_s = max(0.0, teacher_step - student_step) * steps * s.epochs
        plain = self.plain_loop(teacher, student)
        return {
            "teacher": teacher, "student": student, "steps_per_epoch": steps,
            "student_step_ms": 1000 * student_step,
            "kd_live_step_ms": 1000 * live_step,
            "kd_recording_step_ms": 1000 * cold_step,
            "kd_warm_cache_step_ms": 1000 * warm_step,
            "a_live": live_step / student_step,
            "a_recording": cold_step / student_step,
            "a_warm_cache": warm_step / student_step,
            "b_sweep_s": sweep_s, "b_students_s": students_s, "b_teacher_pass_s": teacher_pass_s,
            "b_ratio": sweep_s / students_s,
            "b_target": TARGETS["b_over_teacher_pass"] + teacher_pass_s / students_s,
            "b_sweep_jobs": [{"T": T, "wall_s": r.wall_s, "recorded_epochs": r.summary.get("teacher_cache_recorded"),
                              "cache_hit_epochs": r.summary.get("teacher_cache_hits")}
                             for T, r in zip(s.temperatures, sweep)],
            "c_plain_epoch_s": median(plain),
            "c_kdrun_live_epoch_s": live_epoch,
            "c_kdrun_warm_cache_epoch_s": warm_epoch,
            "c_speedup_live": median(plain) / live_epoch,
            "c_speedup_warm_cache": median(plain) / warm_epoch,
        }

    # ---- (c) the plain loop -------------------------------------------------------------------------

    def plain_loop(self, teacher_arch: str, student_arch: str) -> list[float]:
        """Seconds per epoch (the first left out) of KD as the classic tutorials write it: a torchvision
        DataLoader over PIL images with per-sample transforms and 2 workers, copying each batch to the
        device. The same models, data, batch size, optimiser, T, alpha, beta and autocast as kdrun."""
        from torch.utils.data import DataLoader

        s, runtime = self.s, self.runtime
        cfg = self.compose()
        data = load_dataset(cfg.dataset, "cpu")
        dataset = PerSampleDataset(data.train_x, data.train_y, classic_transform(data.mean, data.std))
        loader = DataLoader(dataset, batch_size=s.batch_size, shuffle=True, num_workers=2, drop_last=True)
        torch.manual_seed(0)
        teacher = build_model(teacher_arch, 3, 32, 10).to(runtime.device).eval()
        student = build_model(student_arch, 3, 32, 10).to(runtime.device)
        optimizer = torch.optim.SGD(student.parameters(), lr=cfg.optim.lr, momentum=cfg.optim.momentum,
                                    weight_decay=cfg.optim.weight_decay)
        T = cfg.loss.terms.kd.T
        dtype = runtime.autocast_dtype
        times = []
        for _ in range(s.plain_epochs):
            sync(runtime.device)
            start = time.perf_counter()
            for x, y in loader:
                x, y = x.to(runtime.device), y.to(runtime.device)
                with torch.autocast(runtime.device.type, dtype=dtype, enabled=dtype is not None):
                    with torch.no_grad():
                        t = teacher(x)
                    out = student(x)
                    loss = ALPHA * F.cross_entropy(out.float(), y) + BETA * T * T * F.kl_div(
                        F.log_softmax(out.float() / T, dim=1), F.softmax(t.float() / T, dim=1), reduction="batchmean")
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            sync(runtime.device)
            times.append(time.perf_counter() - start)
        return times[1:]

    # ---- (d) augmentation -----------------------------------------------------------------------------

    def augmentation(self) -> dict:
        s, device = self.s, self.runtime.device
        data = load_dataset(self.compose().dataset, "cpu")
        n = min(s.augment_images, len(data.train_y))
        x = data.train_x[:n]
        batch = 512 if n >= 512 else n
        augment = BatchAugment(4, True, data.mean, data.std)
        x_device = x.to(device)
        generator = torch.Generator(device=device).manual_seed(0)

        def batched():
            for i in range(0, n, batch):
                augment(x_device[i:i + batch], generator, train=True)
            sync(device)

        from torchvision.transforms import v2

        classic = PerSampleDataset(x, data.train_y, classic_transform(data.mean, data.std))
        tensors = v2.Compose([v2.RandomCrop(32, padding=4), v2.RandomHorizontalFlip(),
                              v2.ToDtype(torch.float32, scale=True), v2.Normalize(data.mean, data.std)])
        per_sample_n = min(n, 512)

        def per_sample_pil():
            torch.stack([classic[i][0] for i in range(per_sample_n)])

        def per_sample_tensor():
            torch.stack([tensors(x[i]) for i in range(per_sample_n)])

        rates = {
            "kdrun_batch": n / timed(batched, s.reps),
            "torchvision_pil": per_sample_n / timed(per_sample_pil, s.reps),
            "torchvision_v2_tensor": per_sample_n / timed(per_sample_tensor, s.reps),
        }
        return {"images_per_s": rates, "device": str(device), "batch": batch,
                "d_vs_pil": rates["kdrun_batch"] / rates["torchvision_pil"],
                "d_vs_v2_tensor": rates["kdrun_batch"] / rates["torchvision_v2_tensor"]}

    # ---- device options ---------------------------------------------------------------------------------

    def device_options(self, arch: str, compile_too: bool) -> dict:
        """Median time of one training step (forward, backward, SGD) of `arch` under each option."""
        s, device = self.s, self.runtime.device
        data = load_dataset(self.compose().dataset, device)
        augment = BatchAugment(4, True, data.mean, data.std)
        x = augment(data.train_x[:s.batch_size], None, train=False)
        y = data.train_y[:s.batch_size]
        options = [("fp32", False, False), ("fp32", True, False), ("bf16", True, False)]
        if compile_too:
            options.append(("fp32", True, True))
        results = {}
        for precision, channels_last, compiled in options:
            runtime = Runtime(device, precision, channels_last, compiled)
            torch.manual_seed(0)
            model = runtime.prepare(build_model(arch, 3, 32, 10))
            optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
            inputs = x.contiguous(memory_format=torch.channels_last) if channels_last else x

            def step():
                with runtime.autocast():
                    loss = F.cross_entropy(model(inputs).float(), y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                sync(device)

            start = time.perf_counter()
            step()  # warm-up (and compilation)
            first_s = time.perf_counter() - start
            name = f"{precision}{' channels_last' if channels_last else ''}{' compile' if compiled else ''}"
            results[name] = {"step_ms": 1000 * timed(step, s.reps), "first_step_s": first_s}
        return {"arch": arch, "batch_size": s.batch_size, "options": results}


class PerSampleDataset(torch.utils.data.Dataset):
    """CIFAR as torchvision holds it: HWC uint8 arrays, a PIL image per item, then the transform."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, transform):
        self.images = x.permute(0, 2, 3, 1).contiguous().numpy()
        self.labels = y.tolist()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        from PIL import Image

        return self.transform(Image.fromarray(self.images[i])), self.labels[i]


def classic_transform(mean, std):
    from torchvision import transforms

    return transforms.Compose([transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(),
                               transforms.ToTensor(), transforms.Normalize(mean, std)])


def timed(fn, reps: int) -> float:
    """Median seconds of `reps` calls, after one warm-up call."""
    fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return median(times)


def machine() -> dict:
    model = platform.processor()
    try:
        model = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                     if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    info = {"cpu": model, "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(), "load_avg_start": os.getloadavg()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def print_tables(result: dict) -> None:
    gpu = result["device"].startswith("cuda")
    table = Table(title=f"kdrun bench ({result['device']}, {result['precision']}"
                        f"{', channels_last' if result['channels_last'] else ''}; {result['settings_name']})")
    for column in ("measure", *(f"{p['teacher']} -> {p['student']}" for p in result["pairs"]), "target"):
        table.add_column(column, justify="left" if column == "measure" else "right")

    def row(label: str, key: str, fmt: str, target: str = "") -> None:
        table.add_row(label, *(format(p[key], fmt) for p in result["pairs"]), target)

    row("student-only step (ms)", "student_step_ms", ".1f")
    row("KD step, live (ms)", "kd_live_step_ms", ".1f")
    row("KD step, warm cache (ms)", "kd_warm_cache_step_ms", ".1f")
    row("(a) KD / student, live", "a_live", ".3f")
    row("(a) KD / student, recording the cache", "a_recording", ".3f")
    row("(a) KD / student, warm cache", "a_warm_cache", ".3f", f"<= {TARGETS['a_warm']:.2f}")
    row("(b) T sweep / student runs", "b_ratio", ".3f", "<= target below")
    row("(b) target: 1.15 + teacher pass", "b_target", ".3f")
    row("(b) one teacher pass (s)", "b_teacher_pass_s", ".1f")
    row("(b) sweep total (s)", "b_sweep_s", ".1f")
    row("(b) student runs total (s)", "b_students_s", ".1f")
    row("(c) plain-loop KD epoch (s)", "c_plain_epoch_s", ".2f")
    row("(c) kdrun KD epoch, live (s)", "c_kdrun_live_epoch_s", ".2f")
    row("(c) speed-up over plain, live", "c_speedup_live", ".2f", f">= {TARGETS['c_gpu' if gpu else 'c_cpu']:.1f}")
    row("(c) speed-up over plain, warm cache", "c_speedup_warm_cache", ".2f")
    results.print(table)

    aug = result["augmentation"]
    other = Table(title="augmentation, memory, device options")
    other.add_column("measure")
    other.add_column("value", justify="right")
    other.add_column("target", justify="right")
    rates = aug["images_per_s"]
    other.add_row(f"kdrun batch augmentation ({aug['device']}, img/s)", f"{rates['kdrun_batch']:,.0f}", "")
    other.add_row("torchvision per-sample, PIL (img/s)", f"{rates['torchvision_pil']:,.0f}", "")
    other.add_row("torchvision per-sample, v2 on tensors (img/s)", f"{rates['torchvision_v2_tensor']:,.0f}", "")
    other.add_row("(d) batch / per-sample PIL", f"{aug['d_vs_pil']:.1f}x", f">= {TARGETS['d']:.0f}x")
    other.add_row("(d) batch / per-sample v2 tensors", f"{aug['d_vs_v2_tensor']:.1f}x", "")
    for phase, mb in result["peak_rss_mb"].items():
        other.add_row(f"(e) peak RSS {phase} (MB)", f"{mb:,.0f}", "")
    if "cuda_peak_allocated_mb" in result:
        other.add_row("(e) peak CUDA memory allocated (MB)", f"{result['cuda_peak_allocated_mb']:,.0f}", "")
    options = result["device_options"]
    for name, o in options["options"].items():
        other.add_row(f"{options['arch']} step, {name} (ms)", f"{o['step_ms']:.1f}",
                      f"first {o['first_step_s']:.1f} s")
    other.add_row("bench wall time (s)", f"{result['wall_s']:.0f}", "< 600")
    other.add_row("load average at start / end", f"{result['machine']['load_avg_start'][0]:.2f} / "
                  f"{result['machine']['load_avg_end'][0]:.2f}", "")
    results.print(other)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="toy sizes: checks that it runs, timings mean nothing")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile (minutes on a CPU)")
    parser.add_argument("--out", default="bench.json", help="where to write the results (default: bench.json)")
    args = parser.parse_args(argv)
    settings = TINY if args.tiny else FULL
    start = time.perf_counter()
    info = machine()
    with tempfile.TemporaryDirectory(prefix="kdrun-bench-") as tmp:
        bench = Bench(settings, Path(tmp))
        runtime = bench.runtime
        console.print(f"kdrun bench: {'tiny' if args.tiny else 'full'} settings on {runtime.device} "
                      f"({runtime.precision}{', channels_last' if runtime.channels_last else ''}), "
                      f"{torch.get_num_threads()} threads, load average {info['load_avg_start'][0]:.2f}")
        quiet = console.quiet
        console.quiet = True  # the runs' own output
        try:
            first = settings.pairs[0]
            bench.run("warm_up", "strategy=scratch", f"student={first[1]}", "epochs=1")  # imports, kernels
            bench.memory["after warm-up run"] = peak_rss_mb()
            pairs = [bench.pair(teacher, student) for teacher, student in settings.pairs]
            augmentation = bench.augmentation()
            bench.memory["after augmentation"] = peak_rss_mb()
            options = bench.device_options(first[1], args.compile)
            int8 = int8_vs_fp32(Path(tmp), args.tiny)
        finally:
            console.quiet = quiet
    info["load_avg_end"] = os.getloadavg()
    result = {
        "settings_name": "tiny" if args.tiny else "full",
        "settings": asdict(settings),
        "machine": info,
        "device": str(runtime.device),
        "precision": runtime.precision,
        "channels_last": runtime.channels_last,
        "targets": TARGETS,
        "pairs": pairs,
        "augmentation": augmentation,
        "device_options": options,
        "int8": int8,
        "peak_rss_mb": {**bench.memory, "whole process": peak_rss_mb(),
                        "DataLoader workers (largest)": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024},
        "wall_s": time.perf_counter() - start,
    }
    if runtime.device.type == "cuda":
        result["cuda_peak_allocated_mb"] = torch.cuda.max_memory_allocated() / 2**20
    print_tables(result)
    print_int8(int8)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    console.print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
