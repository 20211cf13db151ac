"""`optim=dot`: the Distillation-Oriented Trainer (Zhao et al., ICCV 2023, "DOT: A Distillation-Oriented
Trainer"); reference: megvii-research/mdistiller (mdistiller/engine/dot.py, trainer.py's DOT).

SGD with two momentum buffers per parameter: one for the gradient of the task loss (the terms that do not
distil: ce), at momentum m - delta, one for the gradient of the distillation terms, at m + delta (delta
0.075 by default, the paper's). Each step, for a parameter p with task gradient g_t and distillation
gradient g_d (weight decay wd, learning rate lr):

    task:          b_t <- m_t b_t + (g_t + wd p)          (the first step: b_t = g_t + wd p)
                   p   <- p - lr b_t
    distillation:  b_d <- m_d b_d + g_d                   (the first step: b_d = g_d)
                   p   <- p - lr b_d

A parameter that gets only one of the two gradients in a step (a term's own part, or a stage that trains
one loss) moves its buffer at the mean momentum (m_t + m_d) / 2 and takes the weight decay on that side,
as the reference does (where, also as the reference, a distillation-only parameter's first step has no
weight decay). The reference needs the two gradients apart: `backward` takes the distillation terms'
gradient by autograd.grad, kept here until the step, and the task terms' into .grad. Both buffers are
optimiser state, so last.pt keeps them and a resume is exact.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class DistillationOrientedTrainer(torch.optim.Optimizer):
    """`task_losses`: the names of the step's losses that are the task's (the rest distil)."""

    def __init__(self, params, *, lr: float, momentum: float, delta: float, weight_decay: float,
                 task_losses: frozenset[str]):
        super().__init__(params, dict(lr=lr, task_momentum=momentum - delta, distillation_momentum=momentum + delta,
                                      weight_decay=weight_decay))
        self.task_losses = task_losses
        self.distillation_grads: dict[nn.Parameter, Tensor] = {}  # this step's, until step() uses them

    def zero_grad(self, set_to_none: bool = True) -> None:
        super().zero_grad(set_to_none)
        self.distillation_grads = {}

    def backward(self, losses: dict[str, Tensor], scale: float = 1.0) -> None:
        """One (micro-)batch's gradients, the two kinds apart, each added to what earlier micro-batches left."""
        params = [p for group in self.param_groups for p in group["params"] if p.requires_grad]
        task = [v for name, v in losses.items() if name in self.task_losses]
        distillation = sum(v for name, v in losses.items() if name not in self.task_losses)
        if isinstance(distillation, Tensor) and distillation.requires_grad:
            grads = torch.autograd.grad(distillation * scale, params, retain_graph=bool(task), allow_unused=True)
            for p, g in zip(params, grads):
                if g is not None:
                    kept = self.distillation_grads.get(p)
                    self.distillation_grads[p] = g if kept is None else kept + g
        if task:
            (sum(task) * scale).backward()

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            lr, wd = group["lr"], group["weight_decay"]
            m_task, m_distil = group["task_momentum"], group["distillation_momentum"]
            m_mean = (m_task + m_distil) / 2
            for p in group["params"]:
                g_task, g_distil = p.grad, self.distillation_grads.get(p)
                state = self.state[p]
                if g_task is not None:
                    d = g_task.add(p, alpha=wd) if wd else g_task
                    buf = state.get("task_momentum_buffer")
                    if buf is None:
                        buf = state["task_momentum_buffer"] = d.clone()
                    else:
                        buf.mul_(m_task if g_distil is not None else m_mean).add_(d)
                    p.add_(buf, alpha=-lr)
                if g_distil is not None:
                    buf = state.get("distillation_momentum_buffer")
                    if buf is None:
                        buf = state["distillation_momentum_buffer"] = g_distil.clone()
                    elif g_task is not None:
                        buf.mul_(m_distil).add_(g_distil)
                    else:
                        buf.mul_(m_mean).add_(g_distil.add(p, alpha=wd) if wd else g_distil)
                    p.add_(buf, alpha=-lr)
        self.distillation_grads = {}
