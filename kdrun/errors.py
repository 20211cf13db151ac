"""Errors a user can fix. The CLI prints their message alone, without a traceback."""


class KdrunError(Exception):
    """Base class: the message says what was wrong and what is allowed."""


class ConfigError(KdrunError, ValueError):
    """A config value that is out of range, of the wrong type or unknown."""


class CheckpointError(KdrunError):
    """A file that is not a usable kdrun checkpoint for this run."""


class DataError(KdrunError, ValueError):
    """Dataset files that are there but unusable: empty, malformed, inconsistent."""


class WriteError(KdrunError, OSError):
    """An output file could not be written (disk full, no permission); the previous version is intact."""


class NonFiniteLoss(KdrunError):
    """A loss term became NaN or inf and trainer.on_nonfinite=stop."""


class Interrupted(KdrunError):
    """Ctrl-C or SIGTERM: the run stopped after a step and saved checkpoints/last.pt to resume from."""

    def __init__(self, message: str, exit_status: int = 130):
        super().__init__(message)
        self.exit_status = exit_status  # 128 + the signal, as shells report it
