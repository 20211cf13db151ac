"""Values that are legal one by one but mean nothing together, or almost surely are a mistake.

config.validate checks each value's type and range; this module checks what the
values mean for the run: a loss that is zero whatever the model does, a batch larger
than the data, a crop that may hold no pixel of the image, a warm-up that never ends.
What cannot train sensibly is refused (ConfigError); what is legal but odd is warned
about, loudly, once.
"""

from __future__ import annotations

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


def image_size(cfg: DictConfig, data=None) -> int | None:
    """The side of the images: from the data when loaded, else from the config where it says (synthetic)."""
    if data is not None:
        return int(data.image_size)
    return cfg.dataset.get("image_size") if cfg.dataset.name == "synthetic" else None
