"""What every loss term shares, and the registry that `loss.terms.<name>` picks from.

A term is one class in one file, as a strategy is: its own typed `Config` (kdrun.config.schema keys with their
defaults beside them; every term has a `weight`), a `validate` for how its keys combine with the rest
of the run's config, and a registration by name (`@register_term`). There are two kinds:

- a logit term (`LogitTerm`) reads the student's and the teacher's logits, the labels and the epoch;
- a feature term (`FeatureTerm`) also reads stage outputs of both models, and may own trainable parts
  (a regressor, an embedding, a memory bank): the strategy trains them, last.pt keeps them for resume,
  and they are never saved with the student.

A term returns its weighted value(s) by name; the trainer sums every term of a step and logs each as
`loss_<name>`. Nothing outside a term's file knows its keys: whoever needs a temperature asks
`temperature()`.
"""

from __future__ import annotations

import difflib
from abc import ABCMeta, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor, nn

from kdrun.errors import ConfigError
from kdrun.keys import key

LOGIT, FEATURE = "logit", "feature"


@dataclass
class TermInputs:
    """What a term may read for one batch. Feature lists are present for feature terms only."""

    logits: Tensor  # the student's
    teacher_logits: Tensor
    labels: Tensor
    epoch: int  # 1-based
    index: Tensor | None = None  # positions of the samples in the training split
    features: object | None = None  # the student's StageOutputs (kdrun.methods.terms.feature.stages)
    teacher_features: object | None = None
    labelled: Tensor | None = None  # which rows have a label (a transfer set); None: every row
    mixed: tuple[Tensor, Tensor] | None = None  # mixup/cutmix: (partner labels, own share) per row


class Term(nn.Module, metaclass=ABCMeta):
    """One weighted loss. Subclasses set `name`, `kind` and a `Config` with at least `weight`, and define
    `forward` (and a feature term `build`): a term that lacks one cannot be instantiated."""

    name: ClassVar[str] = "term"
    kind: ClassVar[str] = LOGIT
    uses_labels: ClassVar[bool] = False  # reads the labels: sees labelled images only
    distils: ClassVar[bool] = True  # learns from the teacher (cross-entropy alone does not)
    masks_unlabelled: ClassVar[bool] = False  # a label term that reads only Batch.labelled rows (transfer sets)
    mixes_labels: ClassVar[bool] = False  # a label term that reads the two labels of a mixed image

    @dataclass
    class Config:
        weight: float = key(default=1.0, low=0, doc="what the term's value is multiplied by")

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.weight = float(config.weight)

    @classmethod
    def validate(cls, config, cfg) -> None:
        """Refuse combinations of this term's keys with the rest of the run's config (types and ranges are
        checked already). `config` is the term's own Config, `cfg` the whole run's."""

    def temperature(self) -> float | None:
        """The temperature at which this term reads the teacher's logits, if it has one."""
        return None

    def weighted(self, value: Tensor) -> dict[str, Tensor]:
        return {self.name: self.weight * value}

    @abstractmethod
    def forward(self, inputs: TermInputs) -> dict[str, Tensor]:
        """The term's weighted value(s) for one batch, by name."""


class LogitTerm(Term):
    kind = LOGIT

    @classmethod
    def build(cls, config, context) -> "LogitTerm":
        return cls(config)


class FeatureTerm(Term):
    """Reads stage outputs. `build` gets a FeatureContext (both architectures, the data's dimensions) so
    stage choices are checked, and trainable parts sized, before any teacher trains."""

    kind = FEATURE

    @classmethod
    @abstractmethod
    def build(cls, config, context) -> "FeatureTerm":
        """The term, its stage choices checked against the FeatureContext and its parts sized."""

    def layer_names(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """Layers by module name this term reads besides the models' own stages: (student's, teacher's)."""
        return (), ()

    # Terms with an initialisation stage (RepDistiller's "init" epochs: FSP, AB, FT) declare an `init_epochs`
    # key: the run's first init_epochs epochs minimise only `init_loss` of the terms still initialising (what
    # it reaches trains: the term's parts and the student layers below the stages it reads), then every term
    # trains as usual. The stage follows from the epoch, which last.pt keeps, so a resume lands in it.
    has_init_stage: ClassVar[bool] = False

    @classmethod
    def validate(cls, config, cfg) -> None:
        epochs = cfg.get("epochs")
        init = getattr(config, "init_epochs", 0) or 0
        if cls.has_init_stage and epochs is not None and init >= epochs:
            raise ConfigError(f"loss.terms.{cls.name}.init_epochs={init} leaves no epoch of the main training "
                              f"(epochs={epochs}); the init stage is the first init_epochs of the run's epochs: "
                              f"raise epochs or lower init_epochs")
        if cls.has_init_stage and init == 0 and config.weight == 0:
            raise ConfigError(f"loss.terms.{cls.name} has weight 0 and init_epochs 0, so it never trains anything; "
                              f"set loss.terms.{cls.name}.init_epochs (its initialisation stage) or a weight")

    def init_epochs(self) -> int:
        return int(getattr(self.config, "init_epochs", 0) or 0) if self.has_init_stage else 0

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.has_init_stage and cls.init_loss is FeatureTerm.init_loss:
            raise TypeError(f"{cls.__qualname__} declares an initialisation stage (has_init_stage) but no init_loss")

    def init_loss(self, inputs: TermInputs) -> dict[str, Tensor]:
        """The initialisation stage's losses (unweighted, as the reference's init loop), by name; only a term
        with `has_init_stage` defines it, and only its stage asks for it."""
        return {}

    def lr_groups(self) -> list[tuple[list[nn.Parameter], float]]:
        """Parts that train at their own learning rate instead of optim.lr (the schedule still applies)."""
        return []

    def bind(self, student: nn.Module, teacher: nn.Module) -> None:
        """Read what the term needs from the models themselves once they exist (OFD's margins come from the
        trained teacher's BatchNorm)."""


TERMS: dict[str, type[Term]] = {}


def register_term(cls: type[Term]) -> type[Term]:
    """Class decorator: `loss.terms.<cls.name>` builds this term."""
    if cls.name in TERMS and TERMS[cls.name] is not cls:
        raise ValueError(f"two loss terms are named {cls.name!r}: {TERMS[cls.name].__qualname__} and "
                         f"{cls.__qualname__}")
    TERMS[cls.name] = cls
    return cls


def term_class(name: str) -> type[Term]:
    if name not in TERMS:
        match = difflib.get_close_matches(str(name), list(TERMS), n=1)
        hint = f"; did you mean {match[0]}?" if match else ""
        raise ConfigError(f"unknown loss term {name!r}{hint} (known terms: {', '.join(sorted(TERMS))})")
    return TERMS[name]
