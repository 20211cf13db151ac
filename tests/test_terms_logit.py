"""The logit-term zoo (dist, mlkd, ctkd, nkd, wttm) and loss.standardize, each against its reference's formula
written out here, sample by sample, in float64; then from the kdrun command, and the refusals."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from conftest import read_jsonl, trainer_settings
from kdrun.sources.checkpoint import load_checkpoint
from kdrun.sources.data import BatchAugment, load_dataset
from kdrun.methods.terms.compose import build_logit_terms
from kdrun.sources.models import build_model
from kdrun.runtime import Runtime, seed_everything
from kdrun.strategies.base import Batch
from kdrun.strategies.kd import KD
from kdrun.engine.trainer import Trainer

B, C = 7, 6
TOL = 1e-5  # relative, on float64 tensors


def loss_of(standardize: bool = False, **terms):
    """A config whose loss lists `terms` (name -> keys); unset keys take each term's declared defaults."""
    return OmegaConf.create({"loss": {"terms": terms, "standardize": standardize}})


def tensors(seed: int, scale: float = 3.0):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(B, C, generator=g, dtype=torch.float64) * scale
    t = torch.randn(B, C, generator=g, dtype=torch.float64) * scale
    return s, t, torch.randint(0, C, (B,), generator=g)


def softmax(row: torch.Tensor) -> torch.Tensor:
    e = [math.exp(v) for v in row.tolist()]
    return torch.tensor([v / sum(e) for v in e], dtype=torch.float64)


def kl(p: torch.Tensor, q: torch.Tensor) -> float:
    return sum(a * math.log(a / b) for a, b in zip(p.tolist(), q.tolist()))


def pearson(a: list[float], b: list[float]) -> float:
    ma, mb = sum(a) / len(a), sum(b) / len(b)
    num = sum((x - ma) * (y - mb) for x, y in zip(a, b))
    den = math.sqrt(sum((x - ma) ** 2 for x in a)) * math.sqrt(sum((y - mb) ** 2 for y in b))
    return num / (den + 1e-8)


def terms_of(s, t, y, epoch: int = 1, standardize: bool = False, **terms):
    return build_logit_terms(loss_of(standardize, **terms))(s, t, y, epoch)


# ---- the maths ------------------------------------------------------------------------------------


def direct_dist(s, t, T):
    ys, yt = [softmax(r / T) for r in s], [softmax(r / T) for r in t]
    inter = 1 - sum(pearson(a.tolist(), b.tolist()) for a, b in zip(ys, yt)) / len(ys)
    cols = lambda rows, c: [r[c].item() for r in rows]  # noqa: E731
    intra = 1 - sum(pearson(cols(ys, c), cols(yt, c)) for c in range(s.shape[1])) / s.shape[1]
    return T * T * inter, T * T * intra


@pytest.mark.parametrize("T", [1.0, 4.0])
def test_dist_matches_pearson_relations_written_out(T):
    s, t, y = tensors(1)
    got = terms_of(s, t, y, dist={"weight": 2.0, "T": T, "inter_weight": 1.5, "intra_weight": 0.5})
    inter, intra = direct_dist(s, t, T)
    assert got["dist_inter"].item() == pytest.approx(2.0 * 1.5 * inter, rel=TOL)
    assert got["dist_intra"].item() == pytest.approx(2.0 * 0.5 * intra, rel=TOL)
    same = terms_of(t, t, y, dist={"T": T})
    assert same["dist_inter"].item() == pytest.approx(0.0, abs=1e-5)  # fp32: 1 - r rounds near 1e-7, times T^2


def direct_nkd(s, t, y, T, gamma):
    target = non_target = 0.0
    for i, k in enumerate(y.tolist()):
        target += -softmax(t[i])[k].item() * math.log(softmax(s[i])[k].item())
        rest = [c for c in range(s.shape[1]) if c != k]
        qs, qt = softmax(s[i, rest] / T), softmax(t[i, rest] / T)
        non_target += -sum(a * math.log(b) for a, b in zip(qt.tolist(), qs.tolist()))
    n = len(y)
    return target / n + gamma * T * T * non_target / n


@pytest.mark.parametrize("T,gamma", [(1.0, 1.5), (3.0, 3.5)])
def test_nkd_matches_the_normalised_non_target_formula(T, gamma):
    s, t, y = tensors(2)
    got = terms_of(s, t, y, nkd={"weight": 0.7, "T": T, "gamma": gamma})["nkd"]
    assert got.item() == pytest.approx(0.7 * direct_nkd(s, t, y, T, gamma), rel=TOL)


def direct_wttm(s, t, gamma):
    """The reference's power transform: p_t^gamma, normalised, KL to the student at T = 1, times the sum."""
    total = 0.0
    for i in range(len(s)):
        powered = [p ** gamma for p in softmax(t[i]).tolist()]
        u = sum(powered)
        total += u * kl(torch.tensor([p / u for p in powered]), softmax(s[i]))
    return total / len(s)


@pytest.mark.parametrize("gamma", [0.1, 0.5, 1.0])
def test_wttm_matches_the_weighted_power_transform(gamma):
    s, t, y = tensors(3)
    got = terms_of(s, t, y, wttm={"weight": 3.0, "gamma": gamma})["wttm"]
    assert got.item() == pytest.approx(3.0 * direct_wttm(s, t, gamma), rel=TOL)
    # at gamma = 1 it is plain KL at T = 1 (U = 1)
    if gamma == 1.0:
        want = sum(kl(softmax(t[i]), softmax(s[i])) for i in range(B)) / B
        assert got.item() == pytest.approx(3.0 * want, rel=TOL)


def test_wttm_stays_finite_where_the_power_of_a_probability_underflows():
    s = torch.zeros(2, 4)
    t = torch.tensor([[400.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])  # p = e^-400 underflows in float32
    value = terms_of(s, t, torch.tensor([0, 1]), wttm={"gamma": 0.1})["wttm"]
    assert torch.isfinite(value)


def direct_mlkd(s, t, temperatures):
    """The reference's weak-view loss: KD, batch and class Gram matrices per temperature, with its masks
    (numpy's percentile over the teacher's confidences at T = 1) multiplying the reduced losses."""
    pt1 = [softmax(r) for r in t]
    confidence = np.array([max(p.tolist()) for p in pt1])
    mask = np.mean(confidence <= np.percentile(confidence, 50))
    class_conf = np.array([sum(p[c].item() for p in pt1) for c in range(C)])
    class_mask = np.mean(class_conf <= np.percentile(class_conf, 50))
    instance = batch = klass = 0.0
    for T in temperatures:
        ps, pt = [softmax(r / T) for r in s], [softmax(r / T) for r in t]
        instance += T * T * sum(kl(a, b) for a, b in zip(pt, ps)) / B
        gram = lambda p, i, j: sum(p[i][c].item() * p[j][c].item() for c in range(C))  # noqa: E731
        batch += sum((gram(pt, i, j) - gram(ps, i, j)) ** 2 for i in range(B) for j in range(B)) / B
        cgram = lambda p, a, b: sum(p[i][a].item() * p[i][b].item() for i in range(B))  # noqa: E731
        klass += sum((cgram(pt, a, b) - cgram(ps, a, b)) ** 2 for a in range(C) for b in range(C)) / C
    return mask * instance, mask * batch, class_mask * klass


def test_mlkd_matches_the_references_weak_view_loss_with_its_confidence_masks():
    s, t, y = tensors(4)
    got = terms_of(s, t, y, mlkd={"weight": 0.9, "T": 4.0, "other_temperatures": [3.0, 5.0, 2.0, 6.0]})
    instance, batch, klass = direct_mlkd(s, t, [4.0, 3.0, 5.0, 2.0, 6.0])
    assert got["mlkd_instance"].item() == pytest.approx(0.9 * instance, rel=TOL)
    assert got["mlkd_batch"].item() == pytest.approx(0.9 * batch, rel=TOL)
    assert got["mlkd_class"].item() == pytest.approx(0.9 * klass, rel=TOL)
    # the sample mask scales by the share at or below the median: 4 of 7 distinct confidences
    unmasked = sum(T * T * sum(kl(softmax(t[i] / T), softmax(s[i] / T)) for i in range(B)) / B
                   for T in [4.0, 3.0, 5.0, 2.0, 6.0])
    assert got["mlkd_instance"].item() == pytest.approx(0.9 * unmasked * 4 / 7, rel=TOL)


def reference_lambda(epoch: int, decay_max=0.0, decay_min=-1.0, loops=10) -> float:
    """CTKD's CosineDecay.get_value: the signed factor its reversal layer multiplies the gradient by."""
    i = min(max(epoch, 0), loops)
    return (math.cos(i * math.pi / loops) + 1.0) * 0.5 * (decay_max - decay_min) + decay_min


@pytest.mark.parametrize("epoch", [1, 4, 10, 30])
def test_ctkd_is_kd_at_the_learnt_temperature_and_its_gradient_is_reversed_on_the_curriculum(epoch):
    s, t, y = tensors(5)
    s = s.float().requires_grad_()
    objective = build_logit_terms(loss_of(ctkd={"weight": 0.9}))
    value = objective(s, t.float(), y, epoch)["ctkd"]
    value.backward()
    theta = objective.terms[0].theta

    def reference(theta_value: torch.Tensor) -> torch.Tensor:  # T = t_start + t_end * sigmoid(theta), KD at T
        T = 1.0 + 20.0 * torch.sigmoid(theta_value)
        total = 0.0
        for i in range(B):
            p_t = torch.softmax(t[i].float() / T, 0)
            total = total + (p_t * (p_t.log() - torch.log_softmax(s[i].detach() / T, 0))).sum()
        return 0.9 * T * T * total / B

    at = torch.tensor(1.0, requires_grad=True)
    want = reference(at)
    (plain_grad,) = torch.autograd.grad(want, at)
    assert value.item() == pytest.approx(want.item(), rel=1e-5)
    assert theta.grad.item() == pytest.approx(reference_lambda(epoch) * plain_grad.item(), rel=1e-4, abs=1e-9)
    assert objective.temperature() == pytest.approx(1 + 20 / (1 + math.exp(-1)))
    assert s.grad is not None and s.grad.abs().sum() > 0  # the student descends as usual


def lskd_z(x: torch.Tensor) -> torch.Tensor:
    """sunshangquan/logit-standardization-KD's normalize, written out: (x - mean) / (1e-7 + unbiased std)."""
    rows = []
    for row in x.tolist():
        m = sum(row) / len(row)
        sd = math.sqrt(sum((v - m) ** 2 for v in row) / (len(row) - 1))
        rows.append([(v - m) / (1e-7 + sd) for v in row])
    return torch.tensor(rows, dtype=torch.float64)


def test_standardize_z_scores_the_logits_of_terms_with_a_temperature_and_leaves_ce_alone():
    s, t, y = tensors(6, scale=5.0)
    plain = terms_of(s, t, y, ce={"weight": 0.1}, kd={"weight": 9.0, "T": 2.0})
    scored = terms_of(s, t, y, standardize=True, ce={"weight": 0.1}, kd={"weight": 9.0, "T": 2.0})
    zs, zt = lskd_z(s), lskd_z(t)
    want = 9.0 * 4.0 * sum(kl(softmax(zt[i] / 2.0), softmax(zs[i] / 2.0)) for i in range(B)) / B
    assert scored["kd"].item() == pytest.approx(want, rel=TOL)
    assert scored["kd"].item() != pytest.approx(plain["kd"].item(), rel=1e-2)
    assert scored["ce"].item() == plain["ce"].item()
    # shifting and scaling either model's logits per sample changes nothing once standardised
    moved = terms_of(3 * s + 7, 0.5 * t - 2, y, standardize=True, kd={"weight": 9.0, "T": 2.0})
    assert moved["kd"].item() == pytest.approx(scored["kd"].item(), rel=1e-6)


def test_standardize_reaches_every_term_with_a_temperature():
    s, t, y = tensors(7)
    zs, zt = lskd_z(s), lskd_z(t)
    for name, keys in [("dist", {"T": 1.0}), ("nkd", {"T": 3.0, "gamma": 3.5}), ("dkd", {"warmup_epochs": 0}),
                       ("mlkd", {"T": 2.0}), ("wttm", {"gamma": 0.5})]:
        scored = terms_of(s, t, y, standardize=True, **{name: keys})
        direct = terms_of(zs, zt, y, **{name: keys})
        assert scored.keys() == direct.keys()
        for key in scored:
            assert scored[key].item() == pytest.approx(direct[key].item(), rel=TOL), (name, key)


# ---- trainable parts: the CTKD temperature -------------------------------------------------------


CPU = Runtime(torch.device("cpu"), "fp32")
SGD = OmegaConf.create({"name": "sgd", "lr": 0.05, "momentum": 0.9, "nesterov": False, "weight_decay": 5e-4,
                        "schedule": "cosine", "warmup_epochs": 0, "milestones": [], "gamma": 0.1})


class Crashing(KD):
    """KD that raises at one (epoch, step), to leave a mid-epoch last.pt behind."""

    def __init__(self, *args, crash_at=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.crash_at, self.seen = crash_at, {}

    def step(self, batch):
        self.seen[batch.epoch] = self.seen.get(batch.epoch, 0) + 1
        if (batch.epoch, self.seen[batch.epoch]) == self.crash_at:
            raise RuntimeError("crash")
        return super().step(batch)


def ctkd_strategy(crash_at=None) -> KD:
    seed_everything(0)
    student, teacher = build_model("cnn_student", 1, 8, 10), build_model("resnet8", 1, 8, 10)
    terms = build_logit_terms(loss_of(ce={"weight": 0.1}, ctkd={"weight": 0.9, "lambda_epochs": 2}))
    return Crashing(student, teacher, terms, crash_at=crash_at)


def test_the_ctkd_temperature_trains_is_kept_in_last_pt_resumes_and_stays_out_of_the_student(tmp_path):
    digits = load_dataset({"name": "digits", "limit_train": 160, "limit_test": 80})
    augment = BatchAugment(1, True, digits.mean, digits.std)
    trainer = lambda: Trainer(trainer_settings(epochs=2, batch_size=16, eval_batch_size=256, data_seed=3,  # noqa: E731
                                            progress=False, every_steps=4), SGD, CPU)
    reference = ctkd_strategy()
    trainer().fit(reference, digits, augment, tmp_path / "ref")
    theta = reference.terms.terms[1].theta
    assert theta.item() != 1.0  # optimised
    last = torch.load(tmp_path / "ref" / "checkpoints" / "last.pt", weights_only=True)
    assert torch.equal(last["train"]["strategy"]["terms"]["terms.1.theta"], theta.detach())
    for name in ("last.pt", "best.pt"):
        assert not any("theta" in k for k in load_checkpoint(tmp_path / "ref" / "checkpoints" / name)["state_dict"])

    with pytest.raises(RuntimeError, match="crash"):
        trainer().fit(ctkd_strategy(crash_at=(2, 7)), digits, augment, tmp_path / "run")
    resumed = ctkd_strategy()
    trainer().fit(resumed, digits, augment, tmp_path / "run", resume=True)
    assert torch.equal(resumed.terms.terms[1].theta.detach(), theta.detach())
    a = load_checkpoint(tmp_path / "ref" / "checkpoints" / "last.pt")["state_dict"]
    b = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_the_ctkd_temperature_gets_a_gradient_from_a_kd_step():
    strategy = ctkd_strategy()
    x, y = torch.randn(8, 1, 8, 8), torch.randint(0, 10, (8,))
    losses = strategy.step(Batch(x, y, torch.arange(8), 3)).losses
    sum(losses.values()).backward()
    theta = strategy.terms.terms[1].theta
    assert theta.grad is not None and theta.grad.item() != 0.0
    assert any(p is theta for p in strategy.parameters())  # the optimiser sees it


# ---- from the command line ------------------------------------------------------------------------

ZOO = ["dataset=digits", "teacher=resnet8", "student=cnn_student", "epochs=1", "trainer.progress=false"]
EXPECTED = {"dist": {"loss_ce", "loss_dist_inter", "loss_dist_intra"},
            "mlkd": {"loss_ce", "loss_mlkd_instance", "loss_mlkd_batch", "loss_mlkd_class"},
            "ctkd": {"loss_ce", "loss_ctkd"}, "nkd": {"loss_ce", "loss_nkd"}, "wttm": {"loss_ce", "loss_wttm"},
            "lskd": {"loss_ce", "loss_kd"}}


@pytest.mark.slow
def test_every_logit_preset_trains_one_epoch_from_the_kdrun_command(kdrun, tmp_path):
    kdrun("-m", *ZOO, f"loss={','.join(EXPECTED)}")
    jobs = sorted((tmp_path / "outputs" / "sweeps").glob("*/*/[0-9]*"), key=lambda p: int(p.name))
    assert len(jobs) == len(EXPECTED)
    for job, (name, losses) in zip(jobs, EXPECTED.items()):
        config = OmegaConf.load(job / "config.yaml")
        assert config.loss.name == name
        assert config.loss.standardize is (name == "lskd")
        record = read_jsonl(job / "metrics.jsonl")[-1]
        assert {k for k in record if k.startswith("loss_")} == losses, name
        assert all(math.isfinite(record[k]) for k in losses), (name, record)
        assert (job / "checkpoints" / "best.pt").exists()
    ctkd = torch.load(jobs[2] / "checkpoints" / "last.pt", weights_only=True)["train"]["strategy"]
    assert ctkd["terms"]["terms.1.theta"].item() != 1.0


def refused(kdrun, tmp_path, *args) -> str:
    proc = kdrun(*args, check=False)
    out = " ".join((proc.stdout + proc.stderr).split())  # kdrun's console prints the error line on stdout
    assert proc.returncode == 2, out
    assert "Traceback" not in out
    assert not (tmp_path / "outputs").exists() or not any((tmp_path / "outputs").rglob("*.pt"))
    return out


@pytest.mark.parametrize("args,message", [
    (["strategy=online", "loss=ctkd"], "loss.terms.ctkd learns its temperature, a trainable part that only "
                                       "strategy=kd (or born_again, each generation a kd fit) trains; strategy=online"),
    (["loss=ctkd", "loss.terms.ctkd.lambda_max=0.5", "loss.terms.ctkd.lambda_min=0.8"], "lambda_max (0.5) must be"),
    (["loss=wttm", "loss.terms.wttm.gamma=0"], "loss.terms.wttm.gamma must be > 0, got 0"),
    (["loss=mlkd", "loss.terms.mlkd.other_temperatures=[2,0]"], "loss.terms.mlkd.other_temperatures must be > 0"),
    (["loss=nkd", "loss.terms.nkd.gama=2"], "did you mean loss.terms.nkd.gamma?"),
    (["loss=dist", "loss.terms.dist.T=-1"], "loss.terms.dist.T must be > 0"),
    (["loss=kd", "loss.standardize=yes"], "loss.standardize must be true or false"),
])
def test_wrong_use_of_a_logit_term_is_refused_naming_term_key_and_what_is_allowed(kdrun, tmp_path, args, message):
    out = refused(kdrun, tmp_path, "dataset=digits", "teacher=mlp", "student=cnn_student", "epochs=1", *args)
    assert message in out
