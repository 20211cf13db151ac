"""Errors a user can fix. The CLI prints their message alone, without a traceback."""


class KdrunError(Exception):
    """Base class: the message says what was wrong and what is allowed."""


class ConfigError(KdrunError, ValueError):
    """A config value that is out of range, of the wrong type or unknown."""


class CheckpointError(KdrunError):
    """A file that is not a usable kdrun checkpoint for this run."""
