"""The teacher-output cache: `files` is the format on disk, `serve` gives a strategy its targets."""

from kdrun.teachers.outputs.files import EpochOutputs, OutputCache, TargetFormat, TeacherCacheError, view_checks
from kdrun.teachers.outputs.serve import TeacherOutputs, build_teacher_outputs, cache_key, output_recipe

__all__ = ["EpochOutputs", "OutputCache", "TargetFormat", "TeacherCacheError", "TeacherOutputs",
           "build_teacher_outputs", "cache_key", "output_recipe", "view_checks"]
