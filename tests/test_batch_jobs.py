"""Runs under nohup, SLURM or Kubernetes: output to a file shows each epoch as it ends, the run directory
keeps the same lines in train.log, SIGTERM (preemption) saves and resumes like Ctrl-C, and a long run
says how long it will take."""

from __future__ import annotations

import json
import shlex
import signal

import pytest

from conftest import read_jsonl
from test_faults import ENV, RUN, finish, mid_epoch, position, run, same_weights, start, wait_for

pytestmark = pytest.mark.slow


def test_output_to_a_file_shows_each_epoch_while_the_next_one_runs(tmp_path):
    # trainer.progress=true: the live bar is for terminals; a file gets plain, flushed lines.
    proc = start(tmp_path, *RUN, "epochs=3", "trainer.progress=true", "hydra.run.dir=run")
    log_line = "scratch epoch 1/3"
    wait_for(lambda: log_line in open(proc.log.name).read(), proc=proc)
    assert proc.poll() is None  # epoch 2 is running, and epoch 1's line is already in the file
    assert len(read_jsonl(tmp_path / "run" / "metrics.jsonl")) < 3
    rc, out = finish(proc)
    assert rc == 0, out
    for epoch in (1, 2, 3):
        assert f"scratch epoch {epoch}/3  loss " in out
    line = next(line for line in out.splitlines() if "scratch epoch 1/3" in line)
    for field in (" train ", "% test ", " img/s ", " elapsed ", " ETA "):
        assert field in line, line
    train_log = (tmp_path / "run" / "train.log").read_text()
    assert [f"scratch epoch {e}/3" in train_log for e in (1, 2, 3)] == [True] * 3


def test_sigterm_mid_epoch_saves_and_resume_gives_the_uninterrupted_weights(tmp_path):
    reference = start(tmp_path, *RUN, "hydra.run.dir=ref")
    proc = start(tmp_path, *RUN, "hydra.run.dir=run")
    last = tmp_path / "run" / "checkpoints" / "last.pt"
    wait_for(mid_epoch(last, 1), proc=proc)
    proc.send_signal(signal.SIGTERM)
    rc, out = finish(proc)
    assert rc == 143, out
    assert "SIGTERM: finishing this step" in out and f"saved {last}" in out
    summary = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert summary["status"] == "interrupted" and "SIGTERM" in summary["error"]
    command = out.split("to resume: ", 1)[1].splitlines()[0]
    assert summary["resume"] == command
    epoch, step = position(last)
    assert epoch == 1 and step > 0  # saved mid-epoch, after the step in progress

    rc, out = run(tmp_path, *shlex.split(command)[1:])  # a requeued job runs the printed command
    assert rc == 0, out
    assert f"resuming scratch from {last} (epoch 1, step {step}/89)" in out
    rc, out = finish(reference)
    assert rc == 0, out
    same_weights(tmp_path / "ref" / "checkpoints" / "last.pt", last)


def test_a_long_run_says_how_long_it_will_take(tmp_path):
    # 240 epochs of resnet56 on digits: many minutes, so the estimate is printed once the first steps are timed.
    proc = start(tmp_path, "dataset=digits", "strategy=scratch", "student=resnet56", "epochs=240",
                 "trainer.progress=false", "hydra.run.dir=run")
    wait_for(lambda: "for 240 epochs x" in open(proc.log.name).read(), proc=proc)
    proc.kill()
    rc, out = finish(proc)
    line = next(line for line in out.splitlines() if "for 240 epochs x" in line)
    assert line.startswith("scratch: about ") and "ms a step" in line
    assert ENV["OMP_NUM_THREADS"] == "1"
