"""Machine-readable contract of what the engine publishes (``transports/OUTPUTS.md``).

The JSON Schemas (draft 2020-12) of every published ``msgpack`` body live in
``transports/schemas/<kind>.schema.json`` (shipped with the package), plus
``output-header.schema.json`` for the header of every published message. :func:`schema`
loads one; :func:`validate` checks a decoded :class:`~telediag.transports.wire.Chunk` against
its kind's schema (it needs the optional ``jsonschema`` package, in the ``dev`` extra).

A schema requires the fields a client may rely on and types them strictly; it allows
additional keys (a client MUST ignore keys it does not know, OUTPUTS.md section 1), except
that an ``event`` body's ``type`` must be one of :data:`EVENT_TYPES`.

Examples
--------
>>> sorted(SCHEMA_KINDS)[:3]
['alarm', 'beats', 'event']
>>> schema("hrv")["required"][:3]
['sample', 't_ns', 'window_s']
>>> "rejected" in EVENT_TYPES
True
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any, Final

from telediag.errors import ProtocolError
from telediag.transports.wire import REASONS, Chunk

__all__ = [
    "ENGINE_REASONS",
    "EVENT_TYPES",
    "SCHEMA_KINDS",
    "check_body",
    "check_header",
    "header_schema",
    "schema",
    "validate",
]

#: Annotation kinds the engine publishes, each with a body schema.
SCHEMA_KINDS: Final = frozenset(
    {"beats", "hr", "hrv", "quality", "alarm", "segments", "polyp", "event", "stats"}
)

#: ``rejected`` event reasons the engine adds to the decoder's :data:`~telediag.transports.wire.REASONS`.
ENGINE_REASONS: Final = ("spec_changed", "chunk_too_long", "not_ingestible", "misrouted", "internal_error")


@cache
def schema(kind: str) -> dict[str, Any]:
    """The JSON Schema of the body of ``kind`` (one of :data:`SCHEMA_KINDS`)."""
    if kind not in SCHEMA_KINDS:
        raise ProtocolError("unknown_kind", f"no output schema for kind {kind!r}; known: {sorted(SCHEMA_KINDS)}")
    return _load(f"{kind}.schema.json")


@cache
def header_schema() -> dict[str, Any]:
    """The JSON Schema of the header of every message the engine publishes."""
    return _load("output-header.schema.json")


def _load(name: str) -> dict[str, Any]:
    text = resources.files("telediag.transports").joinpath("schemas", name).read_text(encoding="utf-8")
    doc: dict[str, Any] = json.loads(text)
    return doc


def _event_types() -> tuple[str, ...]:
    return tuple(schema("event")["properties"]["type"]["enum"])


#: Every ``type`` of an ``event`` body (OUTPUTS.md section 5).
EVENT_TYPES: Final = _event_types()


def validate(chunk: Chunk, header: dict[str, Any] | None = None) -> None:
    """Check a published chunk's body (and, if given, its decoded header) against the schemas.

    Signal and video outputs have no body; only their header is checked.

    Raises
    ------
    ProtocolError
        ``body_malformed`` naming the topic, the failing path and the rule broken.
    ModuleNotFoundError
        ``jsonschema`` is not installed (``pip install telediag[dev]``).
    """
    if header is not None:
        check_header(header, chunk.topic)
    if chunk.kind in SCHEMA_KINDS:
        check_body(chunk.kind, chunk.body, chunk.topic)


def check_header(header: dict[str, Any], where: str = "header") -> None:
    """Validate a decoded header (a dict) against ``output-header.schema.json``."""
    _check(header, header_schema(), f"{where}: header")


def check_body(kind: str, body: Any, where: str = "") -> None:
    """Validate a ``msgpack`` body of ``kind`` against ``<kind>.schema.json``."""
    _check(body, schema(kind), f"{where or kind}: body")


def _check(doc: Any, sch: dict[str, Any], what: str) -> None:
    import jsonschema

    err = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(sch).iter_errors(doc))
    if err is not None:
        path = "/".join(str(p) for p in err.absolute_path) or "(root)"
        raise ProtocolError("body_malformed", f"{what} at {path}: {err.message[:300]}")


assert set(REASONS).isdisjoint(ENGINE_REASONS)
