"""The model card: what an exported student is, what it takes and how good it is, as JSON."""

from __future__ import annotations

from pathlib import Path

from kdrun.sources.data import DatasetSplits
from kdrun.compress.prune import sparsity
from kdrun.deploy.student import RunModel
from kdrun.sources.models import count_parameters

# Class names where the dataset has words for them; otherwise the class index is the name.
CLASS_NAMES = {
    "cifar10": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"],
    "fashion_mnist": ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                      "Ankle boot"],
}


def class_names(dataset: str, num_classes: int) -> list[str]:
    names = CLASS_NAMES.get(dataset)
    return names if names and len(names) == num_classes else [str(i) for i in range(num_classes)]


def teacher_of(metrics: dict) -> dict | None:
    """The teacher the student was distilled from, as the run recorded it; None for a student from scratch."""
    if "teacher_arch" not in metrics:
        return None
    return {k.removeprefix("teacher_"): metrics[k] for k in
            ("teacher_arch", "teacher_test_acc", "teacher_params", "teacher_path", "teacher_source") if k in metrics}


def model_card(run: RunModel, data: DatasetSplits, artefacts: dict, flops: int) -> dict:
    model = run.model
    mean, std = model.normalisation or (data.mean, data.std)  # what the graph folds in (raw_image_model)
    return {
        "model": model.arch,
        "params": count_parameters(model),
        "weight_sparsity": round(sparsity(model), 4),  # zeros among conv/linear weights (unstructured pruning)
        "flops": flops,
        "classes": model.class_names or class_names(data.name, data.num_classes),
        "input": {
            "name": "images",
            "shape": ["batch", data.in_channels, data.image_size, data.image_size],
            "dtype": "uint8",
            "range": [0, 255],
            "layout": "NCHW",
            "normalisation": {"folded_into_graph": True, "formula": "(x / 255 - mean) / std",
                              "mean": list(mean), "std": list(std)},
        },
        "output": {"name": "logits", "shape": ["batch", data.num_classes]},
        "dataset": data.name,
        "strategy": run.metrics.get("strategy", run.config.get("strategy", {}).get("name")),
        "test_accuracy_recorded": run.metrics.get("final_test_acc"),
        "teacher": teacher_of(run.metrics),
        "run_dir": str(run.run_dir),
        "checkpoint": str(run.checkpoint),
        "artefacts": artefacts,
        "config": run.config,
    }


def card_path(out_dir: Path) -> Path:
    return out_dir / "model_card.json"
