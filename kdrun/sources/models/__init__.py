"""The model zoo: `build_model(name, in_channels, image_size, num_classes)`."""

from kdrun.sources.models.base import KDModel, count_parameters, model_size_mb
from kdrun.sources.models.registry import MODEL_NAMES, MODEL_OPTIONS, build_model, model_options

__all__ = ["MODEL_NAMES", "MODEL_OPTIONS", "model_options", "KDModel", "build_model", "count_parameters", "model_size_mb"]
