"""multi_teacher, online, born_again, self, feature terms and dkd: in process, then through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from conftest import only_run_dir, read_jsonl, run_kdrun
from kdrun.sources.checkpoint import load_checkpoint, save_checkpoint
from kdrun.run import check_run_config as validate
from kdrun.sources.data import BatchAugment, load_dataset
from kdrun.errors import ConfigError
from kdrun.sources.models import build_model
from kdrun.runtime import resolve_runtime
from kdrun.strategies.base import Setup
from conftest import kd_terms
from kdrun.strategies.multi_teacher import MultiTeacher
from kdrun.strategies.online import Online
from kdrun.strategies.self_distillation import SelfDistillation
from kdrun.strategies.base import Batch
from kdrun.strategies.born_again import BornAgain
from kdrun.methods.terms.compose import build_feature_terms
from kdrun.methods.terms.feature.stages import FeatureContext, stage_shapes
from kdrun.strategies.multi_teacher import TeacherEnsemble

KD_OBJECTIVE = kd_terms(0.1, 0.9, 4.0)


def compose_cfg(*overrides: str):
    with initialize_config_module(config_module="kdrun.conf", version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def batch(n: int = 6, seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    return Batch(torch.randn(n, 1, 8, 8, generator=g), torch.randint(0, 10, (n,), generator=g), torch.arange(n), 1)


def plain_keys(arch: str) -> set[str]:
    return set(build_model(arch, 1, 8, 10).state_dict())


# --- in process -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("combine", ["mean", "weighted", "confidence"])
def test_multi_teacher_teachers_get_no_gradients_and_stay_in_eval_mode(combine):
    torch.manual_seed(0)
    teachers = [build_model("mlp", 1, 8, 10), build_model("resnet8", 1, 8, 10)]
    ensemble = TeacherEnsemble(teachers, combine, [0.7, 0.3] if combine == "weighted" else None)
    student = build_model("cnn_student", 1, 8, 10)
    strategy = MultiTeacher(student, ensemble, KD_OBJECTIVE)
    strategy.train()
    ensemble.train()  # as evaluate() restores a mode: the teachers must not follow
    out = strategy.step(batch())
    sum(out.losses.values()).backward()
    assert set(out.losses) == {"ce", "kd"}
    assert student.training and not ensemble.training
    for teacher in teachers:
        assert not any(m.training for m in teacher.modules())
        assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    assert all(p.grad is not None for p in student.parameters())
    assert set(map(id, strategy.parameters())) == set(map(id, student.parameters()))


def test_weighted_ensemble_with_all_weight_on_one_teacher_is_that_teacher():
    torch.manual_seed(0)
    teachers = [build_model("mlp", 1, 8, 10), build_model("cnn_student", 1, 8, 10)]
    x = batch().x
    ensemble = TeacherEnsemble(teachers, "weighted", [0.0, 2.0])
    assert torch.allclose(ensemble.logits(x, 4.0).softmax(1) if False else (ensemble.logits(x, 4.0) / 4).softmax(1),
                          (teachers[1](x) / 4).softmax(1), atol=1e-6)
    assert torch.equal(ensemble(x).argmax(1), teachers[1](x).argmax(1))


def test_online_peers_all_update_and_learn_only_from_detached_peers():
    torch.manual_seed(0)
    peers = [build_model("cnn_student", 1, 8, 10), build_model("cnn_student", 1, 8, 10), build_model("mlp", 1, 8, 10)]
    strategy = Online(peers, KD_OBJECTIVE)
    assert strategy.student is peers[0]
    before = [[p.detach().clone() for p in peer.parameters()] for peer in peers]
    optimizer = torch.optim.SGD(strategy.parameters(), lr=0.1)
    strategy.train()
    out = strategy.step(batch())
    assert set(out.losses) == {f"peer{i}_{t}" for i in range(3) for t in ("ce", "kd")}
    # peer 0's distillation term moves peer 0 only: the other peers' outputs are targets
    grads = torch.autograd.grad(out.losses["peer0_kd"], list(peers[1].parameters()) + list(peers[0].parameters()),
                                retain_graph=True, allow_unused=True)
    n1 = len(list(peers[1].parameters()))
    assert all(g is None for g in grads[:n1]) and any(g is not None and g.abs().sum() > 0 for g in grads[n1:])
    optimizer.zero_grad()
    sum(out.losses.values()).backward()
    optimizer.step()
    for peer, old in zip(peers, before):
        assert all(not torch.equal(p, q) for p, q in zip(peer.parameters(), old)), peer.arch
    accs = strategy.epoch_metrics(lambda model: 10.0 * (1 + peers.index(model)))
    assert accs == {"peer0_test_acc": 10.0, "peer1_test_acc": 20.0, "peer2_test_acc": 30.0}


def test_self_distillation_heads_train_with_the_student_and_stay_out_of_it():
    torch.manual_seed(0)
    student = build_model("resnet8", 1, 8, 10)
    strategy = SelfDistillation(student, stage_shapes("resnet8", 1, 8, 10), KD_OBJECTIVE, ce_weight=1.0,
                                hint_weight=0.5)
    strategy.train()
    out = strategy.step(batch())
    assert set(out.losses) == {"ce", *(f"head{s}_{t}" for s in (0, 1) for t in ("ce", "kd", "hint"))}
    sum(out.losses.values()).backward()
    head_params = set(map(id, strategy.heads.parameters()))
    assert head_params and head_params <= set(map(id, strategy.parameters()))
    assert all(p.grad is not None for p in strategy.heads.parameters())
    assert set(student.state_dict()) == plain_keys("resnet8")  # the heads are not the student's
    seen = []
    accs = strategy.epoch_metrics(lambda model: seen.append(model(batch().x).shape) or 50.0)
    assert accs == {"head0_test_acc": 50.0, "head1_test_acc": 50.0} and seen == [torch.Size([6, 10])] * 2
    assert student.training


def terms_cfg(**terms):
    return OmegaConf.create({"loss": {"terms": terms}})


@pytest.mark.parametrize(
    "terms,arch_pair,message",
    [
        ({"hint": {"student_stage": 5}}, ("cnn_student", "resnet8"),
         r"loss.terms.hint.student_stage=5, but cnn_student has 2 stages; allowed: -2..1"),
        ({"hint": {}}, ("cnn_student", "mlp"),
         r"cannot match student cnn_student 1 \(a 32x2x2 \(CxHxW\) feature map\) to teacher mlp 1 "
         r"\(a 256-vector\)"),
        ({"at": {}}, ("cnn_student", "mlp"), r"attention transfer needs spatial feature maps, but mlp 0"),
        ({"at": {"student_stages": [0, 1], "teacher_stages": [2]}}, ("cnn_student", "resnet8"),
         r"must be two lists of the same, non-zero length"),
    ],
)
def test_stage_choices_that_cannot_be_matched_are_named(terms, arch_pair, message):
    with pytest.raises(ConfigError, match=message):
        build_feature_terms(terms_cfg(**terms), FeatureContext(*arch_pair, (1, 8, 10)))


def test_feature_stages_default_and_pool_across_sizes():
    terms = build_feature_terms(terms_cfg(hint={}, at={}), FeatureContext("resnet8", "resnet34", (3, 32, 10)))
    hint, at = terms.terms
    assert hint.refs == (1, 1) and hint.regressor[0].weight.shape[:2] == (128, 32)  # 32 -> 128 channels
    assert at.pairs == ((0, 1), (1, 2), (2, 3))  # the last three stages of each, paired from the end
    assert build_feature_terms(terms_cfg(ce={}, kd={}), FeatureContext("resnet8", "mlp", (1, 8, 10))) is None
    at_only = build_feature_terms(terms_cfg(at={}), FeatureContext("resnet8", "cnn_student", (1, 8, 10)))
    assert at_only.terms[0].pairs == ((1, 0), (2, 1))


def test_born_again_trains_each_generation_from_the_previous_one(tmp_path):
    gen0 = build_model("cnn_student", 1, 8, 10)
    save_checkpoint(tmp_path / "gen0.pt", gen0)
    cfg = compose_cfg("dataset=digits", "student=cnn_student", "strategy=born_again", "strategy.generations=3",
                      "device=cpu", f"teacher.checkpoint={tmp_path / 'gen0.pt'}", "dataset.limit_train=64")
    validate(cfg)
    runtime = resolve_runtime(cfg.device)
    data = load_dataset(cfg.dataset, runtime.device)
    augment = BatchAugment(0, False, data.mean, data.std)
    fits = []

    def fake_fit(strategy, out_dir, extra):
        """Stands in for Trainer.fit: the student 'learns' by a shift that names its generation."""
        k = extra["generation"]
        fits.append((strategy, Path(out_dir), extra))
        with torch.no_grad():
            strategy.student.fc.bias.fill_(float(k))
        save_checkpoint(Path(out_dir) / "checkpoints" / "last.pt", strategy.student)
        return {"final_test_acc": 10.0 * k, "best_test_acc": 10.0 * k, "wall_time_s": 0.1, **strategy.summary(),
                **extra}

    run_dir = tmp_path / "run"
    summary = BornAgain.run(Setup(cfg, data, augment, runtime), run_dir, fake_fit)
    assert [extra["generation"] for _, _, extra in fits] == [1, 2, 3]
    assert [d for _, d, _ in fits] == [run_dir / "generation_1", run_dir / "generation_2", run_dir]
    # generation 1 learns from generation 0; generation k from generation k-1's saved weights
    assert torch.equal(fits[0][0].teacher.fc.bias, gen0.fc.bias)
    for k in (2, 3):
        teacher = fits[k - 1][0].teacher
        assert torch.all(teacher.fc.bias == k - 1) and not teacher.training
        assert fits[k - 1][0].summary()["teacher_path"] == str(fits[k - 2][1] / "checkpoints" / "last.pt")
        assert fits[k - 1][0].student is not fits[k - 2][0].student
    assert [row["generation"] for row in summary["generations_table"]] == [0, 1, 2, 3]
    assert [row["final_test_acc"] for row in summary["generations_table"][1:]] == [10.0, 20.0, 30.0]


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["strategy=multi_teacher", "strategy.combine=vote"],
         "strategy.combine: 'vote' is not allowed; allowed: mean, weighted, confidence"),
        (["strategy=multi_teacher", "strategy.combine=weighted"], "strategy.weights=None gives 0 values for 2 teachers"),
        (["strategy=multi_teacher", "strategy.combine=weighted", "strategy.weights=[1]"],
         r"strategy.weights=\[1\] gives 1 values for 2 teachers"),
        (["strategy=multi_teacher", "strategy.teachers=[resnet99]"], "strategy.teachers: 'resnet99' is not allowed; allowed: "),
        (["strategy=multi_teacher", "teacher.checkpoint=t.pt"], "give strategy.checkpoints=\\[path,...\\]"),
        (["strategy=online", "strategy.peers=[]"], "strategy.peers is empty"),
        (["strategy=born_again", "strategy.generations=0"], "strategy.generations must be >= 1, got 0"),
        (["loss=fitnets", "loss.terms.hint.weight=-1"], "loss.terms.hint.weight must be >= 0, got -1"),
        (["strategy=online", "loss=at"], "loss.terms.at is a feature term, which strategy=online cannot train"),
        (["loss=dkd", "loss.terms.dkd.warmup_epochs=1.5"], "loss.terms.dkd.warmup_epochs must be an integer, got 1.5"),
        (["strategy=self", "loss=ce"], "strategy=self with loss=ce has no distillation term"),
    ],
)
def test_bad_strategy_values_get_a_message_naming_them(overrides, message):
    with pytest.raises(ConfigError, match=message):
        validate(compose_cfg(*overrides))


# --- through the CLI, on digits ---------------------------------------------------------------------------

# AdamW as in experiment=quickstart: with SGD at lr 0.05, hint and attention weights of 100 and 1000
# (tuned for CIFAR ResNets) make the BatchNorm-free cnn_student diverge on 8x8 digits.
TINY = ["dataset=digits", "student=cnn_student", "epochs=1", "teacher.epochs=1", "dataset.limit_train=256",
        "optim=adamw", "optim.lr=3e-3", "trainer.progress=false", "device=cpu"]


@pytest.fixture(scope="module")
def teachers(tmp_path_factory) -> str:
    """One teacher cache for the whole module: each teacher trains once."""
    return f"paths.teachers={tmp_path_factory.mktemp('teachers')}"


def assert_saved_student_is_plain(run_dir: Path, arch: str) -> None:
    for name in ("best.pt", "last.pt"):
        state = load_checkpoint(run_dir / "checkpoints" / name)["state_dict"]
        assert set(state) == plain_keys(arch)  # no regressor, head or peer weights
        build_model(arch, 1, 8, 10).load_state_dict(state)  # strict


def run(tmp_path, teachers, *args) -> tuple[Path, list[dict], dict]:
    run_kdrun(tmp_path, *TINY, teachers, *args)
    run_dir = only_run_dir(tmp_path)
    return run_dir, read_jsonl(run_dir / "metrics.jsonl"), json.loads((run_dir / "metrics.json").read_text())


def test_cli_kd_with_hint_and_attention(tmp_path, teachers):
    run_dir, epochs, summary = run(tmp_path, teachers, "strategy=kd", "loss=kd", "teacher=resnet8",
                                   "loss.terms.hint.weight=100", "loss.terms.at.weight=1000")
    for record in epochs:
        assert record["loss"] == pytest.approx(sum(record[f"loss_{t}"] for t in ("ce", "kd", "hint", "at")))
    assert summary["teacher_arch"] == "resnet8"
    assert_saved_student_is_plain(run_dir, "cnn_student")


def test_cli_dkd(tmp_path, teachers):
    _, epochs, summary = run(tmp_path, teachers, "strategy=kd", "loss=dkd", "teacher=mlp", "epochs=2")
    assert {"loss_ce", "loss_tckd", "loss_nckd"} <= set(epochs[0]) and "loss_kd" not in epochs[0]
    assert summary["terms"] == {"ce": 1.0, "dkd": 1.0} and summary["T"] == 4.0


def test_cli_multi_teacher(tmp_path, teachers):
    _, epochs, summary = run(tmp_path, teachers, "strategy=multi_teacher", "strategy.teachers=[mlp,resnet8]",
                             "strategy.combine=weighted", "strategy.weights=[2,1]")
    assert [t["arch"] for t in summary["teachers"]] == ["mlp", "resnet8"]
    assert all(0 <= t["test_acc"] <= 100 for t in summary["teachers"])
    assert 0 <= summary["ensemble_test_acc"] <= 100 and summary["combine"] == "weighted"
    assert summary["teacher_arch"] == "mlp+resnet8" and {"loss_ce", "loss_kd"} <= set(epochs[0])


def test_cli_online(tmp_path, teachers):
    run_dir, epochs, summary = run(tmp_path, teachers, "strategy=online", "strategy.peers=[mlp,cnn_student]",
                                   "epochs=2")
    for record in epochs:
        assert {"peer0_test_acc", "peer1_test_acc", "peer2_test_acc"} <= set(record)
        assert record["peer0_test_acc"] == record["test_acc"]  # peer 0 is the student
    assert [p["arch"] for p in summary["peers"]] == ["cnn_student", "mlp", "cnn_student"]
    assert_saved_student_is_plain(run_dir, "cnn_student")
    assert not (tmp_path / "outputs" / "teachers").exists()  # no teacher at all


def test_cli_born_again(tmp_path, teachers):
    proc = run_kdrun(tmp_path, *TINY, teachers, "strategy=born_again", "strategy.generations=2")
    run_dir = only_run_dir(tmp_path)
    assert "born-again generations" in proc.stdout
    table = json.loads((run_dir / "metrics.json").read_text())["generations_table"]
    assert [row["generation"] for row in table] == [0, 1, 2]
    first = json.loads((run_dir / "generation_1" / "metrics.json").read_text())
    last = json.loads((run_dir / "metrics.json").read_text())
    assert first["teacher_path"] == table[0]["path"] and first["teacher_arch"] == "cnn_student"
    assert last["teacher_path"] == str(run_dir / "generation_1" / "checkpoints" / "last.pt")
    assert last["teacher_test_acc"] == first["final_test_acc"] == table[1]["final_test_acc"]
    assert_saved_student_is_plain(run_dir, "cnn_student")


def test_cli_self(tmp_path, teachers):
    run_dir, epochs, summary = run(tmp_path, teachers, "strategy=self", "student=resnet8", "strategy.hint_weight=1")
    assert {"loss_ce", "loss_head0_kd", "loss_head1_hint", "head0_test_acc", "head1_test_acc"} <= set(epochs[0])
    assert set(summary["head_test_acc"]) == {"head0", "head1"}
    assert_saved_student_is_plain(run_dir, "resnet8")


def test_vector_stages_work_too_self_on_an_mlp_and_a_hint_between_mlps():
    torch.manual_seed(0)
    mlp = build_model("mlp", 1, 8, 10)
    strategy = SelfDistillation(mlp, stage_shapes("mlp", 1, 8, 10), KD_OBJECTIVE, ce_weight=1.0, hint_weight=1.0)
    out = strategy.step(batch())
    assert set(out.losses) == {"ce", "head0_ce", "head0_kd", "head0_hint"}
    terms = build_feature_terms(terms_cfg(hint={"student_stage": 0}), FeatureContext("mlp", "mlp", (1, 8, 10)))
    assert terms.terms[0].regressor[0].weight.shape == (256, 256)  # a linear map between two 256-vectors
