"""Every bad input a hostile user can type: each gets a message that names it, and none leaves a
broken output behind. Mostly in-process (compose the config, run the experiment); the command line
itself is covered where it matters (test_cli.py has more)."""

from __future__ import annotations

import json
import pickle
import re
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf, open_dict

from conftest import TINY, run_kdrun
from kdrun.sources.checkpoint import save_checkpoint
from kdrun.run import check_run_config
from kdrun.errors import CheckpointError, ConfigError, DataError
from kdrun.sources.models import build_model
from kdrun.config.resume import check_resume_argument, claim_new_dir, output_dir
from kdrun.run import record_failure, run_experiment


BASE = ["dataset=digits", "dataset.limit_train=200", "dataset.limit_test=100", "student=mlp", "strategy=scratch",
        "epochs=1", "trainer.progress=false"]




def compose_cfg(*overrides: str, choices: bool = False):
    """The composed config (and, if `choices`, hydra.runtime.choices, as the CLI sees them)."""
    with initialize_config_module(config_module="kdrun.conf", version_base="1.3"):
        cfg = compose(config_name="config", overrides=list(overrides), return_hydra_config=choices)
    if not choices:
        return cfg
    picked = dict(cfg.hydra.runtime.choices)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg, picked


def refused(tmp_path: Path, *overrides: str, error=ConfigError, match: str) -> None:
    """run_experiment refuses with `match` in the message, before training: at most the resolved
    config.yaml is written (the CLI then adds a metrics.json saying failed, and why)."""
    run_dir = tmp_path / "run"
    with pytest.raises(error, match=re.escape(match)):
        run_experiment(compose_cfg(*BASE, *overrides), run_dir)
    written = sorted(p.name for p in run_dir.rglob("*")) if run_dir.exists() else []
    assert written in ([], ["config.yaml"]), written


# ---- wrong types, zero and negative sizes, non-finite numbers ---------------------------------


@pytest.mark.parametrize("override,message", [
    ("epochs=abc", "epochs must be an integer, got 'abc'"),
    ("epochs=2.5", "epochs must be an integer, got 2.5"),
    ("epochs=true", "epochs must be an integer, got True"),
    ("epochs=0", "epochs must be >= 1, got 0"),
    ("batch_size=-8", "batch_size must be >= 1, got -8"),
    ("trainer.eval_batch_size=0", "trainer.eval_batch_size must be >= 1, got 0"),
    ("seed=-1", "seed must be >= 0, got -1"),
    ("optim.lr=0", "optim.lr must be > 0, got 0"),
    ("optim.lr=nan", "optim.lr must be a finite number, got nan"),
    ("optim.weight_decay=inf", "optim.weight_decay must be a finite number, got inf"),
    ("optim.lr=[1,2]", "optim.lr must be a number"),
    ("dataset.limit_train=0", "dataset.limit_train must be >= 1 or null, got 0"),
    ("dataset.limit_test=-3", "dataset.limit_test must be >= 1 or null, got -3"),
    ("dataset.augment.crop_padding=-1", "dataset.augment.crop_padding must be >= 0, got -1"),
    ("checkpoint.every_steps=0", "checkpoint.every_steps must be >= 1 or null, got 0"),
    ("checkpoint.every_steps=often", "checkpoint.every_steps must be an integer or null, got 'often'"),
    ("trainer.on_nonfinite=ignore", "trainer.on_nonfinite: 'ignore' is not allowed; allowed: stop, skip"),
    ("resume=[a,b]", "resume must be a string or null"),
])
def test_a_bad_value_is_named_with_what_is_allowed(tmp_path, override, message):
    refused(tmp_path, override, match=message)


@pytest.mark.parametrize("key", ["train_size", "test_size", "num_classes", "image_size", "channels"])
def test_a_synthetic_dataset_of_zero_size_is_refused(tmp_path, key):
    refused(tmp_path, "dataset=synthetic", f"dataset.{key}=0", match=f"dataset.{key} must be >= 1")


def test_batches_of_one_sample_cannot_train_batchnorm(tmp_path):
    refused(tmp_path, "student=resnet8", "batch_size=1",
            match="batches of 1 sample cannot train resnet8, whose BatchNorm needs at least 2")
    refused(tmp_path, "student=resnet8", "dataset.limit_train=1", match="batches of 1 sample cannot train resnet8")


def test_cuda_without_a_gpu_is_named(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    refused(tmp_path, "device=cuda", match="device=cuda but no CUDA GPU is visible to torch")


# ---- unknown keys: typos never pass silently --------------------------------------------------


@pytest.mark.parametrize("override,message", [
    ("+trainr.epochs=3", "unknown config key 'trainr'; did you mean trainer?"),
    ("+optim.lrr=0.1", "unknown config key 'optim.lrr'; did you mean optim.lr?"),
    ("+dataset.augment.hfilp=true", "unknown config key 'dataset.augment.hfilp'; did you mean dataset.augment.hflip?"),
    ("+checkpoint.every_step=5", "unknown config key 'checkpoint.every_step'; did you mean checkpoint.every_steps?"),
])
def test_an_added_key_that_kdrun_does_not_know_is_refused(override, message):
    cfg, choices = compose_cfg(*BASE, override, choices=True)
    with pytest.raises(ConfigError, match=re.escape(message)):
        check_run_config(cfg)


def test_every_shipped_experiment_passes_the_unknown_key_check():
    """Group options define their own keys; experiments set keys of other files, so a typo hides there."""
    from importlib import resources

    experiments = sorted(p.name[:-5] for p in resources.files("kdrun.conf").joinpath("experiment").iterdir()
                         if p.name.endswith(".yaml"))
    with initialize_config_module(config_module="kdrun.conf", version_base="1.3"):
        for overrides in ([], *([f"experiment={name}"] for name in experiments)):
            cfg = compose(config_name="config", overrides=overrides, return_hydra_config=True)
            with open_dict(cfg):
                del cfg["hydra"]
            check_run_config(cfg)


def test_a_typo_in_a_users_experiment_file_is_refused_by_the_cli(tmp_path):
    (tmp_path / "conf" / "experiment").mkdir(parents=True)
    (tmp_path / "conf" / "experiment" / "mine.yaml").write_text(
        "# @package _global_\ntrainer:\n  epohcs: 3\n")
    proc = run_kdrun(tmp_path, *TINY, f"hydra.searchpath=[file://{tmp_path / 'conf'}]", "experiment=mine",
                     check=False)
    out = " ".join((proc.stdout + proc.stderr).split())
    assert proc.returncode == 2, out
    assert "unknown config key 'trainer.epohcs'; did you mean trainer.epochs?" in out and "Traceback" not in out


# ---- missing and hostile files ----------------------------------------------------------------


def write_idx(path: Path, array: np.ndarray) -> None:
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def mnist_root(tmp_path: Path, train_images: np.ndarray | bytes, n_test: int = 10) -> Path:
    root = tmp_path / "mnist"
    root.mkdir()
    rng = np.random.default_rng(0)
    if isinstance(train_images, bytes):
        (root / "train-images-idx3-ubyte").write_bytes(train_images)
    else:
        write_idx(root / "train-images-idx3-ubyte", train_images)
    n_train = len(train_images) if not isinstance(train_images, bytes) else 10
    write_idx(root / "train-labels-idx1-ubyte", rng.integers(0, 10, n_train))
    write_idx(root / "t10k-images-idx3-ubyte", rng.integers(0, 255, (n_test, 28, 28)))
    write_idx(root / "t10k-labels-idx1-ubyte", rng.integers(0, 10, n_test))
    return root


def mnist(root: Path) -> list[str]:
    return ["dataset=mnist", f"dataset.root={root}", "dataset.download=false", "dataset.limit_train=null",
            "dataset.limit_test=null"]


@pytest.mark.parametrize("images,message", [
    (np.zeros((0, 28, 28)), "dataset 'mnist', train split is empty"),
    (b"this is a text file, not images\n", "train-images-idx3-ubyte: not an IDX file"),
    (np.zeros(10), "expected uint8 images (N, H, W), got uint8 (10,)"),  # a labels file where images belong
])
def test_empty_and_non_image_dataset_files_are_named(tmp_path, images, message):
    root = mnist_root(tmp_path, images)
    refused(tmp_path, *mnist(root), error=DataError, match=message)


def test_a_cifar_batch_that_is_not_images_is_named(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (folder / name).write_bytes(pickle.dumps({b"data": "not pixels", b"labels": [1, 2]}))
    refused(tmp_path, "dataset=cifar10", f"dataset.root={tmp_path}", "dataset.download=false",
            "dataset.limit_train=null", "dataset.limit_test=null", error=DataError,
            match="malformed CIFAR batch: b'data' must be a uint8 array")


def test_a_missing_teacher_checkpoint_is_named(tmp_path):
    refused(tmp_path, "strategy=kd", "teacher=mlp", f"teacher.checkpoint={tmp_path / 'nope.pt'}",
            error=CheckpointError, match=f"checkpoint '{tmp_path / 'nope.pt'}' does not exist")


def test_a_teacher_for_other_image_sizes_is_named(tmp_path):
    save_checkpoint(tmp_path / "t28.pt", build_model("mlp", 1, 28, 10))
    refused(tmp_path, "strategy=kd", "teacher=mlp", f"teacher.checkpoint={tmp_path / 't28.pt'}",
            error=CheckpointError, match="takes 28x28 images, dataset digits has 8x8")


def test_a_teacher_and_student_with_different_class_counts_are_named(tmp_path):
    save_checkpoint(tmp_path / "t100.pt", build_model("mlp", 1, 8, 100))
    refused(tmp_path, "strategy=kd", "teacher=mlp", f"teacher.checkpoint={tmp_path / 't100.pt'}",
            error=CheckpointError, match="has 100 classes, dataset digits has 10")


# ---- resume: wrong directories, changed configs, runs that must not be overwritten ----------------


def test_resume_of_a_missing_or_wrong_kind_of_directory_is_refused_before_any_directory_is_made(tmp_path):
    with pytest.raises(ConfigError, match="resume=/nowhere/at/all: no such directory"):
        check_resume_argument(["epochs=1", "resume=/nowhere/at/all"])
    sweep, run = tmp_path / "sweep", tmp_path / "run"
    (sweep / "0_seed=0").mkdir(parents=True)
    (sweep / "multirun.yaml").write_text("{}")
    run.mkdir()
    (run / "config.yaml").write_text("{}")
    with pytest.raises(ConfigError, match="is a sweep directory: resume it with kdrun -m"):
        check_resume_argument([f"resume={sweep}"])
    with pytest.raises(ConfigError, match="is a single run, not a sweep: resume it without -m"):
        check_resume_argument(["-m", f"resume={run}"])
    assert output_dir(str(run), "unused", sweep=False) == str(run)
    assert output_dir(str(sweep), "unused", sweep=True) == str(sweep)


def test_the_cli_refuses_a_missing_resume_directory_cleanly(tmp_path, monkeypatch, capsys):
    import kdrun.cli.main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["kdrun", *BASE, "resume=outputs/runs/typo"])
    with pytest.raises(SystemExit) as exit_info:
        kdrun.cli.main.main()
    assert exit_info.value.code == 2
    assert "resume=outputs/runs/typo: no such directory" in " ".join(capsys.readouterr().err.split())
    assert not (tmp_path / "outputs").exists()


def test_two_runs_in_the_same_second_get_different_directories(tmp_path):
    import kdrun.config.resume

    base = str(tmp_path / "runs" / "12-00-00_kd_resnet20")
    first = claim_new_dir(base)
    kdrun.config.resume._claimed.clear()  # as another process would start
    second = claim_new_dir(base)
    assert first == base and second == base + "-1"
    assert claim_new_dir(base) == second  # stable within a process


def test_a_run_directory_that_holds_a_run_is_never_overwritten(tmp_path):
    run_dir = tmp_path / "run"
    run_experiment(compose_cfg(*BASE), run_dir)
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    with pytest.raises(ConfigError, match="already holds a run; add resume=auto"):
        run_experiment(compose_cfg(*BASE), run_dir)
    record_failure(run_dir, ConfigError("whatever"))  # what the CLI does next: keeps the completed record
    assert {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()} == before
    # resume=auto of a completed run: skipped, nothing rewritten
    summary = run_experiment(compose_cfg(*BASE, "resume=auto"), run_dir)
    assert summary["status"] == "completed"
    assert {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()} == before


def test_resuming_with_another_config_names_each_difference(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(compose_cfg(*BASE), resolve=True))
    with pytest.raises(ConfigError) as info:
        run_experiment(compose_cfg(*BASE, "epochs=3", "optim.lr=0.01", "resume=auto"), run_dir)
    message = str(info.value)
    assert "this command's config differs from the run's config.yaml" in message
    assert "optim.lr: 0.05 in the run, 0.01 now" in message and "trainer.epochs: 1 in the run, 3 now" in message
    # Where files are and how the run is watched may change.
    run_experiment(compose_cfg(*BASE, "resume=auto", "trainer.progress=true", "checkpoint.every_steps=7"), run_dir)
    assert json.loads((run_dir / "metrics.json").read_text())["status"] == "completed"


def test_a_run_from_before_a_key_existed_resumes_when_the_key_is_off_and_not_when_it_is_on(tmp_path):
    """Upgrading kdrun adds keys (student.qat); a run whose config.yaml lacks one still resumes while the
    key is at its off default, and is refused if the command turns it on."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    old = OmegaConf.create(OmegaConf.to_container(compose_cfg(*BASE), resolve=True))
    del old.student["qat"]
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(old))
    with pytest.raises(ConfigError, match="student.qat: '<unset>' in the run, True now"):
        run_experiment(compose_cfg(*BASE, "student.qat=true", "resume=auto"), run_dir)
    run_experiment(compose_cfg(*BASE, "resume=auto"), run_dir)
    assert json.loads((run_dir / "metrics.json").read_text())["status"] == "completed"


def test_a_truncated_metrics_json_is_not_trusted_as_completed(tmp_path):
    """A run whose metrics.json is damaged goes on from its last.pt instead of counting as done."""
    run_dir = tmp_path / "run"
    run_experiment(compose_cfg(*BASE), run_dir)
    (run_dir / "metrics.json").write_text('{"status": "compl')
    summary = run_experiment(compose_cfg(*BASE, "resume=auto"), run_dir)
    assert summary["status"] == "completed"
    assert json.loads((run_dir / "metrics.json").read_text())["status"] == "completed"
