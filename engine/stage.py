"""The Stage API: a small declared interface, parameters validated at ``open``.

A stage is built from one config section (its typed, frozen ``Params``), opened once
per stream with that stream's :class:`StreamSpec`, then fed chunks in order::

    stage = EcgFilter(EcgFilter.Params(low_hz=0.5, high_hz=40.0))
    out_spec = stage.open(spec)          # validates parameters against the stream
    out = stage.process(chunk)           # -> Outputs(signal=..., records=[...])
    tail = stage.close()                 # flush anything pending

Stages never sleep, poll sockets or spawn threads; the engine decides when they run
(STYLE.md rule 5). A stage's ``signal`` output feeds the next stage of the pipeline and
is published when the stage's section says ``publish = true``; its ``records`` are
annotation chunks (beats, events, ...) that are always published.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from telediag.errors import ConfigError
from telediag.transports.wire import Chunk


@dataclass(frozen=True, slots=True)
class StreamSpec:
    """What is fixed about a stream when it opens.

    Parameters
    ----------
    stream : str
        Stream id, e.g. ``"bed-12/ecg"``.
    kind : str
        ``"ecg"``, ``"pcg"``, ``"video"`` or an annotation kind.
    rate_hz : float
        Sample rate (frame rate for video).
    channels, units : tuple of str
        Channel names and their units (signals only).
    """

    stream: str
    kind: str
    rate_hz: float
    channels: tuple[str, ...] = ()
    units: tuple[str, ...] = ()

    @classmethod
    def of(cls, chunk: Chunk) -> StreamSpec:
        """The spec a chunk declares."""
        return cls(
            stream=chunk.stream,
            kind=chunk.kind,
            rate_hz=float(chunk.rate_hz or 0.0),
            channels=tuple(chunk.channels),
            units=tuple(chunk.units),
        )

    @property
    def n_channels(self) -> int:
        return len(self.channels)


@dataclass(slots=True)
class Outputs:
    """What one call of :meth:`Stage.process` produced.

    ``deferred`` (only from a stage whose ``batching`` is true) hands model work to the
    worker, which runs it batched with other streams' work and then publishes what
    ``deferred.resume`` returns; the ``signal`` goes on down the pipeline at once.
    """

    signal: Chunk | None = None
    records: list[Chunk] = field(default_factory=list)
    deferred: Deferred | None = None


@dataclass(slots=True)
class Deferred:
    """Model work a stage hands to its worker so it is batched across streams.

    Parameters
    ----------
    key : hashable
        Items with equal keys are run together, by one call of ``run``.
    run : callable
        ``run(items) -> results``: the batched computation (one model call for all), one
        result per item in order. It must not depend on which items share the batch.
    item : object
        This stream's input.
    resume : callable
        ``resume(result) -> Outputs``: the rest of the chunk's outputs. ``result`` is this
        item's result, or the exception ``run`` raised (the stage decides how to degrade).
        The worker calls it before the stage sees the stream's next chunk.
    """

    key: Hashable
    run: Callable[[list[Any]], list[Any]]
    item: Any
    resume: Callable[[Any], Outputs]


@dataclass(frozen=True, slots=True)
class StageParams:
    """Base of every stage's parameters (a frozen dataclass per stage)."""

    publish: bool = False


class Stage(ABC):
    """Base class of pipeline stages.

    Subclasses set ``type_name`` (the ``stage = "..."`` value in the config) and
    ``Params`` (a frozen dataclass deriving from :class:`StageParams`), and implement
    :meth:`open`, :meth:`process` and optionally :meth:`close`.
    """

    type_name: ClassVar[str]
    Params: ClassVar[type[StageParams]] = StageParams
    kinds: ClassVar[frozenset[str]] = frozenset()
    batching: bool = False
    """Set by the worker (``[engine].batch_max > 1``): the stage may return ``Outputs.deferred``."""

    def __init__(self, params: StageParams, name: str | None = None) -> None:
        if not isinstance(params, self.Params):
            raise ConfigError(
                f"{type(self).__name__} needs {self.Params.__name__}, got {type(params).__name__}"
            )
        self.params = params
        self.name = name or self.type_name
        self.spec: StreamSpec | None = None

    @abstractmethod
    def open(self, spec: StreamSpec) -> StreamSpec:
        """Validate against the input stream and return the output stream's spec."""

    @abstractmethod
    def process(self, chunk: Chunk) -> Outputs:
        """Process the next chunk (in order) and return what it produced."""

    def close(self) -> Outputs:
        """Flush pending output at end of stream."""
        return Outputs()


_REGISTRY: dict[str, type[Stage]] = {}


def register(cls: type[Stage]) -> type[Stage]:
    """Class decorator adding a stage type to the registry used by the config loader."""
    name = cls.type_name
    if name in _REGISTRY and _REGISTRY[name] is not cls:
        raise ConfigError(f"stage type {name!r} registered twice")
    _REGISTRY[name] = cls
    return cls


def stage_types() -> dict[str, type[Stage]]:
    """All registered stage types by ``type_name``."""
    # importing the stages package registers the built-in stages
    import telediag.engine.stages  # noqa: F401

    return dict(_REGISTRY)


def build_params(cls: type[Stage], section: str, values: Mapping[str, Any]) -> StageParams:
    """Build ``cls.Params`` from a config section; unknown keys and wrong types are errors."""
    fields = {f.name: f for f in dataclasses.fields(cls.Params)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigError(
            f"[{section}]: unknown key(s) {unknown} for stage {cls.type_name!r}; "
            f"expected some of {sorted(fields)}"
        )
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        default = fields[key].default
        expected = type(default) if default is not dataclasses.MISSING and default is not None else None
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if expected is tuple and isinstance(value, list):
            value = tuple(value)
        if expected is not None and not isinstance(value, expected):
            raise ConfigError(
                f"[{section}].{key} must be {expected.__name__}, got {type(value).__name__} {value!r}"
            )
        kwargs[key] = value
    try:
        return cls.Params(**kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"[{section}]: {e}") from e


def signal_like(chunk: Chunk, data: np.ndarray, stream: str) -> Chunk:
    """A signal chunk carrying ``data`` with ``chunk``'s timing and spec on ``stream``."""
    return Chunk.signal(
        chunk.kind,
        stream,
        chunk.seq,
        chunk.t0_ns,
        data,
        chunk.rate_hz,
        chunk.channels,
        chunk.units,
        meta=dict(chunk.meta),
    )
