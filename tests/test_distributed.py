"""One run over several processes (torchrun, gloo on the CPU): the same training as one process.

Why the tolerance: with 2 processes each rank's loss is the mean over its half of the global batch and
the gradients are averaged, which is the mean over the whole batch, summed in another order. The
difference is float rounding (~1e-7 per step for these tiny models); 1e-5 leaves room for it over a
few dozen steps, while a wrong shard, a different view or an unaveraged gradient moves weights by
1e-3 or more (test_unaveraged_gradients_would_show checks that the test can tell).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import KDRUN
from kdrun.sources.data import BatchAugment
from kdrun.sources.data.feed import InMemoryFeed
from kdrun.sources.data.splits import DatasetSplits
from kdrun.distributed import World, check_divisible, relaunch_command
from kdrun.errors import ConfigError
from kdrun.runtime import Runtime
from kdrun.teachers.outputs.files import OutputCache, TargetFormat

TOLERANCE = 1e-5
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200", "HYDRA_FULL_ERROR": "0"}
# 256 digits, 64 a batch: 4 steps an epoch; the quickstart's CNN pair, whose models have no BatchNorm
# (torch's SyncBatchNorm is CUDA-only, and per-rank BatchNorm statistics differ from the global batch's).
# fp32: one process and two agree to 1e-5 only there (auto is bf16 on CPUs that have it natively).
SMALL = ["experiment=quickstart", "device=cpu", "dataset.limit_train=256", "batch_size=64", "epochs=2",
         "teacher.epochs=1", "trainer.progress=false", "device.precision=fp32"]


def torchrun(cwd: Path, *args: str, nproc: int = 2) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            "-m", "kdrun", *args]


def run(cwd: Path, command: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    proc = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=ENV)
    assert proc.returncode == 0, f"{command} exited {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["state_dict"]


def max_difference(a: dict, b: dict) -> float:
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


# ---- fast: the pieces ------------------------------------------------------------------------------


def digits_like(n: int = 40) -> DatasetSplits:
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n, 1, 8, 8), dtype=torch.uint8, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    return DatasetSplits(name="t", train_x=x, train_y=y, test_x=x[:8], test_y=y[:8], num_classes=10,
                         mean=(0.5,), std=(0.25,))


def test_shards_of_each_global_batch_are_the_one_process_batch():
    """Each rank's views are its contiguous slice of the one-process batch: same samples, same crops."""
    data, runtime = digits_like(), Runtime(torch.device("cpu"), "fp32")
    augment = BatchAugment(1, True, data.mean, data.std)
    one = list(InMemoryFeed(data, augment, 8, 3, runtime).batches(1))
    shards = [list(InMemoryFeed(data, augment, 8, 3, runtime, World(rank, 2)).batches(1)) for rank in (0, 1)]
    for step, whole in enumerate(one):
        joined_x = torch.cat([shards[0][step].x, shards[1][step].x])
        joined_index = torch.cat([shards[0][step].index, shards[1][step].index])
        assert torch.equal(joined_index, whole.index)
        assert torch.equal(joined_x, whole.x)


def test_a_batch_that_does_not_split_evenly_is_refused():
    with pytest.raises(ConfigError, match=r"batch of 30 samples does not split into 2 process\(es\) x "
                                          r"trainer.accumulate=2 .* divisible by 4"):
        check_divisible(30, 100, World(0, 2), 2, "kd")
    check_divisible(32, 100, World(0, 2), 2, "kd")


def test_device_processes_relaunches_through_torch_distributed_run():
    command = relaunch_command(["experiment=quickstart", "device.processes=2"], 2)
    assert command == ["--standalone", "--nproc_per_node=2", "-m", "kdrun", "experiment=quickstart",
                       "device.processes=2"]


def test_epoch_lock_lets_one_process_record(tmp_path):
    fmt = TargetFormat(10, None)
    cache = OutputCache(tmp_path / "key", {"r": 1}, 4, fmt)
    cache.open()
    first = cache.claim(1)
    # flock is per open file: a second open in this process stands for another process.
    assert first is not None and cache.claim(1) is None
    assert cache.claim(2) is not None
    first.close()
    assert cache.claim(1) is not None


def test_unaveraged_gradients_would_show():
    """The tolerance is far below what a wrong gradient does: one SGD step on half a batch (what a rank
    would apply without the all-reduce) moves the weights by more than 1e-3."""
    torch.manual_seed(0)
    model = torch.nn.Linear(64, 10)
    x, y = torch.randn(64, 64), torch.randint(0, 10, (64,))

    def step(xb, yb):
        m = torch.nn.Linear(64, 10)
        m.load_state_dict(model.state_dict())
        torch.nn.functional.cross_entropy(m(xb), yb).backward()
        with torch.no_grad():
            return {k: p - 0.1 * p.grad for k, p in m.named_parameters()}

    assert max_difference(step(x, y), step(x[:32], y[:32])) > 1e-3


# ---- slow: real processes --------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("method, one_process", [
    pytest.param(["strategy=scratch"], [], id="scratch"),
    pytest.param(["strategy=kd"], [], id="kd-cached"),
    # The hint regressor has BatchNorm (RepDistiller's ConvReg), which on CPUs (no SyncBatchNorm) each rank
    # computes over its own half: one process with 2 micro-batches (trainer.accumulate=2) normalises over
    # the same halves, so the two must agree, with the gradient clipped in both.
    pytest.param(["strategy=kd", "loss.terms.hint.weight=1", "trainer.clip_grad_norm=1"], ["trainer.accumulate=2"],
                 id="kd-hint-clip"),
])
def test_two_processes_train_the_same_weights_as_one(tmp_path, method, one_process):
    args = [*SMALL, *method, f"paths.outputs={tmp_path / 'outputs'}"]
    started = time.perf_counter()
    run(tmp_path, [str(KDRUN), *args, *one_process, "hydra.run.dir=one"])
    one_s = time.perf_counter() - started
    started = time.perf_counter()
    run(tmp_path, torchrun(tmp_path, *args, "hydra.run.dir=two"))
    two_s = time.perf_counter() - started
    one, two = tmp_path / "one", tmp_path / "two"
    difference = max_difference(weights(one), weights(two))
    print(f"{method}: max |w1 - w2| = {difference:.2e}; one process {one_s:.1f}s, two {two_s:.1f}s (wall, with start-up)")
    assert difference <= TOLERANCE
    summary = json.loads((two / "metrics.json").read_text())
    assert summary["world_size"] == 2 and summary["status"] == "completed"
    if method == ["strategy=kd"]:  # the second run read the targets the first recorded, at another world size
        assert summary["teacher_outputs"] == "cache" and summary["teacher_cache_hits"] == 2
    assert not list(two.glob("*rank*")), "only rank 0 writes files"


def rank_pids(launcher: subprocess.Popen, count: int = 2, timeout: float = 120) -> dict[int, int]:
    """{rank: pid} of the processes torchrun started (read from their environment)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = {}
        children = Path(f"/proc/{launcher.pid}/task/{launcher.pid}/children")
        for pid in children.read_text().split() if children.exists() else []:
            try:
                env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            except OSError:
                continue
            for item in env:
                if item.startswith(b"RANK="):
                    found[int(item[5:])] = int(pid)
        if len(found) == count:
            return found
        time.sleep(0.2)
    raise AssertionError("torchrun did not start its ranks")


def wait_for(path: Path, launcher: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert launcher.poll() is None, launcher.communicate()[0][-3000:]
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.1)


@pytest.mark.slow
def test_a_dead_rank_stops_the_other_with_its_name(tmp_path):
    args = [*SMALL, "strategy=scratch", "epochs=50", "checkpoint.every_steps=1", "hydra.run.dir=run"]
    launcher = subprocess.Popen(torchrun(tmp_path, *args), cwd=tmp_path, env=ENV, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    pids = rank_pids(launcher)
    wait_for(tmp_path / "run" / "checkpoints" / "last.pt", launcher)
    os.kill(pids[1], signal.SIGKILL)
    killed = time.monotonic()
    output, _ = launcher.communicate(timeout=120)
    assert time.monotonic() - killed < 60
    assert launcher.returncode != 0
    assert "rank      : 1" in output or "rank: 1" in output, output[-3000:]
    with pytest.raises(ProcessLookupError):
        os.kill(pids[0], 0)  # rank 0 is gone too, not left hanging


@pytest.mark.slow
def test_sigterm_on_one_rank_saves_once_and_resume_matches(tmp_path):
    """SLURM preemption: SIGTERM to rank 1 alone; both ranks stop at the same step (the flag rides on
    the gradient all-reduce), rank 0 saves last.pt, and resuming with torchrun ends with the weights of
    an uninterrupted run."""
    args = [*SMALL, "strategy=kd", "epochs=3", "dataset.limit_train=512", "batch_size=32",
            f"paths.outputs={tmp_path / 'outputs'}"]
    run(tmp_path, [str(KDRUN), *args, "hydra.run.dir=whole"])
    launcher = subprocess.Popen(torchrun(tmp_path, *args, "hydra.run.dir=cut", "checkpoint.every_steps=5"),
                                cwd=tmp_path, env=ENV, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    pids = rank_pids(launcher)
    wait_for(tmp_path / "cut" / "checkpoints" / "last.pt", launcher)
    os.kill(pids[1], signal.SIGTERM)
    output, _ = launcher.communicate(timeout=120)
    summary = json.loads((tmp_path / "cut" / "metrics.json").read_text())
    assert summary["status"] == "interrupted", output[-3000:]
    assert "a signal to another process" in summary["error"] or "SIGTERM" in summary["error"]
    # device.processes=2 starts the two processes through torch.distributed.run, as torchrun would.
    run(tmp_path, [str(KDRUN), *args, "hydra.run.dir=cut", "resume=cut", "device.processes=2"])
    resumed = json.loads((tmp_path / "cut" / "metrics.json").read_text())
    assert resumed["status"] == "completed" and resumed["world_size"] == 2
    assert max_difference(weights(tmp_path / "whole"), weights(tmp_path / "cut")) <= TOLERANCE


def test_sync_batchnorm_on_cpus_is_refused_with_the_reason():
    from kdrun.strategies.scratch import Scratch
    from kdrun.engine.data_parallel import use_sync_batchnorm

    strategy = Scratch(torch.nn.Sequential(torch.nn.BatchNorm1d(3)))
    with pytest.raises(ConfigError, match="trainer.sync_bn=true needs GPUs.*on cpu"):
        use_sync_batchnorm(strategy, Runtime(torch.device("cpu"), "fp32"))
