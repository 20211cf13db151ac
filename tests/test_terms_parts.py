"""The zoo's feature terms with large trainable parts or an initialisation stage (crd, reviewkd, ofd, fsp,
ab, ft): each one's maths against a computation written out here from the paper / reference formula."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from kdrun.sources.data import BatchAugment, load_dataset
from conftest import only_run_dir, read_jsonl, trainer_settings
from kdrun.errors import ConfigError
from kdrun.methods.terms.base import TermInputs
from kdrun.methods.terms.compose import build_feature_terms, build_logit_terms
from kdrun.methods.terms.feature import crd as crd_module
from kdrun.methods.terms.feature.crd import crd_loss
from kdrun.methods.terms.feature.ofd import margin_from_bn
from kdrun.methods.terms.feature.stages import FeatureContext, StageOutputs
from kdrun.sources.models import build_model
from kdrun.engine.optim import build_optimizer
from kdrun.runtime import Runtime, seed_everything
from kdrun.strategies.kd import KD
from kdrun.engine.trainer import Trainer

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
    return TermInputs(torch.randn(b, 10, generator=g), torch.randn(b, 10, generator=g),
                      torch.zeros(b, dtype=torch.long),
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
    # the normaliser of each side, fixed from the first batch: mean score times the training set's size
    torch.manual_seed(1)
    fresh = term("crd")
    fresh.memory_s.copy_(before), fresh.memory_t.copy_(before_t)
    fresh.embed_s.load_state_dict(crd.embed_s.state_dict()), fresh.embed_t.load_state_dict(crd.embed_t.state_dict())
    torch.manual_seed(1)
    fresh(inputs)
    v_s, v_t = v_s.detach(), v_t.detach()
    want_z = [float(sum(math.exp(float(mem[j] @ v[i]) / 0.07) for i in range(4) for j in idx[i]) / idx.numel() * 40)
              for mem, v in ((before_t, v_s), (before, v_t))]
    assert fresh.z.tolist() == pytest.approx(want_z, rel=1e-5)


def test_crd_refuses_several_processes(monkeypatch):
    monkeypatch.setattr(crd_module, "current_world", lambda: type("World", (), {"distributed": True})())
    with pytest.raises(ConfigError, match="crd keeps its memory bank in one process"):
        term("crd")


def test_ofd_margins_come_from_the_trained_teachers_batchnorm():
    torch.manual_seed(0)
    ofd = term("ofd", context=FeatureContext("resnet8", "resnet8", (1, 8, 10)))
    teacher = randomise(build_model("resnet8", 1, 8, 10), 9)
    ofd.bind(build_model("resnet8", 1, 8, 10), teacher)
    for i in range(3):
        bn = teacher.stages[i][-1].bn2  # the BatchNorm before the last block's ReLU, as mdistiller's
        assert torch.equal(getattr(ofd, f"margin{i}"), margin_from_bn(bn.weight.detach(), bn.bias.detach()))
    with pytest.raises(ConfigError, match="has no BatchNorm2d"):
        term("ofd", context=FeatureContext("cnn_student", "cnn_teacher", (1, 8, 10)))


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


def test_ft_paraphraser_trains_at_its_init_lr_in_its_own_optimiser_group():
    """RepDistiller trains FT's paraphraser at lr 0.01 (helper/pretrain.py); the run's lr 0.05 diverges."""
    seed_everything(0)
    teacher, student = build_model("resnet8", 1, 8, 10), build_model("cnn_student", 1, 8, 10)
    cfg = loss_of(ft={"init_epochs": 1, "init_lr": 0.01}, ce={"weight": 1.0})
    features = build_feature_terms(cfg, CONTEXT).tap(student, teacher)
    strategy = KD(student, teacher, build_logit_terms(cfg), features=features)
    sgd = OmegaConf.create({"name": "sgd", "lr": 0.1, "momentum": 0.0, "nesterov": False, "weight_decay": 0.0})
    optimizer = build_optimizer(strategy.param_groups(), sgd)
    params = list(strategy.parameters())
    before = [p.detach().clone() for p in params]
    for p in params:
        p.grad = torch.ones_like(p)
    optimizer.step()
    ft = features.terms[0]
    paraphraser = {id(p) for p in [*ft.paraphraser_encoder.parameters(), *ft.paraphraser_decoder.parameters()]}
    assert len(paraphraser) == 12 and sum(len(g["params"]) for g in optimizer.param_groups) == len(params)
    for p, b in zip(params, before):  # one plain SGD step: p - lr * 1
        assert torch.allclose(b - p.detach(), torch.full_like(b, 0.01 if id(p) in paraphraser else 0.1)), p.shape
    without = KD(student, teacher, build_logit_terms(cfg),
                 features=build_feature_terms(loss_of(ft={"init_epochs": 1}), CONTEXT).tap(student, teacher))
    assert len(without.param_groups()) == 1  # init_lr null: the paraphraser trains at optim.lr


@pytest.mark.parametrize("override, message", [
    ("loss.terms.at.init_epochs=3", "the at term has no initialisation stage; terms with one: ab, fsp, ft, hint"),
    ("loss.terms.ft.init_epochs=2", "loss.terms.ft.init_epochs=2 leaves no epoch of the main training (epochs=2)"),
    ("loss.terms.crd.nce_m=1.5", "loss.terms.crd.nce_m=1.5"),
    ("loss=fsp loss.terms.fsp.init_epochs=0", "loss.terms.fsp has weight 0 and init_epochs 0"),
    ("loss.terms.fsp.student_stages=[0] loss.terms.fsp.init_epochs=1",
     "loss.terms.fsp.student_stages=[0] and loss.terms.fsp.teacher_stages=None"),
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


# ---- trainable parts: optimised, in last.pt, resumed bit-identically inside either stage, never in the student


class Crashing(KD):
    """strategy=kd that raises at chosen (epoch, step) positions, 1-based, as a kill would."""

    def __init__(self, *args, crash=(), **kwargs):
        super().__init__(*args, **kwargs)
        self.crash, self.seen = set(crash), {}

    def step(self, batch):
        self.seen[batch.epoch] = self.seen.get(batch.epoch, 0) + 1
        if (batch.epoch, self.seen[batch.epoch]) in self.crash:
            raise RuntimeError("killed")
        return super().step(batch)


ALL_PARTS = {"crd": {}, "reviewkd": {"warmup_epochs": 1}, "ofd": {},
             "ab": {"weight": 1.0, "init_epochs": 1, "student_stages": [0, 1], "teacher_stages": [1, 2]},
             "ft": {"init_epochs": 1}, "ce": {"weight": 1.0}}


def parts_strategy(data, crash=()):
    seed_everything(0)
    teacher = build_model("resnet8", 1, 8, 10)
    student = build_model("cnn_student", 1, 8, 10)
    cfg = loss_of(**ALL_PARTS)
    features = build_feature_terms(cfg, FeatureContext("cnn_student", "resnet8", (1, 8, 10), len(data.train_y)))
    return Crashing(student, teacher, build_logit_terms(cfg), features=features.tap(student, teacher), crash=crash)


def fit(strategy, data, run_dir, every_steps=None, resume=False):
    trainer = Trainer(trainer_settings(epochs=2, batch_size=16, eval_batch_size=256, data_seed=3, progress=False,
                                    every_steps=every_steps), ADAMW, Runtime(torch.device("cpu"), "fp32"))
    return trainer.fit(strategy, data, BatchAugment(1, True, data.mean, data.std), run_dir, resume=resume)


ADAMW = OmegaConf.create({"name": "adamw", "lr": 3e-3, "betas": [0.9, 0.999], "weight_decay": 1e-4,
                          "schedule": "cosine", "warmup_epochs": 0, "milestones": [], "gamma": 0.1})


def features_state(last):
    payload = torch.load(last, weights_only=True)
    return payload["train"]["strategy"]["features"], payload["state_dict"], payload["train"]["epoch"]


def test_parts_train_checkpoint_and_resume_inside_either_stage_bit_identically(tmp_path):
    data = load_dataset({"name": "digits", "limit_train": 200, "limit_test": 100})
    parts_strategy(data)  # fills the stage-shape caches, whose first fill draws from the RNG
    initial = {k: v.clone() for k, v in parts_strategy(data).features.state_dict().items()}
    reference = fit(parts_strategy(data), data, tmp_path / "ref")
    run = tmp_path / "run"
    with pytest.raises(RuntimeError, match="killed"):  # killed inside the init stage (ft's paraphraser)
        fit(parts_strategy(data, crash=[(1, 7)]), data, run, every_steps=4)
    init_state, student_state, epoch = features_state(run / "checkpoints" / "last.pt")
    assert epoch == 1
    changed = {k for k in initial if not torch.equal(initial[k], init_state[k])}
    assert any(k.startswith("terms.4.paraphraser") for k in changed)  # ft's paraphraser trains in its stage ...
    assert not [k for k in changed if k.startswith(("terms.0.embed", "terms.4.translator", "terms.1.",
                                                    "terms.2.connectors"))]
    # ... alone: crd, reviewkd, ofd and ft's translator wait for the main stage
    with pytest.raises(RuntimeError, match="killed"):  # resumed, then killed inside the main stage
        fit(parts_strategy(data, crash=[(2, 7)]), data, run, every_steps=4, resume=True)
    main_state, _, epoch = features_state(run / "checkpoints" / "last.pt")
    assert epoch == 2
    resumed = fit(parts_strategy(data), data, run, every_steps=4, resume=True)
    strip = lambda d: {k: v for k, v in d.items() if k not in {"seconds", "images_per_s", "wall_time_s"}}  # noqa: E731
    assert strip(reference) == strip(resumed)
    ref_state, ref_student, _ = features_state(tmp_path / "ref" / "checkpoints" / "last.pt")
    final_state, final_student, _ = features_state(run / "checkpoints" / "last.pt")
    for key in ref_state:  # every part, the memory bank included, as the uninterrupted run's
        assert torch.equal(ref_state[key], final_state[key]), key
    for key in ref_student:
        assert torch.equal(ref_student[key], final_student[key]), key
    # the main stage trained every part; the paraphraser stayed frozen after its stage
    for prefix in ("terms.0.embed_s", "terms.0.memory_s", "terms.1.abfs", "terms.2.connectors", "terms.3.connectors",
                   "terms.4.translator"):
        assert any(not torch.equal(main_state[k], final_state[k]) for k in final_state if k.startswith(prefix)), prefix
    assert all(torch.equal(main_state[k], final_state[k]) for k in final_state if k.startswith("terms.4.paraphraser"))
    assert final_state["terms.0.memory_s"].shape == (200, 128) and final_state["terms.0.z"].min() > 0
    assert not any(k.startswith(("terms", "embed", "memory", "abfs", "paraphraser")) for k in final_student)


# ---- from the command line: one run per term on digits with a zoo pair, and named layers of a torchvision model

ZOO = ["dataset=digits", "dataset.limit_train=320", "dataset.limit_test=100", "teacher=resnet8", "teacher.epochs=1",
       "student=cnn_student", "trainer.progress=false"]


@pytest.mark.slow  # a teacher and a student per run: ~30 s each on a shared CPU
@pytest.mark.parametrize("keys, epochs, staged", [
    (["loss=crd", "loss.terms.reviewkd.weight=1", "loss.terms.ofd.weight=0.001"], 1, ()),
    (["loss=ft", "loss.terms.ft.init_epochs=1", "loss.terms.ab.init_epochs=1", "loss.terms.fsp.init_epochs=1",
      "loss.terms.fsp.student_stages=[0,1]", "loss.terms.fsp.teacher_stages=[0,1]"], 2, ("ft", "ab", "fsp")),
    (["loss=kd", "loss.terms.hint.init_epochs=1", "loss.terms.hint.weight=0"], 2, ("hint",)),  # hint stage, then kd
])
def test_the_terms_train_from_the_command_line(kdrun, tmp_path, keys, epochs, staged):
    kdrun(*ZOO, f"epochs={epochs}", *keys)
    run_dir = only_run_dir(tmp_path)
    records = read_jsonl(run_dir / "metrics.jsonl")
    losses = [{k for k in r if k.startswith("loss_")} for r in records]
    if staged:  # the init epoch trains the init losses alone; then the main stage's terms
        assert losses[0] == {f"loss_{name}_init" for name in staged}
        assert {"loss_ce", "loss_ft" if "ft" in staged else "loss_kd"} <= losses[1]
        assert not any(k.endswith("_init") for k in losses[1])
    else:
        assert all(records[0][f"loss_{name}"] > 0 for name in ("crd", "reviewkd", "ofd"))
    payload = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    assert not any(k.startswith("terms.") for k in payload["state_dict"])  # the student alone
    best = torch.load(run_dir / "checkpoints" / "best.pt", weights_only=True)
    assert best["state_dict"].keys() == payload["state_dict"].keys()
    features = payload["train"]["strategy"]["features"]  # the parts, kept for resume
    assert staged == ("hint",) or any(k.endswith(("memory_s", "paraphraser_encoder.0.weight")) for k in features)
    if "ft" in staged:  # the preset's paraphraser lr (RepDistiller's 0.01), its own optimiser group
        assert [g["initial_lr"] for g in payload["train"]["optimizer"]["param_groups"]][1:] == [0.01]


@pytest.mark.slow  # a torchvision student: ~30 s on a shared CPU
def test_the_terms_read_named_layers_of_a_torchvision_model(kdrun, tmp_path):
    small = ["dataset=synthetic", "dataset.image_size=32", "dataset.num_classes=3", "dataset.train_size=32",
             "dataset.test_size=16", "dataset.augment.crop_padding=0", "epochs=1", "batch_size=16",
             "trainer.progress=false", "device=cpu"]
    kdrun(*small, "teacher=resnet8", "teacher.epochs=1", "student=torchvision", "student.arch=mobilenet_v3_small",
          "loss=crd", "loss.terms.crd.student_layer=features.12",
          "loss.terms.reviewkd.student_layers=[features.3,features.8]",
          "loss.terms.reviewkd.teacher_layers=[stages.1,stages.2]",
          "loss.terms.ofd.student_layers=[features.8]", "loss.terms.ofd.teacher_layers=[stages.2]")
    record = read_jsonl(only_run_dir(tmp_path) / "metrics.jsonl")[0]
    assert all(record[f"loss_{name}"] > 0 for name in ("crd", "reviewkd", "ofd"))
