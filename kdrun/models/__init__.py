"""The model zoo: `build_model(name, in_channels, image_size, num_classes)`."""

from kdrun.models.base import KDModel, count_parameters, model_size_mb
from kdrun.models.registry import MODEL_NAMES, build_model

__all__ = ["MODEL_NAMES", "KDModel", "build_model", "count_parameters", "model_size_mb"]
