"""Transfer sets (kdrun/sources/data/transfer.py): few labels plus unlabelled images, omitted classes, an extra folder
of unlabelled images; label-using terms see labelled rows only; per-class test accuracy; the refusals."""

from __future__ import annotations

import csv
import json
import re

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf
from PIL import Image

from conftest import run_kdrun
from kdrun.sources.data import BatchAugment, load_dataset
from kdrun.sources.data.feed import InMemoryFeed
from kdrun.sources.data.transfer import labelled_mask, transfer_split
from kdrun.errors import ConfigError
from kdrun.losses import cross_entropy
from kdrun.methods.terms.logit.dkd import dkd_loss
from kdrun.report.build import write_report
from kdrun.report.jobs import find_jobs
from kdrun.run import run_experiment
from kdrun.runtime import resolve_runtime
from kdrun.methods.terms.compose import build_logit_terms

# 100 synthetic 8x8 images of 4 classes, batches of 16: a run takes about a second.
SMALL = ["dataset=synthetic", "dataset.num_classes=4", "dataset.train_size=100", "dataset.test_size=40",
         "dataset.image_size=8", "batch_size=16", "epochs=2", "teacher=mlp", "student=cnn_student", "device=cpu",
         "trainer.progress=false"]


def compose_cfg(tmp_path, *overrides: str):
    with initialize_config_module(config_module="kdrun.conf", version_base="1.3"):
        return compose(config_name="config", overrides=[*SMALL, f"paths.outputs={tmp_path}", *overrides])


def records(run_dir) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in ("seconds", "images_per_s")} for line in lines]


# ---- the split --------------------------------------------------------------------------------------


def test_the_labelled_images_are_a_stratified_fraction_fixed_by_data_seed():
    labels = torch.arange(10).repeat_interleave(40)  # 10 classes of 40
    names = [str(c) for c in range(10)]
    mask = labelled_mask(labels, 0.1, data_seed=3, names=names)
    assert torch.bincount(labels[mask], minlength=10).tolist() == [4] * 10
    assert torch.equal(mask, labelled_mask(labels, 0.1, data_seed=3, names=names))
    assert not torch.equal(mask, labelled_mask(labels, 0.1, data_seed=4, names=names))


def test_the_student_split_drops_omitted_classes_and_hides_the_other_labels(tmp_path):
    cfg = compose_cfg(tmp_path, "dataset.labelled_fraction=0.2", "dataset.omit_classes=[2]")
    data = load_dataset(cfg.dataset)
    kd = transfer_split(data, cfg.dataset, data_seed=0, unlabelled=True)
    kept = data.train_y != 2
    assert torch.equal(kd.train_x, data.train_x[kept])  # every image but class 2's, in order
    assert torch.equal(kd.train_y[kd.train_labelled], data.train_y[kept][kd.train_labelled])
    assert (kd.train_y[~kd.train_labelled] == -1).all()  # an unlabelled image has no label to leak
    assert torch.bincount(kd.train_y[kd.train_labelled], minlength=4).tolist() == [5, 5, 0, 5]
    assert torch.equal(kd.test_y, data.test_y) and (data.test_y == 2).any()  # the test split keeps class 2
    scratch = transfer_split(data, cfg.dataset, data_seed=0, unlabelled=False)
    assert scratch.train_labelled is None and torch.equal(scratch.train_x, kd.train_x[kd.train_labelled])
    assert (data.train_y == -1).sum() == 0  # the teacher's split is untouched


# ---- label-using terms see labelled rows only ---------------------------------------------------------


def test_masked_cross_entropy_is_the_mean_over_labelled_rows_and_gives_unlabelled_rows_no_gradient():
    torch.manual_seed(0)
    logits = torch.randn(8, 5, requires_grad=True)
    labels = torch.tensor([1, -1, 3, -1, 0, 4, -1, 2])
    labelled = labels >= 0
    loss = cross_entropy(logits, labels, labelled)
    by_hand = -torch.log_softmax(logits.detach(), 1)[labelled.nonzero().flatten(), labels[labelled]].mean()
    assert loss.item() == pytest.approx(by_hand.item(), rel=1e-6)
    loss.backward()
    assert (logits.grad[~labelled] == 0).all() and (logits.grad[labelled] != 0).any()
    assert cross_entropy(logits, labels, torch.zeros(8, dtype=torch.bool)).item() == 0.0  # a batch with no label


def test_dkd_on_a_partly_labelled_batch_is_dkd_over_its_labelled_rows():
    torch.manual_seed(1)
    s, t = torch.randn(8, 5), torch.randn(8, 5)
    labels = torch.tensor([1, -1, 3, -1, 0, 4, -1, 2])
    labelled = labels >= 0
    masked = dkd_loss(s, t, labels, 4.0, labelled)
    subset = dkd_loss(s[labelled], t[labelled], labels[labelled], 4.0)
    for a, b in zip(masked, subset):
        assert a.item() == pytest.approx(b.item(), rel=1e-5)


KD_TERMS = {"ce": {"weight": 0.5}, "kd": {"weight": 0.5, "T": 4.0}}
DKD_TERMS = {"ce": {"weight": 0.5}, "dkd": {"weight": 0.5, "T": 4.0, "warmup_epochs": 0}}


@pytest.mark.parametrize("objective", [build_logit_terms(OmegaConf.create({"loss": {"terms": t}}))
                                       for t in (KD_TERMS, DKD_TERMS)], ids=["kd", "dkd"])
def test_on_a_transfer_batch_label_terms_never_see_an_unlabelled_image_and_distillation_sees_all(tmp_path,
                                                                                                 objective):
    cfg = compose_cfg(tmp_path, "dataset.labelled_fraction=0.25")
    data = transfer_split(load_dataset(cfg.dataset), cfg.dataset, 0, unlabelled=True)
    augment = BatchAugment(0, False, data.mean, data.std)
    batch = next(InMemoryFeed(data, augment, 16, 0, resolve_runtime(cfg.device)).batches(1))
    assert batch.labelled is not None and batch.labelled.any() and (~batch.labelled).any()
    assert torch.equal(batch.labelled, batch.y >= 0)
    logits = torch.randn(len(batch.y), 4, requires_grad=True)
    terms = objective(logits, torch.randn(len(batch.y), 4), batch.y, 1, labelled=batch.labelled)
    label_terms = [terms[name] for name in ("ce", "tckd", "nckd") if name in terms]
    grad = torch.autograd.grad(sum(label_terms), logits, retain_graph=True)[0]
    assert (grad[~batch.labelled] == 0).all()
    if "kd" in terms:
        assert (torch.autograd.grad(terms["kd"], logits)[0][~batch.labelled] != 0).any()


# ---- end to end: kd, dkd, feature terms, the cache ------------------------------------------------


@pytest.mark.parametrize("loss", [["loss=kd"], ["loss=dkd"], ["loss=kd", "++loss.terms.hint.weight=1", "student=mlp"]],
                         ids=["kd", "dkd", "hint"])
def test_a_transfer_set_trains_with_each_loss_and_reports_its_labels_and_classes(tmp_path, loss):
    cfg = compose_cfg(tmp_path, *loss, "dataset.labelled_fraction=0.2", "dataset.omit_classes=[3]")
    summary = run_experiment(cfg, tmp_path / "run")
    assert (summary["labelled_images"], summary["unlabelled_images"]) == (15, 60)  # 75 images of classes 0-2
    assert set(summary["per_class_test_acc"]) == {"0", "1", "2", "3"}
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["per_class_test_acc"] == \
        summary["per_class_test_acc"]
    overall = sum(a * n for a, n in zip(summary["per_class_test_acc"].values(), [10, 10, 10, 10])) / 40
    assert overall == pytest.approx(summary["final_test_acc"], abs=1e-3)  # synthetic: 10 test images per class


def test_the_report_gives_every_runs_per_class_accuracy_and_what_it_omitted(tmp_path):
    summaries = [run_experiment(compose_cfg(tmp_path, f"strategy={s}", "dataset.omit_classes=[3]"), tmp_path / s)
                 for s in ("scratch", "kd")]
    write_report(find_jobs([tmp_path / "scratch", tmp_path / "kd"]), tmp_path / "report", title="t",
                 measure_latency=False)
    rows = list(csv.DictReader((tmp_path / "report" / "per_class.csv").open()))
    assert [(r["strategy"], r["omitted"], r["labelled"]) for r in rows] == [("scratch", "3", "75"), ("kd", "3", "75")]
    for row, summary in zip(rows, summaries):
        assert {c: float(row[c]) for c in "0123"} == pytest.approx(summary["per_class_test_acc"])
    assert "per-class test accuracy" in (tmp_path / "report" / "report.md").read_text()


def test_with_a_transfer_set_the_cache_gives_the_live_numbers_and_the_teacher_is_the_full_label_one(tmp_path):
    fraction = ["dataset.labelled_fraction=0.25"]
    live = run_experiment(compose_cfg(tmp_path, *fraction, "teacher.cache=false"), tmp_path / "live")
    recorded = run_experiment(compose_cfg(tmp_path, *fraction), tmp_path / "recorded")
    cached = run_experiment(compose_cfg(tmp_path, *fraction), tmp_path / "cached")
    assert records(tmp_path / "live") == records(tmp_path / "recorded") == records(tmp_path / "cached")
    assert (recorded["teacher_cache_recorded"], cached["teacher_cache_hits"]) == (2, 2)
    full = run_experiment(compose_cfg(tmp_path), tmp_path / "full")
    assert full["teacher_path"] == live["teacher_path"]  # one teacher, trained on every label, for both
    assert (full["labelled_images"], full["unlabelled_images"]) == (100, 0)


def test_scratch_trains_on_the_labelled_images_alone(tmp_path):
    summary = run_experiment(compose_cfg(tmp_path, "strategy=scratch", "dataset.labelled_fraction=0.4"),
                             tmp_path / "run")
    # The split the trainer was given: 10 labelled images of each of the 4 classes, and nothing else.
    assert (summary["labelled_images"], summary["unlabelled_images"]) == (40, 0)


def test_scratch_on_the_labelled_images_takes_as_many_steps_per_epoch_as_kd_on_all(tmp_path):
    cfg = compose_cfg(tmp_path, "dataset.labelled_fraction=0.2")
    data, runtime = load_dataset(cfg.dataset), resolve_runtime(cfg.device)
    augment = BatchAugment(0, False, data.mean, data.std)
    kd = InMemoryFeed(transfer_split(data, cfg.dataset, 0, unlabelled=True), augment, 16, 0, runtime)
    labelled = transfer_split(data, cfg.dataset, 0, unlabelled=False)
    scratch = InMemoryFeed(labelled, augment, 16, 0, runtime)
    assert scratch.steps_per_epoch == kd.steps_per_epoch == 100 // 16
    batches = list(scratch.batches(1))
    assert len(batches) == 6 and all(len(b.y) == 16 for b in batches)
    seen = torch.cat([b.index for b in batches])
    assert seen.max() < 20 and set(seen[:20].tolist()) == set(range(20))  # whole shuffles of the 20 labelled


def png_folder(root, n: int, *, classes: bool) -> None:
    rng = np.random.default_rng(0)
    for i in range(n):
        folder = root / (f"anything_{i % 2}" if classes else "")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(folder / f"{i}.png")


@pytest.mark.parametrize("classes", [False, True], ids=["flat", "class folders"])
def test_a_transfer_folder_joins_what_distillation_sees_and_its_outputs_are_cached(tmp_path, classes):
    png_folder(tmp_path / "extra", 12, classes=classes)
    overrides = ["dataset.labelled_fraction=0.5", f"dataset.transfer_root={tmp_path / 'extra'}"]
    recorded = run_experiment(compose_cfg(tmp_path, *overrides), tmp_path / "recorded")
    assert (recorded["labelled_images"], recorded["unlabelled_images"]) == (48, 52 + 12)  # round(12.5) = 12 of each class
    cached = run_experiment(compose_cfg(tmp_path, *overrides), tmp_path / "cached")
    assert cached["teacher_cache_hits"] == 2 and records(tmp_path / "recorded") == records(tmp_path / "cached")
    scratch = run_experiment(compose_cfg(tmp_path, *overrides, "strategy=scratch"), tmp_path / "scratch")
    assert (scratch["labelled_images"], scratch["unlabelled_images"]) == (48, 0)


# ---- refusals -------------------------------------------------------------------------------------


@pytest.mark.parametrize("overrides,message", [
    (["dataset.labelled_fraction=1.5"], "dataset.labelled_fraction must be in (0, 1]"),
    (["dataset.labelled_fraction=0.001"], "leaves class '0' (25 training images) with no labelled image"),
    (["dataset.omit_classes=[7]"], "dataset.omit_classes names '7', which dataset synthetic lacks"),
    (["dataset.omit_classes=[0,1,2,3]"], "omits every class of synthetic"),
    (["strategy=online"], "strategy=online does not train on a transfer set"),
])
def test_a_transfer_set_that_cannot_train_is_refused_before_any_teacher_trains(tmp_path, overrides, message):
    fraction = [] if any("labelled_fraction" in o or "omit" in o for o in overrides) else \
        ["dataset.labelled_fraction=0.5"]
    with pytest.raises(ConfigError, match=re.escape(message)):
        run_experiment(compose_cfg(tmp_path, *fraction, *overrides), tmp_path / "run")
    assert not (tmp_path / "teachers").exists()


@pytest.mark.slow  # two kdrun processes: about 30 s on a loaded 2-core machine
def test_the_command_refuses_a_zero_fraction_and_an_empty_transfer_folder_in_one_line_leaving_no_file(tmp_path):
    (tmp_path / "empty" / "cls").mkdir(parents=True)
    for bad, message in ((["dataset.labelled_fraction=0"], "dataset.labelled_fraction must be > 0"),
                         ([f"dataset.transfer_root={tmp_path / 'empty'}"], "holds no image")):
        proc = run_kdrun(tmp_path, *SMALL, *bad, check=False)
        assert proc.returncode == 2, proc.stdout
        text = proc.stdout + proc.stderr  # kdrun's console prints its "error:" line to stdout
        errors = [line for line in text.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and message in errors[0] and "Traceback" not in text, text
        assert not (tmp_path / "outputs").exists()


# ---- the demo's setting, shortened ------------------------------------------------------------------


@pytest.mark.slow
def test_the_demo_setting_trains_as_a_sweep_and_tabulates_kd_beside_scratch(tmp_path):
    """`make demo`'s sweep in one epoch and two labelled fractions' worth of jobs; its measured Δ is a
    committed result (results/transfer/README.md), not asserted here."""
    proc = run_kdrun(tmp_path, "-m", "experiment=few_labels", "strategy=scratch,kd", "dataset.labelled_fraction=0.05,1.0",
                     "seed=0", "epochs=1", "teacher.epochs=1", "trainer.progress=false", "hydra.sweep.dir=sweep")
    assert "recipe:" not in proc.stdout  # the preset's own optimiser (quickstart's), not the CNN's recipe
    jobs = [json.loads(p.read_text()) for p in sorted((tmp_path / "sweep").glob("*/metrics.json"))]
    assert sorted((j["strategy"], j["labelled_images"], j["unlabelled_images"]) for j in jobs) == [
        ("kd", 70, 1367), ("kd", 1437, 0), ("scratch", 70, 0), ("scratch", 1437, 0)]
    assert len({j["teacher_path"] for j in jobs if j["strategy"] == "kd"}) == 1  # one teacher, every label
    comparison = (tmp_path / "sweep" / "comparison.md").read_text()
    assert "labelled=0.05" in comparison and "labelled=1" in comparison, comparison
    assert "Δ vs scratch" in comparison or "vs scratch" in comparison, comparison
    assert "per-class test accuracy" in proc.stdout + (tmp_path / "sweep" / "report.md").read_text()
