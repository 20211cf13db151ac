"""A new method needs no edit to kdrun: one Python module that registers its class, and one YAML.
Here both live in the test's own folder, as they would in a user's project."""

from __future__ import annotations

import textwrap

from conftest import TINY, only_run_dir, read_jsonl, run_kdrun

TOY_METHOD = '''
from dataclasses import dataclass

import torch.nn.functional as F

from kdrun.config.schema import key
from kdrun.strategies.base import Batch, Setup, StepOutput, Strategy, register
from kdrun.sources.students import build_student


@register
class LabelSmoothing(Strategy):
    """The student on labels smoothed by `smoothing`: a method kdrun does not ship."""

    name = "toy_smoothing"
    distills = False

    @dataclass
    class Config:
        smoothing: float = key(low=0)

    def __init__(self, student, smoothing):
        super().__init__(student)
        self.smoothing = smoothing

    @classmethod
    def from_config(cls, setup: Setup):
        return cls(build_student(setup.cfg, setup.data, setup.runtime), setup.cfg.strategy.smoothing)

    def step(self, batch: Batch) -> StepOutput:
        logits = self.student(batch.x)
        return StepOutput(logits, {"smoothed_ce": F.cross_entropy(logits, batch.y, label_smoothing=self.smoothing)})
'''


def user_project(tmp_path):
    (tmp_path / "mymethods.py").write_text(textwrap.dedent(TOY_METHOD))
    (tmp_path / "conf" / "strategy").mkdir(parents=True)
    (tmp_path / "conf" / "strategy" / "toy_smoothing.yaml").write_text("name: toy_smoothing\nsmoothing: 0.1\n")
    return [f"hydra.searchpath=[file://{tmp_path / 'conf'}]", "plugins=[mymethods]", "strategy=toy_smoothing"]


def test_a_method_from_a_users_module_runs_from_the_kdrun_command(tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))  # where a user's own modules are importable
    args = user_project(tmp_path)
    run_kdrun(tmp_path, *TINY, *args, "strategy.smoothing=0.2")
    records = read_jsonl(only_run_dir(tmp_path) / "metrics.jsonl")
    assert [r["epoch"] for r in records] == [1] and records[0]["loss_smoothed_ce"] > 0
    assert "smoothing: 0.2" in (only_run_dir(tmp_path) / "config.yaml").read_text()


def test_the_users_method_gets_the_same_key_checks_as_kdruns_own(tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))  # where a user's own modules are importable
    args = user_project(tmp_path)
    wrong_type = run_kdrun(tmp_path, *TINY, *args, "strategy.smoothing=lots", check=False)
    assert wrong_type.returncode == 2 and "strategy.smoothing must be a number, got 'lots'" in wrong_type.stderr
    typo = run_kdrun(tmp_path, *TINY, *args, "strategy.smothing=0.3", check=False)
    assert typo.returncode == 2 and "did you mean strategy.smoothing?" in typo.stderr
    missing = run_kdrun(tmp_path, *TINY, "plugins=[no_such_module]", check=False)
    assert missing.returncode == 2 and "plugins: cannot import 'no_such_module'" in missing.stderr
