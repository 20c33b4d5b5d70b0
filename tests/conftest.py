"""Shared fixtures: the real data directory and loopback helpers."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def data_dir() -> Path:
    """``$TELEDIAG_DATA`` or ``../shared/data`` beside the repository."""
    env = os.environ.get("TELEDIAG_DATA")
    return Path(env) if env else ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    d = data_dir()
    if not d.is_dir():
        pytest.skip(f"real data not found at {d} (set TELEDIAG_DATA to the shared data folder)")
    return d


@pytest.fixture(scope="session")
def mitdb(shared_data: Path) -> Path:
    d = shared_data / "mitdb"
    if not (d / "101.hea").exists():
        pytest.skip(f"MIT-BIH records not found in {d}")
    return d


@pytest.fixture(scope="session")
def pcg_root(shared_data: Path) -> Path:
    """PhysioNet/CinC 2016 (training sets a-f with the hand-corrected segmentations)."""
    root = shared_data / "pcg2016"
    if not (root / "annotations").is_dir():
        pytest.skip(f"PhysioNet 2016 data not found at {root} (set TELEDIAG_DATA)")
    return root


@pytest.fixture(scope="session")
def kvasir_val(shared_data: Path) -> Path:
    """Kvasir-SEG's validation split (``images/`` and ``masks/``)."""
    d = shared_data / "kvasir-seg" / "validation"
    if not (d / "images").is_dir():
        pytest.skip(f"Kvasir-SEG validation split not found in {d}")
    return d


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(autouse=True)
def _published_bodies_match_their_schemas(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch):
    """In end-to-end tests (marker ``e2e``), every annotation a ``Subscriber`` receives from the
    engine must match its JSON Schema (``transports/schemas``, ``transports/OUTPUTS.md``); the
    test fails at teardown naming the first offenders."""
    if request.node.get_closest_marker("e2e") is None:
        yield
        return
    try:
        import jsonschema  # noqa: F401
    except ImportError:  # pragma: no cover - in the dev extra
        yield
        return
    from telediag.client import subscriber as sub_mod
    from telediag.errors import ProtocolError
    from telediag.transports.outputs import SCHEMA_KINDS, check_body

    failures: list[str] = []
    original = sub_mod.Subscriber.recv

    def recv(self, timeout_s=None):  # noqa: ANN001, ANN202
        c = original(self, timeout_s)
        if c is not None and c.kind in SCHEMA_KINDS and c.body is not None and len(failures) < 20:
            try:
                check_body(c.kind, c.body, c.topic)
            except ProtocolError as e:
                failures.append(str(e)[:300])
        return c

    monkeypatch.setattr(sub_mod.Subscriber, "recv", recv)
    yield
    assert not failures, "published bodies that break their schema:\n" + "\n".join(failures)
