"""A term that raises on non-finite inputs (an SVD, an eigendecomposition, a Cholesky factor of NaN
features, or of its own trained parts gone NaN) reports a NaN loss instead, so that trainer.on_nonfinite
judges it as any other NaN term: a clean stop naming the epoch, step and term, or a skipped batch. An
error on finite inputs and parts is a bug and still raises."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from kdrun.methods.terms.base import TermInputs

Call = Callable[[TermInputs], dict[str, Tensor]]


def finite_inputs(inputs: TermInputs) -> bool:
    tensors = [inputs.logits, inputs.teacher_logits]
    for outputs in (inputs.features, inputs.teacher_features):
        if outputs is not None:
            tensors += [*outputs.stages, *outputs.layers.values()]
    return all(bool(torch.isfinite(t).all()) for t in tensors if torch.is_tensor(t) and t.is_floating_point())


def finite_parameters(term: nn.Module) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in term.parameters())


def guarded(term: nn.Module, name: str, call: Call, inputs: TermInputs) -> dict[str, Tensor]:
    """`call(inputs)`, or {name: NaN} (on the student's graph, so the step's backward still runs) where it
    raised and some input, or one of the term's own trained parts, was NaN or inf."""
    try:
        return call(inputs)
    except (RuntimeError, ValueError):  # torch's linalg errors are RuntimeErrors
        if finite_inputs(inputs) and finite_parameters(term):
            raise
        return {name: inputs.logits.sum() * float("nan")}
