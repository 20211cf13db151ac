"""What a job does beyond training, cut without changing a number (issue 24 item 3): the last epoch's test
pass also gives metrics.json's per-class accuracies; changed weights are always evaluated afresh."""

from __future__ import annotations

import torch
from hydra import compose, initialize_config_module

from kdrun.engine import trainer
from kdrun.sources.checkpoint import load_checkpoint
from kdrun.sources.data import BatchAugment, load_dataset
from kdrun.sources.models import build_model
from kdrun.run import run_experiment
from kdrun.runtime import Runtime

SMALL = ["dataset=synthetic", "dataset.train_size=50", "dataset.test_size=30", "dataset.image_size=8",
         "batch_size=16", "epochs=2", "student=cnn_student", "device=cpu", "device.precision=fp32",
         "trainer.progress=false", "strategy=scratch", "trainer.eval_batch_size=7"]


def counting_passes(monkeypatch) -> list:
    passes = []
    real = trainer.class_counts

    def counted(*args, **kwargs):
        passes.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(trainer, "class_counts", counted)
    return passes


def test_one_test_pass_per_epoch_and_per_class_accuracy_as_a_fresh_pass_gives(tmp_path, monkeypatch):
    passes = counting_passes(monkeypatch)
    with initialize_config_module(config_module="kdrun.conf", version_base="1.3"):
        cfg = compose(config_name="config", overrides=[*SMALL, f"paths.outputs={tmp_path}"])
    summary = run_experiment(cfg, tmp_path / "run")
    assert len(passes) == 2  # the two epochs' evaluations; none more for the summary

    # Independently: the final weights (last.pt) on every test image, one at a time, in fp32.
    data = load_dataset(cfg.dataset, "cpu")
    augment = BatchAugment(0, False, data.mean, data.std)
    model = build_model("cnn_student", data.in_channels, data.image_size, data.num_classes)
    model.load_state_dict(load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["state_dict"])
    model.eval()
    with torch.no_grad():
        predicted = torch.cat([model(augment(data.test_x[i:i + 1], None, train=False)).argmax(1)
                               for i in range(len(data.test_y))])
    for c, name in enumerate(data.class_names or [str(c) for c in range(data.num_classes)]):
        mine = data.test_y == c
        expected = None if not mine.any() else round(100.0 * (predicted[mine] == c).sum().item() / mine.sum().item(), 4)
        assert summary["per_class_test_acc"][name] == expected
    assert summary["final_test_acc"] == 100.0 * (predicted == data.test_y).sum().item() / len(data.test_y)


def test_changed_weights_are_evaluated_again(tmp_path, monkeypatch):
    passes = counting_passes(monkeypatch)
    with initialize_config_module(config_module="kdrun.conf", version_base="1.3"):
        cfg = compose(config_name="config", overrides=[*SMALL, f"paths.outputs={tmp_path}"])
    data = load_dataset(cfg.dataset, "cpu")
    runtime = Runtime(torch.device("cpu"), "fp32")
    evaluation = trainer.Evaluation(data, BatchAugment(0, False, data.mean, data.std), runtime, 7)
    model = build_model("cnn_student", data.in_channels, data.image_size, data.num_classes)
    first = evaluation.per_class_test_acc(model)
    assert evaluation.per_class_test_acc(model) == first and len(passes) == 1  # unchanged: reused
    with torch.no_grad():
        next(model.parameters()).add_(1.0)  # an optimiser step writes in place like this
    evaluation.test_acc(model)
    other = build_model("cnn_student", data.in_channels, data.image_size, data.num_classes)
    evaluation.test_acc(other)  # another model, whatever its counters say
    assert len(passes) == 3
