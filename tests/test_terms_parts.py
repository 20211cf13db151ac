"""The zoo's feature terms with large trainable parts or an initialisation stage (crd, reviewkd, ofd, fsp,
ab, ft): each one's maths against a computation written out here from the paper / reference formula."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from kdrun.errors import ConfigError
from kdrun.methods.terms.base import TermInputs
from kdrun.methods.terms.compose import build_feature_terms
from kdrun.methods.terms.feature.crd import crd_loss
from kdrun.methods.terms.feature.stages import FeatureContext, StageOutputs

CONTEXT = FeatureContext("cnn_student", "resnet8", (1, 8, 10), train_size=40)


def loss_of(**terms):
    return OmegaConf.create({"loss": {"terms": terms}})


def term(name, context=CONTEXT, **keys):
    return build_feature_terms(loss_of(**{name: keys}), context).terms[0]


def direct_nce(scores, n_data):
    """RepDistiller's ContrastLoss, one score at a time."""
    b, k = scores.shape[0], scores.shape[1] - 1
    total = 0.0
    for i in range(b):
        p = scores[i, 0].item()
        total += math.log(p / (p + k / n_data + 1e-7))
        for j in range(1, k + 1):
            total += math.log((k / n_data) / (scores[i, j].item() + k / n_data + 1e-7))
    return -total / b


def test_crd_matches_a_direct_computation():
    g = torch.Generator().manual_seed(0)
    n, d, b, k, T = 12, 5, 4, 6, 0.07
    v_s, v_t = (F.normalize(torch.randn(b, d, generator=g, dtype=torch.float64), dim=1) for _ in range(2))
    mem_s, mem_t = (F.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=1) for _ in range(2))
    idx = torch.randint(0, n, (b, k + 1), generator=g)
    z = torch.tensor([3.0, 5.0], dtype=torch.float64)
    got = crd_loss(v_s, v_t, mem_s, mem_t, idx, z, T, n).item()
    scores = [[[math.exp(sum(mem[idx[i, j], c].item() * v[i, c].item() for c in range(d)) / T) / zz
                for j in range(k + 1)] for i in range(b)] for mem, v, zz in ((mem_t, v_s, 3.0), (mem_s, v_t, 5.0))]
    want = sum(direct_nce(torch.tensor(s, dtype=torch.float64), n) for s in scores)
    assert abs(got - want) < 1e-5 * max(1.0, abs(want))
    record("crd", abs(got - want))


MAX_DIFF: dict[str, float] = {}


def record(name, diff):
    """The largest difference each term's maths test found (printed with -s, for the report)."""
    MAX_DIFF[name] = max(MAX_DIFF.get(name, 0.0), diff)
    print(f"max difference {name}: {MAX_DIFF[name]:.3g}")


def crd_inputs(b=4, index=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    s = [torch.randn(b, 16, 8, 8, generator=g), torch.randn(b, 32, 8, 8, generator=g)]
    t = [torch.randn(b, c, hw, hw, generator=g) for c, hw in ((16, 8), (32, 4), (64, 2))]
    index = torch.arange(b) if index is None else index
    return TermInputs(torch.randn(b, 10, generator=g), torch.randn(b, 10, generator=g), torch.zeros(b, dtype=torch.long),
                      1, index, StageOutputs(s, {}), StageOutputs(t, {}))


def test_crd_term_scores_the_pooled_embeddings_updates_its_bank_and_refuses_without_indices():
    torch.manual_seed(0)
    crd = term("crd", nce_k=16384)
    assert crd.k == 40  # capped at the training set's size
    inputs = crd_inputs()
    before, before_t = crd.memory_s.clone(), crd.memory_t.clone()
    torch.manual_seed(1)
    loss = crd(inputs)["crd"]
    # the same draw of negatives, written out: embeddings of the pooled last stages, memory rows, NCE
    torch.manual_seed(1)
    idx = torch.randint(0, 40, (4, 41))
    idx[:, 0] = torch.arange(4)
    v_s = F.normalize(crd.embed_s[0](inputs.features[1].mean((2, 3))), dim=1)
    v_t = F.normalize(crd.embed_t[0](inputs.teacher_features[2].mean((2, 3))), dim=1)
    want = 0.8 * crd_loss(v_s, v_t, before, before_t, idx, crd.z, 0.07, 40)
    assert abs(loss.item() - want.item()) < 1e-5
    loss.backward()
    assert crd.embed_s[0].weight.grad is not None and crd.embed_t[0].weight.grad is not None
    # momentum 0.5 update of the rows of this batch, renormalised; other rows untouched
    assert torch.allclose(crd.memory_s[:4], F.normalize(before[:4] * 0.5 + v_s.detach() * 0.5, dim=1), atol=1e-6)
    assert torch.equal(crd.memory_s[4:], before[4:])
    with pytest.raises(ConfigError, match="crd needs each sample's position"):
        term("crd", context=FeatureContext("cnn_student", "resnet8", (1, 8, 10)))
