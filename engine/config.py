"""Engine configuration: one TOML file, one section per stage, frozen dataclasses.

Layout::

    [engine]                 # process settings (addresses, workers, limits)
    ...
    [pipeline.<kind>.<name>] # one section per stage of the <kind> pipeline, in order
    stage = "<type>"         # a registered stage type
    <param> = <value>        # the stage's declared parameters

Rules: unknown keys and unknown stage types are errors; ``[engine]`` keys missing
from a user file take the built-in defaults; a ``[pipeline.<kind>]`` table in a user
file replaces the built-in pipeline of that kind (an empty table disables it), other
kinds keep the built-in pipeline.
"""

from __future__ import annotations

import dataclasses
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from telediag.engine.stage import Stage, StageParams, build_params, stage_types
from telediag.errors import ConfigError
from telediag.transports.wire import KINDS


@dataclass(frozen=True, slots=True)
class EngineSettings:
    """The ``[engine]`` section."""

    ingest: str = "tcp://127.0.0.1:5555"
    publish: str = "tcp://127.0.0.1:5556"
    workers: int = 1
    worker_mode: str = "thread"  # "thread" (share this process), "process" (an OS process each), "ray" (Ray actors)
    spare_workers: int = 1  # process mode: warm spare processes that take over a dead worker at once
    video_worker: str = "thread"  # "thread" (in this process) or "process" (its own OS process, engine/video_proc.py)
    stats_interval_s: float = 1.0
    ingest_hwm: int = 10000
    publish_hwm: int = 200000
    max_events_per_s: int = 20
    metrics: str = ""  # "127.0.0.1:9108" serves Prometheus text at http://HOST:PORT/metrics; "" = off
    batch_max: int = 64  # model work of up to this many chunks (any streams) per call; 1 = no batching
    batch_wait_ms: float = 2.0  # the oldest deferred item waits at most this long for batch-mates
    warmup_parallel: bool = True  # cold Numba cache: compile the PCG kernels in a child process meanwhile

    def __post_init__(self) -> None:
        for name in ("ingest", "publish"):
            addr = getattr(self, name)
            if not any(addr.startswith(p) for p in ("tcp://", "ipc://", "inproc://")):
                raise ConfigError(f"[engine].{name} must be a tcp://, ipc:// or inproc:// address, got {addr!r}")
        if not 1 <= self.workers <= 64:
            raise ConfigError(f"[engine].workers must be in 1..64, got {self.workers}")
        if not 0 <= self.spare_workers <= 8:
            raise ConfigError(f"[engine].spare_workers must be in 0..8, got {self.spare_workers}")
        if self.worker_mode not in ("thread", "process", "ray"):
            raise ConfigError(f"[engine].worker_mode must be 'thread', 'process' or 'ray', got {self.worker_mode!r}")
        if self.video_worker not in ("thread", "process"):
            raise ConfigError(f"[engine].video_worker must be 'thread' or 'process', got {self.video_worker!r}")
        if not 0.05 <= self.stats_interval_s <= 3600:
            raise ConfigError(f"[engine].stats_interval_s must be in 0.05..3600, got {self.stats_interval_s}")
        if self.metrics:
            host, _, port = self.metrics.rpartition(":")
            if not host or not port.isdigit() or not 0 <= int(port) < 65536:
                raise ConfigError(f"[engine].metrics must be HOST:PORT (e.g. 127.0.0.1:9108) or empty, got {self.metrics!r}")
        if not 1 <= self.batch_max <= 4096:
            raise ConfigError(f"[engine].batch_max must be in 1..4096, got {self.batch_max}")
        if not 0.0 <= self.batch_wait_ms <= 1000.0:
            raise ConfigError(f"[engine].batch_wait_ms must be in 0..1000, got {self.batch_wait_ms}")
        for name in ("ingest_hwm", "publish_hwm", "max_events_per_s"):
            if getattr(self, name) < 1:
                raise ConfigError(f"[engine].{name} must be >= 1, got {getattr(self, name)}")


@dataclass(frozen=True, slots=True)
class SecuritySettings:
    """The ``[security]`` section: CurveZMQ on every engine socket (one switch).

    ``server_secret`` is the engine's ``.key_secret`` file, ``allow_dir`` the folder
    of allowed client ``.key`` files (see :mod:`telediag.transports.security`).
    """

    curve: bool = False
    server_secret: str = ""
    allow_dir: str = ""

    def __post_init__(self) -> None:
        if self.curve and not (self.server_secret and self.allow_dir):
            raise ConfigError(
                "[security].curve = true needs server_secret (the engine's .key_secret file) and "
                f"allow_dir (folder of allowed client .key files); got server_secret={self.server_secret!r}, "
                f"allow_dir={self.allow_dir!r}"
            )


@dataclass(frozen=True, slots=True)
class ClusterSettings:
    """The ``[cluster]`` section: workers as Ray actors (``pip install 'telediag[cluster]'``).

    A non-empty ``ray_address`` (or ``telediag run --ray ADDRESS``) selects ``worker_mode = "ray"``.
    ``bind_host`` is the address the engine's collector binds and advertises to the actors ("" =
    the address Ray uses for this node); ``actor_cpus`` the CPUs Ray reserves for each worker actor.
    """

    ray_address: str = ""
    bind_host: str = ""
    actor_cpus: float = 1.0
    max_restarts: int = -1  # per actor; -1 = restart for ever (the engine's own crash-loop limit still applies)

    def __post_init__(self) -> None:
        if not 0.0 < self.actor_cpus <= 64.0:
            raise ConfigError(f"[cluster].actor_cpus must be in (0, 64], got {self.actor_cpus}")
        if self.max_restarts < -1:
            raise ConfigError(f"[cluster].max_restarts must be -1 (for ever) or >= 0, got {self.max_restarts}")


@dataclass(frozen=True, slots=True)
class StageConfig:
    """One stage section: its name, type and validated parameters."""

    name: str
    kind: str
    stage_type: type[Stage]
    params: StageParams

    def build(self) -> Stage:
        return self.stage_type(self.params, name=f"pipeline.{self.kind}.{self.name}")


@dataclass(frozen=True, slots=True)
class Config:
    """A whole engine configuration."""

    engine: EngineSettings = field(default_factory=EngineSettings)
    security: SecuritySettings = field(default_factory=SecuritySettings)
    cluster: ClusterSettings = field(default_factory=ClusterSettings)
    pipelines: Mapping[str, tuple[StageConfig, ...]] = field(default_factory=dict)
    source: str = "<built-in>"


def _engine_settings(values: Mapping[str, Any], source: str) -> EngineSettings:
    return _section(EngineSettings, "engine", values, source)


def _section(cls: Any, section: str, values: Mapping[str, Any], source: str) -> Any:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigError(f"{source}: [{section}] has unknown key(s) {unknown}; expected some of {sorted(fields)}")
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        expected = type(fields[key].default)
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, expected) or isinstance(value, bool) != (expected is bool):
            raise ConfigError(
                f"{source}: [{section}].{key} must be {expected.__name__}, got {type(value).__name__} {value!r}"
            )
        kwargs[key] = value
    try:
        return cls(**kwargs)
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from e


def _pipeline(kind: str, table: Mapping[str, Any], source: str,
              base: tuple[StageConfig, ...] = ()) -> tuple[StageConfig, ...]:
    """The stages of ``[pipeline.<kind>]``, merged into ``base`` (the pipeline it overrides).

    Merge rule: a section named like a stage of ``base`` changes only the keys it gives (its
    ``stage`` key may be omitted) and keeps that stage's place; a section with a new name adds a
    stage after them, in file order. ``replace = true`` in ``[pipeline.<kind>]`` makes the file's
    sections the whole pipeline (``base`` is dropped).
    """
    if kind not in KINDS:
        raise ConfigError(f"{source}: [pipeline.{kind}] names unknown stream kind {kind!r}; expected one of {sorted(KINDS)}")
    types = stage_types()
    table = dict(table)
    replace = table.pop("replace", False)
    if not isinstance(replace, bool):
        raise ConfigError(f"{source}: [pipeline.{kind}].replace must be true or false, got {replace!r}")
    merged: dict[str, StageConfig] = {} if replace else {s.name: s for s in base}
    for name, section in table.items():
        where = f"pipeline.{kind}.{name}"
        if not isinstance(section, dict):
            raise ConfigError(f"{source}: [{where}] must be a table (one section per stage), got {section!r}")
        values = dict(section)
        type_name = values.pop("stage", None)
        old = merged.get(name)
        if old is not None and type_name in (None, old.stage_type.type_name):
            values = {**{f.name: getattr(old.params, f.name) for f in dataclasses.fields(old.params)}, **values}
            merged[name] = StageConfig(name=name, kind=kind, stage_type=old.stage_type,
                                       params=build_params(old.stage_type, f"{source}: {where}", values))
            continue
        if type_name is None:
            raise ConfigError(f"{source}: [{where}] needs a 'stage' key naming its type; known: {sorted(types)}")
        if type_name not in types:
            raise ConfigError(f"{source}: [{where}].stage = {type_name!r} is unknown; known: {sorted(types)}")
        cls = types[type_name]
        if cls.kinds and kind not in cls.kinds:
            raise ConfigError(f"{source}: stage {type_name!r} handles {sorted(cls.kinds)}, not {kind!r} ([{where}])")
        params = build_params(cls, f"{source}: {where}", values)
        merged[name] = StageConfig(name=name, kind=kind, stage_type=cls, params=params)
    return tuple(merged.values())


def parse_config(doc: Mapping[str, Any], source: str = "<dict>", base: Config | None = None) -> Config:
    """Build a :class:`Config` from a parsed TOML document, on top of ``base``."""
    # [export.*] belongs to the consumers that `telediag run` starts beside the engine
    # (telediag.exports: [export.fhir]); they validate it, the engine does not read it
    unknown = sorted(set(doc) - {"engine", "security", "cluster", "pipeline", "export"})
    if unknown:
        raise ConfigError(
            f"{source}: unknown top-level section(s) {unknown}; expected [engine], [security], [cluster], "
            "[pipeline.<kind>.<stage>] and [export.<name>]"
        )
    engine_values: dict[str, Any] = {}
    if base is not None:
        engine_values = dataclasses.asdict(base.engine)
    engine_doc = doc.get("engine", {})
    if not isinstance(engine_doc, dict):
        raise ConfigError(f"{source}: [engine] must be a table")
    engine_values.update(engine_doc)
    engine = _engine_settings(engine_values, source)
    sec_values: dict[str, Any] = dataclasses.asdict(base.security) if base is not None else {}
    sec_doc = doc.get("security", {})
    if not isinstance(sec_doc, dict):
        raise ConfigError(f"{source}: [security] must be a table")
    sec_values.update(sec_doc)
    security = _section(SecuritySettings, "security", sec_values, source)
    cl_values: dict[str, Any] = dataclasses.asdict(base.cluster) if base is not None else {}
    cl_doc = doc.get("cluster", {})
    if not isinstance(cl_doc, dict):
        raise ConfigError(f"{source}: [cluster] must be a table")
    cl_values.update(cl_doc)
    cluster = _section(ClusterSettings, "cluster", cl_values, source)
    if cluster.ray_address and engine.worker_mode != "ray":
        engine = dataclasses.replace(engine, worker_mode="ray")
    pipelines: dict[str, tuple[StageConfig, ...]] = dict(base.pipelines) if base is not None else {}
    pipe_doc = doc.get("pipeline", {})
    if not isinstance(pipe_doc, dict):
        raise ConfigError(f"{source}: [pipeline] must be a table of [pipeline.<kind>] tables")
    for kind, table in pipe_doc.items():
        if not isinstance(table, dict):
            raise ConfigError(f"{source}: [pipeline.{kind}] must be a table")
        pipelines[kind] = _pipeline(kind, table, source, pipelines.get(kind, ()))
    return Config(engine=engine, security=security, cluster=cluster, pipelines=pipelines, source=source)


def default_config() -> Config:
    """The built-in configuration (``engine/default.toml``)."""
    text = resources.files("telediag.engine").joinpath("default.toml").read_text(encoding="utf-8")
    return parse_config(tomllib.loads(text), "<built-in default.toml>")


def load_config(path: str | Path | None = None) -> Config:
    """Load a config file on top of the built-in default (or just the default)."""
    base = default_config()
    if path is None:
        return base
    p = Path(path)
    try:
        doc = tomllib.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise ConfigError(f"config file {str(p)!r} not found") from e
    except UnicodeDecodeError as e:
        raise ConfigError(f"config file {str(p)!r} is not UTF-8 text: {e}") from e
    except OSError as e:
        raise ConfigError(f"cannot read config file {str(p)!r}: {e}") from e
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {str(p)!r} is not valid TOML: {e}") from e
    cfg = parse_config(doc, str(p), base=base)
    sec = cfg.security
    if sec.curve:  # key paths are relative to the config file
        def rel(v: str) -> str:
            return v if Path(v).is_absolute() else str((p.parent / v).resolve())

        fixed = SecuritySettings(curve=True, server_secret=rel(sec.server_secret), allow_dir=rel(sec.allow_dir))
        cfg = dataclasses.replace(cfg, security=fixed)
    return cfg
