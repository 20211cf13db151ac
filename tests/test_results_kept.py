"""Issue 23: results that lie or get lost (items 1-6, 12) and the teacher's own recipe (item 16)."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import TINY, run_kdrun
from test_image_folder import CLASSES, make_folder
from kdrun.cli.sweep_claim import LOCK_NAME, claimed_sweep_dir


def listing(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in sorted(folder.rglob("*"))}


# --- item 1: one sweep at a time in a sweep folder; a summary lists only its own jobs ----------------------


def test_a_second_sweep_into_a_folder_in_use_is_refused_before_it_writes_anything(tmp_path):
    sweep = tmp_path / "X"
    with claimed_sweep_dir(sweep):  # this test process plays the first sweep, still running
        before = listing(sweep)
        proc = run_kdrun(tmp_path, "-m", *TINY, "seed=5,6", "hydra.sweep.dir=X", check=False)
        after = listing(sweep)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    out = proc.stdout + proc.stderr
    assert "in use by another sweep" in out and f"process {os.getpid()}" in out, out
    assert "Traceback" not in out
    assert after == before == {LOCK_NAME: before[LOCK_NAME]}  # no job folder, no multirun.yaml, no summary
    assert not (sweep / LOCK_NAME).exists()  # the claim ends with the sweep that held it


def test_a_summary_lists_only_the_jobs_its_sweep_ran_and_a_dead_sweeps_lock_does_not_block(tmp_path):
    sweep = tmp_path / "X"
    foreign = sweep / "5"  # a job another sweep left here: completed, with a number of its own
    (foreign / ".hydra").mkdir(parents=True)
    (foreign / ".hydra" / "overrides.yaml").write_text("- seed=9\n")
    (foreign / "metrics.json").write_text(json.dumps({"status": "completed", "final_test_acc": 99.0}))
    (sweep / LOCK_NAME).write_text("999999\n")  # left by a sweep killed with -9: nobody holds it
    run_kdrun(tmp_path, "-m", *TINY, "seed=0,1", "hydra.sweep.dir=X")
    with open(sweep / "summary.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [row["job"] for row in rows] == ["0", "1"], rows
    assert "99.0" not in (sweep / "summary.md").read_text()
    assert not (sweep / LOCK_NAME).exists()


# --- item 4: a completed run is skipped only if its checkpoints are the ones it wrote -----------------------


def tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_a_completed_run_whose_last_pt_was_damaged_is_not_called_complete(tmp_path):
    run_kdrun(tmp_path, *TINY, "hydra.run.dir=R")
    run, last = tmp_path / "R", tmp_path / "R" / "checkpoints" / "last.pt"
    recorded = json.loads((run / "metrics.json").read_text())["checkpoints"]
    assert set(recorded) == {"checkpoints/best.pt", "checkpoints/last.pt"}
    intact = last.read_bytes()
    # Cut short (the format check catches it), then same length with one byte changed in a tensor's data (the
    # zip still loads: only the checksum catches it).
    for damaged in (intact[: len(intact) // 2], intact[:-2000] + bytes([intact[-2000] ^ 0xFF]) + intact[-1999:]):
        last.write_bytes(damaged)
        before = tree(run)
        proc = run_kdrun(tmp_path, *TINY, "resume=R", check=False)
        out = proc.stdout + proc.stderr
        assert proc.returncode == 2, out
        assert "checkpoints/last.pt" in out and "not skipped as complete" in out, out
        assert "already completed" not in out and "files:" not in out and "Traceback" not in out
        assert tree(run) == before
    last.write_bytes(intact)
    proc = run_kdrun(tmp_path, *TINY, "resume=R")
    assert "already completed" in proc.stderr


# --- item 12: a refused resume does not advise the resume that would fail again -------------------------------


@pytest.mark.slow
def test_a_resume_stopped_by_an_unreadable_last_pt_does_not_advise_the_same_resume(tmp_path):
    run_kdrun(tmp_path, *TINY, "hydra.run.dir=R")
    run, last = tmp_path / "R", tmp_path / "R" / "checkpoints" / "last.pt"
    (run / "metrics.json").unlink()  # as if killed before it finished
    last.write_bytes(last.read_bytes()[:1000])
    proc = run_kdrun(tmp_path, *TINY, "resume=R", check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out
    assert "to go on from the last checkpoint" not in out and "resume=R" not in out, out
    assert "remove that file" in out
    last.unlink()  # the advice given, followed: the same command trains the run again from its start
    run_kdrun(tmp_path, *TINY, "resume=R")
    assert json.loads((run / "metrics.json").read_text())["status"] == "completed"


# --- items 2 and 3: kdrun-eval refuses data its checkpoint was not trained for ----------------------------------

FOLDER_RUN = ["dataset=image_folder", "dataset.image_size=12", "strategy=scratch", "student=cnn_student", "epochs=1",
              "batch_size=8", "trainer.progress=false"]


def run_tool(tool: str, *args) -> subprocess.CompletedProcess:
    return subprocess.run([str(Path(sys.executable).with_name(tool)), *map(str, args)], capture_output=True,
                          text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"})


@pytest.fixture(scope="module")
def folder_runs(tmp_path_factory) -> dict[str, Path]:
    """One tiny image-folder run decoded into memory and one streamed, from the same folder."""
    cwd = tmp_path_factory.mktemp("folder_runs")
    root = make_folder(cwd / "photos", per_class=(100, 4))  # over 256 training images: the stream samples its statistics
    runs = {}
    for path, in_memory in (("memory", "true"), ("stream", "false")):
        run_kdrun(cwd, *FOLDER_RUN, f"dataset.root={root}", f"dataset.in_memory={in_memory}", f"hydra.run.dir={path}")
        runs[path] = cwd / path
    return runs


def test_eval_refuses_a_folder_whose_classes_changed_naming_both_lists(folder_runs, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(folder_runs["memory"], run)
    root = tmp_path / "photos"
    shutil.copytree(yaml.safe_load((run / "config.yaml").read_text())["dataset"]["root"], root)
    for split in ("train", "test"):
        (root / split / "cat").rename(root / split / "zebra")  # the labels shift: dog, eel, zebra
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["dataset"]["root"] = str(root)
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    proc = run_tool("kdrun-eval", run, "--robustness", "--out", tmp_path / "out")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out
    assert str(list(CLASSES)) in out and str(["dog", "eel", "zebra"]) in out, out
    assert "Traceback" not in out and not (tmp_path / "out").exists()


def test_eval_of_a_run_whose_config_now_names_another_dataset_names_both_shapes(folder_runs, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(folder_runs["memory"], run)
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["dataset"] = {"name": "digits", "limit_train": None, "limit_test": None, "val_fraction": 0.0,
                         "augment": {"crop_padding": 1, "hflip": False}}
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    proc = run_tool("kdrun-eval", run, "--robustness", "--out", tmp_path / "out")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out
    assert "3x12x12 images and 3 classes" in out and "1x8x8 images and 10 classes" in out, out
    assert "Traceback" not in out


# --- item 5: export and eval on a run trained on the streaming path; a failed export leaves nothing -----------


@pytest.mark.slow
def test_export_and_eval_work_on_a_run_trained_from_a_stream(folder_runs, tmp_path):
    run = folder_runs["stream"]
    assert yaml.safe_load((run / "config.yaml").read_text())["dataset"]["in_memory"] is False
    proc = run_tool("kdrun-export", run, "--int8", "--out", tmp_path / "export")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    card = json.loads((tmp_path / "export" / "model_card.json").read_text())
    check = card["artefacts"]["onnx"]["check"]
    assert check["images"] == 12 and check["top1_differs"] == 0
    recorded = json.loads((run / "metrics.json").read_text())["final_test_acc"]
    assert check["accuracy"] == pytest.approx(recorded, abs=1e-3)  # the card rounds to 4 decimals
    assert card["classes"] == list(CLASSES)
    proc = run_tool("kdrun-eval", run, "--robustness", "--out", tmp_path / "robustness")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    with open(tmp_path / "robustness" / "robustness.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert float(rows[0]["clean"]) == pytest.approx(recorded, abs=0.01), rows[0]


def test_a_failed_export_leaves_no_file_behind(folder_runs, tmp_path, monkeypatch):
    from kdrun.deploy import export as ex
    from kdrun.cli.export import main as kdrun_export

    def check_fails(*args, **kwargs):  # after model.onnx is written, as the streaming crash was
        raise RuntimeError("the check failed")

    monkeypatch.setattr(ex, "check_export", check_fails)
    out = tmp_path / "shipped" / "student"
    with pytest.raises(RuntimeError, match="the check failed"):
        kdrun_export([str(folder_runs["memory"]), "--out", str(out)])
    assert not (tmp_path / "shipped").exists()
    assert not list(tmp_path.rglob("*.onnx"))


# --- item 6: a checkpoint keeps its input normalisation, and every later use applies it ----------------------


def test_a_model_scores_the_same_through_either_data_path(folder_runs):
    """A streamed run's statistics come from a sample of its images, the in-memory path's from all of them;
    its checkpoint keeps the ones it trained with, so evaluated on the decoded images it gives the logits and
    the accuracy it gave streamed."""
    import torch

    from kdrun.sources.checkpoint import load_checkpoint
    from kdrun.sources.data import load_dataset
    from kdrun.deploy.student import model_from_checkpoint, raw_image_model

    run = folder_runs["stream"]
    dataset = yaml.safe_load((run / "config.yaml").read_text())["dataset"]
    streamed = load_dataset(dataset)
    memory = load_dataset({**dataset, "in_memory": True})
    meta = load_checkpoint(run / "checkpoints" / "last.pt")["model"]
    assert (tuple(meta["input_mean"]), tuple(meta["input_std"])) == (streamed.mean, streamed.std)
    assert memory.mean != streamed.mean  # the two paths' own statistics differ: the test can tell

    model = model_from_checkpoint(run / "checkpoints" / "last.pt")
    with torch.no_grad():
        streamed_logits = torch.cat([model(x) for x, _, _ in streamed.evaluate(64)])
        memory_logits = raw_image_model(model, memory)(memory.test_x)
    assert torch.allclose(memory_logits, streamed_logits, atol=1e-5)
    accuracy = 100 * (memory_logits.argmax(1) == memory.test_y).float().mean().item()
    assert accuracy == pytest.approx(json.loads((run / "metrics.json").read_text())["final_test_acc"])


def test_a_teacher_trained_with_other_statistics_is_fed_inputs_normalised_as_it_was_trained(tmp_path):
    import torch

    from kdrun.sources.checkpoint import save_checkpoint
    from kdrun.sources.data import DatasetSplits
    from kdrun.sources.data.augment import normalisation
    from kdrun.sources.models import build_model
    from kdrun.runtime import Runtime
    from kdrun.teachers.resolve import load_model

    torch.manual_seed(0)
    trained_stats, data_stats = ((0.2, 0.3, 0.4), (0.2, 0.25, 0.3)), ((0.5, 0.5, 0.5), (0.1, 0.2, 0.3))
    teacher = build_model("cnn_student", 3, 12, 3).eval()
    teacher.normalisation = trained_stats
    save_checkpoint(tmp_path / "teacher.pt", teacher, epoch=1, test_acc=50.0)
    images = torch.randint(0, 256, (8, 3, 12, 12), dtype=torch.uint8)
    data = DatasetSplits("image_folder", images, torch.zeros(8, dtype=torch.long), images,
                         torch.zeros(8, dtype=torch.long), 3, *data_stats)
    loaded, _ = load_model(tmp_path / "teacher.pt", data, Runtime(torch.device("cpu"), "fp32"), role="teacher")
    loaded.eval()

    def normalised(stats):
        scale, shift = normalisation(*stats)
        return images.float() * scale + shift

    with torch.no_grad():
        expected = teacher(normalised(trained_stats))
        assert torch.allclose(loaded(normalised(data_stats)), expected, atol=1e-5)
        assert torch.allclose(loaded.forward_features(normalised(data_stats))[1], expected, atol=1e-5)
        assert not torch.allclose(teacher(normalised(data_stats)), expected, atol=1e-3)


# --- item 16: the teacher's own recipe ------------------------------------------------------------------------

KD_TINY = [*TINY, "strategy=kd"]


def test_a_sweep_over_the_students_learning_rate_trains_one_teacher(tmp_path):
    run_kdrun(tmp_path, "-m", *KD_TINY, "optim.lr=3e-4,5e-4", "hydra.sweep.dir=S")
    teachers = [p for p in (tmp_path / "outputs" / "teachers").glob("*/*/*") if p.is_dir()]
    assert len(teachers) == 1, teachers
    configs = [yaml.safe_load((tmp_path / "S" / job / "config.yaml").read_text()) for job in ("0", "1")]
    assert [c["optim"]["lr"] for c in configs] == [3e-4, 5e-4]
    assert configs[0]["teacher"]["optim"] == configs[1]["teacher"]["optim"]
    assert configs[0]["teacher"]["optim"]["lr"] not in (3e-4, 5e-4)  # the files' recipe, not the command line's
    recipe = json.loads((teachers[0] / "recipe.json").read_text())
    assert recipe["optim"] == configs[0]["teacher"]["optim"]


def test_a_diverging_teacher_is_named_as_the_teacher_and_leaves_no_partial_folder(tmp_path):
    proc = run_kdrun(tmp_path, *KD_TINY, "teacher.optim={name:sgd,lr:1e30}", check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out
    assert "the teacher mlp" in out and "diverged" in out and "teacher.optim" in out, out
    assert "Traceback" not in out
    teachers = tmp_path / "outputs" / "teachers"
    assert not [p for p in teachers.rglob("*") if p.is_dir() and p.name.endswith(".partial")]


def test_a_run_from_before_the_teachers_own_recipe_still_resumes(tmp_path):
    from kdrun.cli.preflight import compose_job
    from kdrun.errors import ConfigError
    from kdrun.config.resume import check_same_config
    from hydra import initialize_config_module
    from omegaconf import OmegaConf

    with initialize_config_module("kdrun.conf", version_base="1.3"):
        plain, cfg = compose_job(KD_TINY), compose_job([*KD_TINY, "optim.lr=2e-3"])
    saved = OmegaConf.to_container(plain, resolve=True)
    del saved["teacher"]["optim"], saved["teacher"]["batch_size"]
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(saved))
    check_same_config(plain, tmp_path)  # the same run: it resumes after the upgrade

    saved = OmegaConf.to_container(cfg, resolve=True)
    del saved["teacher"]["optim"], saved["teacher"]["batch_size"]  # what an older kdrun wrote
    saved["optim"] = OmegaConf.to_container(cfg.teacher.optim)  # it trained its teacher with the run's optimiser
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(saved))
    with pytest.raises(ConfigError) as refused:  # only the student's lr differs: named
        check_same_config(cfg, tmp_path)
    assert "optim.lr: 0.001 in the run, 0.002 now" in str(refused.value)
    assert "teacher.optim" not in str(refused.value)
    saved["optim"]["lr"] = 2e-3
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(saved))
    with pytest.raises(ConfigError, match=r"teacher\.optim\.lr: '<unset>' in the run"):  # its teacher trained at 2e-3, this one would not
        check_same_config(cfg, tmp_path)


def test_the_teachers_optimiser_is_the_files_recipe_with_its_own_keys_over_it():
    from hydra import initialize_config_module

    from kdrun.cli.preflight import compose_job

    with initialize_config_module("kdrun.conf", version_base="1.3"):
        def teacher_optim(*overrides):
            return compose_job(list(overrides)).teacher.optim

        recipe = teacher_optim("student=cnn_student")  # the student's model recipe: AdamW 1e-3, constant
        assert (recipe.name, recipe.lr, recipe.schedule) == ("adamw", 1e-3, "constant")
        assert teacher_optim("student=cnn_student", "optim.lr=0.01") == recipe  # the student's override only
        assert teacher_optim("student=cnn_student", "optim=sgd", "optim.lr=0.2") == recipe
        assert teacher_optim("experiment=quickstart", "optim.lr=0.01").lr == 3e-3  # the preset's recipe
        own = teacher_optim("student=cnn_student", "teacher.optim={lr:0.5}")
        assert (own.name, own.lr, own.schedule) == ("adamw", 0.5, "constant")
        other = teacher_optim("student=cnn_student", "teacher.optim={name:sgd,lr:0.2}")
        assert (other.name, other.lr, other.momentum) == ("sgd", 0.2, 0.9)  # sgd's own file under its keys
