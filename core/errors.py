"""One root exception, one subclass per layer (STYLE.md rule 8)."""

from __future__ import annotations


class TelediagError(Exception):
    """Root of every error telediag raises on purpose."""


class DSPError(TelediagError, ValueError):
    """Invalid input or parameters to a ``telediag.dsp`` kernel wrapper."""


class ProtocolError(TelediagError):
    """A wire message that violates protocol v1.

    Attributes
    ----------
    reason : str
        A short machine-readable code (``"bad_version"``, ``"size_mismatch"``, ...),
        used as the counter key on the engine's error stream.
    detail : str
        What was expected and what arrived.
    stream, seq : str or None, int or None
        The stream id and ``seq`` of the rejected message when :func:`telediag.transports.decode`
        could read them from its header (a valid stream id, an int ``seq``), else ``None``
        (best effort: the engine copies them into its ``rejected`` events).
    """

    def __init__(self, reason: str, message: str, *, stream: str | None = None,
                 seq: int | None = None) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.detail = message
        self.stream = stream
        self.seq = seq


class ConfigError(TelediagError, ValueError):
    """Invalid engine/pipeline configuration."""


class EngineError(TelediagError):
    """Runtime failure inside the engine."""


class ModelError(TelediagError):
    """A model file, card or input contract problem."""


class DataError(TelediagError, ValueError):
    """Unreadable or invalid input data (records, files)."""
