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
