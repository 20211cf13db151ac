"""A term that raises on NaN or inf inputs (kdsvd's SVD on NaN features) ends as the non-finite policy's
clean message naming the step and term, never a torch traceback; an error on finite inputs still raises."""

from __future__ import annotations

import math

import pytest
import torch
from omegaconf import OmegaConf

from conftest import run_kdrun
from kdrun.methods.terms.base import TermInputs
from kdrun.methods.terms.compose import build_feature_terms
from kdrun.methods.terms.feature.stages import FeatureContext, StageOutputs

CONTEXT = FeatureContext("resnet8", "resnet8", (1, 8, 10))
SHAPES = [(16, 8, 8), (32, 4, 4), (64, 2, 2)]  # resnet8's stages on 8x8 digits


def kdsvd_inputs(poison: float | None) -> TermInputs:
    g = torch.Generator().manual_seed(0)
    s = [torch.randn(4, *shape, generator=g) for shape in SHAPES]
    t = [torch.randn(4, *shape, generator=g) for shape in SHAPES]
    if poison is not None:
        s[1][0, 0, 0, 0] = poison
    logits = torch.randn(4, 10, requires_grad=True)
    return TermInputs(logits, torch.zeros(4, 10), torch.zeros(4, dtype=torch.long), 1, None,
                      StageOutputs(s, {}), StageOutputs(t, {}))


def kdsvd_terms():
    return build_feature_terms(OmegaConf.create({"loss": {"terms": {"kdsvd": {}}}}), CONTEXT)


def test_a_term_that_raises_on_nan_features_reports_nan():
    inputs = kdsvd_inputs(math.nan)
    with pytest.raises(RuntimeError, match="non-finite"):  # what the term alone does: torch's SVD refuses
        kdsvd_terms().terms[0](inputs)
    value = kdsvd_terms()(inputs)["kdsvd"]
    assert math.isnan(value.item())
    value.backward()  # on the student's graph: the step's backward runs, the policy then judges the value
    assert inputs.logits.grad is not None


def test_an_error_on_finite_inputs_still_raises_and_on_a_nan_part_reports_nan(monkeypatch):
    terms = kdsvd_terms()
    assert math.isfinite(terms(kdsvd_inputs(None))["kdsvd"].item())

    def broken(self, inputs):
        raise RuntimeError("a bug in a term")

    monkeypatch.setattr(type(terms.terms[0]), "forward", broken)
    with pytest.raises(RuntimeError, match="a bug in a term"):
        terms(kdsvd_inputs(None))
    terms.terms[0].register_parameter("part", torch.nn.Parameter(torch.tensor(math.nan)))  # a trained part gone NaN
    assert math.isnan(terms(kdsvd_inputs(None))["kdsvd"].item())


# A user's term as kdsvd was: a finite value whose gradient is NaN (sqrt at 0), so the weights turn NaN
# after the first step, and an SVD that then raises on the NaN features.
NAN_GRADIENT_TERM = """
from dataclasses import dataclass

import torch

from kdrun.keys import key
from kdrun.methods.terms.base import FeatureTerm, register_term


@register_term
class NaNGradient(FeatureTerm):
    name = "nan_gradient"

    @dataclass
    class Config:
        weight: float = key(default=1.0, low=0)

    @classmethod
    def build(cls, config, context):
        return cls(config)

    def forward(self, inputs):
        pooled = inputs.features[-1].flatten(1)
        _, s, _ = torch.linalg.svd(pooled, full_matrices=False)
        return self.weighted(s.mean() + (pooled * 0).sqrt().sum())
"""


@pytest.mark.slow  # a teacher and a student on the command: ~24 s at load 5 on 2 cores
def test_nan_features_from_the_command_stop_with_the_policys_message_not_a_traceback(tmp_path, monkeypatch):
    (tmp_path / "nanterm.py").write_text(NAN_GRADIENT_TERM)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    proc = run_kdrun(tmp_path, "plugins=[nanterm]", "loss.terms.nan_gradient.weight=1", "dataset=digits",
                     "dataset.limit_train=128", "dataset.limit_test=64", "student=cnn_student", "teacher=mlp",
                     "teacher.epochs=1", f"paths.teachers={tmp_path / 'teachers'}", "epochs=1", "batch_size=16",
                     "trainer.progress=false", "device=cpu", check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out
    assert "Traceback" not in out and "LinAlgError" not in out, out
    lines = [line for line in proc.stderr.splitlines() if "non-finite loss at epoch 1, step 2:" in line]
    assert len(lines) == 1 and "nan_gradient = nan" in lines[0], out
