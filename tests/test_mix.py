"""mixup and cutmix (kdrun/sources/data/mix.py): each mix a pure function of (data_seed, epoch, index), the label
follows the pixels, the teacher sees the student's mixed view, and a cached run equals a live one."""

from __future__ import annotations

import json
import re

import pytest
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_module

from kdrun.sources.data import BatchAugment, load_dataset
from kdrun.sources.data.feed import InMemoryFeed
from kdrun.sources.data.mix import Mix
from kdrun.errors import ConfigError
from kdrun.losses import cross_entropy
from kdrun.run import run_experiment
from kdrun.runtime import resolve_runtime
from kdrun.strategies.base import Setup
from kdrun.strategies.kd import KD

SMALL = ["dataset=synthetic", "dataset.num_classes=4", "dataset.train_size=64", "dataset.test_size=20",
         "dataset.image_size=8", "dataset.augment.crop_padding=1", "batch_size=16", "epochs=2", "teacher=mlp",
         "student=cnn_student", "device=cpu", "trainer.progress=false"]


def compose_cfg(tmp_path, *overrides: str):
    with initialize_config_module(config_module="kdrun.conf", version_base="1.3"):
        return compose(config_name="config", overrides=[*SMALL, f"paths.outputs={tmp_path}", *overrides])


def images(n: int = 30) -> torch.Tensor:
    return torch.randint(0, 256, (n, 1, 8, 8), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)


@pytest.mark.parametrize("mix", [Mix(mixup=0.4), Mix(cutmix=1.0), Mix(mixup=0.4, cutmix=1.0)],
                         ids=["mixup", "cutmix", "both"])
def test_each_mix_is_a_pure_function_of_data_seed_epoch_and_index(mix):
    x = images()
    a, partner_a, own_a = mix(x, torch.tensor([5, 9]), data_seed=1, epoch=3)
    b, partner_b, own_b = mix(x, torch.tensor([9, 2, 5]), data_seed=1, epoch=3)  # another batch, another order
    assert torch.equal(a[0], b[2]) and torch.equal(a[1], b[0])
    assert partner_a.tolist() == partner_b[[2, 0]].tolist() and torch.equal(own_a, own_b[[2, 0]])
    for other in ({"data_seed": 2, "epoch": 3}, {"data_seed": 1, "epoch": 4}):
        c, _, _ = mix(x, torch.tensor([5, 9]), **other)
        assert not torch.equal(a, c)


def test_mixup_blends_and_cutmix_pastes_a_box_whose_area_is_the_label_share():
    x = images()
    index = torch.arange(20)
    mixed, partner, own = Mix(mixup=0.4)(x, index, 0, 1)
    expected = own.view(-1, 1, 1, 1) * x[index].float() + (1 - own.view(-1, 1, 1, 1)) * x[partner].float()
    assert torch.allclose(mixed, expected, atol=1e-4)
    cut, partner, own = Mix(cutmix=1.0)(x, index, 0, 1)
    from_self = (cut == x[index].float()) & (cut != x[partner].float())
    from_partner = (cut == x[partner].float()) & (cut != x[index].float())
    assert not (from_self & from_partner).any()
    distinct = partner != index
    share = from_self.float().sum((1, 2, 3)) / (from_self | from_partner).float().sum((1, 2, 3))
    assert torch.allclose(share[distinct], own[distinct], atol=0.05)  # pixels equal in both images aside


def test_a_mixed_label_is_the_weighted_cross_entropy_of_both_labels():
    torch.manual_seed(0)
    logits = torch.randn(6, 4)
    y, partner, own = torch.tensor([0, 1, 2, 3, 0, 1]), torch.tensor([3, 3, 0, 1, 2, 2]), torch.rand(6)
    target = own.view(-1, 1) * F.one_hot(y, 4) + (1 - own.view(-1, 1)) * F.one_hot(partner, 4)
    by_hand = -(target * torch.log_softmax(logits, 1)).sum(1).mean()
    assert cross_entropy(logits, y, None, (partner, own)).item() == pytest.approx(by_hand.item(), rel=1e-6)


def test_the_teacher_sees_the_students_mixed_view(tmp_path):
    cfg = compose_cfg(tmp_path, "dataset.augment.mixup=0.4", "teacher.cache=false")
    runtime = resolve_runtime(cfg.device)
    data = load_dataset(cfg.dataset)
    mixed_data = type(data)(**{**vars(data), "mix": Mix(mixup=0.4)})
    augment = BatchAugment(1, False, data.mean, data.std)
    strategy = KD.from_config(Setup(cfg, mixed_data, augment, runtime, data))
    inputs = {}
    for role in ("teacher", "student"):  # a hook that returns nothing leaves the output alone
        getattr(strategy, role).register_forward_hook(lambda m, args, out, role=role: inputs.update({role: args[0]}))
    batch = next(InMemoryFeed(mixed_data, augment, 16, 0, runtime).batches(1))
    plain = next(InMemoryFeed(data, augment, 16, 0, runtime).batches(1))
    assert batch.partner_y is not None and not torch.equal(batch.x, plain.x)
    strategy.step(batch)
    assert inputs["teacher"] is batch.x and inputs["student"] is batch.x


@pytest.mark.parametrize("mix", ["dataset.augment.mixup=0.4", "dataset.augment.cutmix=1.0"])
def test_a_mixed_run_trains_the_same_numbers_cached_or_live(tmp_path, mix):
    def run(name: str, *extra: str) -> tuple[list[dict], dict]:
        summary = run_experiment(compose_cfg(tmp_path, mix, *extra), tmp_path / name)
        lines = (tmp_path / name / "metrics.jsonl").read_text().splitlines()
        return [{k: v for k, v in json.loads(line).items() if k not in ("seconds", "images_per_s")}
                for line in lines], summary

    live, _ = run("live", "teacher.cache=false")
    recorded, first = run("recorded")
    cached, second = run("cached")
    assert live == recorded == cached
    assert (first["teacher_cache_recorded"], second["teacher_cache_hits"]) == (2, 2)
    unmixed, plain = run("unmixed", "dataset.augment.mixup=0", "dataset.augment.cutmix=0")
    assert unmixed != live  # the mix changed what was trained
    assert plain["teacher_path"] == first["teacher_path"]  # the teacher never trains on mixed images
    assert plain["teacher_cache_dir"] != first["teacher_cache_dir"]  # but its outputs for mixed views are others


@pytest.mark.parametrize("overrides,message", [
    (["loss=dkd"], "loss.terms.dkd splits the classes at one true label"),
    (["strategy=online"], "strategy=online does not train on mixed images"),
])
def test_mixing_is_refused_where_a_term_or_strategy_cannot_use_it(tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        run_experiment(compose_cfg(tmp_path, "dataset.augment.mixup=0.4", *overrides), tmp_path / "run")
