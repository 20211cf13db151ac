"""kdrun.methods.terms.feature.stable_svd: the same values and gradients as torch.linalg.svd where its
singular values are distinct (torch's autograd is the independent computation), finite gradients where
torch's are NaN (repeated zero singular values, as kdsvd met on ReLU maps)."""

from __future__ import annotations

import pytest
import torch

from kdrun.methods.terms.feature.stable_svd import singular_sv


def torch_sv(matrices):
    _, s, vh = torch.linalg.svd(matrices, full_matrices=False)
    return s, vh.transpose(-2, -1)


def sign_free_loss(s, v, weights_s, weights_v):
    """A loss that does not depend on the signs the SVD picks for its vectors (products of two entries)."""
    return (s * weights_s).sum() + ((v * v[..., :1, :]) * weights_v).sum()


@pytest.mark.parametrize("shape", [(3, 12, 5), (3, 4, 7), (2, 6, 6)])  # tall (kdsvd's), wide, square
def test_values_and_gradients_match_torchs_where_singular_values_are_distinct(shape):
    g = torch.Generator().manual_seed(sum(shape))
    a = torch.randn(*shape, generator=g, dtype=torch.float64, requires_grad=True)
    r = min(shape[1:])
    weights_s = torch.randn(shape[0], r, generator=g, dtype=torch.float64)
    weights_v = torch.randn(shape[0], shape[2], r, generator=g, dtype=torch.float64)
    ours, theirs = singular_sv(a), torch_sv(a)
    torch.testing.assert_close(ours[0], theirs[0])
    torch.testing.assert_close(ours[1], theirs[1])
    got, = torch.autograd.grad(sign_free_loss(*ours, weights_s, weights_v), a)
    want, = torch.autograd.grad(sign_free_loss(*theirs, weights_s, weights_v), a)
    assert want.abs().max() > 0.1
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_gradients_stay_finite_where_singular_values_repeat():
    g = torch.Generator().manual_seed(0)
    a = torch.zeros(2, 8, 4, dtype=torch.float64)
    a[..., :2] = torch.randn(2, 8, 2, generator=g, dtype=torch.float64)  # two zero columns: s = (., ., 0, 0)
    a.requires_grad_()
    weights_v = torch.randn(2, 4, 4, generator=g, dtype=torch.float64)

    def loss(fn):
        s, v = fn(a)
        return s.sum() + ((v[..., :2] * v[..., :1, :2]) * weights_v[..., :2]).sum()

    want, = torch.autograd.grad(loss(torch_sv), a)
    assert not torch.isfinite(want).all()  # torch's: 0/0 between the two zero singular values
    got, = torch.autograd.grad(loss(singular_sv), a)
    assert torch.isfinite(got).all() and got.abs().max() > 0
    # the gradient reaching the non-zero columns is torch's on those columns alone
    b = a.detach()[..., :2].clone().requires_grad_()
    s, v = torch_sv(b)
    alone, = torch.autograd.grad(s.sum() + ((v * v[..., :1, :]) * weights_v[..., :2, :2]).sum(), b)
    torch.testing.assert_close(got[..., :2], alone)
