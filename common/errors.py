"""One exception hierarchy, so callers can catch StreamScore's failures without catching everything."""

from __future__ import annotations


class StreamScoreError(Exception):
    """Base of every error StreamScore raises on purpose."""


class ConfigError(StreamScoreError):
    """A spec, option or manifest is invalid; raised before any data is read."""


class UnknownOperatorError(ConfigError):
    """A graph names an operator the registry does not know."""


class DuplicateOperatorError(ConfigError):
    """Two operators tried to register under one name."""


class ModelNotFoundError(ConfigError):
    """The repository has no such model or version."""


class ModelLoadError(StreamScoreError):
    """A model could not be loaded, or does not match its manifest, or not on the device asked for."""


class ContractError(ConfigError):
    """Operators of a graph disagree on a column (missing, dtype or rank), or a batch breaks its contract."""


class InferenceError(StreamScoreError):
    """ONNX Runtime failed on a batch, for a caller that asked for an exception instead of error rows."""


class InputError(StreamScoreError):
    """The input of a job (a folder, a glob, a Parquet dataset) cannot be read or is empty."""


class LostRowsError(StreamScoreError):
    """A run wrote fewer rows than it read: a bug in StreamScore, never the input's fault."""


class WorkerCrashedError(StreamScoreError):
    """A process doing the work died (killed for memory, a crash in native code); the run cannot finish."""


class HttpError(StreamScoreError):
    """A request the Serve app refuses: answered with ``status`` and ``{"error": message}`` (never a 500)."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


class ErrorBudgetExceeded(StreamScoreError):
    """More rows failed than the user allowed (``max_error_fraction``); ``summary`` is the finished run's."""

    def __init__(self, message: str, summary: object = None) -> None:
        super().__init__(message)
        self.summary = summary
