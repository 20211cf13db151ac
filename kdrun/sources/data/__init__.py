"""Datasets as uint8 tensors on the device, batched by randperm + indexing and
augmented a whole batch at a time (docs/design.md, "Data: two paths, one meaning")."""

from .augment import BatchAugment
from .batches import batch_indices, drops_last, iterate_batches, num_batches
from .datasets import DATASET_NAMES, DatasetNotFoundError, load_dataset
from .splits import DatasetSplits
from .readers import read_idx

__all__ = [
    "DATASET_NAMES",
    "BatchAugment",
    "batch_indices",
    "DatasetNotFoundError",
    "DatasetSplits",
    "drops_last",
    "iterate_batches",
    "load_dataset",
    "num_batches",
    "read_idx",
]
