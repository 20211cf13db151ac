"""optim=dot (Distillation-Oriented Trainer): its update against DOT's formula written out by hand, a run from
the command line, an exact resume, and the refusals where it cannot work."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from conftest import TINY, kd_terms, only_run_dir, read_jsonl, trainer_settings
from kdrun.sources.data import BatchAugment, load_dataset
from kdrun.engine.dot import DistillationOrientedTrainer
from kdrun.sources.models import build_model
from kdrun.runtime import Runtime, seed_everything
from kdrun.strategies.kd import KD
from kdrun.engine.trainer import Trainer

LR, M, DELTA, WD = 0.1, 0.9, 0.075, 0.01


def tiny_losses(w, task_only, distil_only, x, y, t):
    """ce reads w and task_only; kd reads w and distil_only: every path of the update is exercised."""
    logits = x @ w
    return {"ce": F.cross_entropy(logits + task_only, y),
            "kd": (logits - t).pow(2).mean() + (distil_only * x[:, :1]).pow(2).mean()}


def test_the_update_matches_dots_formula_written_out():
    g = torch.Generator().manual_seed(0)
    x, y, t = torch.randn(6, 4, generator=g), torch.randint(0, 3, (6,), generator=g), torch.randn(6, 3, generator=g)
    start = [torch.randn(4, 3, generator=g), torch.randn(3, generator=g), torch.randn(1, generator=g)]
    params = [p.clone().requires_grad_() for p in start]
    optimizer = DistillationOrientedTrainer(params, lr=LR, momentum=M, delta=DELTA, weight_decay=WD,
                                            task_losses=frozenset({"ce"}))
    # By hand: each gradient on its own copy of the weights; buffers as the paper / mdistiller's dot().
    w, task_only, distil_only = (p.clone() for p in start)
    m_task, m_distil, m_mean = M - DELTA, M + DELTA, M
    b_task = [None, None, None]
    b_distil = [None, None, None]
    for _ in range(3):
        optimizer.zero_grad()
        optimizer.backward(tiny_losses(*params, x, y, t))
        optimizer.step()

        leaves = [v.clone().requires_grad_() for v in (w, task_only, distil_only)]
        g_task = torch.autograd.grad(tiny_losses(*leaves, x, y, t)["ce"], leaves[:2])
        g_distil = torch.autograd.grad(tiny_losses(*leaves, x, y, t)["kd"], [leaves[0], leaves[2]])
        # w: both gradients
        d = g_task[0] + WD * w
        b_task[0] = d if b_task[0] is None else m_task * b_task[0] + d
        w = w - LR * b_task[0]
        b_distil[0] = g_distil[0] if b_distil[0] is None else m_distil * b_distil[0] + g_distil[0]
        w = w - LR * b_distil[0]
        # task_only: the task's alone, at the mean momentum
        d = g_task[1] + WD * task_only
        b_task[1] = d if b_task[1] is None else m_mean * b_task[1] + d
        task_only = task_only - LR * b_task[1]
        # distil_only: the distillation's alone, mean momentum, weight decay after the first step (as mdistiller)
        b_distil[2] = g_distil[1] if b_distil[2] is None else m_mean * b_distil[2] + g_distil[1] + WD * distil_only
        distil_only = distil_only - LR * b_distil[2]
    for got, want in zip(params, (w, task_only, distil_only)):
        assert torch.allclose(got.detach(), want, atol=1e-6, rtol=0), (got, want)
    assert not torch.allclose(params[0].detach(), start[0])  # it moved
    state = optimizer.state[params[0]]
    assert torch.allclose(state["task_momentum_buffer"], b_task[0], atol=1e-6)
    assert torch.allclose(state["distillation_momentum_buffer"], b_distil[0], atol=1e-6)


def test_optim_dot_trains_from_the_command_line(kdrun, tmp_path):
    kdrun(*TINY, "dataset.limit_train=200", "dataset.limit_test=100", "optim=dot", "optim.lr=0.05")
    run_dir = only_run_dir(tmp_path)
    (record,) = read_jsonl(run_dir / "metrics.jsonl")
    assert record["loss_ce"] > 0 and record["loss_kd"] > 0
    payload = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    states = payload["train"]["optimizer"]["state"].values()
    assert states and all({"task_momentum_buffer", "distillation_momentum_buffer"} <= set(s) for s in states)
    assert payload["train"]["optimizer"]["param_groups"][0]["task_momentum"] == pytest.approx(0.9 - 0.075)


@pytest.mark.parametrize("keys, message", [
    (["strategy=scratch"], "optim=dot keeps the task's and the distillation's gradients apart, and strategy=scratch"),
    (["loss.terms.ce.weight=0"], "optim=dot needs a task term (one that trains on the labels alone: ce) with weight > 0"),
    (["optim.delta=0.95"], "optim.delta=0.95 with optim.momentum=0.9"),
    (["device.precision=fp16"], "optim=dot with device.precision=fp16"),
    (["trainer.clip_grad_norm=1.0"], "optim=dot with trainer.clip_grad_norm=1.0"),
])
def test_where_dot_cannot_work_it_is_refused(kdrun, tmp_path, keys, message):
    proc = kdrun(*TINY, "optim=dot", *keys, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2 and message in out and "Traceback" not in out, out
    assert not list(tmp_path.rglob("last.pt"))


class Crashing(KD):
    def __init__(self, *args, crash_at=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.crash_at, self.steps = crash_at, 0

    def step(self, batch):
        self.steps += 1
        if self.steps == self.crash_at:
            raise RuntimeError("killed")
        return super().step(batch)


DOT = OmegaConf.create({"name": "dot", "lr": 0.05, "momentum": 0.9, "delta": 0.075, "weight_decay": 5e-4,
                        "schedule": "cosine", "warmup_epochs": 0, "milestones": [], "gamma": 0.1})


def fit(data, run_dir, crash_at=None, resume=False):
    seed_everything(0)
    strategy = Crashing(build_model("cnn_student", 1, 8, 10), build_model("mlp", 1, 8, 10), kd_terms(),
                        crash_at=crash_at)
    trainer = Trainer(trainer_settings(epochs=2, batch_size=16, eval_batch_size=256, data_seed=3, progress=False,
                                       every_steps=4), DOT, Runtime(torch.device("cpu"), "fp32"))
    return trainer.fit(strategy, data, BatchAugment(1, True, data.mean, data.std), run_dir, resume=resume)


def test_a_dot_run_resumes_bit_identically(tmp_path):
    data = load_dataset({"name": "digits", "limit_train": 160, "limit_test": 100})
    reference = fit(data, tmp_path / "ref")
    with pytest.raises(RuntimeError, match="killed"):
        fit(data, tmp_path / "run", crash_at=15)  # inside epoch 2, after a save at step 12
    resumed = fit(data, tmp_path / "run", resume=True)
    strip = lambda d: {k: v for k, v in d.items() if k not in {"seconds", "images_per_s", "wall_time_s"}}  # noqa: E731
    assert strip(reference) == strip(resumed)
    ref, got = (torch.load(p / "checkpoints" / "last.pt", weights_only=True) for p in (tmp_path / "ref", tmp_path / "run"))
    for key, value in ref["state_dict"].items():
        assert torch.equal(value, got["state_dict"][key]), key
    for index, state in ref["train"]["optimizer"]["state"].items():
        for name in ("task_momentum_buffer", "distillation_momentum_buffer"):
            assert torch.equal(state[name], got["train"]["optimizer"]["state"][index][name])
