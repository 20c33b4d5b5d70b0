"""Fuzzing the config loader: any document or any bytes give a config or a ConfigError."""

from __future__ import annotations

import tomllib
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from telediag.engine.config import load_config, parse_config
from telediag.errors import ConfigError

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30), st.sampled_from(["tcp://127.0.0.1:1", "ecg_filter", "steady", "zero", "pcg_segment"]),
)
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4), max_leaves=12)
keys = st.sampled_from(["engine", "security", "pipeline", "ecg", "pcg", "video", "filter", "stage", "low_hz",
                        "high_hz", "order", "notch_hz", "workers", "ingest", "publish", "curve", "metrics", "x"])
docs = st.recursive(
    st.dictionaries(keys, values, max_size=5),
    lambda inner: st.dictionaries(keys, inner | values, max_size=5),
    max_leaves=20,
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(docs)
def test_any_document_gives_config_or_config_error(doc: dict) -> None:
    try:
        parse_config(doc, "<fuzz>")
    except ConfigError:
        pass


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=300))
def test_any_bytes_on_disk_give_config_or_config_error(tmp_path: Path, data: bytes) -> None:
    p = tmp_path / "fuzz.toml"
    p.write_bytes(data)
    try:
        load_config(p)
    except ConfigError:
        pass


def test_regression_engine_table_as_list() -> None:
    for doc in ({"engine": [1]}, {"pipeline": {"ecg": []}}, {"pipeline": {"ecg": {"f": 3}}}, {"security": 1}):
        try:
            parse_config(doc, "<r>")
        except ConfigError:
            continue
        raise AssertionError(f"{doc} was accepted")
    assert tomllib  # the loader's parser
