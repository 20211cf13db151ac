"""CIFAR-100 reproduction: presets, the published-numbers CSV, the comparison report, the smoke mode."""

from __future__ import annotations

import csv
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module

from kdrun.errors import KdrunError
from kdrun.report.aggregate import stat
from kdrun.report.published import Cell, Published, cifar100_pairs, pair_cells, read_published, teacher_warning
from kdrun.cli.reproduce import loss_presets, method_overrides, preset_teacher
from kdrun.run import check_run_config as validate
from kdrun.run import run_experiment

REPO = Path(__file__).resolve().parents[1]
PUBLISHED = REPO / "results" / "published" / "cifar100.csv"
NUMBERS = read_published(PUBLISHED)
PAIRS = cifar100_pairs(NUMBERS)
# mdistiller configs/cifar100/dkd/*.yaml DKD.BETA (8 where the file leaves its default).
DKD_BETA = {"resnet56_resnet20": 2, "resnet110_resnet20": 2, "resnet110_resnet32": 2, "wrn_40_2_wrn_16_2": 6,
            "wrn_40_2_wrn_40_1": 6, "vgg13_vgg8": 6, "vgg13_mobilenetv2": 6}
TINY_CIFAR100 = ["dataset=synthetic", "dataset.num_classes=100", "dataset.train_size=8", "dataset.test_size=8",
                 "epochs=1", "batch_size=8", "trainer.progress=false", "device=cpu"]


def compose_cfg(*overrides: str):
    with initialize_config_module(config_module="kdrun.conf", version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def test_published_csv_has_the_13_pairs_each_with_a_preset_sources_and_the_epoch_kind():
    assert len(PAIRS) == 13
    for pair in PAIRS:
        teacher = preset_teacher(pair)  # raises if the preset is missing
        assert pair.startswith(teacher + "_")
        by_method = {n.method: n for n in NUMBERS if n.pair == pair}
        assert {"teacher", "scratch", "kd", "crd"} <= set(by_method)
        assert by_method["teacher"].acc > by_method["scratch"].acc
    assert all(n.source and n.repo and n.epoch in ("last", "best") for n in NUMBERS)
    # RepDistiller's numbers are last-epoch (its authors, RepDistiller issue 16); mdistiller's best (issue 30).
    assert {n.epoch for n in NUMBERS if n.repo.startswith("github.com/HobbitLong")} == {"last"}
    assert {n.epoch for n in NUMBERS if n.repo.startswith("github.com/megvii-research")} == {"best"}
    # one number per (experiment, method), and the ImageNet pair is there
    assert len({(n.experiment, n.method) for n in NUMBERS}) == len(NUMBERS)
    assert {"teacher", "scratch", "kd", "dkd"} <= {n.method for n in NUMBERS if n.experiment == "imagenet_resnet34_resnet18"}
    # the CRD table's cells, spot-checked against the README's: resnet32x4 -> resnet8x4 CRD, vgg13 -> MobileNetV2 AT
    assert next(n.acc for n in NUMBERS if n.pair == "resnet32x4_resnet8x4" and n.method == "crd") == 75.51
    assert next(n.acc for n in NUMBERS if n.pair == "vgg13_mobilenetv2" and n.method == "at") == 59.40


def test_published_csv_bad_value_is_named(tmp_path):
    bad = tmp_path / "bad.csv"
    text = PUBLISHED.read_text().splitlines()
    bad.write_text("\n".join([text[0], text[1].replace("75.61", "75.6x", 1)]) + "\n")
    with pytest.raises(KdrunError, match=r"bad.csv:2: acc must be a percentage, got '75.6x'"):
        read_published(bad)
    bad.write_text("\n".join([text[0], text[1].replace(",last,", ",final,", 1)]) + "\n")
    with pytest.raises(KdrunError, match=r"bad.csv:2: epoch must be one of last, best, got 'final'"):
        read_published(bad)


def test_every_method_maps_to_a_kdrun_command_and_an_unknown_one_is_refused():
    assert method_overrides("kd") == ["loss=kd"]
    assert method_overrides("dkd+ls") == ["loss=dkd", "loss.standardize=true"]
    assert method_overrides("at+kd") == ["loss=at", "loss.terms.kd.weight=1"]
    assert "kd" in loss_presets() and "ce" not in loss_presets()
    with pytest.raises(KdrunError, match=r"unknown method 'kdd'; allowed: .*dkd"):
        method_overrides("kdd")


def test_every_published_method_is_one_reproduce_runs_and_lskd_finds_its_numbers(tmp_path):
    for method in {n.method for n in NUMBERS} - {"teacher", "scratch"}:
        method_overrides(method)  # raises for a name `make reproduce-cifar100 METHODS=...` would refuse
    # METHODS=lskd: the logit-standardisation paper's KD+LS rows, beside our (absent) runs
    cells = pair_cells(NUMBERS, "resnet56_resnet20", tmp_path / "resnet56_resnet20", ["lskd"])
    assert [(c.method, c.published.acc) for c in cells if c.method == "lskd"] == [("lskd", 71.43)]


@pytest.mark.parametrize("pair", PAIRS)
def test_preset_recipe(pair):
    cfg = compose_cfg(f"experiment=cifar100_{pair}")
    validate(cfg)
    student = pair.removeprefix(preset_teacher(pair) + "_")
    assert (cfg.dataset.name, cfg.student.arch, cfg.teacher.arch) == ("cifar100", student, preset_teacher(pair))
    small = student.startswith(("mobilenet", "shufflenet"))
    assert cfg.optim.lr == (0.01 if small else 0.05)
    assert (cfg.optim.name, cfg.optim.momentum, cfg.optim.weight_decay, cfg.optim.schedule) == ("sgd", 0.9, 5e-4, "multistep")
    assert list(cfg.optim.milestones) == [150, 180, 210] and cfg.optim.gamma == 0.1
    terms = cfg.loss.terms
    assert (cfg.epochs, cfg.batch_size, terms.kd.T, terms.ce.weight, terms.kd.weight) == (240, 64, 4.0, 0.1, 0.9)
    dkd = compose_cfg(f"experiment=cifar100_{pair}", "loss=dkd")
    validate(dkd)
    terms = dkd.loss.terms
    assert (terms.ce.weight, terms.dkd.weight, terms.dkd.tckd_weight, terms.dkd.warmup_epochs) == (1.0, 1.0, 1.0, 20)
    assert terms.dkd.nckd_weight == DKD_BETA.get(pair, 8)


@pytest.mark.slow
@pytest.mark.parametrize("pair", PAIRS)
def test_every_preset_runs_a_step(pair, tmp_path):
    # Each target's config (teacher, scratch, KD, DKD) on CIFAR-100-shaped synthetic data, one step.
    base = [f"experiment=cifar100_{pair}", *TINY_CIFAR100, f"paths.outputs={tmp_path}/outputs"]
    for name, extra in {"scratch": ["strategy=scratch"], "kd": [], "dkd": ["loss=dkd"]}.items():
        summary = run_experiment(compose_cfg(*base, *extra), tmp_path / name)
        assert summary["status"] == "completed" and summary["epochs"] == 1
        assert math.isfinite(summary["final_test_acc"])


def published(acc: float, epoch: str = "last") -> Published:
    return Published("cifar100_resnet56_resnet20", "resnet56", "resnet20", "kd", acc, epoch, "paper", "repo")


def test_cell_delta_and_verdict_against_a_hand_computation():
    ours = stat([70.0, 71.0, 72.0])  # mean 71, sample std 1
    best = stat([72.0, 73.0, 74.0])  # mean 73
    assert Cell("kd", published(70.66), ours, best).delta == pytest.approx(71.0 - 70.66)
    assert Cell("kd", published(70.66, "best"), ours, best).delta == pytest.approx(73.0 - 70.66)  # like with like
    assert Cell("kd", published(70.66), ours, ours).verdict == "within"  # |0.34| <= 2 * 1
    assert Cell("kd", published(68.5), ours, ours).verdict == "ours higher"  # 2.5 > 2
    assert Cell("kd", published(73.5), ours, ours).verdict == "ours lower"
    assert Cell("kd", published(73.0), ours, ours).verdict == "within"  # exactly 2 stds
    assert Cell("dkd", None, ours, ours).verdict == "no published number"
    assert Cell("kd", published(70.0), stat([70.0]), stat([70.0])).verdict == "1 seed: no spread"
    assert Cell("kd", published(70.0), None, None).verdict == "not run"


def test_teacher_no_better_than_scratch_is_reported_with_both_numbers():
    cells = [Cell("teacher", published(72.3), stat([60.0]), stat([61.0])),
             Cell("scratch", published(69.1), stat([60.0, 62.0]), None)]
    warning = teacher_warning(cells)
    assert "60.00%" in warning and "61.00%" in warning
    assert teacher_warning([Cell("teacher", published(72.3), stat([65.0]), None), cells[1]]) is None


@pytest.mark.slow
def test_make_reproduce_smoke_for_one_pair_and_every_method(tmp_path):
    """`make reproduce-cifar100 REPRO_SMOKE=1 PAIRS=... METHODS=...`: every target runs, every loss preset kdrun
    ships included, and the table is written."""
    methods = loss_presets()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
    out = tmp_path / "repro"
    proc = subprocess.run(
        ["make", "-C", str(REPO), "reproduce-cifar100", "REPRO_SMOKE=1", "PAIRS=resnet56_resnet20",
         f"METHODS={' '.join(methods)}",
         f"REPRO_OUT={out}", f"PY={sys.executable}"],
        capture_output=True, text=True, timeout=900, env=env, cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = list(csv.DictReader((out / "reproduction.csv").open()))
    targets = ("teacher", "scratch", *methods)
    assert [(r["pair"], r["method"]) for r in rows] == [("resnet56_resnet20", t) for t in targets]
    assert all(r["ours last epoch (mean ± std)"].endswith("(n=1)") for r in rows)
    assert "SMOKE RUN" in (out / "reproduction.md").read_text()
    crd = next(r for r in rows if r["method"] == "crd") if "crd" in methods else None
    assert crd is None or (crd["published"] == "71.16" and crd["epoch"] == "last")
    for target in targets:
        assert (out / "resnet56_resnet20" / target / "0" / "metrics.json").is_file()
