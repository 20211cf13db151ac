"""Config keys are declared once (kdrun.config.schema): every key of every shipped group option is typed, a value
of the wrong type is refused with the key in the message, and the lists that resume, the report and the
teacher fingerprint use are derived from the keys' roles."""

from __future__ import annotations

from importlib import resources

import pytest
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from kdrun.errors import ConfigError
from kdrun.report.aggregate import NOT_SETTINGS, SEED_KEYS
from kdrun.config.resume import RESUME_MAY_CHANGE
from kdrun.run import check_run_config
from kdrun.config.schema import check_override_keys, declared_keys, keys_with_role
from kdrun.strategies.catalog import STRATEGIES, any_strategy_config

CONF = resources.files("kdrun.conf")
GROUPS = sorted(p.name for p in CONF.iterdir() if p.is_dir() and not p.name.startswith("_"))
# Group options that only run beside another choice.
# custom models name their class: any importable callable that takes num_classes=
NEEDS = {("loss", "ce"): ["strategy=scratch"],
         **{(role, "custom"): [f"{role}._target_=torchvision.models.mobilenet_v3_small"] for role in ("teacher", "student")}}


def options(group: str) -> list[str]:
    return sorted(p.name.removesuffix(".yaml") for p in CONF.joinpath(group).iterdir() if p.name.endswith(".yaml"))


def compose_cfg(*overrides: str):
    with initialize_config_module(config_module="kdrun.conf", version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def leaves(node, prefix=""):
    for key, value in node.items():
        if isinstance(value, dict):
            yield from leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def wrong_value(value) -> str:
    """A command-line value of another type than `value`'s."""
    if isinstance(value, bool):
        return "maybe"
    if value is None:
        return "{a:1}"  # a mapping: no key is typed as one
    if isinstance(value, (int, float, list)):
        return "abc"
    return "[1,2]"  # a list where a string belongs


NULLABLE_GROUPS = {"teacher.optim"}  # a group of keys or null (TeacherKeys.optim)


def key_cases():
    """(choice overrides, dotted key, wrong value): each key of each group option once, root keys too."""
    seen, cases = set(), []
    for group in ["", *GROUPS]:
        for option in options(group) if group else [None]:
            if group == "experiment":
                continue  # presets set other groups' keys, covered there
            choose = [f"{group}={option}", *NEEDS.get((group, option), [])] if group else []
            cfg = OmegaConf.to_container(compose_cfg(*choose), resolve=True)
            node = cfg[group] if group else {k: v for k, v in cfg.items() if not isinstance(v, dict)}
            for key, value in leaves(node, f"{group}." if group else ""):
                if key not in seen and key != "resume":
                    seen.add(key)
                    bad = "abc" if key in NULLABLE_GROUPS else wrong_value(value)  # {a:1} is a group's shape
                    cases.append((choose, key, bad))
    return cases


CASES = key_cases()


def test_every_key_of_every_shipped_option_is_declared():
    declared = {key for name in STRATEGIES for key, _ in declared_keys(STRATEGIES[name].Config)}
    missing = [key for _, key, _ in CASES if key not in declared]
    assert not missing, f"keys in conf/ that kdrun.config.schema does not declare: {missing}"


@pytest.mark.parametrize("choose,key,bad", CASES, ids=[key for _, key, _ in CASES])
def test_a_value_of_the_wrong_type_is_refused_naming_the_key(choose, key, bad):
    cfg = compose_cfg(*choose, f"{key}={bad}")
    with pytest.raises(ConfigError) as error:
        check_run_config(cfg)
    assert str(error.value).startswith(f"{key} must be "), str(error.value)
    assert str(error.value).endswith(f"got {_get(cfg, key)!r}"), str(error.value)


def _get(cfg, dotted: str):
    value = OmegaConf.select(cfg, dotted)
    return OmegaConf.to_container(value) if OmegaConf.is_config(value) else value


@pytest.mark.parametrize("override,message", [
    ("optim.momentum=abc", "optim.momentum must be a number, got 'abc'"),
    ("optim.milestones=abc", "optim.milestones must be a list of integers, got 'abc'"),
    ("optim.gamma=abc", "optim.gamma must be a number, got 'abc'"),
    ("dataset.augment.hflip=maybe", "dataset.augment.hflip must be true or false, got 'maybe'"),
    ("trainer.progress=maybe", "trainer.progress must be true or false, got 'maybe'"),
    ("teacher.topk=0", "teacher.topk must be >= 1 or null, got 0"),
])
def test_the_issues_examples_are_refused(override, message):
    with pytest.raises(ConfigError, match=message):
        check_run_config(compose_cfg(override))


@pytest.mark.parametrize("override,message", [
    ("loss.tempreature=3", "unknown config key 'loss.tempreature' \\(known keys of loss: name, terms, standardize\\)"),
    ("loss.terms.kd.temperature=3", "unknown config key 'loss.terms.kd.temperature' \\(known keys of loss.terms.kd: weight, T\\)"),
    ("loss.terms.kd.wieght=3", "did you mean loss.terms.kd.weight?"),
    ("++loss.terms.dkdd.weight=1", "unknown loss term 'dkdd'; did you mean dkd\\?"),
    ("trainer.epoch=3", "unknown config key 'trainer.epoch'; did you mean trainer.epochs?"),
    ("epoch=3", "unknown config key 'epoch'; did you mean epochs?"),
    ("strategy.generation=3", "unknown config key 'strategy.generation'; did you mean strategy.generations?"),
])
def test_a_typo_on_the_command_line_gets_kdruns_message_not_hydras(override, message):
    with pytest.raises(ConfigError, match=message):
        check_override_keys([override], set(GROUPS), any_strategy_config())


def test_group_choices_and_hydra_keys_pass_the_typo_check():
    check_override_keys(["loss=dkd", "experiment=quickstart", "hydra.run.dir=x", "+anything=1", "T=2",
                         "strategy.peers=[resnet8]", "-m"], set(GROUPS), any_strategy_config())


def test_key_lists_come_from_the_roles():
    assert set(SEED_KEYS) == {"seed", "data_seed", "teacher.seed"}
    for key in ("paths.outputs", "dataset.root", "trainer.progress", "logger.name", "checkpoint.every_steps",
                "teacher.cache", "device.channels_last", "trainer.eval_batch_size", "resume"):
        assert key in NOT_SETTINGS and key in RESUME_MAY_CHANGE, key
    for key in ("loss.terms", "optim.lr", "dataset.augment.crop_padding", "student.arch", "trainer.epochs"):
        assert key not in NOT_SETTINGS and key not in RESUME_MAY_CHANGE, key
    assert set(keys_with_role("location")) >= {"dataset.root", "dataset.download", "paths.teachers"}


@pytest.mark.parametrize("sweep", [False, True])
def test_a_key_the_chosen_option_lacks_gets_kdruns_message_not_hydras(kdrun, tmp_path, sweep):
    """optim.momentum is declared (sgd reads it) but optim=adamw has none: Hydra would advise forcing it in
    with +optim.momentum; kdrun names the option and its keys, and writes nothing."""
    args = ["-m", "seed=0,1"] if sweep else []
    proc = kdrun("experiment=quickstart", "optim.momentum=0.5", *args, check=False)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "unknown config key 'optim.momentum'" in proc.stderr and "with optim=adamw" in proc.stderr
    assert "+optim.momentum" not in proc.stdout + proc.stderr
    assert not list(tmp_path.iterdir())
