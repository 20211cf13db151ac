"""`python -m kdrun.cli.reproduce`: the CIFAR-100 table of RepDistiller/CRD, mdistiller and later papers, pair by
pair and method by method.

For each pair (`experiment=cifar100_<pair>`) these targets, each a `kdrun -m` sweep in <out>/<pair>/<target>/:
  teacher   the teacher trained from scratch at lr 0.05 (RepDistiller train_teacher.py), seed 0
  scratch   the student from scratch, over the seeds
  <method>  for each of --methods, the student distilled from that teacher (its last.pt), over the seeds:
            `loss=<method>` (its preset's reference weights), `<m>+ls` with logit standardisation,
            `crd+kd` with KD added, `kd+dot` with optim=dot
Finished jobs are skipped on a rerun (resume=<sweep dir>). Then <out>/reproduction.md/.csv put
our numbers beside results/published/cifar100.csv (kdrun.report.published).

--smoke runs every target for a few steps on a tiny subset, with one seed: on CIFAR-100 if it
is on disk, else on synthetic data of its shape and class count (3x32x32, 100 classes).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from importlib import resources
from pathlib import Path

from kdrun.console import console, results
from kdrun.errors import KdrunError
from kdrun.io import atomic_write_text
from kdrun.report.published import cifar100_pairs, csv_text, markdown, read_published, table_rows

TEACHER_LR = 0.05  # RepDistiller train_teacher.py's default, for every teacher
SMOKE_SAMPLES = 32
SMOKE = ["epochs=1", "batch_size=16", "trainer.progress=false", "trainer.eval_batch_size=64"]
# The smoke's teacher: 20 steps at a small lr. Its eval-mode BatchNorm statistics settle (momentum 0.1: 12% of
# the initial running variance left) while the weights stay near their initialisation, so its stages have a
# trained teacher's scale. After 2 steps a resnet56 in eval mode outputs values ~1e4 from its last stage, and a
# term with an unnormalised loss on them (FT's paraphraser MSE) overflows at once.
SMOKE_TEACHER = ["epochs=10", "optim.lr=0.001"]
CIFAR100_FILES = "cifar-100-python"  # what torchvision unpacks under dataset.root


def smoke_overrides(data_root: Path) -> list[str]:
    if (data_root / CIFAR100_FILES).is_dir():
        data = [f"dataset.root={data_root}", f"dataset.limit_train={SMOKE_SAMPLES}", f"dataset.limit_test={SMOKE_SAMPLES}"]
    else:  # CIFAR-100's shape and class count, so every model and loss sees what it would
        data = ["dataset=synthetic", "dataset.num_classes=100", "dataset.image_size=32", "dataset.channels=3",
                f"dataset.train_size={SMOKE_SAMPLES}", f"dataset.test_size={SMOKE_SAMPLES}"]
    return SMOKE + data


def loss_presets() -> list[str]:
    """Every `loss=` preset kdrun ships that distils (ce trains on the labels alone)."""
    folder = resources.files("kdrun.conf").joinpath("loss")
    return sorted(p.name.removesuffix(".yaml") for p in folder.iterdir() if p.name.endswith(".yaml") and p.name != "ce.yaml")


def method_overrides(method: str) -> list[str]:
    """The kdrun overrides that train a method as the papers name it."""
    base, _, extra = method.partition("+")
    if base not in loss_presets() or extra not in ("", "ls", "kd", "dot"):
        allowed = loss_presets()
        raise KdrunError(f"unknown method {method!r}; allowed: {', '.join(allowed)}, each optionally +ls (logit "
                         f"standardisation), crd+kd and the like (+kd adds vanilla KD), kd+dot (optim=dot)")
    overrides = [f"loss={base}"]
    if extra == "ls":
        overrides.append("loss.standardize=true")
    elif extra == "kd":
        overrides.append("loss.terms.kd.weight=1")
    elif extra == "dot":
        overrides.append("optim=dot")
    return overrides


def has_init_stage(method: str) -> bool:
    """A preset whose term first trains alone for init_epochs (fsp, ab, ft: RepDistiller's 30 init epochs)."""
    preset = resources.files("kdrun.conf").joinpath("loss", f"{method.partition('+')[0]}.yaml")
    return "init_epochs" in preset.read_text()


def smoke_stage(method: str) -> list[str]:
    """A smoke run of a staged method: one init epoch, then one of the main training."""
    return ["epochs=2", f"loss.terms.{method.partition('+')[0]}.init_epochs=1"] if has_init_stage(method) else []


def target_commands(pair: str, teacher_arch: str, seeds: list[int], out: Path, extra: list[str],
                    methods: list[str], smoke: bool = False) -> dict[str, list[str]]:
    """target -> the `kdrun` arguments that run it."""
    seed_list = "seed=" + ",".join(map(str, seeds))
    teacher_ckpt = out / pair / "teacher" / "0" / "checkpoints" / "last.pt"
    specific = {
        "teacher": ["strategy=scratch", f"student={teacher_arch}", f"optim.lr={TEACHER_LR}", "seed=0"],
        "scratch": ["strategy=scratch", seed_list],
        **{m: [*method_overrides(m), f"teacher.checkpoint={teacher_ckpt}", seed_list] for m in methods},
    }
    commands = {}
    for target, args in specific.items():
        sweep_dir = out / pair / target
        resume = [f"resume={sweep_dir}"] if (sweep_dir / "multirun.yaml").is_file() else []
        stage = smoke_stage(target) if smoke and target in methods else []  # after the smoke's epochs=1
        stage += SMOKE_TEACHER if smoke and target == "teacher" else []
        commands[target] = ["-m", f"experiment=cifar100_{pair}", *args, *extra, *stage, f"hydra.sweep.dir={sweep_dir}",
                            *resume]
    return commands


def preset_teacher(pair: str) -> str:
    """The teacher architecture the pair's preset names; a pair without a preset is an error."""
    preset = resources.files("kdrun.conf").joinpath("experiment", f"cifar100_{pair}.yaml")
    if not preset.is_file():
        raise KdrunError(f"no preset experiment=cifar100_{pair} for pair {pair!r}")
    for line in preset.read_text().splitlines():
        if line.strip().startswith("- override /teacher:"):
            return line.split(":", 1)[1].strip()
    raise KdrunError(f"preset cifar100_{pair} names no teacher")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kdrun.cli.reproduce", description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", default="", help="space- or comma-separated pairs (default: every pair of --published)")
    parser.add_argument("--methods", default="kd dkd", help="space- or comma-separated methods (default: kd dkd)")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--out", default="outputs/reproduce/cifar100")
    parser.add_argument("--published", default="results/published/cifar100.csv")
    parser.add_argument("--data-root", default="data", help="where CIFAR-100 is (or is downloaded to)")
    parser.add_argument("--smoke", action="store_true", help="a few steps per target on a tiny subset, one seed")
    parser.add_argument("--report-only", action="store_true", help="only rebuild the tables from what ran")
    args = parser.parse_args(argv)
    try:
        published = read_published(args.published)
        known = cifar100_pairs(published)
        pairs = args.pairs.replace(",", " ").split() or known
        methods = args.methods.replace(",", " ").split()
        for method in methods:
            method_overrides(method)  # an unknown method is refused before anything runs
        unknown = [p for p in pairs if p not in known]
        if unknown:
            raise KdrunError(f"unknown pair(s) {', '.join(unknown)}; allowed: {', '.join(known)}")
        seeds = [0] if args.smoke else [int(s) for s in args.seeds.split(",")]
        extra = smoke_overrides(Path(args.data_root)) if args.smoke else [f"dataset.root={args.data_root}"]
        out = Path(args.out)
        kdrun = Path(sys.executable).with_name("kdrun")
        failed = []
        for pair in [] if args.report_only else pairs:
            for target, command in target_commands(pair, preset_teacher(pair), seeds, out, extra, methods, args.smoke).items():
                console.print(f"[bold]{pair} {target}[/]: kdrun {' '.join(command)}", soft_wrap=True, markup=True)
                if subprocess.run([str(kdrun), *command]).returncode != 0:
                    failed.append(f"{pair} {target}")
                    if target == "teacher":
                        break  # every method needs this teacher
        rows, warnings = table_rows(published, out, pairs, methods)
        title = "CIFAR-100: ours beside the published numbers"
        if args.smoke:
            title += " (SMOKE RUN: a few steps on a tiny subset; the numbers mean nothing)"
        atomic_write_text(out / "reproduction.md", markdown(rows, warnings, title))
        atomic_write_text(out / "reproduction.csv", csv_text(rows))
        results.print(markdown(rows, warnings, title), markup=False, highlight=False, soft_wrap=True)
        results.print(f"tables: {out / 'reproduction.md'}, {out / 'reproduction.csv'}", markup=False, soft_wrap=True)
        if failed:
            console.print(f"failed: {'; '.join(failed)}", markup=False, soft_wrap=True)
            return 1
        return 0
    except KdrunError as exc:
        console.print(f"error: {exc}", markup=False, soft_wrap=True)
        return 2


if __name__ == "__main__":
    sys.exit(main())
