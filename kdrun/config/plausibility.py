"""Values that are legal one by one but mean nothing together, or almost surely are a mistake.

config.validate checks each value's type and range; this module checks what the
values mean for the run: a loss that is zero whatever the model does, a batch larger
than the data, a crop that may hold no pixel of the image, a warm-up that never ends.
What cannot train sensibly is refused (ConfigError); what is legal but odd is warned
about, loudly, once.
"""

from __future__ import annotations

import math

from omegaconf import DictConfig

from kdrun.console import console
from kdrun.errors import ConfigError

CROP_WARN_FRACTION = 4  # CIFAR's recipe pads 4 pixels on 32: warn beyond a quarter of the side


def check_plausible(cfg: DictConfig, data=None, *, warned: set[str] | None = None) -> None:
    """Refuse meaningless settings; warn about unlikely ones. `data` (a DatasetSplits), when given,
    adds the checks that need the dataset's size; `warned` collects warnings already printed."""
    for message in problems(cfg, data):
        raise ConfigError(message)
    for message in warnings(cfg, data):
        if warned is None or message not in warned:
            console.print(f"[bold yellow]warning:[/] {message}", markup=True, highlight=False, soft_wrap=True)
            if warned is not None:
                warned.add(message)


def problems(cfg: DictConfig, data=None) -> list[str]:
    out = []  # (a loss whose every term weighs 0 is refused with the terms: kdrun.methods.terms.compose)
    epochs, warmup = cfg.trainer.epochs, cfg.optim.warmup_epochs
    if warmup and warmup >= epochs:
        out.append(f"optim.warmup_epochs={warmup} with epochs={epochs}: the learning rate would still be warming "
                   f"up when training ends; use optim.warmup_epochs < {epochs} (or 0)")
    if data is not None:
        train_size = len(data.train_y)
        # (A split of one sample is refused where models are built: no batch size can train BatchNorm on it.)
        if train_size > 1 and cfg.trainer.batch_size > train_size:
            out.append(f"batch_size={cfg.trainer.batch_size} is larger than the training split of "
                       f"{cfg.dataset.name} ({train_size:,} images): each epoch would be one batch of all of them; "
                       f"use batch_size <= {train_size}")
    size = image_size(cfg, data)
    padding = cfg.dataset.augment.crop_padding
    if size is not None and padding >= size:
        out.append(f"dataset.augment.crop_padding={padding} on {size}x{size} images: a random crop could hold no "
                   f"pixel of the image; use a padding below {size} (CIFAR's recipe pads 4 on 32)")
    return out


def warnings(cfg: DictConfig, data=None) -> list[str]:
    out = []
    size = image_size(cfg, data)
    padding = cfg.dataset.augment.crop_padding
    if size is not None and size > padding > size / CROP_WARN_FRACTION:
        out.append(f"dataset.augment.crop_padding={padding} on {size}x{size} images pads more than a quarter of "
                   f"the side: most crops are largely padding (CIFAR's recipe pads 4 on 32)")
    return out


# A term smaller than this fraction of the step's largest term (or than this, outright) at the first step is
# numerically nothing: KD at T=1e9 is 0 (both softmaxes uniform to float precision), at T=1e-9 about 2e-10
# (T^2 * KL ~ T). An untrained teacher's KD term, ~1e-7 on digits, is weak, not vanishing: it trains (and is
# warned about as a teacher no better than its student).
VANISHING = 1e-8
def zero_weight_terms(loss: DictConfig) -> frozenset[str]:
    """The terms the config weighs zero: a zero there is the user's choice, not a vanishing term. Names are
    base names: a strategy's `peer0_kd` or `head1_hint` is a `kd` or `hint` term."""
    return frozenset(name for name, term in (loss.get("terms") or {}).items() if not (term or {}).get("weight"))


def vanishing_terms(names: list[str], values: list[float], switched_off: frozenset[str]) -> list[str]:
    """The terms, among those the config weighs above zero, that are numerically zero at this step."""
    scale = max([1.0, *(abs(v) for v in values)])
    return [name for name, value in zip(names, values)
            if not any(of_term(name, term) for term in switched_off) and abs(value) <= VANISHING * scale]


def of_term(name: str, term: str) -> bool:
    """Whether a logged loss is the term's: `kd`, a part of it (`dist_inter`), or a strategy's copy (`peer0_kd`)."""
    return name == term or name.startswith(term + "_") or name.endswith("_" + term)


def check_first_step(names: list[str], values: list[float], switched_off: frozenset[str], *, label: str,
                     settings: str = "") -> None:
    """Refuse a run a term of which is numerically zero at its first step, whatever the term: it would train
    as if the term were not there (KD at T=1e9 trained to chance accuracy with loss_kd = 0.0)."""
    if not all(math.isfinite(v) for v in values):
        return  # the non-finite policy's to judge
    gone = vanishing_terms(names, values, switched_off)
    if gone:
        terms = ", ".join(f"{name} = {value:.3g}" for name, value in zip(names, values))
        raise ConfigError(f"{label}: at the first step the loss term{'s' if len(gone) > 1 else ''} {', '.join(gone)} "
                          f"{'are' if len(gone) > 1 else 'is'} numerically zero ({terms}), so it would teach "
                          f"nothing{settings}; change the setting that scales it (a temperature far outside "
                          f"1-20 makes softened outputs agree to float precision), or give it weight 0")


def image_size(cfg: DictConfig, data=None) -> int | None:
    """The side of the images: from the data when loaded, else from the config where it says (synthetic)."""
    if data is not None:
        return int(data.image_size)
    return cfg.dataset.get("image_size") if cfg.dataset.name == "synthetic" else None
