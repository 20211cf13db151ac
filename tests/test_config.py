"""Every config composes, short keys reach their groups, and bad values are named."""

from __future__ import annotations

from importlib import resources

import pytest
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from kdrun.run import check_run_config as validate
from kdrun.errors import ConfigError
from kdrun.sources.models import MODEL_NAMES

CONF = resources.files("kdrun.conf")
GROUPS = sorted(p.name for p in CONF.iterdir() if p.is_dir() and not p.name.startswith("_"))


def options(group: str) -> list[str]:
    return sorted(p.name.removesuffix(".yaml") for p in CONF.joinpath(group).iterdir() if p.name.endswith(".yaml"))


def compose_cfg(*overrides: str):
    with initialize_config_module(config_module="kdrun.conf", version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides), return_hydra_config=False)


ALL_CHOICES = [(group, option) for group in GROUPS for option in options(group)]


@pytest.mark.parametrize("group,option", ALL_CHOICES, ids=[f"{g}={o}" for g, o in ALL_CHOICES])
def test_every_config_composes_and_resolves(group, option):
    # custom names its class on the command line: any importable callable that takes num_classes=
    extra = [f"{group}._target_=torchvision.models.mobilenet_v3_small"] if option == "custom" else []
    cfg = compose_cfg(f"{group}={option}", *extra)
    OmegaConf.to_container(cfg, resolve=True)  # every interpolation resolves
    if group not in ("loss",):  # loss=ce needs strategy=scratch, checked below
        validate(cfg)


def test_groups_offer_what_the_docs_promise():
    assert set(options("dataset")) >= {"cifar10", "cifar100", "mnist", "fashion_mnist", "digits", "synthetic"}
    beyond_the_zoo = {"torchvision", "timm", "custom"}
    assert set(options("teacher")) == set(MODEL_NAMES) | beyond_the_zoo == set(options("student"))
    assert set(options("loss")) >= {"kd", "ce"}
    assert set(options("strategy")) >= {"scratch", "kd"}
    assert set(options("device")) >= {"auto", "cpu", "cuda"}
    assert set(options("optim")) >= {"sgd", "adamw"}
    assert set(options("experiment")) >= {"quickstart", "cifar10_resnet34_resnet20"}


def test_short_keys_reach_their_groups():
    cfg = compose_cfg("T=8", "epochs=3", "batch_size=32", "seed=5")
    assert cfg.loss.terms.kd.T == 8
    assert cfg.trainer.epochs == 3 and cfg.teacher.epochs == 3
    assert cfg.trainer.batch_size == 32
    assert cfg.seed == 5


def test_defaults_follow_the_design():
    cfg = compose_cfg()
    assert OmegaConf.to_container(cfg.loss, resolve=True) == {
        "standardize": False, "name": "kd", "terms": {"ce": {"weight": 0.1}, "kd": {"weight": 0.9, "T": 4.0}}}
    assert cfg.dataset.name == "cifar10"


def test_classic_preset():
    cfg = compose_cfg("experiment=cifar10_resnet34_resnet20")
    assert (cfg.teacher.arch, cfg.student.arch, cfg.dataset.name) == ("resnet34", "resnet20", "cifar10")
    assert cfg.optim.name == "sgd" and cfg.optim.lr == 0.1 and cfg.loss.terms.kd.T == 4 and cfg.trainer.epochs == 240


def test_a_preset_can_still_be_overridden_on_the_command_line():
    cfg = compose_cfg("experiment=quickstart", "T=2", "epochs=1")
    assert cfg.loss.terms.kd.T == 2 and cfg.trainer.epochs == 1 and cfg.dataset.name == "digits"


def test_unknown_keys_are_refused():
    with pytest.raises(Exception, match="tempreature"):
        compose_cfg("loss.tempreature=3")


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["T=0"], "T must be > 0, got 0"),
        (["T=-1"], "must be > 0, got -1"),
        (["T=hot"], "T must be a number, got 'hot'"),
        (["loss.terms.ce.weight=-0.1"], "loss.terms.ce.weight must be >= 0, got -0.1"),
        (["loss.terms.kd.weight=-1"], "loss.terms.kd.weight must be >= 0, got -1"),
        (["batch_size=0"], "batch_size must be >= 1, got 0"),
        (["batch_size=2.5"], "batch_size must be an integer, got 2.5"),
        (["epochs=0"], "epochs must be >= 1"),
        (["student.arch=resnet21"], "student.arch: 'resnet21' is not allowed; allowed: resnet8, "),
        (["teacher.arch=vit"], "teacher.arch: 'vit' is not allowed; allowed: .*cnn_teacher"),
        (["optim.lr=0"], "optim.lr must be > 0"),
        (["loss=ce"], "strategy=kd with loss=ce has no distillation term"),
    ],
)
def test_bad_values_get_a_message_naming_them(overrides, message):
    with pytest.raises(ConfigError, match=message):
        validate(compose_cfg(*overrides))
