"""The zoo's feature terms with large trainable parts or an initialisation stage (crd, reviewkd, ofd, fsp,
ab, ft): each one's maths against a computation written out here from the paper / reference formula."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from kdrun.errors import ConfigError
from kdrun.methods.terms.base import TermInputs
from kdrun.methods.terms.compose import build_feature_terms
from kdrun.methods.terms.feature.crd import crd_loss
from kdrun.methods.terms.feature.ofd import margin_from_bn
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


def direct_bn(x, bn):
    """BatchNorm2d in eval mode, written out."""
    shape = (1, -1, 1, 1)
    return ((x - bn.running_mean.view(shape)) / torch.sqrt(bn.running_var.view(shape) + bn.eps) * bn.weight.view(shape)
            + bn.bias.view(shape))


def randomise(module, seed):
    """Eval mode with random BatchNorm statistics and affine parameters, so BN is not the identity."""
    g = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g))
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.randn(m.num_features, generator=g))
            m.bias.data.copy_(torch.randn(m.num_features, generator=g))
    return module.eval()


def direct_hcl(fs, ft):
    """HCL for one level: MSE, plus MSEs of 4x4, 2x2, 1x1 block means (smaller than the map) at 1/2, 1/4, 1/8."""
    h = fs.shape[2]
    losses, weights = [((fs - ft) ** 2).mean()], [1.0]
    for size in (4, 2, 1):
        if size < h:
            k = h // size  # the test's maps divide evenly, so adaptive pooling is a block mean
            pool = lambda f: f.reshape(f.shape[0], f.shape[1], size, k, size, k).mean((3, 5))  # noqa: E731
            weights.append(weights[-1] / 2)
            losses.append(weights[-1] * ((pool(fs) - pool(ft)) ** 2).mean())
    return sum(losses) / sum(weights)


def test_reviewkd_matches_a_direct_computation():
    torch.manual_seed(0)
    rkd = randomise(term("reviewkd", warmup_epochs=4), 1)
    inputs = crd_inputs(b=3)
    got = rkd(TermInputs(**{**inputs.__dict__, "epoch": 2}))["reviewkd"]
    s_maps, t_maps = inputs.features.stages, inputs.teacher_features.stages[-2:]  # cnn_student 2 stages
    # levels deepest first: pooled student's last stage, then its stages from the deepest
    levels = [s_maps[1].mean((2, 3), keepdim=True), s_maps[1], s_maps[0]]
    targets = [t_maps[1].mean((2, 3), keepdim=True), t_maps[1], t_maps[0]]
    outs, fused = [], None
    for abf, x, target in zip(rkd.abfs, levels, targets):
        x = direct_bn(F.conv2d(x, abf.reduce[0].weight), abf.reduce[1])
        if fused is not None:
            h, w = x.shape[2:]
            up = fused[:, :, (torch.arange(h) * fused.shape[2]) // h][:, :, :, (torch.arange(w) * fused.shape[3]) // w]
            z = torch.sigmoid(F.conv2d(torch.cat([x, up], 1), abf.attention[0].weight, abf.attention[0].bias))
            x = x * z[:, 0:1] + up * z[:, 1:2]
        th, tw = target.shape[2:]
        if x.shape[2:] != target.shape[2:]:  # nearest resize: source index floor(i * in / out)
            x = x[:, :, (torch.arange(th) * x.shape[2]) // th][:, :, :, (torch.arange(tw) * x.shape[3]) // tw]
        fused = x
        outs.append(direct_bn(F.conv2d(x, abf.out[0].weight, padding=1), abf.out[1]))
    want = 0.5 * sum(direct_hcl(o, t) for o, t in zip(outs, targets))  # epoch 2 of a 4-epoch warm-up
    assert abs(got.item() - want.item()) < 1e-5 * max(1.0, abs(want.item()))
    record("reviewkd", abs(got.item() - want.item()))


def test_ofd_margin_and_distance_match_a_direct_computation():
    g = torch.Generator().manual_seed(0)
    weight, bias = torch.randn(6, generator=g), torch.randn(6, generator=g) * 2
    bias[0], weight[0] = 10.0, 1.0  # P(x < 0) <= 0.001: the -3 sigma case
    margin = [m.item() for m in margin_from_bn(weight, bias)]
    for c in range(6):
        sd, mu = abs(weight[c].item()), bias[c].item()
        cdf = 0.5 * (1 + math.erf((-mu / sd) / math.sqrt(2)))
        want = mu - sd * math.exp(-((mu / sd) ** 2) / 2) / math.sqrt(2 * math.pi) / cdf if cdf > 0.001 else -3 * sd
        assert abs(margin[c] - want) < 1e-5
        record("ofd", abs(margin[c] - want))
    torch.manual_seed(0)
    ofd = randomise(term("ofd", context=FeatureContext("resnet8", "resnet8", (1, 8, 10))), 2)
    ofd.margin0.copy_(torch.randn(16, generator=g).abs().neg())
    ofd.margin1.copy_(torch.randn(32, generator=g).abs().neg())
    ofd.margin2.copy_(torch.randn(64, generator=g).abs().neg())
    b = 3
    s = [torch.randn(b, c, hw, hw, generator=g) for c, hw in ((16, 8), (32, 4), (64, 2))]
    t = [torch.randn(b, c, hw, hw, generator=g) for c, hw in ((16, 8), (32, 4), (64, 2))]
    inputs = TermInputs(torch.zeros(b, 10), torch.zeros(b, 10), torch.zeros(b, dtype=torch.long), 1, None,
                        StageOutputs(s, {}), StageOutputs(t, {}))
    got = ofd(inputs)["ofd"].item()
    want = 0.0
    for i in range(3):
        conn = ofd.connectors[i]
        source = direct_bn(F.conv2d(s[i], conn[0].weight), conn[1])
        m = getattr(ofd, f"margin{i}")
        total = 0.0
        for n_, c, y, x in itertools.product(*(range(d) for d in source.shape)):
            sv, tv, mv = source[n_, c, y, x].item(), t[i][n_, c, y, x].item(), m[c].item()
            if tv > 0:
                total += (sv - tv) ** 2
            elif tv > mv:
                total += (sv - tv) ** 2 if sv > tv else 0.0
            else:
                total += (sv - mv) ** 2 if sv > mv else 0.0
        want += total / b / 2 ** (2 - i)
    want *= 0.001
    assert abs(got - want) < 1e-5 * max(1.0, abs(want))
    record("ofd", abs(got - want))


def test_fsp_matches_a_direct_computation():
    term_ = term("fsp", context=FeatureContext("resnet8", "resnet8", (1, 8, 10)))
    g = torch.Generator().manual_seed(3)
    b = 2
    s = [torch.randn(b, c, hw, hw, generator=g) for c, hw in ((16, 8), (32, 4), (64, 2))]
    t = [torch.randn(b, c, hw, hw, generator=g) for c, hw in ((16, 8), (32, 4), (64, 2))]
    inputs = TermInputs(torch.zeros(b, 10), torch.zeros(b, 10), torch.zeros(b, dtype=torch.long), 1, None,
                        StageOutputs(s, {}), StageOutputs(t, {}))
    got = term_.init_loss(inputs)["fsp_init"].item()

    def fsp(bottom, top):  # G[n, i, j] = mean over (h, w) of top_i * bottom_j, bottom pooled by 2x2 block means
        k = bottom.shape[2] // top.shape[2]
        bottom = bottom.reshape(*bottom.shape[:2], top.shape[2], k, top.shape[3], k).mean((3, 5))
        return torch.tensor([[[float((top[n, i] * bottom[n, j]).mean()) for j in range(bottom.shape[1])]
                              for i in range(top.shape[1])] for n in range(b)], dtype=torch.float64)

    want = sum(float(((fsp(s[i], s[i + 1]) - fsp(t[i], t[i + 1])) ** 2).mean()) for i in range(2))
    assert abs(got - want) < 1e-5 * max(1.0, abs(want))
    record("fsp", abs(got - want))
    assert term_(inputs) == {}  # RepDistiller's main stage adds no FSP loss (weight 0)
    with pytest.raises(ConfigError, match="equal channel counts"):
        term("fsp")  # cnn_student's last stages (16, 32) against resnet8's (32, 64)


def test_ab_matches_a_direct_computation():
    torch.manual_seed(0)
    ab = randomise(term("ab", margin=0.5), 4)
    inputs = crd_inputs(b=2, seed=5)
    got = ab.init_loss(inputs)["ab_init"].item()
    want = 0.0
    s_maps, t_maps = inputs.features.stages, inputs.teacher_features.stages[1:]
    for i in range(2):
        conn = ab.connectors[i]
        s = direct_bn(F.conv2d(s_maps[i], conn[0].weight, conn[0].bias), conn[1])
        k = s.shape[2] // t_maps[i].shape[2]
        s = s.reshape(*s.shape[:2], t_maps[i].shape[2], k, t_maps[i].shape[3], k).mean((3, 5))
        total = 0.0
        for sv, tv in zip(s.flatten().tolist(), t_maps[i].flatten().tolist()):
            if tv <= 0 and sv > -0.5:
                total += (sv + 0.5) ** 2
            if tv > 0 and sv <= 0.5:
                total += (sv - 0.5) ** 2
        want += 2.0 ** (i - 1) * total / 2 / 1000 * 3
    assert abs(got - want) < 1e-5 * max(1.0, abs(want))
    record("ab", abs(got - want))


def test_ft_matches_a_direct_computation():
    torch.manual_seed(0)
    ft = randomise(term("ft"), 6)
    inputs = crd_inputs(b=2, seed=7)
    s, t = inputs.features[1], inputs.teacher_features[2]  # 32x8x8 and 64x2x2

    def stack(x, seq, transposed=False):  # conv (3x3, padding 1) [+ BN] + LeakyReLU(0.1), written out
        for layer in seq:
            if isinstance(layer, torch.nn.ConvTranspose2d):  # stride 1, padding 1: a conv with the flipped kernel
                x = F.conv2d(x, layer.weight.transpose(0, 1).flip(2, 3), layer.bias, padding=1)
            elif isinstance(layer, torch.nn.Conv2d):
                x = F.conv2d(x, layer.weight, layer.bias, padding=1)
            elif isinstance(layer, torch.nn.BatchNorm2d):
                x = direct_bn(x, layer)
            else:
                x = torch.where(x > 0, x, 0.1 * x)
        return x

    torch.set_grad_enabled(False)  # plain arithmetic below
    rec = stack(stack(t, ft.paraphraser_encoder), ft.paraphraser_decoder)
    want_init = float(((rec - t) ** 2).mean())
    got_init = ft.init_loss(inputs)["ft_init"].item()
    fs, ftt = stack(s, ft.translator), stack(t, ft.paraphraser_encoder)
    fs = fs.reshape(2, 32, 2, 4, 2, 4).mean((3, 5))  # the larger map pooled to 2x2 by block means

    def factor(f):
        a = (f ** 2).mean(1).flatten(1)
        return a / a.norm(dim=1, keepdim=True)

    want = 200.0 * float((factor(fs) - factor(ftt)).abs().mean())
    got = ft(inputs)["ft"].item()
    torch.set_grad_enabled(True)
    for g_, w_ in ((got_init, want_init), (got, want)):
        assert abs(g_ - w_) < 1e-5 * max(1.0, abs(w_))
        record("ft", abs(g_ - w_))


def test_init_stage_trains_only_the_initialising_terms_losses():
    features = build_feature_terms(loss_of(ft={"init_epochs": 2}, crd={}, hint={"weight": 1.0, "init_epochs": 1}),
                                   CONTEXT)
    inputs = crd_inputs()
    for epoch, names in ((1, {"ft_init", "hint_init"}), (2, {"ft_init"}), (3, {"ft", "crd", "hint"})):
        assert features.initialising(epoch) == (epoch < 3)
        assert set(features(TermInputs(**{**inputs.__dict__, "epoch": epoch}))) == names


@pytest.mark.parametrize("override, message", [
    ("loss.terms.at.init_epochs=3", "the at term has no initialisation stage; terms with one: ab, fsp, ft, hint"),
    ("loss.terms.ft.init_epochs=2", "loss.terms.ft.init_epochs=2 leaves no epoch of the main training (epochs=2)"),
    ("loss.terms.crd.nce_m=1.5", "loss.terms.crd.nce_m=1.5"),
    ("loss.terms.fsp.student_stages=[0] loss.terms.fsp.init_epochs=1", "loss.terms.fsp.student_stages=[0] and loss.terms.fsp.teacher_stages=None"),
])
def test_wrong_use_is_refused_with_a_message(kdrun, override, message):
    proc = kdrun("dataset=digits", "teacher=resnet8", "student=cnn_student", "epochs=2", "trainer.progress=false",
                 *override.split(), check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2 and message in out and "Traceback" not in out


@pytest.mark.parametrize("strategy", ["online", "self"])
def test_a_feature_term_on_a_strategy_without_features_is_refused(kdrun, strategy):
    proc = kdrun("dataset=digits", "student=cnn_student", "epochs=1", f"strategy={strategy}", "loss=crd", check=False)
    assert proc.returncode == 2 and "loss.terms.crd is a feature term" in proc.stdout + proc.stderr
