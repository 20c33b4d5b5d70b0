"""The beat classifier's trees in the Numba kernel give ONNX Runtime's output bit for bit.

:mod:`telediag.engine.stages.ecg_parts.trees` replaces the ONNX Runtime call of the shipped
beat classifier in the ECG stage (one thread); labels and probabilities must not change.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from telediag.dsp.qrs import detect
from telediag.engine.stages.ecg_parts import trees
from telediag.models.ecg_beats import BeatClassifier, BeatFeatures

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="module")
def pair() -> tuple[BeatClassifier, trees.FastBeatClassifier]:
    clf = BeatClassifier.load()
    fast = trees.fast_classifier(clf)
    assert fast is not None, "the shipped model is a plain tree ensemble: the kernel must take it"
    return clf, fast


def _same(clf: BeatClassifier, fast: trees.FastBeatClassifier, f: BeatFeatures) -> None:
    a_idx, a_p = clf.classify(f)
    b_idx, b_p = fast.classify(f)
    assert a_p.dtype == b_p.dtype == np.float32 and a_p.shape == b_p.shape
    assert a_p.tobytes() == b_p.tobytes()
    assert np.array_equal(a_idx, b_idx)


@pytest.mark.parametrize("record", ["mitdb/208", "mitdb/201", "svdb/800"])
def test_every_beat_of_real_records(pair: tuple[BeatClassifier, trees.FastBeatClassifier], record: str) -> None:
    if not (DATA / f"{record}.dat").exists():
        pytest.skip(f"{record} not in ../shared/data")
    from telediag.sources.readers import read_wfdb

    clf, fast = pair
    r = read_wfdb(DATA / record)
    n = int(min(r.signal.shape[0], 600 * r.fs))
    x = r.signal[:n, 0]
    f = clf.features(x, r.fs, detect(x, r.fs))
    assert len(f) > 300
    _same(clf, fast, f)
    for k in range(0, len(f), 41):  # streaming calls: one to five beats
        m = 1 + k % 5
        _same(clf, fast, BeatFeatures(f.beats[k:k + m], f.rr[k:k + m], f.morph[k:k + m]))


def test_thresholds_nan_and_extremes(pair: tuple[BeatClassifier, trees.FastBeatClassifier]) -> None:
    clf, fast = pair
    rng = np.random.default_rng(5)
    rows = trees._check_rows(fast.trees, rng)
    rows[::7, ::3] = np.nan
    rows[1::11] = np.float32(3e38)
    rows[2::11] = np.float32(-3e38)
    rows[3::11] = np.inf
    n = rows.shape[0]
    f = BeatFeatures(np.arange(n, dtype=np.int64), rows, np.zeros((n, 2, 96), np.float32))
    _same(clf, fast, f)


def test_unexpected_inputs_take_the_checked_onnx_path(pair: tuple[BeatClassifier,
                                                                  trees.FastBeatClassifier]) -> None:
    from telediag.errors import ModelError

    _, fast = pair
    bad = BeatFeatures(np.zeros(2, np.int64), np.zeros((2, 7), np.float32), np.zeros((2, 2, 96), np.float32))
    with pytest.raises(ModelError):
        fast.classify(bad)
    assert fast.classify(BeatFeatures.empty())[1].shape == (0, 5)


def test_unsupported_or_different_graphs_keep_onnx_runtime(pair: tuple[BeatClassifier,
                                                                       trees.FastBeatClassifier],
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    clf, _ = pair
    # a kernel that is one bit off is refused by the load-time check
    real = trees.TreeEnsemble.predict

    def off_by_one_ulp(self: trees.TreeEnsemble, x: np.ndarray) -> np.ndarray:
        p = real(self, x)
        p[-1, 0] = np.nextafter(p[-1, 0], np.float32(2))
        return p

    monkeypatch.setattr(trees.TreeEnsemble, "predict", off_by_one_ulp)
    assert trees.fast_classifier(clf) is None
    monkeypatch.undo()
    # a node mode the kernel does not implement
    attrs = {"nodes_treeids": [0, 0, 0], "nodes_nodeids": [0, 1, 2], "nodes_modes": [b"BRANCH_LT", b"LEAF", b"LEAF"],
             "nodes_featureids": [0, 0, 0], "nodes_values": [0.5, 0, 0], "nodes_truenodeids": [1, 0, 0],
             "nodes_falsenodeids": [2, 0, 0], "class_treeids": [0, 0], "class_nodeids": [1, 2],
             "class_ids": [0, 1], "class_weights": [1.0, 2.0], "classlabels_int64s": [0, 1]}
    with pytest.raises(ValueError, match="BRANCH_LT"):
        trees.TreeEnsemble(attrs, 1)
    attrs["nodes_modes"] = [b"BRANCH_LEQ", b"LEAF", b"LEAF"]
    t = trees.TreeEnsemble(attrs, 1)
    x = np.array([[0.5], [0.6], [np.nan]], np.float32)
    assert t.predict(x).tolist() == [[1.0, 0.0], [0.0, 2.0], [0.0, 2.0]]  # NaN: false branch (no missing flag)


def _random_tree_attrs(rng: np.random.Generator, n_trees: int, n_leaves: int, n_feat: int,
                       n_cls: int) -> dict:
    """Random ONNX-ML tree attributes (BRANCH_LEQ), leaves split at random."""
    a: dict = {k: [] for k in ("nodes_treeids", "nodes_nodeids", "nodes_modes", "nodes_featureids", "nodes_values",
                               "nodes_truenodeids", "nodes_falsenodeids", "nodes_missing_value_tracks_true",
                               "class_treeids", "class_nodeids", "class_ids", "class_weights")}
    for t in range(n_trees):
        nodes = [[0, "LEAF", 0, 0.0, 0, 0, 0]]  # id, mode, feat, thr, true, false, miss
        leaves = [0]
        while len(leaves) < n_leaves:
            k = leaves.pop(int(rng.integers(len(leaves))))
            a_id, b_id = len(nodes), len(nodes) + 1
            nodes[k][1:] = ["BRANCH_LEQ", int(rng.integers(n_feat)), float(rng.normal()), a_id, b_id,
                            int(rng.integers(2))]
            nodes += [[a_id, "LEAF", 0, 0.0, 0, 0, 0], [b_id, "LEAF", 0, 0.0, 0, 0, 0]]
            leaves += [a_id, b_id]
        for nid, mode, f, thr, tr, fl, miss in nodes:
            for key, v in zip(("nodes_treeids", "nodes_nodeids", "nodes_modes", "nodes_featureids", "nodes_values",
                               "nodes_truenodeids", "nodes_falsenodeids", "nodes_missing_value_tracks_true"),
                              (t, nid, mode.encode(), f, thr, tr, fl, miss), strict=True):
                a[key].append(v)
            if mode == "LEAF":
                a["class_treeids"].append(t)
                a["class_nodeids"].append(nid)
                a["class_ids"].append(t % n_cls)
                a["class_weights"].append(float(rng.normal()))
    a["classlabels_int64s"] = list(range(n_cls))
    a["post_transform"] = b"SOFTMAX"
    return a


def _naive(a: dict, x: np.ndarray, n_cls: int) -> np.ndarray:
    """Node-by-node reference: float32 sums in tree order, ONNX Runtime's softmax."""
    node = {(t, n): i for i, (t, n) in enumerate(zip(a["nodes_treeids"], a["nodes_nodeids"], strict=True))}
    leaf_w = {(t, n): (c, np.float32(w)) for t, n, c, w in zip(a["class_treeids"], a["class_nodeids"],
                                                                 a["class_ids"], a["class_weights"], strict=True)}
    out = np.zeros((x.shape[0], n_cls), np.float32)
    for r in range(x.shape[0]):
        s = np.zeros(n_cls, np.float32)
        for t in sorted(set(a["nodes_treeids"])):
            i = node[(t, 0)]
            while a["nodes_modes"][i] != b"LEAF":
                v = x[r, a["nodes_featureids"][i]]
                go = v <= np.float32(a["nodes_values"][i]) or (a["nodes_missing_value_tracks_true"][i] and np.isnan(v))
                i = node[(t, a["nodes_truenodeids"][i] if go else a["nodes_falsenodeids"][i])]
            c, w = leaf_w[(t, a["nodes_nodeids"][i])]
            s[c] = np.float32(s[c] + w)
        e = np.exp((s - s.max()).astype(np.float32)).astype(np.float32)
        tot = np.float32(0)
        for v in e:
            tot = np.float32(tot + v)
        out[r] = e / tot
    return out


@pytest.mark.parametrize("n_leaves", [3, 16, 17, 40])
def test_quickscorer_equals_node_by_node_traversal(n_leaves: int) -> None:
    """16-bit masks (packed words, sentinel scan: _predict16) and 32/64-bit masks (_predict)."""
    rng = np.random.default_rng(n_leaves)
    a = _random_tree_attrs(rng, n_trees=12, n_leaves=n_leaves, n_feat=6, n_cls=3)
    ens = trees.TreeEnsemble(a, 6)
    assert ens.n_mask.dtype == (np.uint16 if n_leaves <= 16 else np.uint32 if n_leaves <= 32 else np.uint64)
    assert (ens.p_word is not None) == (n_leaves <= 16)
    x = rng.normal(size=(200, 6)).astype(np.float32)
    x[::9, 2] = np.nan
    x[1::9, 0] = np.float32(a["nodes_values"][0])  # exactly on a threshold
    got = ens.predict(x)
    want = _naive(a, x, 3)
    assert np.array_equal(got.argmax(axis=1), want.argmax(axis=1))
    np.testing.assert_allclose(got, want, rtol=2e-6, atol=1e-7)  # the reference's exp is NumPy's


def test_array_cache_round_trip_and_damage(pair: tuple[BeatClassifier, trees.FastBeatClassifier], tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """The parsed trees are cached as a plain .npz by the model's SHA-256; a warm load reads no
    model file and gives the same output; a damaged cache is parsed again and rewritten."""
    clf, ref = pair
    monkeypatch.setenv("TELEDIAG_CACHE_DIR", str(tmp_path))
    first = trees.fast_classifier(clf)
    files = list(tmp_path.glob("ecg_beats_trees-*.npz"))
    assert first is not None and len(files) == 1
    rows = trees._check_rows(ref.trees, np.random.default_rng(11))

    def no_parse(path: Path) -> None:
        raise AssertionError("a warm load must not parse the model file")

    monkeypatch.setattr(trees, "_parse", no_parse)
    warm = trees.fast_classifier(clf)
    assert warm is not None
    assert warm.probs(rows).tobytes() == ref.probs(rows).tobytes()
    monkeypatch.undo()
    monkeypatch.setenv("TELEDIAG_CACHE_DIR", str(tmp_path))
    files[0].write_bytes(b"not an npz")
    again = trees.fast_classifier(clf)  # parsed again, cache rewritten
    assert again is not None and again.probs(rows).tobytes() == ref.probs(rows).tobytes()
    with np.load(files[0], allow_pickle=False) as z:
        assert "n_mask" in z.files


def test_onnx_lite_reads_what_the_onnx_package_reads(pair: tuple[BeatClassifier, trees.FastBeatClassifier]) -> None:
    onnx = pytest.importorskip("onnx")
    from onnx import helper, numpy_helper

    from telediag.engine.stages.ecg_parts.onnx_lite import load_graph

    clf, _ = pair
    path = Path(clf.model.path)
    g = load_graph(path)
    m = onnx.load(str(path)).graph
    assert [n.op_type for n in g.nodes] == [n.op_type for n in m.node]
    assert [n.outputs for n in g.nodes] == [list(n.output) for n in m.node]
    for mine, theirs in zip(g.nodes, m.node, strict=True):
        ref = {a.name: helper.get_attribute_value(a) for a in theirs.attribute}
        assert set(mine.attrs) == set(ref)
        for k, v in ref.items():
            w = mine.attrs[k]
            assert (np.array_equal(v, w) if isinstance(v, np.ndarray) else list(v) == list(w)
                    if isinstance(v, list) else v == w), k
    for t in m.initializer:
        a = numpy_helper.to_array(t)
        assert a.dtype == g.initializers[t.name].dtype and np.array_equal(a, g.initializers[t.name])
    assert g.outputs == [o.name for o in m.output]


def test_onnx_lite_rejects_garbage(tmp_path: Path) -> None:
    from telediag.engine.stages.ecg_parts.onnx_lite import load_graph

    for i, junk in enumerate((b"\xff" * 20, b"\x3a\x05abc", b"")):
        p = tmp_path / f"junk{i}.onnx"
        p.write_bytes(junk)
        with pytest.raises(ValueError):
            load_graph(p)
