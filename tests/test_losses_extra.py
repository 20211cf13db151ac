"""DKD, FitNets hints, attention transfer and the teacher mixture against direct computations."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from omegaconf import OmegaConf

from kdrun.losses import confidence_weights, cross_entropy, mixture_logits
from kdrun.methods.terms.compose import build_feature_terms, build_logit_terms
from kdrun.methods.terms.feature.at import at_loss, attention_map
from kdrun.methods.terms.feature.hint import hint_loss
from kdrun.methods.terms.feature.stages import FeatureContext
from kdrun.methods.terms.logit.dkd import dkd_loss
from kdrun.methods.terms.logit.kd import kd_loss
from kdrun.sources.models import build_model
from kdrun.strategies.base import Batch
from kdrun.strategies.kd import KD


def loss_of(**terms):
    """A config whose loss lists `terms` (name -> keys); unset keys take each term's declared defaults."""
    return OmegaConf.create({"loss": {"terms": terms}})


def direct_dkd(s, t, y, T):
    """TCKD and NCKD written out with probabilities, one sample at a time."""
    tckd = nckd = 0.0
    for i in range(len(y)):
        ps, pt = F.softmax(s[i] / T, 0), F.softmax(t[i] / T, 0)
        k = int(y[i])
        bs, bt = torch.stack([ps[k], 1 - ps[k]]), torch.stack([pt[k], 1 - pt[k]])
        tckd += (bt * (bt.log() - bs.log())).sum()
        rest = [j for j in range(len(ps)) if j != k]
        qs, qt = ps[rest] / ps[rest].sum(), pt[rest] / pt[rest].sum()
        nckd += (qt * (qt.log() - qs.log())).sum()
    n = len(y)
    return T * T * tckd / n, T * T * nckd / n


@pytest.mark.parametrize("T", [1.0, 4.0, 8.0])
def test_dkd_terms_match_a_direct_computation(T):
    g = torch.Generator().manual_seed(int(T))
    s, t = torch.randn(6, 5, generator=g, dtype=torch.float64) * 3, torch.randn(6, 5, generator=g, dtype=torch.float64) * 3
    y = torch.randint(0, 5, (6,), generator=g)
    tckd, nckd = dkd_loss(s, t, y, T)
    want_tckd, want_nckd = direct_dkd(s, t, y, T)
    assert tckd.item() == pytest.approx(want_tckd.item(), rel=1e-5)
    assert nckd.item() == pytest.approx(want_nckd.item(), rel=1e-5)
    # TCKD and NCKD decompose KD: KL = TCKD + (1 - p_t^teacher) * NCKD, per sample (Zhao et al. eq. 7)
    one = dkd_loss(s[:1], t[:1], y[:1], T)
    p_target = F.softmax(t[0] / T, 0)[y[0]]
    assert kd_loss(s[:1], t[:1], T).item() == pytest.approx((one[0] + (1 - p_target) * one[1]).item(), rel=1e-4)


def test_dkd_is_finite_and_zero_for_identical_logits():
    s = torch.tensor([[50.0, -50.0, 0.0], [0.0, 1.0, 2.0]])
    y = torch.tensor([0, 2])
    tckd, nckd = dkd_loss(s, s.clone(), y, 4.0)
    assert tckd.item() == pytest.approx(0.0, abs=1e-6) and nckd.item() == pytest.approx(0.0, abs=1e-6)
    assert all(torch.isfinite(v) for v in dkd_loss(s, -s, y, 1.0))


def test_dkd_objective_warms_up_linearly_by_epoch():
    g = torch.Generator().manual_seed(0)
    s, t, y = torch.randn(4, 5, generator=g), torch.randn(4, 5, generator=g), torch.tensor([0, 1, 2, 3])
    objective = build_logit_terms(loss_of(ce={"weight": 1.0}, dkd={"weight": 1.0, "T": 4.0, "tckd_weight": 1.0,
                                                                  "nckd_weight": 8.0, "warmup_epochs": 20}))
    tckd, nckd = dkd_loss(s, t, y, 4.0)
    for epoch, ramp in [(1, 0.05), (10, 0.5), (20, 1.0), (100, 1.0)]:
        terms = objective(s, t, y, epoch)
        assert set(terms) == {"ce", "tckd", "nckd"}
        assert terms["tckd"].item() == pytest.approx(ramp * tckd.item(), rel=1e-6)
        assert terms["nckd"].item() == pytest.approx(ramp * 8.0 * nckd.item(), rel=1e-6)
        assert terms["ce"].item() == pytest.approx(cross_entropy(s, y).item())
    no_warmup = build_logit_terms(loss_of(dkd={"weight": 0.5, "T": 4.0, "tckd_weight": 2.0, "warmup_epochs": 0}))
    assert no_warmup(s, t, y, 1)["tckd"].item() == pytest.approx(0.5 * 2.0 * tckd.item(), rel=1e-6)


def test_hint_loss_is_mse_and_pools_the_larger_map():
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(2, 3, 4, 4, generator=g), torch.randn(2, 3, 4, 4, generator=g)
    assert hint_loss(a, b).item() == pytest.approx(((a - b) ** 2).mean().item())
    big = torch.randn(2, 3, 8, 8, generator=g)
    pooled = big.reshape(2, 3, 4, 2, 4, 2).mean(dim=(3, 5))  # 2x2 average pooling, by hand
    assert hint_loss(big, b).item() == pytest.approx(((pooled - b) ** 2).mean().item(), rel=1e-6)
    assert hint_loss(b, big).item() == pytest.approx(((b - pooled) ** 2).mean().item(), rel=1e-6)
    v, w = torch.randn(5, 7, generator=g), torch.randn(5, 7, generator=g)
    assert hint_loss(v, w).item() == pytest.approx(((v - w) ** 2).mean().item())


def direct_attention(f):
    """Per sample: sum over channels of squares / C, flattened, divided by its L2 norm."""
    rows = []
    for sample in f:
        a = (sample ** 2).sum(0).flatten() / sample.shape[0]
        rows.append(a / a.norm())
    return torch.stack(rows)


def test_attention_transfer_matches_a_direct_computation():
    g = torch.Generator().manual_seed(2)
    s1, t1 = torch.randn(3, 4, 6, 6, generator=g), torch.randn(3, 16, 6, 6, generator=g)
    s2, t2 = torch.randn(3, 8, 6, 6, generator=g), torch.randn(3, 32, 3, 3, generator=g)
    assert torch.allclose(attention_map(s1), direct_attention(s1), atol=1e-6)
    s2_pooled = s2.reshape(3, 8, 3, 2, 3, 2).mean(dim=(3, 5))
    want = ((direct_attention(s1) - direct_attention(t1)) ** 2).mean() \
        + ((direct_attention(s2_pooled) - direct_attention(t2)) ** 2).mean()
    assert at_loss([s1, s2], [t1, t2]).item() == pytest.approx(want.item(), rel=1e-5)
    assert at_loss([t1], [t1 * 3]).item() == pytest.approx(0.0, abs=1e-9)  # scale-free


@pytest.mark.parametrize("T", [1.0, 4.0])
def test_mixture_logits_give_the_weighted_mean_of_softened_outputs(T):
    g = torch.Generator().manual_seed(3)
    logits = [torch.randn(4, 6, generator=g, dtype=torch.float64) * 4 for _ in range(3)]
    fixed = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    want = sum(w * F.softmax(t / T, 1) for w, t in zip(fixed, logits))
    assert torch.allclose(F.softmax(mixture_logits(logits, fixed, T) / T, 1), want.float(), atol=1e-6)

    per_sample = confidence_weights(logits)
    top = torch.stack([F.softmax(t, 1).max(1).values for t in logits], 1)
    assert torch.allclose(per_sample, (top / top.sum(1, keepdim=True)).float(), atol=1e-6)
    want = sum(per_sample[:, k:k + 1].double() * F.softmax(t / T, 1) for k, t in enumerate(logits))
    assert torch.allclose(F.softmax(mixture_logits(logits, per_sample, T) / T, 1), want.float(), atol=1e-5)

    only_first = mixture_logits(logits, torch.tensor([1.0, 0.0, 0.0]), T)
    assert torch.allclose(F.softmax(only_first / T, 1), F.softmax(logits[0].float() / T, 1), atol=1e-6)


def test_kd_hint_and_at_together_are_the_sum_of_the_separate_terms():
    torch.manual_seed(0)
    student, teacher = build_model("cnn_student", 1, 8, 10), build_model("resnet8", 1, 8, 10)
    context = FeatureContext("cnn_student", "resnet8", (1, 8, 10))
    hint = {"weight": 100.0, "student_stage": 1, "teacher_stage": 1}
    at = {"weight": 1000.0, "student_stages": [0, 1], "teacher_stages": [1, 2]}
    logit = {"ce": {"weight": 0.1}, "kd": {"weight": 0.9, "T": 4.0}}
    features = build_feature_terms(loss_of(hint=hint, at=at), context).tap(student, teacher)
    x, y = torch.randn(6, 1, 8, 8), torch.randint(0, 10, (6,))
    batch = Batch(x, y, torch.arange(6), 1)

    def total(**terms) -> float:
        cfg = loss_of(**terms)
        parts = build_feature_terms(cfg, context)
        if parts is not None and "hint" in terms:
            parts.terms[0].regressor.load_state_dict(features.terms[0].regressor.state_dict())
        logits = build_logit_terms(cfg) if any(k in terms for k in ("ce", "kd")) else build_logit_terms(loss_of())
        strategy = KD(student, teacher, logits, features=parts.tap(student, teacher) if parts else None)
        return sum(strategy.step(batch).losses.values()).item()

    together = KD(student, teacher, build_logit_terms(loss_of(**logit)), features=features).step(batch).losses
    assert list(together) == ["ce", "kd", "hint", "at"]
    separate = total(**logit) + total(hint=hint) + total(at=at)
    assert sum(together.values()).item() == pytest.approx(separate, rel=1e-5)

    # and each term is the direct computation on the models' stage outputs
    with torch.no_grad():
        t_feats, t_logits = teacher.eval().forward_features(x)
    s_feats, s_logits = student.forward_features(x)
    assert together["kd"].item() == pytest.approx(0.9 * kd_loss(s_logits, t_logits, 4.0).item(), rel=1e-5)
    regressed = features.terms[0].regressor(s_feats[1])
    assert together["hint"].item() == pytest.approx(
        100 * ((regressed - F.avg_pool2d(t_feats[1], 2)) ** 2).mean().item(), rel=1e-5)
    # on 8x8 inputs the AT weight keeps its CIFAR meaning: 1000 * (8/32)^2 (kdrun/methods/terms/feature/scale.py)
    assert together["at"].item() == pytest.approx(
        1000 * (8 / 32) ** 2 * at_loss([s_feats[0], s_feats[1]], [t_feats[1], t_feats[2]]).item(), rel=1e-5)
