"""A new loss term needs no edit to kdrun: one module of the user's, named with plugins=[...]. Here a logit
term and a feature term with its own trainable part live in the test's folder, as in a user's project."""

from __future__ import annotations

import signal
import textwrap

import torch
import yaml

from conftest import TINY, only_run_dir, read_jsonl, run_kdrun
from kdrun.sources.checkpoint import load_checkpoint
from kdrun.sources.models import build_model
import test_faults
from test_faults import finish, mid_epoch, start, wait_for

TOY_TERMS = '''
from dataclasses import dataclass

import torch.nn.functional as F
from torch import nn

from kdrun.keys import key
from kdrun.methods.terms.base import FeatureTerm, LogitTerm, register_term


@register_term
class ProbabilityL1(LogitTerm):
    """The L1 distance of the softened outputs: a logit term kdrun does not ship."""

    name = "toy_l1"

    @dataclass
    class Config:
        weight: float = key(default=1.0, low=0)
        T: float = key(default=4.0, low=0, strict=True, follows="T")

    def temperature(self):
        return float(self.config.T)

    def forward(self, inputs):
        T = self.temperature()
        p, q = F.softmax(inputs.logits.float() / T, 1), F.softmax(inputs.teacher_logits.float() / T, 1)
        return self.weighted((p - q).abs().sum(1).mean())


@register_term
class PooledProjection(FeatureTerm):
    """A trained linear map from the student's pooled stage to the teacher's: a feature term with a part."""

    name = "toy_projection"

    @dataclass
    class Config:
        weight: float = key(default=1.0, low=0)
        student_stage: int = key(default=-1)
        teacher_stage: int = key(default=-1)

    def __init__(self, config, refs, widths):
        super().__init__(config)
        self.refs = refs
        self.projection = nn.Linear(*widths)

    @classmethod
    def build(cls, config, context):
        s_ref, s_shape = context.pick("student", cls.name, config.student_stage, None, "student_stage")
        t_ref, t_shape = context.pick("teacher", cls.name, config.teacher_stage, None, "teacher_stage")
        return cls(config, (s_ref, t_ref), (s_shape[0], t_shape[0]))

    def forward(self, inputs):
        pool = lambda f: f.mean((2, 3)) if f.dim() == 4 else f
        s, t = self.refs
        return self.weighted(F.mse_loss(self.projection(pool(inputs.features[s])), pool(inputs.teacher_features[t])))
'''


def user_terms(tmp_path, monkeypatch) -> list[str]:
    (tmp_path / "myterms.py").write_text(textwrap.dedent(TOY_TERMS))
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))  # where a user's own modules are importable
    return ["plugins=[myterms]"]


def test_a_users_logit_term_joins_the_loss_from_the_command_line(tmp_path, monkeypatch):
    args = user_terms(tmp_path, monkeypatch)
    run_kdrun(tmp_path, *TINY, *args, "loss.terms.toy_l1.weight=0.5", "T=2")
    run_dir = only_run_dir(tmp_path)
    record = read_jsonl(run_dir / "metrics.jsonl")[0]
    assert {"loss_ce", "loss_kd", "loss_toy_l1"} <= set(record) and record["loss_toy_l1"] > 0
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["loss"]["terms"]["toy_l1"] == {"weight": 0.5, "T": 2}  # its T followed the short key


def test_a_users_term_gets_the_same_key_checks_as_kdruns_own(tmp_path, monkeypatch):
    args = user_terms(tmp_path, monkeypatch)
    typo = run_kdrun(tmp_path, *TINY, *args, "loss.terms.toy_l1.wieght=1", check=False)
    assert typo.returncode == 2 and "did you mean loss.terms.toy_l1.weight?" in typo.stderr
    wrong_type = run_kdrun(tmp_path, *TINY, *args, "loss.terms.toy_l1.T=hot", check=False)
    assert wrong_type.returncode == 2 and "loss.terms.toy_l1.T must be a number, got 'hot'" in wrong_type.stderr
    bound = run_kdrun(tmp_path, *TINY, *args, "loss.terms.toy_projection.weight=-1", check=False)
    assert bound.returncode == 2 and "loss.terms.toy_projection.weight must be >= 0, got -1" in bound.stderr
    unknown = run_kdrun(tmp_path, *TINY, *args, "loss.terms.toy_l2.weight=1", check=False)
    assert unknown.returncode == 2 and "unknown loss term 'toy_l2'; did you mean toy_l1?" in unknown.stderr
    wrong_kind = run_kdrun(tmp_path, *TINY, *args, "strategy=online", "loss.terms.toy_projection.weight=1",
                           check=False)
    assert wrong_kind.returncode == 2 and "loss.terms.toy_projection is a feature term, which strategy=online " \
                                          "cannot train" in wrong_kind.stderr
    assert not (tmp_path / "outputs").exists()  # refused before anything was written


def test_a_users_feature_term_trains_its_part_resumes_it_and_leaves_the_student_plain(tmp_path, monkeypatch):
    args = [*user_terms(tmp_path, monkeypatch), "dataset=digits", "teacher=mlp", "teacher.epochs=1",
            "student=cnn_student", "epochs=2", "batch_size=16", "checkpoint.every_steps=5", "trainer.progress=false",
            "loss.terms.toy_projection.weight=1", f"paths.teachers={tmp_path / 'teachers'}"]
    monkeypatch.setitem(test_faults.ENV, "PYTHONPATH", str(tmp_path))
    rc, out = finish(start(tmp_path, *args, "hydra.run.dir=ref"))  # the teacher trains once, for both runs
    assert rc == 0, out

    proc = start(tmp_path, *args, "hydra.run.dir=cut")
    last = tmp_path / "cut" / "checkpoints" / "last.pt"
    wait_for(mid_epoch(last, 1), proc=proc)
    proc.send_signal(signal.SIGINT)
    rc, out = finish(proc)
    assert rc == 130, out
    rc, out = finish(start(tmp_path, *args, "hydra.run.dir=cut", "resume=auto"))
    assert rc == 0 and "resuming" in out, out

    ref = torch.load(tmp_path / "ref" / "checkpoints" / "last.pt", weights_only=True)
    cut = torch.load(last, weights_only=True)
    part = ref["train"]["strategy"]["features"]
    assert any(k.endswith("projection.weight") for k in part)
    # The interrupted and resumed run ends exactly where the uninterrupted one does, part and student alike:
    # a part left at its initial weights after the resume would have sent the student elsewhere.
    assert all(torch.equal(part[k], cut["train"]["strategy"]["features"][k]) for k in part)
    assert all(torch.equal(ref["state_dict"][k], cut["state_dict"][k]) for k in ref["state_dict"])
    initial = build_model("cnn_student", 1, 8, 10)
    for name in ("best.pt", "last.pt"):  # the saved student is the plain student
        state = load_checkpoint(tmp_path / "cut" / "checkpoints" / name)["state_dict"]
        assert set(state) == set(initial.state_dict())
        initial.load_state_dict(state)
    assert read_jsonl(tmp_path / "cut" / "metrics.jsonl")[-1]["loss_toy_projection"] > 0
