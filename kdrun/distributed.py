"""One run over several processes: torchrun's environment, the process group, and the few collectives
the trainer needs.

`torchrun --nproc_per_node=N -m kdrun ...` starts N copies of kdrun with RANK, WORLD_SIZE and
LOCAL_RANK set; `kdrun ... device.processes=N` starts the same through `torch.distributed.run`. The
group uses gloo for CPU tensors and NCCL for CUDA tensors. Outside torchrun the world is one process
and every helper here is a no-op, so single-process code pays nothing.

Rank 0 alone writes files (checkpoints, metrics, logs, reports). A rank that dies closes its
connections: the others' next collective fails at once, and torchrun stops them and names the rank.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch.distributed import run as torch_run

from kdrun.errors import ConfigError

# Long enough for rank 0 to save a checkpoint while the others wait in a collective; a dead peer is
# noticed sooner (its sockets close), this bounds only a live peer that stopped answering.
TIMEOUT = timedelta(minutes=float(os.environ.get("KDRUN_DIST_TIMEOUT_MIN", "30")))


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def shard(self, items: torch.Tensor) -> torch.Tensor:
        """This rank's contiguous share of `items` (equal shares: callers check divisibility)."""
        return items.tensor_split(self.size)[self.rank] if self.distributed else items

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """`tensor` summed over ranks, in place."""
        if self.distributed:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def from_main(self, value):
        """Rank 0's `value` (any picklable object), on every rank."""
        if not self.distributed:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()


SOLO = World()
_world = SOLO


def current_world() -> World:
    return _world


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_world() -> World:
    """Join the process group torchrun set up (once per process); the world of one otherwise."""
    global _world
    if not launched_by_torchrun() or _world.distributed:
        return _world
    rank, size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    backend = "gloo"
    if torch.cuda.is_available() and dist.is_nccl_available():
        torch.cuda.set_device(local_rank)  # one GPU per process: the one torchrun numbered for us
        backend = "cpu:gloo,cuda:nccl"
    dist.init_process_group(backend=backend, timeout=TIMEOUT)
    _world = World(rank, size, local_rank)
    return _world


def check_divisible(batch_size: int, samples: int, world: World, accumulate: int, label: str) -> None:
    """Every step's global batch must split into equal shares per rank and micro-batch: DDP's average of
    the ranks' mean gradients is then the mean gradient of the whole batch, as on one process."""
    parts = world.size * accumulate
    short = min(batch_size, samples)  # one batch of every sample when batch_size >= samples
    if short % parts:
        raise ConfigError(
            f"{label}: a batch of {short} samples does not split into {world.size} process(es) x "
            f"trainer.accumulate={accumulate} equal parts; choose batch_size divisible by {parts}")


def relaunch_command(argv: list[str], processes: int) -> list[str]:
    """The torch.distributed.run arguments that start this command on `processes` local processes."""
    rest = [a for a in argv if not a.startswith("device.processes=")]
    return ["--standalone", f"--nproc_per_node={processes}", "-m", "kdrun", *rest, f"device.processes={processes}"]


def processes_on_command_line(argv: list[str]) -> int:
    """`device.processes=N` from the command line (1 when absent)."""
    for arg in argv:
        if arg.startswith("device.processes="):
            value = arg.split("=", 1)[1]
            if not value.isdigit() or int(value) < 1:
                raise ConfigError(f"device.processes must be a positive integer, got {value!r}")
            return int(value)
    return 1


def relaunch(argv: list[str], processes: int) -> None:
    """Start this command again under torch.distributed.run, and exit with its status."""
    try:
        torch_run.main(relaunch_command(argv, processes))
    except Exception as exc:  # ChildFailedError: torchrun already printed which rank failed and why
        print(f"kdrun: the {processes}-process run failed: {type(exc).__name__}", file=sys.stderr)
        sys.exit(1)
    sys.exit(0)
