"""A run's loss: the weighted terms `loss.terms` names, completed with their defaults, checked and built.

    loss:
      name: kd                       # the preset (conf/loss/kd.yaml), a label for tables
      terms:                         # in order: logit terms first, then feature terms, as listed
        ce: {weight: 0.1}
        kd: {weight: 0.9, T: 4}

`loss.terms.<name>.<key>=v` changes a term's key; a term the preset lacks joins the list the same way
(the CLI passes such overrides to Hydra as `++`). A term's keys the config does not set take the term's
declared defaults, written into the run's config.yaml so it says exactly what ran.
"""

from __future__ import annotations

from typing import Iterator

from omegaconf import DictConfig, OmegaConf, open_dict
from torch import Tensor, nn

from kdrun.errors import ConfigError
from kdrun.methods.terms.base import FEATURE, LOGIT, FeatureTerm, LogitTerm, Term, TermInputs
from kdrun.methods.terms.catalog import term_class, term_fields
from kdrun.methods.terms.feature.stages import FeatureContext, StageOutputs
from kdrun.methods.terms.nonfinite_inputs import guarded
from kdrun.sources.models.layers import LayerTap, feature_root


def complete_terms(cfg: DictConfig) -> None:
    """Write every listed term's undeclared keys into cfg with their defaults (a key that follows a short
    key, as a temperature follows `T`, becomes an interpolation of it)."""
    terms = cfg.loss.get("terms") or {}
    with open_dict(cfg):
        for name in list(terms):
            node = terms[name]
            if node is None:
                terms[name] = node = OmegaConf.create({})
            for field_name, f in term_fields(term_class(name)).items():
                if field_name not in node:
                    follows = f.metadata.get("follows")
                    node[field_name] = f"${{{follows}}}" if follows else f.default


def term_configs(cfg: DictConfig) -> Iterator[tuple[str, type[Term], object]]:
    """(name, class, its Config) for every term the run lists, in order."""
    for name, node in (cfg.loss.get("terms") or {}).items():
        cls = term_class(name)
        values = OmegaConf.to_container(node, resolve=True) if node is not None else {}
        yield name, cls, cls.Config(**values)


def check_terms(cfg: DictConfig, strategy: str, kinds: tuple[str, ...]) -> None:
    """Refuse terms of a kind the strategy cannot train, a loss with no distillation term, and what each
    term's own `validate` refuses."""
    listed = list(term_configs(cfg))
    for name, cls, config in listed:
        if cls.kind not in kinds:
            raise ConfigError(f"loss.terms.{name} is a {cls.kind} term, which strategy={strategy} cannot train "
                              f"(it trains {' and '.join(kinds)} terms); remove it from the loss "
                              f"(~loss.terms.{name}) or use strategy=kd")
        cls.validate(config, cfg)
    if not any(cls.distils for _, cls, _ in listed):
        raise ConfigError(f"strategy={strategy} with loss={cfg.loss.get('name')} has no distillation term "
                          f"(terms: {', '.join(n for n, _, _ in listed) or 'none'}); use strategy=scratch to "
                          f"train on the labels, or add one, e.g. loss=kd")
    if all(config.weight == 0 for _, _, config in listed):
        raise ConfigError(f"every term of loss={cfg.loss.get('name')} has weight 0 ("
                          + ", ".join(f"loss.terms.{n}.weight=0" for n, _, _ in listed)
                          + "): the loss is zero whatever the student predicts, so nothing trains")


def standardize(logits: Tensor) -> Tensor:
    """Each row z-scored (logit standardisation, Sun et al. CVPR 2024): (z - mean) / (1e-7 + std), with the
    unbiased std, as sunshangquan/logit-standardization-KD computes it. In fp32 under autocast."""
    z = logits.float()
    return (z - z.mean(1, keepdim=True)) / (1e-7 + z.std(1, keepdim=True))


class LogitTerms(nn.Module):
    """The run's logit terms, called on one pair of logits: a dict of weighted values by name. A module, so
    that a term's trainable parts (a learnable temperature) train and resume with the strategy.

    With `standardize` (loss.standardize), every term that has a temperature reads both models' logits
    z-scored per sample; the others (ce) read them as they are."""

    def __init__(self, terms: list[LogitTerm], standardize: bool = False):
        super().__init__()
        self.terms = nn.ModuleList(terms)
        self.standardized = [standardize and term.temperature() is not None for term in terms]

    def forward(self, logits: Tensor, teacher_logits: Tensor, labels: Tensor, epoch: int,
                index: Tensor | None = None, labelled: Tensor | None = None,
                mixed: tuple[Tensor, Tensor] | None = None) -> dict[str, Tensor]:
        """`labelled` marks the rows with a label (a transfer set), `mixed` a mixed batch's second labels."""
        inputs = TermInputs(logits, teacher_logits, labels, epoch, index, labelled=labelled, mixed=mixed)
        if any(self.standardized):
            scored = TermInputs(standardize(logits), standardize(teacher_logits), labels, epoch, index,
                                labelled=labelled, mixed=mixed)
        losses: dict[str, Tensor] = {}
        for term, standardized in zip(self.terms, self.standardized):
            losses.update(guarded(term, term.name, term, scored if standardized else inputs))
        return losses

    def temperature(self) -> float:
        """The temperature the teacher's logits are read at: the terms' own (the first that has one), else 1."""
        temperatures = [t for t in (term.temperature() for term in self.terms) if t is not None]
        return temperatures[0] if temperatures else 1.0


def build_logit_terms(cfg: DictConfig) -> LogitTerms:
    return LogitTerms([cls.build(config, None) for _, cls, config in term_configs(cfg) if cls.kind == LOGIT],
                      standardize=bool(cfg.loss.get("standardize", False)))


def has_feature_terms(cfg: DictConfig) -> bool:
    return any(cls.kind == FEATURE for _, cls, _ in term_configs(cfg))


class FeatureTerms(nn.Module):
    """The run's feature terms and what they own (trained with the student, kept in last.pt for resume,
    never saved with the student); taps the named layers they read on both models."""

    def __init__(self, terms: list[FeatureTerm]):
        super().__init__()
        self.terms = nn.ModuleList(terms)
        self.taps: tuple[LayerTap, LayerTap] | None = None

    def tap(self, student: nn.Module, teacher: nn.Module) -> "FeatureTerms":
        for term in self.terms:
            term.bind(student, teacher)
        student_names = dict.fromkeys(n for term in self.terms for n in term.layer_names()[0])
        teacher_names = dict.fromkeys(n for term in self.terms for n in term.layer_names()[1])
        if student_names or teacher_names:
            self.taps = (LayerTap(feature_root(student), list(student_names)).attach(),
                         LayerTap(feature_root(teacher), list(teacher_names)).attach())
        return self

    def outputs(self, stages: list[Tensor], side: int) -> StageOutputs:
        return StageOutputs(stages, self.taps[side].captured() if self.taps is not None else {})

    def initialising(self, epoch: int) -> bool:
        """Whether `epoch` belongs to some term's initialisation stage (then only init losses train)."""
        return any(epoch <= term.init_epochs() for term in self.terms)

    def forward(self, inputs: TermInputs) -> dict[str, Tensor]:
        losses: dict[str, Tensor] = {}
        initialising = self.initialising(inputs.epoch)
        for term in self.terms:
            if not initialising:
                losses.update(guarded(term, term.name, term, inputs))
            elif inputs.epoch <= term.init_epochs():
                losses.update(guarded(term, f"{term.name}_init", term.init_loss, inputs))
        return losses


def build_feature_terms(cfg: DictConfig, context: FeatureContext) -> FeatureTerms | None:
    """The feature terms, sized for both models; None when the loss has none. Calling it before a teacher
    trains checks every stage choice at no cost."""
    terms = [cls.build(config, context) for _, cls, config in term_configs(cfg) if cls.kind == FEATURE]
    return FeatureTerms(terms) if terms else None
