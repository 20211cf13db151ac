"""The KD loss against a hand-written formula, and where its gradients go."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import kd_terms
from kdrun.methods.terms.logit.kd import kd_loss
from kdrun.sources.models import build_model
from kdrun.strategies.kd import KD
from kdrun.strategies.base import Batch


def direct_kd_objective(s: torch.Tensor, t: torch.Tensor, y: torch.Tensor, alpha: float, beta: float, T: float):
    """alpha * CE(s, y) + beta * T^2 * KL(softmax(t/T) || softmax(s/T)), written out element by element."""
    n, k = s.shape
    ce = 0.0
    kl = 0.0
    for i in range(n):
        row_s = [float(v) for v in s[i]]
        row_t = [float(v) for v in t[i]]
        log_z = math.log(sum(math.exp(v) for v in row_s))
        ce += -(row_s[int(y[i])] - log_z)
        zs = sum(math.exp(v / T) for v in row_s)
        zt = sum(math.exp(v / T) for v in row_t)
        for j in range(k):
            p_t = math.exp(row_t[j] / T) / zt
            p_s = math.exp(row_s[j] / T) / zs
            kl += p_t * (math.log(p_t) - math.log(p_s))
    return alpha * ce / n + beta * T * T * kl / n


@pytest.mark.parametrize("T", [0.5, 1.0, 4.0, 20.0])
@pytest.mark.parametrize("alpha,beta", [(0.1, 0.9), (1.0, 0.0), (0.0, 1.0), (0.5, 2.0)])
def test_kd_objective_matches_direct_formula(T, alpha, beta):
    g = torch.Generator().manual_seed(int(T * 10 + alpha * 100 + beta))
    s = torch.randn(5, 7, generator=g, dtype=torch.float64) * 3
    t = torch.randn(5, 7, generator=g, dtype=torch.float64) * 3
    y = torch.randint(0, 7, (5,), generator=g)

    class Fixed(torch.nn.Module):  # a "model" that returns given logits
        def __init__(self, logits):
            super().__init__()
            self.logits = torch.nn.Parameter(logits.clone())

        def forward(self, x):
            return self.logits

    strategy = KD(Fixed(s), Fixed(t), kd_terms(alpha, beta, T))
    out = strategy.step(Batch(torch.zeros(5, 1), y, torch.arange(5), 1))
    got = sum(out.losses.values()).item()
    assert got == pytest.approx(direct_kd_objective(s, t, y, alpha, beta, T), rel=1e-5, abs=1e-6)
    assert set(out.losses) == {"ce", "kd"}


def test_kd_loss_is_zero_for_identical_logits_and_positive_otherwise():
    logits = torch.randn(4, 10)
    assert kd_loss(logits, logits, 4.0).item() == pytest.approx(0.0, abs=1e-6)
    assert kd_loss(logits, logits.flip(1), 4.0).item() > 0


def test_kd_loss_is_finite_for_extreme_teacher_logits():
    s = torch.randn(3, 5)
    t = torch.tensor([[1000.0, -1000.0, 0.0, 0.0, 0.0]] * 3)  # softmax underflows to exact zeros
    value = kd_loss(s, t, 1.0)
    assert torch.isfinite(value)


def test_gradients_reach_the_student_and_never_the_teacher():
    torch.manual_seed(0)
    student = build_model("cnn_student", 1, 8, 10)
    teacher = build_model("mlp", 1, 8, 10)
    strategy = KD(student, teacher, kd_terms(0.1, 0.9, 4.0))
    strategy.train()
    assert student.training and not teacher.training  # frozen BatchNorm/dropout statistics
    x, y = torch.randn(6, 1, 8, 8), torch.randint(0, 10, (6,))
    out = strategy.step(Batch(x, y, torch.arange(6), 1))
    sum(out.losses.values()).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    assert set(map(id, strategy.parameters())) == set(map(id, student.parameters()))
