"""Ways of training, picked by `strategy=`."""

from __future__ import annotations

from kdrun.strategies.base import Batch, StepOutput, Strategy
from kdrun.strategies.build import build_strategy, build_student
from kdrun.strategies.kd import KD
from kdrun.strategies.multi_teacher import MultiTeacher
from kdrun.strategies.online import Online
from kdrun.strategies.scratch import Scratch
from kdrun.strategies.self_distillation import SelfDistillation

__all__ = ["KD", "Batch", "MultiTeacher", "Online", "Scratch", "SelfDistillation", "StepOutput", "Strategy",
           "build_strategy", "build_student"]
