"""Exceptions users see. Each message names the file or model and the problem."""


class AnomalensError(Exception):
    """Base class for errors anomalens raises on purpose."""


class ImageLoadError(AnomalensError):
    """An image or mask file cannot be used (corrupt, truncated, wrong size, ...)."""


class DatasetError(AnomalensError):
    """A dataset folder is missing, empty or not in the expected layout."""


class ModelNotAvailableError(AnomalensError):
    """Model weights are not available locally, or the model id is unknown."""
