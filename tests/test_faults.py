"""Fault injection with real processes and real files: kills, Ctrl-C, NaN losses, a full disk,
malicious and corrupt checkpoints, a corrupt teacher cache, concurrent runs.

The process tests run the `kdrun` command on the offline digits dataset and kill it
with real signals; the in-process ones drive the Trainer directly to place a fault at
an exact step.
"""

from __future__ import annotations

import csv
import errno
import json
import os
import pickle
import shlex
import signal
import subprocess
import sys
import textwrap
import time
from datetime import datetime, timedelta
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from conftest import KDRUN, read_jsonl, trainer_settings
from kdrun.sources.checkpoint import load_checkpoint, save_checkpoint
from kdrun.sources.data import BatchAugment, load_dataset
from kdrun.errors import CheckpointError, NonFiniteLoss, WriteError
from kdrun.io import atomic_write_text
from kdrun.sources.models import build_model
from kdrun.runtime import Runtime, seed_everything
from kdrun.strategies.scratch import Scratch
from kdrun.engine.trainer import Trainer


# A scratch run of ~90 steps per epoch that saves last.pt every 5 steps: long enough to be
# killed mid-epoch, short enough for the suite.
RUN = ["dataset=digits", "student=cnn_student", "strategy=scratch", "optim=adamw", "epochs=2", "batch_size=16",
       "checkpoint.every_steps=5", "trainer.progress=false"]
ENV = {**os.environ, "COLUMNS": "250", "HYDRA_FULL_ERROR": "0", "OMP_NUM_THREADS": "1"}
TIMING_KEYS = {"seconds", "images_per_s", "wall_time_s", "overrides", "checkpoints"}  # checkpoints: file digests; a file holds its wall time


# ---- helpers ------------------------------------------------------------------------------------


def compose_cfg(*overrides: str):
    from hydra import compose, initialize_config_module

    with initialize_config_module(config_module="kdrun.conf", version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def start(cwd: Path, *args: str) -> subprocess.Popen:
    log = open(cwd / f"kdrun-{time.monotonic_ns()}.log", "w+")
    proc = subprocess.Popen([str(KDRUN), *args], cwd=cwd, stdout=log, stderr=subprocess.STDOUT, env=ENV, text=True)
    proc.log = log
    return proc


def finish(proc: subprocess.Popen, timeout: float = 240) -> tuple[int, str]:
    rc = proc.wait(timeout=timeout)
    proc.log.seek(0)
    return rc, proc.log.read()


def run(cwd: Path, *args: str) -> tuple[int, str]:
    return finish(start(cwd, *args))


def wait_for(predicate, timeout: float = 120, proc: subprocess.Popen | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            proc.log.seek(0)
            pytest.fail(f"kdrun exited {proc.returncode} before the awaited moment:\n{proc.log.read()}")
        time.sleep(0.02)
    pytest.fail("timed out")


def position(last: Path) -> tuple[int, int] | None:
    """(epoch in progress, step) of a last.pt, or None if there is none yet."""
    try:
        train = torch.load(last, weights_only=True)["train"]
    except (FileNotFoundError, RuntimeError, EOFError, pickle.UnpicklingError):
        return None
    return train["epoch"], train["step"]


def mid_epoch(last: Path, epoch: int):
    def check():
        pos = position(last)
        return pos if pos and pos[0] == epoch and pos[1] > 0 else None
    return check


def same_weights(a: Path, b: Path) -> None:
    sa, sb = load_checkpoint(a)["state_dict"], load_checkpoint(b)["state_dict"]
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


def same_metrics(a: Path, b: Path) -> None:
    """metrics.json and metrics.jsonl equal but for timings (and the command line that differs)."""
    strip = lambda d: {k: v for k, v in d.items() if k not in TIMING_KEYS}  # noqa: E731
    assert strip(json.loads((a / "metrics.json").read_text())) == strip(json.loads((b / "metrics.json").read_text()))
    assert [strip(r) for r in read_jsonl(a / "metrics.jsonl")] == [strip(r) for r in read_jsonl(b / "metrics.jsonl")]


# ---- 1. resume: Ctrl-C, SIGKILL, multirun ------------------------------------------------------


@pytest.mark.slow
def test_ctrl_c_then_sigkill_mid_epoch_then_resume_equals_the_uninterrupted_run(tmp_path):
    """Ctrl-C in epoch 1 -> the printed command -> SIGKILL in epoch 2 -> resume=auto: the final
    weights, best.pt and metrics equal those of the same run never interrupted."""
    reference = start(tmp_path, *RUN, "hydra.run.dir=ref")  # alongside: two cores

    # Ctrl-C: the step finishes, last.pt is saved, exit 130 with the exact command to resume.
    proc = start(tmp_path, *RUN)
    wait_for(lambda: next(tmp_path.glob("outputs/runs/*/*/checkpoints/last.pt"), None), proc=proc)
    proc.send_signal(signal.SIGINT)
    rc, out = finish(proc)
    assert rc == 130, out
    (run_dir,) = tmp_path.glob("outputs/runs/*/*")
    last = run_dir / "checkpoints" / "last.pt"
    assert f"saved {last}" in out
    command = out.split("to resume: ", 1)[1].splitlines()[0]
    assert command == shlex.join(["kdrun", *RUN, f"resume={run_dir}"])
    summary = json.loads((run_dir / "metrics.json").read_text())
    assert summary["status"] == "interrupted" and summary["resume"] == command

    # The printed command, as a user would paste it; then SIGKILL mid-epoch 2 (no handler runs).
    proc = start(tmp_path, *shlex.split(command)[1:])
    wait_for(mid_epoch(last, 2), proc=proc)
    proc.kill()
    rc, out = finish(proc)
    assert "resuming scratch from" in out, out
    epoch, step = position(last)
    assert epoch == 2 and 0 < step < 89, (epoch, step)  # killed mid-epoch, last.pt whole

    # resume=auto into the same directory goes on from there.
    rc, out = run(tmp_path, *RUN, f"hydra.run.dir={run_dir}", "resume=auto")
    assert rc == 0, out
    assert f"resuming scratch from {last} (epoch 2, step {step}/89)" in out
    assert len(list(tmp_path.glob("outputs/runs/*/*"))) == 1  # always the same directory
    rc, out = finish(reference)
    assert rc == 0, out
    same_weights(tmp_path / "ref" / "checkpoints" / "last.pt", last)
    same_weights(tmp_path / "ref" / "checkpoints" / "best.pt", run_dir / "checkpoints" / "best.pt")
    same_metrics(tmp_path / "ref", run_dir)


def test_a_second_ctrl_c_exits_at_once(tmp_path):
    script = textwrap.dedent("""
        import os, signal, sys, time
        from kdrun.engine.interrupts import InterruptGuard
        with InterruptGuard() as guard:
            os.kill(os.getpid(), signal.SIGINT)
            assert guard.requested, "the first Ctrl-C only asks"
            print("first Ctrl-C survived", flush=True)
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(60)
        sys.exit(0)
    """)
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 130, proc.stdout + proc.stderr
    assert "first Ctrl-C survived" in proc.stdout and "exiting now" in proc.stderr
    assert time.monotonic() - t0 < 50


@pytest.mark.slow
def test_a_killed_multirun_resumes_skipping_finished_jobs(tmp_path):
    sweep = [*RUN, "epochs=1", "seed=0,1"]
    proc = start(tmp_path, "-m", *sweep)
    job1_last = lambda: next(tmp_path.glob("outputs/sweeps/*/*/1/checkpoints/last.pt"), None)  # noqa: E731
    wait_for(lambda: job1_last() and mid_epoch(job1_last(), 1)(), proc=proc)
    proc.kill()
    finish(proc)
    (sweep_dir,) = tmp_path.glob("outputs/sweeps/*/*")
    job0 = sweep_dir / "0"
    assert json.loads((job0 / "metrics.json").read_text())["status"] == "completed"
    job0_files = {p: p.stat().st_mtime_ns for p in (job0 / "metrics.json", job0 / "checkpoints" / "last.pt")}

    rc, out = run(tmp_path, "-m", *sweep, f"resume={sweep_dir}")
    assert rc == 0, out
    # A sweep prints one line per job; what each job did goes to its train.log (issue 23, item 17).
    logs = out + "".join(p.read_text() for p in sweep_dir.glob("*/train.log"))
    assert "already completed" in logs and "resuming job 1 scratch from" in logs
    assert {p: p.stat().st_mtime_ns for p in job0_files} == job0_files  # the finished job was not touched
    rows = list(csv.DictReader(open(sweep_dir / "summary.csv")))
    assert [(r["seed"], r["status"]) for r in rows] == [("0", "completed"), ("1", "completed")]
    assert len(list(sweep_dir.glob("*/metrics.json"))) == 2  # the same job directories, no new ones


# ---- 1b. resume in-process: a crash at an exact step ------------------------------------------




@pytest.fixture(scope="module")
def digits():
    return load_dataset({"name": "digits", "limit_train": 200, "limit_test": 100})


CPU = Runtime(torch.device("cpu"), "fp32")
ADAMW = OmegaConf.create({"name": "adamw", "lr": 3e-3, "betas": [0.9, 0.999], "weight_decay": 1e-4,
                          "schedule": "cosine", "warmup_epochs": 0, "milestones": [], "gamma": 0.1})


def trainer(**kwargs) -> Trainer:
    cfg = {"epochs": 2, "batch_size": 16, "eval_batch_size": 256, "data_seed": 3, "progress": False, **kwargs}
    return Trainer(trainer_settings(**cfg), ADAMW, CPU)


def augment_for(data) -> BatchAugment:
    return BatchAugment(1, True, data.mean, data.std)  # crop and flip: the data generator matters


class Faulty(Scratch):
    """Scratch with dropout on the logits (so the global torch RNG matters) and a fault at chosen steps:
    `crash` raises there, `nan` makes the "kd" term NaN there. Steps are (epoch, step in epoch), 1-based."""

    def __init__(self, model, crash=(), nan=()):
        super().__init__(model)
        self.crash, self.nan, self.seen = set(crash), set(nan), {}

    def step(self, batch):
        self.seen[batch.epoch] = self.seen.get(batch.epoch, 0) + 1
        where = (batch.epoch, self.seen[batch.epoch])
        if where in self.crash:
            raise RuntimeError(f"crash at {where}")
        out = super().step(batch)
        logits = F.dropout(out.logits, 0.2, training=True)
        bad = float("nan") if where in self.nan else 0.0
        out.losses = {"ce": F.cross_entropy(logits, batch.y), "kd": logits.sum() * bad}
        return out


def student():
    seed_everything(0)
    return build_model("cnn_student", 1, 8, 10)


def test_a_crash_mid_epoch_resumes_to_the_same_weights_in_process(tmp_path, digits):
    augment = augment_for(digits)
    reference = trainer(every_steps=4).fit(Faulty(student()), digits, augment, tmp_path / "ref")
    with pytest.raises(RuntimeError, match="crash"):
        trainer(every_steps=4).fit(Faulty(student(), crash=[(2, 7)]), digits, augment, tmp_path / "run")
    assert position(tmp_path / "run" / "checkpoints" / "last.pt") == (2, 4)
    torch.manual_seed(1234)  # whatever the RNGs hold now, the resume restores them
    resumed = trainer(every_steps=4).fit(Faulty(student()), digits, augment, tmp_path / "run", resume=True)
    same_weights(tmp_path / "ref" / "checkpoints" / "last.pt", tmp_path / "run" / "checkpoints" / "last.pt")
    strip = lambda d: {k: v for k, v in d.items() if k not in TIMING_KEYS}  # noqa: E731
    assert strip(reference) == strip(resumed)
    assert [strip(r) for r in read_jsonl(tmp_path / "ref" / "metrics.jsonl")] == \
        [strip(r) for r in read_jsonl(tmp_path / "run" / "metrics.jsonl")]


def test_last_pt_holds_the_full_training_state_and_loads_weights_only(tmp_path, digits):
    trainer(every_steps=5).fit(Faulty(student()), digits, augment_for(digits), tmp_path)
    payload = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)
    assert payload["format"] == "kdrun-checkpoint" and payload["version"] == 2
    assert payload["model"] == {"arch": "cnn_student", "num_classes": 10, "in_channels": 1, "image_size": 8}
    train = payload["train"]
    assert (train["epoch"], train["step"]) == (3, 0)  # past the last epoch: done
    for key in ("optimizer", "scheduler", "scaler", "strategy", "history", "best_acc", "best_epoch", "totals"):
        assert key in train, key
    assert {"python", "numpy", "torch", "data", "data_epoch_start"} <= train["rng"].keys()
    assert [r["epoch"] for r in train["history"]] == [1, 2]


def test_resuming_from_a_weights_only_or_corrupt_last_pt_is_refused(tmp_path, digits):
    ckpt = tmp_path / "checkpoints" / "last.pt"
    save_checkpoint(ckpt, student())  # a best.pt-like file: no training state
    with pytest.raises(CheckpointError, match="holds weights only"):
        trainer().fit(Scratch(student()), digits, augment_for(digits), tmp_path, resume=True)
    ckpt.write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(CheckpointError, match="not a readable kdrun checkpoint"):
        trainer().fit(Scratch(student()), digits, augment_for(digits), tmp_path, resume=True)


# ---- 2. atomic writes: a disk that fills mid-write --------------------------------------------


class FullDisk:
    """Patches kdrun.io so that, once `full` is set, every write stops half-way with ENOSPC."""

    def __init__(self, monkeypatch):
        import kdrun.io

        self.full = False
        real_fdopen = os.fdopen
        disk = self

        class File:
            def __init__(self, f):
                self.f = f

            def write(self, data):
                if disk.full:
                    self.f.write(data[: len(data) // 2])  # the first half lands, then the disk is full
                    self.f.flush()
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                return self.f.write(data)

            def __getattr__(self, name):
                return getattr(self.f, name)

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                self.f.close()

        monkeypatch.setattr(kdrun.io.os, "fdopen", lambda *a, **k: File(real_fdopen(*a, **k)))


def test_a_full_disk_leaves_the_previous_file_whole_and_no_temporary(tmp_path, monkeypatch):
    disk = FullDisk(monkeypatch)
    target = tmp_path / "summary.md"
    atomic_write_text(target, "old table\n" * 1000)
    disk.full = True
    with pytest.raises(WriteError, match=r"could not write .*summary.md: No space left on device \(the disk is full"):
        atomic_write_text(target, "new table\n" * 1000)
    assert target.read_text() == "old table\n" * 1000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.md"]


def test_a_disk_that_fills_during_training_keeps_the_last_checkpoint_and_resumes(tmp_path, digits, monkeypatch):
    disk = FullDisk(monkeypatch)
    augment = augment_for(digits)

    def fill_in_epoch_2(epoch_record):
        disk.full = True

    with pytest.raises(WriteError, match="No space left on device"):
        t = trainer(every_steps=3)
        # The disk fills once epoch 1 is recorded: epoch 2's first periodic last.pt fails half-way.
        t.fit(Faulty(student()), digits, augment, tmp_path / "run", on_epoch=fill_in_epoch_2)
    last = tmp_path / "run" / "checkpoints" / "last.pt"
    assert position(last) == (2, 0)  # epoch 1's last.pt, whole
    assert [r["epoch"] for r in read_jsonl(tmp_path / "run" / "metrics.jsonl")] == [1]
    assert not list((tmp_path / "run").rglob("*.tmp"))

    disk.full = False  # space freed: resume
    trainer(every_steps=3).fit(Faulty(student()), digits, augment, tmp_path / "run", resume=True)
    trainer(every_steps=3).fit(Faulty(student()), digits, augment, tmp_path / "ref")
    same_weights(tmp_path / "ref" / "checkpoints" / "last.pt", last)


def test_the_cli_on_a_full_disk_names_the_file_and_how_to_go_on(tmp_path, monkeypatch, capsys):
    """`kdrun` (in this process, for the patch) on a disk that fills when epoch 2's last.pt is written."""
    import kdrun.cli.main
    import kdrun.io
    from hydra.core.global_hydra import GlobalHydra

    disk = FullDisk(monkeypatch)
    real_mkstemp, last_writes = kdrun.io.tempfile.mkstemp, []

    def mkstemp(*args, prefix="", **kwargs):
        if prefix.startswith(".last.pt."):
            last_writes.append(prefix)
            disk.full = len(last_writes) >= 2
        return real_mkstemp(*args, prefix=prefix, **kwargs)

    monkeypatch.setattr(kdrun.io.tempfile, "mkstemp", mkstemp)
    monkeypatch.chdir(tmp_path)
    args = ["dataset=digits", "dataset.limit_train=200", "student=cnn_student", "strategy=scratch", "epochs=2",
            "batch_size=16", "trainer.progress=false", "hydra.run.dir=run"]
    monkeypatch.setattr(sys, "argv", ["kdrun", *args])
    try:
        with pytest.raises(SystemExit) as exit_info:
            kdrun.cli.main.main()
    finally:
        GlobalHydra.instance().clear()
    out = " ".join(capsys.readouterr().err.split())
    assert exit_info.value.code == 2, out
    assert "could not write" in out and "last.pt: No space left on device (the disk is full" in out
    assert "could not record the failure in metrics.json" in out  # the disk is still full
    assert f"to go on from the last checkpoint: kdrun {' '.join(args)} resume={tmp_path / 'run'}" in out
    assert position(tmp_path / "run" / "checkpoints" / "last.pt") == (2, 0)  # epoch 1's, whole
    assert not list((tmp_path / "run").rglob("*.tmp"))


# ---- 4. non-finite loss -----------------------------------------------------------------------


def test_a_nan_loss_stops_naming_epoch_step_and_term_and_keeps_the_last_good_checkpoint(tmp_path, digits):
    with pytest.raises(NonFiniteLoss) as info:
        trainer(every_steps=4).fit(Faulty(student(), nan=[(2, 6)]), digits, augment_for(digits), tmp_path)
    message = str(info.value)
    assert "non-finite loss at epoch 2, step 6: loss term kd = nan" in message
    assert "epoch 2, step 4" in message and "trainer.on_nonfinite=skip" in message
    last = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    assert (last["train"]["epoch"], last["train"]["step"]) == (2, 4)
    assert all(torch.isfinite(t).all() for t in last["state_dict"].values())


def test_skip_counts_the_skipped_steps_in_the_metrics(tmp_path, digits):
    nan = [(1, 2), (1, 5), (2, 3)]
    summary = trainer(on_nonfinite="skip").fit(Faulty(student(), nan=nan), digits, augment_for(digits), tmp_path)
    assert summary["skipped_steps"] == 3 and summary["status"] == "completed"
    assert [r["skipped_steps"] for r in read_jsonl(tmp_path / "metrics.jsonl")] == [2, 1]
    weights = load_checkpoint(tmp_path / "checkpoints" / "last.pt")["state_dict"]
    assert all(torch.isfinite(t).all() for t in weights.values())


def test_an_epoch_of_only_nan_losses_stops_even_with_skip(tmp_path, digits):
    everywhere = [(1, s) for s in range(1, 13)]
    with pytest.raises(NonFiniteLoss, match="every step of epoch 1 .* non-finite loss"):
        trainer(on_nonfinite="skip").fit(Faulty(student(), nan=everywhere), digits, augment_for(digits), tmp_path)


def test_a_diverging_run_stops_with_a_clear_message(tmp_path):
    from kdrun.run import run_experiment

    cfg = compose_cfg("dataset=digits", "dataset.limit_train=200", "student=mlp", "strategy=scratch", "optim=sgd",
                      "optim.lr=1e30", "epochs=1", "trainer.progress=false")
    with pytest.raises(NonFiniteLoss, match=r"non-finite loss at epoch 1, step \d+: loss term ce = (nan|inf)"):
        run_experiment(cfg, tmp_path)


# ---- 5. safe loading --------------------------------------------------------------------------


class CreatesAFile:
    """Unpickling this runs `Path(marker).touch()`: what a malicious checkpoint does."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def malicious_checkpoint(path: Path, marker: Path) -> None:
    payload = {"format": "kdrun-checkpoint", "version": 2, "state_dict": {}, "evil": CreatesAFile(marker)}
    torch.save(payload, path)


def test_a_malicious_checkpoint_is_refused_and_runs_nothing(tmp_path):
    evil, marker = tmp_path / "evil.pt", tmp_path / "pwned"
    malicious_checkpoint(evil, marker)
    torch.load(evil, weights_only=False)  # the file is real: an unsafe load creates the marker
    assert marker.exists()
    marker.unlink()
    with pytest.raises(CheckpointError, match="was refused: it holds objects that a weights-only load does not"):
        load_checkpoint(evil)
    assert not marker.exists()


def test_the_cli_refuses_malicious_truncated_and_foreign_teacher_checkpoints(kdrun, tmp_path):
    """One sweep, one job per hostile file: each fails with its reason, none runs anything."""
    evil, marker = tmp_path / "evil.pt", tmp_path / "pwned"
    malicious_checkpoint(evil, marker)
    good = tmp_path / "good.pt"
    save_checkpoint(good, build_model("mlp", 1, 8, 10))
    (tmp_path / "truncated.pt").write_bytes(good.read_bytes()[:300])
    torch.save({"weights": torch.zeros(3)}, tmp_path / "foreign.pt")
    files = ",".join(str(tmp_path / n) for n in ("evil.pt", "truncated.pt", "foreign.pt", "missing.pt"))
    proc = kdrun("-m", "dataset=digits", "teacher=mlp", "student=mlp", "epochs=1", "trainer.progress=false",
                 f"teacher.checkpoint={files}", check=False)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    (sweep_dir,) = (tmp_path / "outputs" / "sweeps").glob("*/*")
    errors = [r["error"] for r in csv.DictReader(open(sweep_dir / "summary.csv"))]
    assert "was refused" in errors[0] and "never unpickles code" in errors[0]
    assert "is not a readable kdrun checkpoint" in errors[1]
    assert "is not a kdrun checkpoint" in errors[2]
    assert "does not exist" in errors[3]
    assert not marker.exists()


# ---- 6. teacher cache -------------------------------------------------------------------------


def teacher_cfg(tmp_path: Path, **overrides):
    args = ["dataset=digits", "dataset.limit_train=200", "dataset.limit_test=100", "teacher=mlp",
            "student=cnn_student", "epochs=1", "batch_size=16", "trainer.progress=false",
            f"paths.teachers={tmp_path / 'teachers'}"]
    return compose_cfg(*args, *(f"{k}={v}" for k, v in overrides.items()))


def resolve(cfg, digits):
    from kdrun.teachers.resolve import resolve_teacher

    return resolve_teacher(cfg, digits, BatchAugment(1, False, digits.mean, digits.std), CPU)


@pytest.mark.parametrize("damage", ["flip a byte", "truncate", "no entry.json", "garbage entry.json"])
def test_a_corrupt_cache_entry_is_reported_moved_aside_and_retrained(tmp_path, digits, damage, capsys):
    cfg = teacher_cfg(tmp_path)
    first = resolve(cfg, digits)
    assert first.source == "trained"
    weights = first.path
    entry = weights.parent
    if damage == "flip a byte":
        data = bytearray(weights.read_bytes())
        data[len(data) // 2] ^= 0xFF
        weights.write_bytes(bytes(data))
    elif damage == "truncate":
        weights.write_bytes(weights.read_bytes()[:100])
    elif damage == "no entry.json":
        (entry / "entry.json").unlink()
    else:
        (entry / "entry.json").write_text("{not json")
    capsys.readouterr()

    second = resolve(cfg, digits)
    out = " ".join(capsys.readouterr().err.split())
    assert second.source == "trained", out
    assert f"cached teacher {entry} is not trusted" in out
    reason = {"flip a byte": "sha256", "truncate": "bytes", "no entry.json": "no entry.json",
              "garbage entry.json": "unreadable"}[damage]
    assert reason in out
    assert len(list(entry.parent.glob(f"{entry.name}.corrupt-*"))) == 1  # kept for a look, never read
    third = resolve(cfg, digits)
    assert third.source == "cache"
    for a, b in zip(first.model.state_dict().values(), third.model.state_dict().values()):
        assert torch.equal(a, b)  # the retrained teacher is the same teacher


def test_an_interrupted_teacher_training_resumes_from_its_partial_directory(tmp_path, digits, capsys):
    cfg = teacher_cfg(tmp_path, **{"teacher.epochs": 2, "checkpoint.every_steps": 3})
    reference = resolve(teacher_cfg(tmp_path / "ref", **{"teacher.epochs": 2}), digits)
    from kdrun.teachers.resolve import teacher_cache_dir

    partial = teacher_cache_dir(cfg).with_name(teacher_cache_dir(cfg).name + ".partial")
    real_step = Scratch.step
    calls = {"n": 0}

    def crash_at_step_17(self, batch):  # epoch 2, step 5 of 12
        calls["n"] += 1
        if calls["n"] == 17:
            raise KeyboardInterrupt  # a Ctrl-C the guard did not see, or any crash
        return real_step(self, batch)

    Scratch.step = crash_at_step_17
    try:
        with pytest.raises(KeyboardInterrupt):
            resolve(cfg, digits)
    finally:
        Scratch.step = real_step
    assert position(partial / "checkpoints" / "last.pt") == (2, 3)
    assert not teacher_cache_dir(cfg).exists()
    capsys.readouterr()
    teacher = resolve(cfg, digits)
    assert "resuming teacher mlp from" in capsys.readouterr().err
    assert not partial.exists() and teacher.source == "trained"
    for a, b in zip(reference.model.state_dict().values(), teacher.model.state_dict().values()):
        assert torch.equal(a, b)


@pytest.mark.slow
def test_concurrent_runs_train_a_missing_teacher_once_and_never_share_a_run_directory(tmp_path):
    args = ["dataset=digits", "teacher=mlp", "student=cnn_student", "epochs=1", "teacher.epochs=3",
            "trainer.progress=false"]
    # Take every time-stamped run directory of the next ten minutes: the runs must find new ones.
    now = datetime.now()
    taken = [tmp_path / "outputs" / "runs" / f"{t:%Y-%m-%d}" / f"{t:%H-%M-%S}_kd_cnn_student"
             for t in (now + timedelta(seconds=s) for s in range(600))]
    for d in taken:
        d.mkdir(parents=True)
    procs = [start(tmp_path, *args), start(tmp_path, *args)]
    outs = [finish(p) for p in procs]
    assert all(rc == 0 for rc, _ in outs), outs
    assert all(not any(d.iterdir()) for d in taken)  # nobody wrote into an existing directory
    runs = [p.parent for p in tmp_path.glob("outputs/runs/*/*/metrics.json")]
    assert len(runs) == 2 and all(r.name.rsplit("-", 1)[-1].isdigit() for r in runs)
    sources = sorted(json.loads((r / "metrics.json").read_text())["teacher_source"] for r in runs)
    assert sources == ["cache", "trained"], outs
    entries = [p for p in (tmp_path / "outputs" / "teachers" / "digits" / "mlp").iterdir() if p.is_dir()]
    assert len(entries) == 1 and (entries[0] / "entry.json").is_file()  # one entry, no .partial left
