"""Errors raised by autocompress.

Every error a user can cause derives from :class:`AutocompressError`; its message says what
was wrong and what to do next. The command-line interface prints these as one line and exits
non-zero, without a traceback.
"""

from __future__ import annotations

__all__ = [
    "AutocompressError",
    "BudgetError",
    "CheckpointError",
    "DataError",
    "ExportError",
    "FinetuneDivergedError",
    "ModelError",
    "MissingDependencyError",
    "ProfileError",
    "RunError",
    "SearchSpaceError",
]


class AutocompressError(Exception):
    """Root of every error autocompress raises on purpose."""


class SearchSpaceError(AutocompressError):
    """A search-space file is malformed or does not fit the model."""


class ModelError(AutocompressError):
    """A model name, model file or factory cannot be resolved or run."""


class CheckpointError(AutocompressError):
    """A checkpoint cannot be read safely or does not fit the model."""


class DataError(AutocompressError):
    """A data set specification is unknown, or its files are missing or unusable."""


class ProfileError(AutocompressError):
    """A hardware profile is missing, malformed, or from another backend or format version."""


class ExportError(AutocompressError):
    """A (compressed) model could not be exported to ONNX."""


class FinetuneDivergedError(AutocompressError):
    """The loss became NaN or infinite during a finetune."""


class BudgetError(AutocompressError):
    """A latency budget is invalid or cannot be met by any model of the search space."""


class RunError(AutocompressError):
    """A run folder is missing, incomplete, or was created with other settings."""


class MissingDependencyError(AutocompressError):
    """An optional dependency is not installed; the message names the extra to install."""
