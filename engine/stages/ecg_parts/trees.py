"""The beat classifier's tree ensemble in a Numba kernel, bit for bit as ONNX Runtime computes it.

The shipped beat classifier (:mod:`telediag.models.ecg_beats`, 2.x) is an ONNX graph: one
``ai.onnx.ml`` ``TreeEnsembleClassifier`` (LightGBM trees, ``BRANCH_LEQ`` nodes, ``SOFTMAX``)
on the ``rr`` input, then ``Identity`` / ``Mul`` by a constant / ``MatMul`` by a constant 0/1
matrix (the F -> N merge). On the few beats a 1 s chunk brings, ONNX Runtime walks 750 trees
node by node (a data-dependent jump per node, ~3,200 per beat) behind a per-call overhead.
This module reads the same arrays out of the ONNX file and evaluates them with the
*QuickScorer* traversal (Lucchese et al., "QuickScorer: a fast algorithm to rank documents
with additive ensembles of regression trees", SIGIR 2015): the leaves of each tree are
numbered left (true branch) to right; every branch node holds a bit mask clearing the leaves
of its true subtree; for each feature the nodes are sorted by threshold, and a row clears,
feature by feature, the masks of the nodes whose test is false (``x > threshold``: a short
sequential scan, no data-dependent jumps). The exit leaf of a tree is then the lowest bit
still set. The arithmetic is ONNX Runtime's, so the output is the same float32 array:

* a node's test is ``x <= threshold`` in float32, true also when ``x`` is NaN and the node's
  ``missing_value_tracks_true`` is set (the ONNX-ML operator's definition);
* each class score is a float32 sum of the trees' leaf weights in tree order, plus the class's
  base value (ONNX Runtime's ``TreeAggregatorClassifier``);
* softmax as ONNX Runtime's ``ComputeSoftmax``: ``exp(v - max)`` in float32, a float32 sum,
  one division per class;
* ``Mul`` by a scalar and ``MatMul`` by a 0/1 matrix with at most two ones per column are
  exact in float32 whatever the summation order.

The model file is read by :mod:`~telediag.engine.stages.ecg_parts.onnx_lite` (no ``onnx``
package needed); the parsed arrays are cached by the model's SHA-256 (``~/.cache/telediag``, see
:func:`_cache_path`; plain ``.npz``, never pickled), so an engine start neither parses the file
nor walks the trees.
:func:`fast_classifier` builds the kernel model only for a graph of exactly that shape and
only when it reproduces ONNX Runtime's output bit for bit on a check batch (rows at and just
above thresholds, random rows, NaN rows); otherwise it returns ``None`` and the caller keeps
ONNX Runtime. ``tests/test_ecg_trees.py`` compares both on every beat of real records.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numba
import numpy as np
from numba.cpython.unsafe.numbers import trailing_zeros
from numpy.typing import NDArray

__all__ = ["FastBeatClassifier", "TreeEnsemble", "fast_classifier"]

F32Array = NDArray[np.float32]

@numba.njit(cache=True, nogil=True)
def _row_out(i: int, bits: Any, leaf_base: Any, w_start: Any, w_class: Any, w_value: Any, single: bool, base: Any,
             softmax: bool, score: Any, out: Any) -> None:  # pragma: no cover - compiled
    """Row ``i`` of the output from the trees' leaf bit vectors ``bits``: each tree's exit leaf
    (the lowest bit still set), the class sums in tree order, the base values, the softmax."""
    n_trees = leaf_base.shape[0]
    n_cls = base.shape[0]
    for c in range(n_cls):
        score[c] = np.float32(0.0)
    for t in range(n_trees):
        leaf = leaf_base[t] + trailing_zeros(bits[t])  # type: ignore[call-arg]  # never 0 bits: a row exits every tree
        if single:  # one weight a leaf (LightGBM): w_class/w_value indexed by leaf
            score[w_class[leaf]] = score[w_class[leaf]] + w_value[leaf]
        else:
            for k in range(w_start[leaf], w_start[leaf + 1]):
                score[w_class[k]] = score[w_class[k]] + w_value[k]
    for c in range(n_cls):
        score[c] = score[c] + base[c]
    if softmax:
        vmax = np.float32(-3.4028234663852886e38)
        for c in range(n_cls):
            if score[c] > vmax:
                vmax = score[c]
        total = np.float32(0.0)
        for c in range(n_cls):
            e = np.float32(np.exp(np.float32(score[c] - vmax)))
            out[i, c] = e
            total = total + e
        for c in range(n_cls):
            out[i, c] = out[i, c] / total
    else:
        for c in range(n_cls):
            out[i, c] = score[c]


@numba.njit(cache=True, nogil=True)
def _predict(x: Any, f_start: Any, n_thr: Any, n_tree: Any, n_mask: Any, n_miss: Any, leaf_base: Any,
             w_start: Any, w_class: Any, w_value: Any, single: bool, base: Any,
             softmax: bool, allset: Any) -> Any:  # pragma: no cover - compiled
    """Any mask width (16, 32 or 64 leaves a tree at most): tree and mask in two arrays."""
    n, n_feat = x.shape
    n_trees = leaf_base.shape[0]
    out = np.zeros((n, base.shape[0]), np.float32)
    bits = np.full(n_trees, allset)
    score = np.zeros(base.shape[0], np.float32)
    for i in range(n):
        for t in range(n_trees):
            bits[t] = allset
        for f in range(n_feat):
            v = x[i, f]
            j0 = f_start[f]
            j1 = f_start[f + 1]
            if np.isnan(v):
                for j in range(j0, j1):
                    if not n_miss[j]:  # NaN <= thr is false: the false branch
                        bits[n_tree[j]] &= n_mask[j]
            else:
                # ascending thresholds: the tests x <= thr are false exactly for thr < x
                j = j0
                while j < j1 and n_thr[j] < v:
                    bits[n_tree[j]] &= n_mask[j]
                    j += 1
        _row_out(i, bits, leaf_base, w_start, w_class, w_value, single, base, softmax, score, out)
    return out


@numba.njit(cache=True, nogil=True)
def _predict16(x: Any, p_start: Any, p_thr: Any, p_word: Any, p_miss: Any, leaf_base: Any, w_start: Any,
               w_class: Any, w_value: Any, single: bool, base: Any, softmax: bool) -> Any:  # pragma: no cover
    """16-bit masks (at most 16 leaves a tree, < 65,536 trees): each node one word ``tree << 16 |
    mask`` (one load, not two) and every feature's nodes end with a ``+inf`` sentinel threshold,
    so the scan of the false tests (``thr < x``) needs no bound check: ~40 % faster."""
    n, n_feat = x.shape
    n_trees = leaf_base.shape[0]
    out = np.zeros((n, base.shape[0]), np.float32)
    allset = np.uint16(0xFFFF)
    bits = np.full(n_trees, allset)
    score = np.zeros(base.shape[0], np.float32)
    for i in range(n):
        for t in range(n_trees):
            bits[t] = allset
        for f in range(n_feat):
            v = x[i, f]
            j = p_start[f]
            if np.isnan(v):
                for k in range(j, p_start[f + 1] - 1):  # not the sentinel
                    if not p_miss[k]:  # NaN <= thr is false: the false branch
                        w = p_word[k]
                        bits[w >> 16] &= w
            else:  # ascending thresholds: the tests x <= thr are false exactly for thr < x
                while p_thr[j] < v:  # stops at the sentinel at the latest (x < inf, or x = inf)
                    w = p_word[j]
                    bits[w >> 16] &= w
                    j += 1
        _row_out(i, bits, leaf_base, w_start, w_class, w_value, single, base, softmax, score, out)
    return out


@numba.njit(cache=True, nogil=True)
def _merge(p: Any, m: Any) -> Any:  # pragma: no cover - compiled
    """``p @ m`` for a 0/1 ``m`` with at most two ones per column (exact in float32)."""
    n, k = p.shape
    q = m.shape[1]
    out = np.zeros((n, q), np.float32)
    for i in range(n):
        for j in range(q):
            s = np.float32(0.0)
            for r in range(k):
                if m[r, j] != 0:
                    s = s + p[i, r]
            out[i, j] = s
    return out


class TreeEnsemble:
    """An ``ai.onnx.ml`` ``TreeEnsembleClassifier`` (``BRANCH_LEQ``/``LEAF`` nodes, at most 64
    leaves a tree) in QuickScorer form; :meth:`predict` returns the post-transformed class
    scores (float32, ``(n, n_classes)``) as the operator's probability output.

    Raises ``ValueError`` for anything it does not reproduce exactly (other node modes,
    ``*_as_tensor`` attributes, > 64 leaves in a tree, inconsistent ids).
    """

    def __init__(self, attrs: dict[str, Any], n_features: int) -> None:
        if any(k.endswith("_as_tensor") for k in attrs):
            raise ValueError("double-precision (_as_tensor) attributes are not supported")
        tree_ids = [int(v) for v in attrs["nodes_treeids"]]
        node_ids = [int(v) for v in attrs["nodes_nodeids"]]
        modes = [m.decode() if isinstance(m, bytes) else str(m) for m in attrs["nodes_modes"]]
        if set(modes) - {"BRANCH_LEQ", "LEAF"}:
            raise ValueError(f"node modes {sorted(set(modes))} (only BRANCH_LEQ and LEAF are supported)")
        n_nodes = len(tree_ids)
        fids = [int(v) for v in attrs["nodes_featureids"]]
        vals = np.asarray(attrs["nodes_values"], np.float32)
        tids = [int(v) for v in attrs["nodes_truenodeids"]]
        fls = [int(v) for v in attrs["nodes_falsenodeids"]]
        mtt = [int(v) for v in (attrs.get("nodes_missing_value_tracks_true") or [0] * n_nodes)]
        at: dict[tuple[int, int], int] = {}
        for i in range(n_nodes):
            if (tree_ids[i], node_ids[i]) in at:
                raise ValueError(f"node {node_ids[i]} of tree {tree_ids[i]} appears twice")
            at[(tree_ids[i], node_ids[i])] = i
        trees = sorted(set(tree_ids))
        leaf_of: dict[tuple[int, int], int] = {}  # (tree, node id) -> global leaf index
        leaf_base = np.zeros(len(trees), np.int64)
        rows: list[tuple[int, float, int, int, bool]] = []  # feature, threshold, tree, mask, miss
        n_leaves = max_leaves = 0
        for ti, t in enumerate(trees):
            leaf_base[ti] = n_leaves
            if (t, 0) not in at:
                raise ValueError(f"tree {t} has no node 0")
            # in-order numbering: true (left) subtree first; span = leaves under a node
            local: list[int] = []
            spans: list[tuple[int, int, int]] = []  # (node row, first leaf, first leaf of its false side)

            def walk(node: int, t: int = t, local: list[int] = local,
                     spans: list[tuple[int, int, int]] = spans) -> tuple[int, int]:
                i = at[(t, node)]
                if modes[i] == "LEAF":
                    k = len(local)
                    local.append(node)
                    return k, k + 1
                lo, mid = walk(tids[i])
                _, hi = walk(fls[i])
                if not 0 <= fids[i] < n_features:
                    raise ValueError(f"feature id {fids[i]} outside the input's {n_features} columns")
                spans.append((i, lo, mid))
                return lo, hi

            walk(0)
            if len(local) > 64:
                raise ValueError(f"tree {t} has {len(local)} leaves (at most 64 supported)")
            for i, lo, mid in spans:
                true_bits = ((1 << mid) - 1) ^ ((1 << lo) - 1)
                rows.append((fids[i], float(vals[i]), ti, true_bits, bool(mtt[i])))
            max_leaves = max(max_leaves, len(local))
            for k, node in enumerate(local):
                leaf_of[(t, node)] = n_leaves + k
            n_leaves += len(local)
        rows.sort(key=lambda r: (r[0], r[1]))
        self.f_start = np.searchsorted(np.array([r[0] for r in rows], np.int64), np.arange(n_features + 1))
        self.n_thr = np.array([r[1] for r in rows], np.float32)
        # the narrowest mask that holds a tree's leaves: fewer bytes to stream per row
        mtype = np.uint16 if max_leaves <= 16 else np.uint32 if max_leaves <= 32 else np.uint64
        width = np.dtype(mtype).itemsize * 8
        self.n_tree = np.array([r[2] for r in rows], np.int32)
        self.n_mask = np.array([((1 << width) - 1) ^ r[3] for r in rows], mtype)
        self.n_miss = np.array([r[4] for r in rows], np.bool_)
        self.leaf_base = leaf_base
        labels = attrs.get("classlabels_int64s") or attrs.get("classlabels_strings") or []
        n_cls = len(labels)
        c_tree = [int(v) for v in attrs["class_treeids"]]
        c_node = [int(v) for v in attrs["class_nodeids"]]
        c_id = [int(v) for v in attrs["class_ids"]]
        c_w = np.asarray(attrs["class_weights"], np.float32)
        per_leaf: list[list[tuple[int, np.float32]]] = [[] for _ in range(n_leaves)]
        for k in range(len(c_tree)):  # attribute order within a leaf
            key = (c_tree[k], c_node[k])
            if key not in leaf_of:
                raise ValueError(f"class weight on node {key} which is not a leaf")
            if not 0 <= c_id[k] < n_cls:
                raise ValueError(f"class id {c_id[k]} outside the {n_cls} class labels")
            per_leaf[leaf_of[key]].append((c_id[k], c_w[k]))
        self.w_start = np.zeros(n_leaves + 1, np.int64)
        self.w_start[1:] = np.cumsum([len(p) for p in per_leaf])
        self.w_class = np.array([c for p in per_leaf for c, _ in p], np.int64)
        self.w_value = np.array([w for p in per_leaf for _, w in p], np.float32)
        self.single = all(len(p) == 1 for p in per_leaf)
        base = attrs.get("base_values") or []
        self.base = np.zeros(n_cls, np.float32) if not len(base) else np.asarray(base, np.float32)
        if self.base.size != n_cls:
            raise ValueError("base_values size differs from the class count")
        post = attrs.get("post_transform") or b"NONE"
        post = post.decode() if isinstance(post, bytes) else str(post)
        if post not in ("NONE", "SOFTMAX"):
            raise ValueError(f"post_transform {post} (only NONE and SOFTMAX are supported)")
        self.softmax = post == "SOFTMAX"
        self.n_features = n_features
        self.n_classes = n_cls
        self._finish()

    _ARRAYS = ("f_start", "n_thr", "n_tree", "n_mask", "n_miss", "leaf_base", "w_start", "w_class", "w_value",
               "base")

    def _finish(self) -> None:
        """Fields derived from the masks: all-ones and, for 16-bit masks, :func:`_predict16`'s
        layout (per feature its nodes as ``tree << 16 | mask`` words, then a ``+inf`` sentinel)."""
        mtype = self.n_mask.dtype.type
        width = self.n_mask.dtype.itemsize * 8
        self.allset = mtype((1 << width) - 1)
        # class ids in one byte (a smaller cache footprint: the chain evicts the trees between calls)
        self.w_class8 = self.w_class.astype(np.uint8) if self.n_classes <= 256 else self.w_class
        self.p_word: NDArray[np.uint32] | None = None
        if width == 16 and self.leaf_base.size < (1 << 16):
            n_feat = self.f_start.size - 1
            # node j of feature f moves to j + f (one sentinel before it for each earlier feature)
            pos = np.arange(self.n_thr.size) + np.repeat(np.arange(n_feat), np.diff(self.f_start))
            size = self.n_thr.size + n_feat
            self.p_start = self.f_start + np.arange(n_feat + 1)
            self.p_thr = np.full(size, np.inf, np.float32)
            self.p_thr[pos] = self.n_thr
            self.p_word = np.zeros(size, np.uint32)
            self.p_word[pos] = (self.n_tree.astype(np.uint32) << np.uint32(16)) | self.n_mask.astype(np.uint32)
            self.p_miss = np.zeros(size, np.bool_)
            self.p_miss[pos] = self.n_miss

    def to_arrays(self) -> dict[str, np.ndarray]:
        """The flat arrays (for :meth:`from_arrays`; no object arrays, loadable without pickle)."""
        out = {k: getattr(self, k) for k in self._ARRAYS}
        out["flags"] = np.array([self.single, self.softmax, self.n_features, self.n_classes], np.int64)
        return out

    @classmethod
    def from_arrays(cls, a: dict[str, np.ndarray]) -> TreeEnsemble:
        """Rebuild from :meth:`to_arrays` (shapes and dtypes checked; values are checked against
        ONNX Runtime by :func:`fast_classifier`)."""
        self = cls.__new__(cls)
        want = {"f_start": np.int64, "n_thr": np.float32, "n_tree": np.int32, "n_miss": np.bool_, "leaf_base": np.int64,
                "w_start": np.int64, "w_class": np.int64, "w_value": np.float32, "base": np.float32}
        for k in cls._ARRAYS:
            v = np.asarray(a[k])
            if k in want and v.dtype != want[k] or v.ndim != 1:
                raise ValueError(f"cached tree array {k} has dtype {v.dtype} / shape {v.shape}")
            setattr(self, k, np.ascontiguousarray(v))
        if self.n_mask.dtype not in (np.uint16, np.uint32, np.uint64):
            raise ValueError(f"cached masks have dtype {self.n_mask.dtype}")
        single, softmax, n_feat, n_cls = (int(v) for v in np.asarray(a["flags"], np.int64).tolist())
        self.single, self.softmax, self.n_features, self.n_classes = bool(single), bool(softmax), n_feat, n_cls
        n_nodes, n_leaves = self.n_thr.size, self.w_start.size - 1
        if self.f_start.size != n_feat + 1 or self.f_start[-1] != n_nodes or self.base.size != n_cls \
                or not (self.n_tree.size == self.n_mask.size == self.n_miss.size == n_nodes) \
                or (n_nodes and (self.n_tree.min() < 0 or self.n_tree.max() >= self.leaf_base.size)) \
                or (self.single and self.w_class.size != n_leaves) or self.w_start[-1] != self.w_value.size \
                or (self.w_class.size and (self.w_class.min() < 0 or self.w_class.max() >= n_cls)) \
                or (self.leaf_base.size and (self.leaf_base.min() < 0 or self.leaf_base.max() >= n_leaves)):
            raise ValueError("cached tree arrays are inconsistent")
        self._finish()
        return self

    def predict(self, x: F32Array) -> F32Array:
        """Class scores of the rows of ``x`` (float32, ``(n, n_features)``)."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.n_features:
            raise ValueError(f"x must have shape (n, {self.n_features}), got {x.shape}")
        if self.p_word is not None:
            return _predict16(x, self.p_start, self.p_thr, self.p_word, self.p_miss,  # type: ignore[no-any-return]
                              self.leaf_base, self.w_start, self.w_class8, self.w_value, self.single, self.base,
                              self.softmax)
        return _predict(x, self.f_start, self.n_thr, self.n_tree, self.n_mask, self.n_miss,  # type: ignore[no-any-return]
                        self.leaf_base, self.w_start, self.w_class8, self.w_value, self.single, self.base,
                        self.softmax, self.allset)


class FastBeatClassifier:
    """Drop-in for :class:`telediag.models.ecg_beats.BeatClassifier` (``classify``, ``model``,
    ``morph_channels``) with the trees in the kernel; built by :func:`fast_classifier`.

    ``classify`` returns what ``BeatClassifier.classify`` returns (class indices, float32
    probabilities); it reads only the ``rr`` input, the graph's only tree input. Inputs it does
    not expect go to the ONNX path, which raises its precise error.
    """

    def __init__(self, base: Any, trees: TreeEnsemble, scale: np.float32 | None, merge: F32Array | None,
                 n_rr: int) -> None:
        self.base = base
        self.model = base.model
        self.morph_channels = base.morph_channels
        self.trees = trees
        self.scale = scale
        self.merge = merge
        self.n_rr = n_rr

    def probs(self, rr: F32Array) -> F32Array:
        """The graph's ``probs`` output for the ``rr`` rows."""
        p = self.trees.predict(rr)
        if self.scale is not None:
            p = p * self.scale
        if self.merge is not None:
            p = _merge(p, self.merge)
        return p

    def classify(self, features: Any) -> tuple[NDArray[np.int64], F32Array]:
        """Class indices and probabilities, as ``BeatClassifier.classify``."""
        rr = getattr(features, "rr", None)
        n = len(features)
        if n == 0 or not isinstance(rr, np.ndarray) or rr.dtype != np.float32 or rr.shape != (n, self.n_rr):
            return self.base.classify(features)  # type: ignore[no-any-return]
        probs = self.probs(rr)
        return np.asarray(probs.argmax(axis=1), np.int64), probs


def _parse(path: Path) -> tuple[TreeEnsemble, np.float32 | None, F32Array | None, int] | None:
    """The tree ensemble and the constant tail of a ``TreeEnsembleClassifier`` graph, or None."""
    from telediag.engine.stages.ecg_parts.onnx_lite import load_graph

    g = load_graph(path)
    inits = g.initializers
    ens = [n for n in g.nodes if n.op_type == "TreeEnsembleClassifier"]
    if len(ens) != 1 or g.outputs != ["probs"]:
        return None
    node = ens[0]
    if node.domain != "ai.onnx.ml" or node.inputs != ["rr"] or "rr" not in g.inputs or len(node.outputs) != 2:
        return None
    shape = g.inputs["rr"]
    if len(shape) != 2 or shape[1] <= 0:
        return None
    trees = TreeEnsemble(node.attrs, int(shape[1]))
    # probability output -> "probs" through Identity / Mul(constant scalar) / MatMul(constant)
    by_input: dict[str, list[Any]] = {}
    for n in g.nodes:
        for i in n.inputs:
            by_input.setdefault(i, []).append(n)
    cur = node.outputs[1]
    scale: np.float32 | None = None
    merge: F32Array | None = None
    mul_seen = False
    while cur != "probs":
        nxt = by_input.get(cur, [])
        if len(nxt) != 1:
            return None
        n = nxt[0]
        other = [i for i in n.inputs if i != cur]
        if n.op_type == "Identity":
            pass
        elif n.op_type == "Mul" and len(other) == 1 and other[0] in inits and inits[other[0]].size == 1 \
                and merge is None and not mul_seen:
            mul_seen = True
            scale = np.float32(inits[other[0]].reshape(()))
            if scale == np.float32(1.0):
                scale = None  # x * 1 == x exactly
        elif n.op_type == "MatMul" and n.inputs == [cur, *other] and len(other) == 1 \
                and other[0] in inits and merge is None:
            mat = np.asarray(inits[other[0]], np.float32)
            if mat.ndim != 2 or mat.shape[0] != trees.n_classes or not np.isin(mat, (0.0, 1.0)).all() \
                    or (mat.sum(axis=0) > 2).any():
                return None
            merge = np.ascontiguousarray(mat)
        else:
            return None
        if n.domain not in ("", "ai.onnx") or len(n.outputs) != 1:
            return None
        cur = n.outputs[0]
    return trees, scale, merge, int(shape[1])


def _check_rows(trees: TreeEnsemble, rng: np.random.Generator) -> F32Array:
    """Rows that hit many tests on both sides: thresholds, the next float up, random, NaN."""
    n_feat, n = trees.n_features, 512
    rows = rng.normal(0.0, 3.0, (n, n_feat)).astype(np.float32)
    r = np.arange(n) % 3
    for f in range(n_feat):
        t = trees.n_thr[trees.f_start[f]:trees.f_start[f + 1]]
        if t.size:
            v = t[rng.integers(t.size, size=n)]
            rows[r == 1, f] = v[r == 1]
            rows[r == 2, f] = np.nextafter(v[r == 2], np.float32(np.inf))
    for k in range(0, n, 13):
        rows[k, rng.integers(n_feat, size=max(1, n_feat // 8))] = np.nan
    return rows


def _cache_path(sha256: str) -> Path | None:
    """Where the tree arrays of the model with this SHA-256 are cached (``$TELEDIAG_CACHE_DIR``,
    else ``$XDG_CACHE_HOME/telediag``, else ``~/.cache/telediag``)."""
    if not sha256:
        return None
    root = os.environ.get("TELEDIAG_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "telediag")
    return Path(root) / f"ecg_beats_trees-{sha256[:32]}.npz"


def _load(path: Path, sha256: str) -> tuple[TreeEnsemble, np.float32 | None, F32Array | None, int] | None:
    """The parsed graph: from the array cache when present (no ``onnx`` import, no tree walk:
    the engine's start), else from the ONNX file (then cached). Never unpickles."""
    cache = _cache_path(sha256)
    if cache is not None and cache.is_file():
        try:
            with np.load(cache, allow_pickle=False) as z:
                a = {k: z[k] for k in z.files}
            trees = TreeEnsemble.from_arrays(a)
            tail = np.asarray(a["tail"], np.float32)
            scale = None if not tail.size else np.float32(tail[0])
            merge = np.ascontiguousarray(a["merge"], np.float32) if a["merge"].size else None
            return trees, scale, merge, int(a["n_rr"])
        except Exception:  # noqa: BLE001 - a damaged cache: parse the model again
            pass
    parsed = _parse(path)
    if parsed is not None and cache is not None:
        trees, scale, merge, n_rr = parsed
        try:
            cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache.with_suffix(f".{os.getpid()}.tmp.npz")
            arrays = {**trees.to_arrays(), "tail": np.array([] if scale is None else [scale], np.float32),
                      "merge": np.zeros((0, 0), np.float32) if merge is None else merge, "n_rr": np.array(n_rr)}
            np.savez(tmp, **arrays)  # type: ignore[arg-type]
            os.replace(tmp, cache)
        except OSError:  # a read-only home: parse on every start
            pass
    return parsed


def fast_classifier(base: Any) -> FastBeatClassifier | None:
    """A :class:`FastBeatClassifier` for the loaded ``BeatClassifier`` ``base``, or ``None``
    when its graph is not a supported tree ensemble or the kernel's output differs from ONNX
    Runtime's by a single bit on the check batch (the caller then keeps ONNX Runtime)."""
    try:
        shapes = {s.name: s.shape for s in base.model.inputs}
        if set(shapes) != {"morph", "rr"}:
            return None
        parsed = _load(Path(base.model.path), str(getattr(base.model, "sha256", "")))
        if parsed is None:
            return None
        trees, scale, merge, n_rr = parsed
        fast = FastBeatClassifier(base, trees, scale, merge, n_rr)
        rows = _check_rows(trees, np.random.default_rng(0))
        morph = np.zeros(tuple(rows.shape[0] if d is None else d for d in shapes["morph"]), np.float32)
        ref = base.model.run({"morph": morph, "rr": rows})["probs"]
        for lo, hi in ((0, len(rows)), (0, 1), (1, 6)):  # any batch size: same sums in ONNX Runtime
            got, want = fast.probs(rows[lo:hi]), ref[lo:hi]
            if want.dtype != got.dtype or want.shape != got.shape or want.tobytes() != got.tobytes():
                return None
        return fast
    except Exception:  # noqa: BLE001 - any doubt: keep ONNX Runtime
        return None
