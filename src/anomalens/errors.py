"""Exceptions users see. Each message names the file, folder or model and the problem.

The CLI prints any :class:`AnomalensError` as one line ``anomalens: error: ...`` and exits
with code 2; ``ANOMALENS_DEBUG=1`` re-raises it with its traceback (for bug reports).
"""


class AnomalensError(Exception):
    """Base class for errors anomalens raises on purpose."""


class ImageLoadError(AnomalensError):
    """An image or mask file cannot be used (corrupt, truncated, wrong size, ...)."""


class DatasetError(AnomalensError):
    """A dataset folder is missing, empty or not in the expected layout."""


class ModelNotAvailableError(AnomalensError):
    """Model weights are not available locally, or the model id is unknown."""


class CheckpointError(AnomalensError):
    """A checkpoint folder is missing, incomplete or was written by another method."""


class NotFittedError(AnomalensError, ValueError):
    """``predict`` or ``save`` was called before ``fit`` (a ValueError, as in scikit-learn)."""


class TextTowerMissingError(AnomalensError, ValueError):
    """Text prompts were needed on a backbone without a text encoder."""


class UntrainedError(AnomalensError):
    """A trainable detector (AA-CLIP) was used without trained weights."""


class ResumeError(AnomalensError):
    """The resume state of a training run does not belong to this run."""


class WriteError(AnomalensError, OSError):
    """A model, result or report could not be written (full disk, permissions, a path that
    must not be replaced); the message names the file, and the previous version is kept."""


class OverlapError(AnomalensError):
    """A checkpoint would be evaluated on images it was trained on."""


def display_path(path: object) -> str:
    """A path as message text: bytes that are not valid UTF-8 shown as ``\\xNN``."""
    import os

    try:
        return os.fsencode(path).decode("utf-8", "backslashreplace")  # type: ignore[arg-type]
    except TypeError:
        return str(path)


class EngineError(AnomalensError):
    """A batch engine cannot run (optional dependency missing, cluster unreachable)."""


class ExplainerError(AnomalensError):
    """An explainer (VLM server or model) failed: unreachable, missing model, bad reply."""


class ServiceError(AnomalensError):
    """The REST service cannot start as configured (e.g. no token on a public address)."""


def check_choice(value: str, choices: tuple[str, ...], name: str) -> str:
    """Return ``value`` if it is one of ``choices``, else raise ValueError naming ``name``
    (the one spelling of "must be one of" for every config field with a fixed set of values)."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
    return value
