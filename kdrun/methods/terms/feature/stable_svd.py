"""Singular values and right singular vectors with a backward that stays finite where singular values
repeat.

torch.linalg.svd's backward divides by s_k^2 - s_j^2 for every pair of singular values and by each s_k:
a rank-deficient matrix (two or more zero singular values, e.g. ReLU maps with dead columns) gives 0/0,
so a finite loss yields NaN gradients, the weights turn NaN and the next forward's SVD fails. Here
1/(s_k^2 - s_j^2) is read as sign(d)/max(|d|, eps) and 0 where d = 0, and 1/s as 0 where s <= eps
(eps = EPS * s_max^2, resp. sqrt of it): the same gradient wherever the singular values are apart by more
than eps (tests check it against torch's to 1e-5), a bounded one where they are not. Only the gradients
through S and V are kept: the callers here never read U.
"""

from __future__ import annotations

import torch
from torch import Tensor

EPS = 1e-10  # relative to the largest squared singular value of each matrix


class _SingularSV(torch.autograd.Function):
    @staticmethod
    def forward(ctx, matrices: Tensor) -> tuple[Tensor, Tensor]:
        u, s, vh = torch.linalg.svd(matrices, full_matrices=False)
        v = vh.transpose(-2, -1)
        ctx.save_for_backward(u, s, v)
        return s, v

    @staticmethod
    def backward(ctx, grad_s: Tensor | None, grad_v: Tensor | None) -> Tensor:
        u, s, v = ctx.saved_tensors
        grad_s = torch.zeros_like(s) if grad_s is None else grad_s
        grad_v = torch.zeros_like(v) if grad_v is None else grad_v
        s2 = s.pow(2)
        eps = EPS * s2.amax(dim=-1, keepdim=True).clamp_min(torch.finfo(s.dtype).tiny)  # (B, 1)
        gap = s2.unsqueeze(-2) - s2.unsqueeze(-1)  # gap[j, k] = s_k^2 - s_j^2
        inv_gap = torch.where(gap == 0, torch.zeros_like(gap),
                              gap.sign() / gap.abs().clamp_min(eps.unsqueeze(-1)))
        inv_s = torch.where(s > eps.sqrt(), 1 / s.clamp_min(torch.finfo(s.dtype).tiny), torch.zeros_like(s))
        vtg = v.transpose(-2, -1) @ grad_v
        inner = s.unsqueeze(-1) * ((vtg - vtg.transpose(-2, -1)) * inv_gap) + torch.diag_embed(grad_s)
        grad = u @ inner @ v.transpose(-2, -1)
        if v.shape[-2] > v.shape[-1]:  # a wide matrix: V does not span the row space, (I - VV^T) gV counts
            beyond = grad_v - v @ vtg
            grad = grad + (u * inv_s.unsqueeze(-2)) @ beyond.transpose(-2, -1)
        return grad


def singular_sv(matrices: Tensor) -> tuple[Tensor, Tensor]:
    """(..., m, n) -> singular values (..., r) and right singular vectors as columns (..., n, r), r = min(m, n),
    as torch.linalg.svd(full_matrices=False) gives them; gradients stay finite (module docstring)."""
    return _SingularSV.apply(matrices)
