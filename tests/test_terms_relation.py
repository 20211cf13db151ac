"""The feature and relation terms sp, cc, rkd, pkt, nst, vid (RepDistiller's) and kdsvd (mdistiller's):
each term's value against the reference's formula written out here, from the kdrun command, through named
layers of torchvision models, their trainable parts across a crash and resume, and wrong use refused."""

from __future__ import annotations

import itertools
import json
import math

import pytest
import torch
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from conftest import only_run_dir, read_jsonl, run_kdrun, trainer_settings
from kdrun.sources.checkpoint import load_checkpoint
from kdrun.sources.data import BatchAugment, load_dataset
from kdrun.errors import ConfigError
from kdrun.methods.terms.base import TermInputs
from kdrun.methods.terms.compose import build_feature_terms, build_logit_terms
from kdrun.methods.terms.feature.picks import embedding, embedding_size
from kdrun.methods.terms.feature.stages import FeatureContext, StageOutputs
from kdrun.sources.models import build_model
from kdrun.run import check_run_config
from kdrun.runtime import Runtime, seed_everything
from kdrun.strategies.kd import KD
from kdrun.engine.trainer import Trainer

TOL = 1e-5
# cnn_student's stages on 8x8 digits: 16x4x4, 32x2x2; resnet8's: 16x8x8, 32x4x4, 64x2x2.
CONTEXT = FeatureContext("cnn_student", "resnet8", (1, 8, 10))
STUDENT_SHAPES = [(16, 4, 4), (32, 2, 2)]
TEACHER_SHAPES = [(16, 8, 8), (32, 4, 4), (64, 2, 2)]


def loss_of(**terms):
    return OmegaConf.create({"loss": {"terms": terms}})


def fixed_features(b: int = 6, seed: int = 0):
    """Random stage outputs of both models, float64; ReLU-like (non-negative) as most stages are."""
    g = torch.Generator().manual_seed(seed)
    s = [torch.randn(b, *shape, generator=g, dtype=torch.float64).relu() for shape in STUDENT_SHAPES]
    t = [torch.randn(b, *shape, generator=g, dtype=torch.float64).relu() for shape in TEACHER_SHAPES]
    return s, t


def term_value(name: str, s, t, **keys) -> tuple[object, dict]:
    """Build one term (float64) for cnn_student <- resnet8 and evaluate it on stage outputs s, t."""
    terms = build_feature_terms(loss_of(**{name: keys}), CONTEXT).double()
    b = s[0].shape[0]
    inputs = TermInputs(torch.zeros(b, 10), torch.zeros(b, 10), torch.zeros(b, dtype=torch.long), 1, None,
                        StageOutputs(s, {}), StageOutputs(t, {}))
    return terms.terms[0], {k: v.item() for k, v in terms(inputs).items()}


def pooled(x):
    """Global average over height and width, written out."""
    return x.sum(dim=(2, 3)) / (x.shape[2] * x.shape[3])


def block_mean(x, size):
    """Average-pool a square map to size x size by block means (the sizes here divide)."""
    b, c, h, w = x.shape
    return x.reshape(b, c, size, h // size, size, w // size).mean(dim=(3, 5))


def same_size(a, b):
    size = min(a.shape[2], b.shape[2])
    return block_mean(a, size), block_mean(b, size)


def smooth_l1(x, y):
    total = 0.0
    for d in (x - y).flatten().tolist():
        total += 0.5 * d * d if abs(d) < 1 else abs(d) - 0.5
    return total / x.numel()


# --- each term against the reference's formula --------------------------------------------------------------

def direct_sp(fs, ft):
    """Tung & Mori eq. 2-4 (RepDistiller SP.py): G = Q Q^T, rows L2-normalised, ||G_t - G_s||_F^2 / b^2."""
    b = fs.shape[0]
    qs, qt = fs.reshape(b, -1), ft.reshape(b, -1)
    total = 0.0
    for i in range(b):
        gs = torch.stack([qs[i] @ qs[j] for j in range(b)])
        gt = torch.stack([qt[i] @ qt[j] for j in range(b)])
        total += ((gt / gt.norm() - gs / gs.norm()) ** 2).sum().item()
    return total / b ** 2


def test_sp_matches_the_reference_formula():
    s, t = fixed_features()
    term, got = term_value("sp", s, t, weight=3000.0)
    assert term.refs == (1, 2)  # the last stage of each: RepDistiller's feat[-2]
    assert got["sp"] == pytest.approx(3000.0 * direct_sp(s[1], t[2]), rel=TOL)


def test_cc_matches_the_reference_formula():
    s, t = fixed_features(seed=1)
    term, got = term_value("cc", s, t, weight=0.02, embed_dim=5)
    es = pooled(s[1]) @ term.embed_student.weight.t() + term.embed_student.bias  # LinearEmbed of feat[-1]
    et = pooled(t[2]) @ term.embed_teacher.weight.t() + term.embed_teacher.bias
    b = es.shape[0]
    total = 0.0
    for i in range(b - 1):  # RepDistiller CC.py: mean over i of sum_c |s_i - t_i| * |s_i+1 - t_i+1|
        total += sum(abs(es[i, c] - et[i, c]).item() * abs(es[i + 1, c] - et[i + 1, c]).item() for c in range(5))
    assert got["cc"] == pytest.approx(0.02 * total / (b - 1), rel=TOL)


def direct_rkd(x, y):
    """Park et al. eq. 4-7 (RepDistiller RKD.py): distances normalised by their mean over distinct pairs,
    cosines of the angle at i between j and k; Huber loss averaged over all b^2 pairs and b^3 triplets."""
    b = x.shape[0]

    def distances(e):
        d = torch.zeros(b, b, dtype=e.dtype)
        for i, j in itertools.product(range(b), range(b)):
            if i != j:
                d[i, j] = (e[i] - e[j]).norm()
        return d / d[d > 0].mean()

    def unit(v):
        n = v.norm()
        return v / n if n > 1e-12 else v * 0

    def angles(e):
        a = torch.zeros(b, b, b, dtype=e.dtype)
        for i, j, k in itertools.product(range(b), range(b), range(b)):
            a[i, j, k] = unit(e[j] - e[i]) @ unit(e[k] - e[i])
        return a

    return smooth_l1(distances(x), distances(y)), smooth_l1(angles(x), angles(y))


def test_rkd_matches_the_reference_formula():
    s, t = fixed_features(seed=2)
    _, got = term_value("rkd", s, t, weight=2.0, distance_weight=25.0, angle_weight=50.0)
    distance, angle = direct_rkd(pooled(s[1]), pooled(t[2]))
    assert got["rkd_distance"] == pytest.approx(2.0 * 25.0 * distance, rel=TOL)
    assert got["rkd_angle"] == pytest.approx(2.0 * 50.0 * angle, rel=TOL)


def direct_pkt(x, y, eps=1e-7):
    """Passalis & Tefas eq. 8-10 (RepDistiller PKT.py): cosine similarities mapped to [0, 1], rows
    normalised to probabilities; the mean over all b^2 entries of p_t log((p_t + eps) / (p_s + eps))."""
    b = x.shape[0]

    def probabilities(e):
        p = torch.zeros(b, b, dtype=e.dtype)
        for i, j in itertools.product(range(b), range(b)):
            cos = (e[i] / (e[i].norm() + eps)) @ (e[j] / (e[j].norm() + eps))
            p[i, j] = (cos + 1) / 2
        return p / p.sum(dim=1, keepdim=True)

    ps, pt = probabilities(x), probabilities(y)
    return sum(pt[i, j].item() * math.log((pt[i, j].item() + eps) / (ps[i, j].item() + eps))
               for i, j in itertools.product(range(b), range(b))) / b ** 2


def test_pkt_matches_the_reference_formula():
    s, t = fixed_features(seed=3)
    _, got = term_value("pkt", s, t, weight=30000.0)
    assert got["pkt"] == pytest.approx(30000.0 * direct_pkt(pooled(s[1]), pooled(t[2])), rel=TOL)


def direct_nst(fs, ft):
    """Huang & Wang eq. 6 with the polynomial kernel (x.y)^2 (RepDistiller NST.py): the larger map pooled to
    the smaller, each channel's activations L2-normalised; MMD^2 = mean k(t,t) + mean k(s,s) - 2 mean k(s,t)."""
    fs, ft = same_size(fs, ft)
    b = fs.shape[0]
    total = 0.0
    for n in range(b):
        # a silent channel (all zero) stays zero, as F.normalize in the reference leaves it
        s = [v / max(v.norm(), 1e-12) for v in fs[n].reshape(fs.shape[1], -1)]
        t = [v / max(v.norm(), 1e-12) for v in ft[n].reshape(ft.shape[1], -1)]

        def mean_k(a, c):
            return sum(((x @ y) ** 2).item() for x in a for y in c) / (len(a) * len(c))

        total += mean_k(t, t) + mean_k(s, s) - 2 * mean_k(s, t)
    return total / b


def test_nst_matches_the_reference_formula_over_the_paired_stages():
    s, t = fixed_features(seed=4)
    term, got = term_value("nst", s, t, weight=50.0)
    assert term.pairs == ((0, 1), (1, 2))  # the last stages paired from the end: RepDistiller's feat[1:-1]
    want = direct_nst(s[0], t[1]) + direct_nst(s[1], t[2])
    assert got["nst"] == pytest.approx(50.0 * want, rel=TOL)


def test_vid_matches_the_reference_formula_over_the_paired_stages():
    s, t = fixed_features(seed=5)
    s = [s[0], torch.randn(6, 32, 2, 2, dtype=torch.float64)]  # a stage with negative values too
    term, _ = term_value("vid", s, t)
    with torch.no_grad():  # train the variances away from their start, so each channel's differs
        for p in term.predictors:
            p.alpha.copy_(torch.linspace(-2.0, 3.0, len(p.alpha), dtype=torch.float64))
    b = s[0].shape[0]
    inputs = TermInputs(torch.zeros(b, 10), torch.zeros(b, 10), torch.zeros(b, dtype=torch.long), 1, None,
                        StageOutputs(s, {}), StageOutputs(t, {}))
    got = term(inputs)["vid"].item()
    want = 0.0
    for predictor, (i, j) in zip(term.predictors, ((0, 1), (1, 2))):
        x, y = same_size(s[i], t[j])
        w1, w2, w3 = (conv.weight[:, :, 0, 0] for conv in predictor.mean[::2])
        h = torch.einsum("oc,bchw->bohw", w1, x).relu()  # Ahn et al.: mu(x) by 1x1 convolutions
        h = torch.einsum("oc,bchw->bohw", w2, h).relu()
        mu = torch.einsum("oc,bchw->bohw", w3, h)
        var = torch.log(1 + torch.exp(predictor.alpha)) + 1e-5  # softplus(alpha_c) + eps
        nll = 0.0
        for c in range(len(var)):  # -log N(t | mu, var) without 0.5 log 2 pi, as the reference
            nll += (0.5 * ((mu[:, c] - y[:, c]) ** 2 / var[c] + torch.log(var[c]))).sum().item()
        want += nll / y.numel()
    assert got == pytest.approx(want, rel=TOL)


def test_vid_variances_start_at_the_configured_value():
    term, _ = term_value("vid", *fixed_features(), init_variance=5.0)
    for predictor in term.predictors:
        torch.testing.assert_close(predictor.variance(), torch.full_like(predictor.alpha, 5.0))


def mdistiller_kdsvd(g_s, g_t, k):
    """mdistiller's KDSVD.kdsvd_loss written out with torch.svd, per sample, in loops."""
    b = g_s[0].shape[0]

    def leading(f, n):  # each sample's (C*H) x W matrix, as mdistiller reshapes NCHW
        vs, ss = [], []
        for x in f:
            _, sv, v = torch.svd(x.reshape(x.shape[0] * x.shape[1], x.shape[2]))
            v, sv = v[:, :n], sv[:n]
            vs.append(v / v.norm(dim=0, keepdim=True))
            ss.append(sv / sv.norm())
        return vs, ss

    previous, total = None, 0.0
    for fs, ft in zip(g_s, g_t):
        fs, ft = same_size(fs, ft)
        v_t, s_t = leading(ft, k)
        v_s, _ = leading(fs, k + 3)
        current = []
        for n in range(b):
            aligned = torch.zeros_like(v_t[n])
            for col in range(k):  # the student vector of largest |cosine|, with its sign
                cos = v_s[n].t() @ v_t[n][:, col]
                best = int(cos.abs().argmax())
                aligned[:, col] = v_s[n][:, best] * torch.sign(cos[best])
            current.append((aligned * s_t[n], v_t[n] * s_t[n]))
        if previous is not None:
            for n in range(b):
                (s_now, t_now), (s_before, t_before) = current[n], previous[n]
                for a, c in itertools.product(range(s_now.shape[0]), range(s_before.shape[0])):
                    ks = torch.exp(-(s_now[a] - s_before[c]) ** 2 / 8)
                    kt = torch.exp(-(t_now[a] - t_before[c]) ** 2 / 8)
                    total += ((ks - kt) ** 2).sum().item()
        previous = current
    return total / b


@pytest.mark.parametrize("k", [1, 2])
def test_kdsvd_matches_mdistillers_formula(k):
    g = torch.Generator().manual_seed(6)
    # three stage pairs of equal widths (4, 4, 2), the student's thinner, so the student has k + 3 vectors to pick from
    s = [torch.randn(5, c, h, h, generator=g, dtype=torch.float64) for c, h in ((8, 8), (8, 4), (16, 2))]
    t = [torch.randn(5, c, h, h, generator=g, dtype=torch.float64) for c, h in ((16, 4), (32, 4), (32, 2))]
    context = FeatureContext("resnet8", "resnet8", (1, 8, 10))
    term = build_feature_terms(loss_of(kdsvd={"weight": 1.0, "k": k}), context).terms[0]
    inputs = TermInputs(torch.zeros(5, 10), torch.zeros(5, 10), torch.zeros(5, dtype=torch.long), 1, None,
                        StageOutputs(s, {}), StageOutputs(t, {}))
    got = term(inputs)["kdsvd"].item()
    want = mdistiller_kdsvd(s, t, k)
    assert want > 0
    assert got == pytest.approx(want, rel=TOL)


@pytest.mark.parametrize("name", ["sp", "rkd", "pkt", "nst", "kdsvd"])
def test_the_relation_terms_vanish_when_the_student_is_the_teacher(name):
    """A bound beside the formulas (cc and vid have trained maps between the two, so they need not vanish)."""
    s, _ = fixed_features(seed=7)
    context = FeatureContext("cnn_student", "cnn_student", (1, 8, 10))
    terms = build_feature_terms(loss_of(**{name: {}}), context).double()
    inputs = TermInputs(torch.zeros(6, 10), torch.zeros(6, 10), torch.zeros(6, dtype=torch.long), 1, None,
                        StageOutputs(s, {}), StageOutputs([x.clone() for x in s], {}))
    assert all(v.item() == pytest.approx(0.0, abs=1e-9) for v in terms(inputs).values())


@pytest.mark.parametrize("name", ["sp", "cc", "rkd", "pkt", "vid"])
def test_terms_that_need_no_maps_read_vector_stages_of_an_mlp(name):
    seed_everything(0)
    student, teacher = build_model("mlp", 1, 8, 10), build_model("resnet8", 1, 8, 10)
    terms = build_feature_terms(loss_of(**{name: {}}), FeatureContext("mlp", "resnet8", (1, 8, 10)))
    x = torch.randn(8, 1, 8, 8)
    (s, logits), (t, teacher_logits) = student.forward_features(x), teacher.forward_features(x)
    values = terms(TermInputs(logits, teacher_logits, torch.zeros(8, dtype=torch.long), 1, None,
                              StageOutputs(s, {}), StageOutputs(t, {})))
    assert values and all(torch.isfinite(v) and v > 0 for v in values.values()), values


def test_the_embedding_of_a_map_is_its_channels_and_of_anything_else_every_value():
    assert embedding_size((64, 2, 2)) == 64 and embedding_size((32,)) == 32 and embedding_size((5, 7)) == 35
    x = torch.arange(2 * 3 * 2 * 2, dtype=torch.float64).reshape(2, 3, 2, 2)
    torch.testing.assert_close(embedding(x), pooled(x))
    assert embedding(torch.zeros(2, 5, 7)).shape == (2, 35)


# --- from the kdrun command -----------------------------------------------------------------------------------

TINY = ["dataset=digits", "student=cnn_student", "teacher=resnet8", "epochs=1", "teacher.epochs=1",
        "dataset.limit_train=256", "dataset.limit_test=128", "optim=adamw", "optim.lr=3e-3",
        "trainer.progress=false", "device=cpu"]
# RepDistiller's CIFAR-100 rows (scripts/run_cifar_distill.sh: -r 1 -a 0 -b B) and mdistiller's kdsvd.yaml
PUBLISHED_WEIGHTS = {"sp": 3000.0, "cc": 0.02, "rkd": 1.0, "pkt": 30000.0, "nst": 50.0, "vid": 1.0, "kdsvd": 1.0}
LOGGED = {"sp": ["sp"], "cc": ["cc"], "rkd": ["rkd_distance", "rkd_angle"], "pkt": ["pkt"], "nst": ["nst"],
          "vid": ["vid"], "kdsvd": ["kdsvd"]}


@pytest.fixture(scope="module")
def teachers(tmp_path_factory) -> str:
    """One teacher cache for the module: resnet8 trains once."""
    return f"paths.teachers={tmp_path_factory.mktemp('teachers')}"


def plain_student_keys() -> set[str]:
    return set(build_model("cnn_student", 1, 8, 10).state_dict())


@pytest.mark.slow  # seven one-epoch CLI runs: ~8 s of CPU each (30-40 s wall at load 11 on 2 cores)
@pytest.mark.parametrize("name", list(LOGGED))
def test_each_preset_trains_one_epoch_from_the_command(tmp_path, teachers, name):
    run_kdrun(tmp_path, *TINY, teachers, "strategy=kd", f"loss={name}")
    run_dir = only_run_dir(tmp_path)
    record = read_jsonl(run_dir / "metrics.jsonl")[0]
    parts = ["ce", *LOGGED[name]]
    assert all(math.isfinite(record[f"loss_{p}"]) for p in parts), record
    assert record[f"loss_{LOGGED[name][0]}"] > 0
    assert record["loss"] == pytest.approx(sum(record[f"loss_{p}"] for p in parts), rel=1e-5)
    summary = json.loads((run_dir / "metrics.json").read_text())
    assert summary["terms"] == {"ce": 1.0, name: PUBLISHED_WEIGHTS[name]}
    for checkpoint in ("best.pt", "last.pt"):  # no embedding, regressor or variance saved with the student
        assert set(load_checkpoint(run_dir / "checkpoints" / checkpoint)["state_dict"]) == plain_student_keys()


# 64x64 RGB, 3 classes, 32 images: one step of a torchvision pair.
SMALL = ["dataset=synthetic", "dataset.image_size=64", "dataset.num_classes=3", "dataset.train_size=32",
         "dataset.test_size=16", "dataset.augment.crop_padding=0", "epochs=1", "batch_size=32",
         "trainer.progress=false", "device=cpu", "teacher=torchvision", "teacher.arch=resnet18",
         "teacher.epochs=1", "student=torchvision", "student.arch=mobilenet_v3_small"]


@pytest.mark.slow  # a torchvision pair on 64x64 images: ~30 s on a shared CPU
def test_every_term_of_the_group_between_named_layers_of_torchvision_models(tmp_path):
    single = [f"loss.terms.{n}.{side}_layer={layer}" for n in ("sp", "cc", "rkd", "pkt")
              for side, layer in (("student", "features.12"), ("teacher", "layer4"))]
    paired = [f"loss.terms.{n}.{side}_layers=[{layers}]" for n in ("nst", "vid", "kdsvd")
              for side, layers in (("student", "features.3,features.8"), ("teacher", "layer2,layer3"))]
    run_kdrun(tmp_path, *SMALL, "loss=ce", *single, *paired)
    record = read_jsonl(only_run_dir(tmp_path) / "metrics.jsonl")[0]
    for part in itertools.chain(*LOGGED.values()):
        assert math.isfinite(record[f"loss_{part}"]) and record[f"loss_{part}"] > 0, (part, record)


# --- trainable parts: optimised, kept in last.pt, restored on resume, never in the student -------------------

TRAINED = loss_of(ce={"weight": 1.0}, cc={"weight": 0.02}, vid={"weight": 1.0}, rkd={"weight": 1.0})
CPU = Runtime(torch.device("cpu"), "fp32")
ADAMW = OmegaConf.create({"name": "adamw", "lr": 3e-3, "betas": [0.9, 0.999], "weight_decay": 1e-4,
                          "schedule": "cosine", "warmup_epochs": 0, "milestones": [], "gamma": 0.1})


class CrashingKD(KD):
    """KD that raises at one (epoch, step in epoch), 1-based: a process killed mid-epoch."""

    crash_at: tuple[int, int] | None = None

    def step(self, batch):
        self.seen = getattr(self, "seen", {})
        self.seen[batch.epoch] = self.seen.get(batch.epoch, 0) + 1
        if (batch.epoch, self.seen[batch.epoch]) == self.crash_at:
            raise RuntimeError("killed")
        return super().step(batch)


def kd_with_trained_terms(crash_at=None) -> CrashingKD:
    seed_everything(0)
    student, teacher = build_model("cnn_student", 1, 8, 10), build_model("resnet8", 1, 8, 10)
    features = build_feature_terms(TRAINED, CONTEXT).tap(student, teacher)
    strategy = CrashingKD(student, teacher, build_logit_terms(TRAINED), features=features)
    strategy.crash_at = crash_at
    return strategy


def fit(strategy, data, run_dir, resume=False):
    trainer = Trainer(trainer_settings(epochs=2, batch_size=16, eval_batch_size=256, data_seed=3, progress=False,
                                    every_steps=4), ADAMW, CPU)
    return trainer.fit(strategy, data, BatchAugment(1, True, data.mean, data.std), run_dir, resume=resume)


def test_trainable_parts_are_optimised_kept_for_resume_and_never_saved_with_the_student(tmp_path):
    data = load_dataset({"name": "digits", "limit_train": 96, "limit_test": 64})
    initial = {k: v.clone() for k, v in kd_with_trained_terms().features.state_dict().items()}
    fit(kd_with_trained_terms(), data, tmp_path / "ref")
    with pytest.raises(RuntimeError, match="killed"):
        fit(kd_with_trained_terms(crash_at=(2, 3)), data, tmp_path / "run")
    fit(kd_with_trained_terms(), data, tmp_path / "run", resume=True)

    ref, run = (load_checkpoint(tmp_path / d / "checkpoints" / "last.pt") for d in ("ref", "run"))
    # the student alone in the checkpoint's weights
    assert set(ref["state_dict"]) == plain_student_keys()
    # the terms' parts in the strategy state: both embeddings of cc, vid's regressors and variances
    ref_parts, run_parts = ref["train"]["strategy"]["features"], run["train"]["strategy"]["features"]
    assert set(ref_parts) == set(initial)
    assert any(k.endswith("embed_teacher.weight") for k in initial) and any(k.endswith("alpha") for k in initial)
    for name, value in initial.items():
        assert not torch.equal(ref_parts[name], value), f"{name} was not optimised"
        assert torch.equal(ref_parts[name], run_parts[name]), f"{name} differs after the resume"
    for name, value in ref["state_dict"].items():  # bit-identical on the CPU
        assert torch.equal(value, run["state_dict"][name]), name


@pytest.mark.parametrize("name", list(LOGGED))
def test_each_term_gives_the_stages_it_reads_and_its_own_parts_a_finite_gradient(name):
    s, t = fixed_features()
    terms = build_feature_terms(loss_of(**{name: {}}), CONTEXT).double()
    inputs = TermInputs(torch.zeros(6, 10), torch.zeros(6, 10), torch.zeros(6, dtype=torch.long), 1, None,
                        StageOutputs([x.requires_grad_() for x in s], {}), StageOutputs(t, {}))
    sum(terms(inputs).values()).backward()
    for name_, p in terms.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name_
    read = [i for i, x in enumerate(s) if x.grad is not None]
    assert read == ([1] if name in ("sp", "cc", "rkd", "pkt") else [0, 1])  # the last stage, or both pairs
    assert all(torch.isfinite(s[i].grad).all() and s[i].grad.abs().sum() > 0 for i in read)


# --- wrong use, refused with the term, the key and what is allowed -------------------------------------------

def compose_cfg(*overrides: str):
    with initialize_config_module(config_module="kdrun.conf", version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["strategy=online", "loss=vid"], "loss.terms.vid is a feature term, which strategy=online cannot train"),
        (["strategy=multi_teacher", "loss=rkd"], "loss.terms.rkd is a feature term, which strategy=multi_teacher cannot"),
        (["loss=sp", "loss.terms.sp.weight=-1"], "loss.terms.sp.weight must be >= 0, got -1"),
        (["loss=vid", "loss.terms.vid.init_variance=0"], "loss.terms.vid.init_variance must be > 1e-05, got 0"),
        (["loss=cc", "loss.terms.cc.embed_dim=0"], "loss.terms.cc.embed_dim must be >= 1, got 0"),
        (["loss=cc", "loss.terms.cc.embed_dim=1.5"], "loss.terms.cc.embed_dim must be an integer, got 1.5"),
        (["loss=rkd", "++loss.terms.rkd.angle_wieght=1"], "unknown config key .loss.terms.rkd.angle_wieght.; did you mean loss.terms.rkd.angle_weight"),
        (["loss=kdsvd", "loss.terms.kdsvd.k=0"], "loss.terms.kdsvd.k must be >= 1, got 0"),
    ],
)
def test_bad_values_are_refused_naming_term_and_key(overrides, message):
    with pytest.raises(ConfigError, match=message):
        check_run_config(compose_cfg(*overrides))


@pytest.mark.parametrize(
    "terms,arch_pair,message",
    [
        ({"sp": {"student_stage": 2}}, ("cnn_student", "resnet8"),
         r"loss.terms.sp.student_stage=2, but cnn_student has 2 stages; allowed: -2..1"),
        ({"pkt": {"teacher_layer": "layer9"}}, ("cnn_student", "resnet8"), r"resnet8: .*layer9"),
        ({"nst": {}}, ("cnn_student", "mlp"), r"neuron selectivity transfer needs spatial feature maps, but mlp 0"),
        ({"kdsvd": {}}, ("resnet8", "mlp"), r"kdsvd needs spatial feature maps, but mlp 0"),
        ({"kdsvd": {"student_stages": [1], "teacher_stages": [1]}}, ("cnn_student", "resnet8"),
         r"loss.terms.kdsvd relates consecutive stages and needs at least 2 stage pairs, got 1"),
        ({"vid": {"student_stages": [0, 1], "teacher_stages": [1]}}, ("cnn_student", "resnet8"),
         r"loss.terms.vid.student_stages=\[0, 1\] and loss.terms.vid.teacher_stages=\[1\] must be two lists of "
         r"the same, non-zero length"),
    ],
)
def test_bad_stage_choices_are_refused_before_any_teacher_trains(terms, arch_pair, message):
    with pytest.raises(ConfigError, match=message):
        build_feature_terms(loss_of(**terms), FeatureContext(*arch_pair, (1, 8, 10)))


def test_a_refused_term_from_the_command_is_one_line_and_writes_nothing(tmp_path):
    proc = run_kdrun(tmp_path, *TINY, "strategy=kd", "loss=kdsvd", "loss.terms.kdsvd.student_stages=[1]",
                     "loss.terms.kdsvd.teacher_stages=[2]", check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out
    assert "error: loss.terms.kdsvd relates consecutive stages and needs at least 2 stage pairs, got 1" in out
    assert "Traceback" not in out and len([line for line in out.splitlines() if "error" in line]) == 1, out
    assert not (tmp_path / "outputs").exists()  # refused before any run directory or teacher
