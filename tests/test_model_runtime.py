"""ONNX runtime wrapper and micro-batcher (on the shipped beat classifier)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from telediag.errors import ModelError
from telediag.models.ecg_beats import CARD_PATH, MODEL_DIR
from telediag.models.ecg_beats.features import N_RR
from telediag.models.runtime import MicroBatcher, OnnxModel, Ticket, load_card

ONNX = MODEL_DIR / "ecg_beats.onnx"


@pytest.fixture(scope="module")
def model() -> OnnxModel:
    m = OnnxModel(ONNX, card=CARD_PATH)
    m.warmup()
    return m


def _batch(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "morph": rng.standard_normal((n, 2, 96)).astype(np.float32),
        "rr": rng.uniform(0.5, 1.5, (n, N_RR)).astype(np.float32),
    }


def test_load_and_run(model: OnnxModel) -> None:
    assert [s.name for s in model.inputs] == ["morph", "rr"]
    assert model.inputs[0].shape == (None, 2, 96)
    assert model.output_names == ("probs",)
    for n in (1, 7, 300):
        p = model.run(_batch(n))["probs"]
        assert p.shape == (n, 5) and p.dtype == np.float32
        np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize(
    ("inputs", "match"),
    [
        ({"morph": np.zeros((2, 2, 96), np.float64), "rr": np.ones((2, N_RR), np.float32)}, "dtype float32"),
        ({"morph": np.zeros((2, 2, 90), np.float32), "rr": np.ones((2, N_RR), np.float32)}, "shape"),
        ({"morph": np.zeros((2, 96), np.float32), "rr": np.ones((2, N_RR), np.float32)}, "shape"),
        ({"morph": np.zeros((2, 2, 96), np.float32)}, "exactly"),
        ({"morph": np.zeros((2, 2, 96), np.float32), "rr": np.ones((3, N_RR), np.float32)}, "batch"),
        ({"morph": [[0.0]], "rr": np.ones((2, N_RR), np.float32)}, "numpy array"),
    ],
)
def test_bad_inputs_raise(model: OnnxModel, inputs: dict[str, Any], match: str) -> None:
    with pytest.raises(ModelError, match=match):
        model.run(inputs)


def test_wrong_sha256_raises(tmp_path: Path) -> None:
    card = load_card(CARD_PATH)
    card["sha256"] = "0" * 64
    card["variants"]["fp32"]["sha256"] = "0" * 64
    with pytest.raises(ModelError, match="sha256"):
        OnnxModel(ONNX, card=card)
    # a tampered file against the true card
    bad = tmp_path / "ecg_beats.onnx"
    shutil.copy(ONNX, bad)
    with open(bad, "ab") as f:
        f.write(b"\0")
    with pytest.raises(ModelError, match="does not match"):
        OnnxModel(bad, card=CARD_PATH)


def test_card_contract_mismatch_raises(tmp_path: Path) -> None:
    card = load_card(CARD_PATH)
    card["inputs"][1]["shape"] = ["batch", 8]
    p = tmp_path / "card.json"
    p.write_text(json.dumps(card))
    with pytest.raises(ModelError, match="input contract"):
        OnnxModel(ONNX, card=p)


def test_missing_or_corrupt_files(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="not found"):
        OnnxModel(tmp_path / "nope.onnx")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    with pytest.raises(ModelError, match="cannot load"):
        OnnxModel(junk)
    (tmp_path / "card.json").write_text("{")
    with pytest.raises(ModelError, match="cannot read model card"):
        OnnxModel(ONNX, card=tmp_path / "card.json")
    with pytest.raises(ModelError, match="intra_op_threads"):
        OnnxModel(ONNX, intra_op_threads=0)


# -- micro-batcher ------------------------------------------------------------------------------
class _Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_microbatcher_ready_by_count_and_wait(model: OnnxModel) -> None:
    clock = _Clock()
    mb = MicroBatcher(model, max_batch=4, max_wait_s=0.005, clock=clock)
    x = _batch(4)
    assert not mb.ready(clock.t) and mb.flush() == {}
    mb.submit("a", {"morph": x["morph"][0], "rr": x["rr"][0]})
    assert not mb.ready(clock.t + 0.004)
    assert mb.ready(clock.t + 0.006)
    for i in range(1, 4):
        mb.submit("b", {"morph": x["morph"][i], "rr": x["rr"][i]})
    assert mb.ready(clock.t) and len(mb) == 4


def test_microbatcher_matches_direct_run(model: OnnxModel) -> None:
    x = _batch(10, seed=3)
    direct = model.run(x)["probs"]
    mb = MicroBatcher(model, max_batch=4)
    tickets: list[Ticket] = []
    for i in range(10):
        key = f"bed-{i % 3}"
        tickets.append(mb.submit(key, {"morph": x["morph"][i], "rr": x["rr"][i]}))
    out = mb.flush()
    assert len(mb) == 0 and mb.batches_run == 3 and mb.items_run == 10
    assert [t.key for t in tickets] == [f"bed-{i % 3}" for i in range(10)]
    got = np.stack([out[t]["probs"] for t in tickets])
    np.testing.assert_allclose(got, direct, rtol=1e-5, atol=1e-6)


def test_microbatcher_rejects_bad_items(model: OnnxModel) -> None:
    mb = MicroBatcher(model)
    with pytest.raises(ModelError, match="keys"):
        mb.submit("a", {"morph": np.zeros((2, 96), np.float32)})
    with pytest.raises(ModelError, match="shape"):
        mb.submit("a", {"morph": np.zeros((1, 2, 96), np.float32), "rr": np.ones(N_RR, np.float32)})
    with pytest.raises(ModelError, match="dtype"):
        mb.submit("a", {"morph": np.zeros((2, 96)), "rr": np.ones(N_RR, np.float32)})
    assert len(mb) == 0
    with pytest.raises(ModelError, match="max_batch"):
        MicroBatcher(model, max_batch=0)
