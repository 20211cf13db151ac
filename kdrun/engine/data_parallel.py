"""Data parallelism beside the training loop: what the ranks of one run exchange.

Each rank trains on its slice of every global batch (kdrun.sources.data.feed); these keep them one model:
the same starting weights, gradients averaged in one all-reduce per step, and epoch sums over all ranks.
"""

from __future__ import annotations

import torch
from torch import nn

from kdrun.distributed import World
from kdrun.errors import ConfigError
from kdrun.runtime import Runtime
from kdrun.engine.contract import Strategy
from kdrun.engine.train_state import EpochTotals


def average_gradients(params: list[nn.Parameter], world: World, flags: list) -> list[bool]:
    """Average the gradients over ranks in one all-reduce, carrying `flags` (one per rank, each true or
    false) along; returns, for each flag, whether any rank raised it.

    Done here rather than by wrapping the student in DistributedDataParallel: strategies call their
    models' forward_features and several modules (student, hint regressor, peers), which DDP's hooks
    on forward() do not see. The arithmetic is DDP's: sum, then divide by the world size."""
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1).float() for g in grads]
                     + [torch.stack([torch.as_tensor(f, dtype=torch.float32, device=grads[0].device) for f in flags])])
    world.sum(flat)
    at = 0
    for p, g in zip(params, grads):
        n = g.numel()
        p.grad = (flat[at:at + n] / world.size).view_as(g).to(g.dtype)
        at += n
    return [bool(v > 0) for v in flat[at:].tolist()]


def global_totals(totals: EpochTotals, world: World) -> EpochTotals:
    """The epoch's running sums over every rank (each rank's mean terms summed, with its step count)."""
    if not world.distributed:
        return totals
    names = sorted(totals.term_sums)
    device = totals.correct.device if isinstance(totals.correct, torch.Tensor) else torch.device("cpu")
    flat = torch.stack([torch.as_tensor(totals.term_sums[n], dtype=torch.float64, device=device) for n in names]
                       + [torch.as_tensor(float(v), dtype=torch.float64, device=device)
                          for v in (totals.correct, totals.seen, totals.steps, totals.unlabelled)])
    world.sum(flat)
    sums, (correct, seen, steps, unlabelled) = flat[:len(names)], flat[len(names):].tolist()
    return EpochTotals(term_sums={n: sums[i].float() for i, n in enumerate(names)},
                       correct=torch.tensor(int(correct), device=device), seen=int(seen), steps=int(steps),
                       unlabelled=int(unlabelled), skipped=totals.skipped, seconds=totals.seconds, lr=totals.lr)


def use_sync_batchnorm(strategy: Strategy, runtime: Runtime) -> None:
    """trainer.sync_bn: the student's BatchNorm layers normalise over the global batch."""
    if runtime.device.type != "cuda":
        raise ConfigError("trainer.sync_bn=true needs GPUs: torch's SyncBatchNorm runs on CUDA only "
                          f"(this run is on {runtime.device.type}); set trainer.sync_bn=false")
    strategy.student = nn.SyncBatchNorm.convert_sync_batchnorm(strategy.student)


def same_start(strategy: Strategy, world: World) -> None:
    """Every rank starts from rank 0's weights (each builds them from the same seed; this makes sure)."""
    if not world.distributed:
        return
    for module in _trained_modules(strategy):
        for tensor in [*module.parameters(), *module.buffers()]:
            torch.distributed.broadcast(tensor.data, src=0)


def _trained_modules(strategy: Strategy) -> list[nn.Module]:
    return [m for m in vars(strategy).values() if isinstance(m, nn.Module)
            and any(p.requires_grad for p in m.parameters())]
