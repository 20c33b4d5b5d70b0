"""Polyp segmentation runtime (ONNX), its resampling, and the segmentation metrics."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from telediag.errors import DataError, ModelError
from telediag.evaluation.seg_metrics import (
    dice_iou,
    evaluate_folder,
    mean_dice_iou,
    per_image_dice_iou,
    read_mask,
    read_rgb,
    sweep_thresholds,
)
from telediag.models.polyp_seg import (
    CARD_PATH,
    MODEL_PATH,
    PolypResult,
    PolypSegmenter,
    region_boxes,
)
from telediag.models.polyp_seg._resize import resize, taps

# Regression guard on the first 10 validation images (sorted names). The shipped model scores
# well above this (see card.json); a broken pre/post-processing change lands far below it.
DICE_FLOOR_10 = 0.80  # shipped model: 0.929 on these 10 (previous file: 0.913)


@pytest.fixture(scope="module")
def seg() -> PolypSegmenter:
    return PolypSegmenter(threads=1).load()


# ---------------------------------------------------------------- model file and card
def test_sha256_matches_card() -> None:
    card = json.loads(CARD_PATH.read_text())
    top = CARD_PATH.with_name(card["file"])  # the default variant's file (registry, API)
    assert hashlib.sha256(top.read_bytes()).hexdigest() == card["sha256"]
    assert card["variants"]["fp32"]["file"] == MODEL_PATH.name  # 0.2.0 kept as a variant


def test_card_documents_data_licence_and_metrics() -> None:
    card = json.loads(CARD_PATH.read_text())
    assert "Kvasir-SEG" in card["training_data"]["dataset"]
    assert "research and educational use" in card["training_data"]["licence"]
    assert "Jha" in card["training_data"]["citation"]
    assert "MMM" in card["training_data"]["citation"] or "MultiMedia" in card["training_data"]["citation"]
    assert card["input"]["channel_order"] == "RGB"
    assert card["opset"] >= 17
    for k in ("dice", "iou"):
        assert 0.0 <= card["metrics"][k] <= 1.0
    assert "reproduce" in card


def test_load_rejects_checksum_mismatch(tmp_path: Path) -> None:
    shutil.copy(MODEL_PATH, tmp_path / "m.onnx")
    card = json.loads(CARD_PATH.read_text())
    card["sha256"] = "0" * 64
    (tmp_path / "card.json").write_text(json.dumps(card))
    with pytest.raises(ModelError, match="sha256"):
        PolypSegmenter(tmp_path / "m.onnx", tmp_path / "card.json").load()


def test_load_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="cannot read"):
        PolypSegmenter(tmp_path / "none.onnx").load()


def test_not_loaded_is_an_error() -> None:
    with pytest.raises(ModelError, match="not loaded"):
        PolypSegmenter().predict(np.zeros((64, 64, 3), np.uint8))


@pytest.mark.parametrize(
    "kwargs",
    [{"threads": 0}, {"threshold": 1.5}, {"min_box_area_frac": -0.1}, {"tta": "diagonal"}],
)
def test_bad_parameters(kwargs: dict[str, float]) -> None:
    with pytest.raises(ModelError):
        PolypSegmenter(**kwargs)  # type: ignore[arg-type]


# ---------------------------------------------------------------- outputs
@pytest.mark.parametrize("hw", [(352, 352), (480, 640), (720, 1280), (300, 17 * 13)])
def test_output_shapes_and_ranges(seg: PolypSegmenter, hw: tuple[int, int]) -> None:
    rng = np.random.default_rng(hw[0])
    rgb = rng.integers(0, 256, (*hw, 3), dtype=np.uint8)
    r = seg.predict(rgb)
    assert isinstance(r, PolypResult)
    assert r.prob_map.shape == hw and r.prob_map.dtype == np.float32
    assert r.mask.shape == hw and r.mask.dtype == np.bool_
    assert np.all((r.prob_map >= 0) & (r.prob_map <= 1))
    np.testing.assert_array_equal(r.mask, r.prob_map > seg.threshold)
    assert 0.0 <= r.polyp_probability <= 1.0
    for x0, y0, x1, y1, s in r.boxes:
        assert 0 <= x0 < x1 <= hw[1] and 0 <= y0 < y1 <= hw[0] and seg.threshold < s <= 1.0


def test_preprocess_contract(seg: PolypSegmenter) -> None:
    x = seg.preprocess(np.full((480, 640, 3), 200, np.uint8))
    assert x.shape == (1, 3, seg.input_size, seg.input_size) and x.dtype == np.float32
    np.testing.assert_allclose(x, 200.0, atol=1e-3)  # a flat frame stays flat, 0-255 scale


def test_dynamic_batch_matches_single(seg: PolypSegmenter) -> None:
    rng = np.random.default_rng(1)
    xs = [seg.preprocess(rng.integers(0, 256, (352, 352, 3), dtype=np.uint8)) for _ in range(3)]
    both = seg.predict_batch_prob(np.concatenate(xs))
    for i, x in enumerate(xs):
        np.testing.assert_allclose(both[i], seg.predict_batch_prob(x)[0], atol=1e-5)


@pytest.mark.parametrize("value", [0, 255])
def test_blank_frame_low_probability(seg: PolypSegmenter, value: int) -> None:
    r = seg.predict(np.full((480, 640, 3), value, np.uint8))
    assert r.polyp_probability < 0.5
    assert r.boxes == []


def test_boxes_follow_mask() -> None:
    low = np.zeros((50, 100), np.float32)
    low[5:15, 10:30] = 0.9
    low[25:26, 50:51] = 0.8  # 4 frame pixels: below min_box_area_frac, no box
    low[30:45, 75:95] = 0.7
    prob = np.repeat(np.repeat(low, 2, axis=0), 2, axis=1)  # nearest x2: exact frame mask
    boxes = region_boxes(low, prob, prob > 0.5, 0.5)
    assert boxes == [(20, 10, 60, 30, pytest.approx(0.9)), (150, 60, 190, 90, pytest.approx(0.7))]


def _fragmented_blob_map() -> np.ndarray:
    """A 128x128 network map: one polyp split into fragments, one far polyp, one speckle."""
    yy, xx = np.mgrid[:128, :128]
    low = np.full((128, 128), 0.05, np.float32)
    disc = (yy - 50) ** 2 + (xx - 45) ** 2 <= 22**2
    low[disc] = 0.95
    low[50, :] = np.where(disc[50], 0.2, low[50])  # a one-cell crack across the blob
    low[:, 45] = np.where(disc[:, 45], 0.2, low[:, 45])  # and another: four fragments
    low[67:71, 62:66] = 0.9  # a piece one cell off the rim (at 45 degrees)
    low[100:115, 100:120] = 0.85  # a second polyp, far away
    low[10, 120] = 0.99  # a one-cell speckle: too small for a box
    return low


def test_one_box_per_blob_fragments_merged(seg: PolypSegmenter, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 18: a fragmented blob gave up to 12 boxes. Now: one box per region, none huge."""
    low = _fragmented_blob_map()
    monkeypatch.setattr(seg, "network_prob", lambda x: low)
    r = seg.predict(np.zeros((480, 640, 3), np.uint8))
    assert len(r.boxes) == 2, r.boxes
    labels, n = ndimage.label(r.mask, structure=np.ones((3, 3)))
    assert n >= 5  # the mask itself keeps the fragments (and the speckle)
    (x0, y0, x1, y1, s0), (u0, v0, u1, v1, s1) = r.boxes
    assert s0 == pytest.approx(0.95, abs=1e-3) and s1 == pytest.approx(0.85, abs=1e-3)
    # the first box is exactly the extent of the blob's mask pixels (all four fragments + piece)
    ys, xs = np.nonzero(r.mask[: 90 * 480 // 128, : 90 * 640 // 128])
    assert (x0, y0, x1, y1) == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
    # the second box is the far polyp alone
    ys, xs = np.nonzero(r.mask[95 * 480 // 128:, 95 * 640 // 128:])
    assert (u0, v0) == (xs.min() + 95 * 640 // 128, ys.min() + 95 * 480 // 128)
    for b in r.boxes:  # never a whole-frame box for a blob
        assert (b[2] - b[0]) * (b[3] - b[1]) < 0.25 * 480 * 640


def test_far_apart_blobs_are_not_merged_into_a_frame_box() -> None:
    low = np.zeros((64, 64), np.float32)
    low[2:8, 2:8] = 0.9
    low[56:62, 56:62] = 0.8
    prob = resize(low, 480, 640)
    boxes = region_boxes(low, prob, prob > 0.5, 0.5)
    assert len(boxes) == 2
    assert all((b[2] - b[0]) * (b[3] - b[1]) < 0.05 * 480 * 640 for b in boxes)


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros((480, 640, 3), np.float32),
        np.zeros((480, 640), np.uint8),
        np.zeros((480, 640, 4), np.uint8),
        np.zeros((3, 480, 640), np.uint8),
        np.zeros((8, 8, 3), np.uint8),
        [[0, 0, 0]],
    ],
    ids=["float32", "gray", "rgba", "chw", "tiny", "list"],
)
def test_bad_input_is_model_error(seg: PolypSegmenter, bad: object) -> None:
    with pytest.raises(ModelError, match="rgb must"):
        seg.predict(bad)  # type: ignore[arg-type]


def test_bad_batch_is_model_error(seg: PolypSegmenter) -> None:
    with pytest.raises(ModelError, match="batch must"):
        seg.predict_batch_prob(np.zeros((1, 3, 64, 64), np.float32))


# ---------------------------------------------------------------- post-processing from the card
def test_defaults_come_from_the_card() -> None:
    card = json.loads(CARD_PATH.read_text())
    post = card["postprocess"]
    seg = PolypSegmenter().load()
    assert seg.threshold == post["threshold"] and seg.tta == post["tta"]
    assert 0.0 < seg.threshold < 1.0 and seg.tta in ("none", "h", "hv")
    other = PolypSegmenter(threshold=0.3, tta="hv").load()  # explicit arguments win
    assert other.threshold == 0.3 and other.tta == "hv"


def test_bad_card_postprocess_is_model_error(tmp_path: Path) -> None:
    card = json.loads(CARD_PATH.read_text())
    shutil.copy(CARD_PATH.with_name(card["file"]), tmp_path / "m.onnx")
    card["postprocess"] = {"threshold": 0.5, "tta": "rot90"}
    (tmp_path / "card.json").write_text(json.dumps(card))
    with pytest.raises(ModelError, match="tta"):
        PolypSegmenter(tmp_path / "m.onnx", tmp_path / "card.json").load()


@pytest.mark.parametrize("mode", ["h", "hv"])
def test_tta_is_the_mean_over_flipped_views(mode: str) -> None:
    """Oracle: run the plain network on each flipped frame, un-flip, average."""
    plain = PolypSegmenter(tta="none").load()
    tta = PolypSegmenter(tta=mode).load()
    rng = np.random.default_rng(5)
    rgb = rng.integers(0, 256, (200, 300, 3), dtype=np.uint8)
    rgb[60:140, 80:200] = (200, 90, 80)  # a reddish blob so the map is not flat
    views = [plain.network_prob(plain.preprocess(rgb)),
             plain.network_prob(plain.preprocess(np.ascontiguousarray(rgb[:, ::-1])))[:, ::-1]]
    if mode == "hv":
        views.append(
            plain.network_prob(plain.preprocess(np.ascontiguousarray(rgb[::-1])))[::-1])
    want = np.mean(views, axis=0)
    got = tta.network_prob(tta.preprocess(rgb))
    np.testing.assert_allclose(got, want, atol=1e-5)
    if mode != "h":
        return
    # "h" is hence flip-equivariant: segmenting the mirrored frame gives the mirrored map
    mirrored = tta.predict(np.ascontiguousarray(rgb[:, ::-1])).prob_map
    np.testing.assert_allclose(mirrored, tta.predict(rgb).prob_map[:, ::-1], atol=1e-5)


def test_threshold_sets_the_mask(seg: PolypSegmenter) -> None:
    rgb = np.random.default_rng(6).integers(0, 256, (120, 160, 3), dtype=np.uint8)
    low = PolypSegmenter(threshold=0.2, tta=seg.tta).load().predict(rgb)
    high = PolypSegmenter(threshold=0.8, tta=seg.tta).load().predict(rgb)
    np.testing.assert_array_equal(low.prob_map, high.prob_map)
    np.testing.assert_array_equal(low.mask, low.prob_map > 0.2)
    np.testing.assert_array_equal(high.mask, high.prob_map > 0.8)


# ---------------------------------------------------------------- variants (issue 21)
CARD = json.loads(CARD_PATH.read_text())
VARIANT_NAMES = sorted(CARD.get("variants", {}))


def test_card_lists_every_variant_with_accuracy_and_speed() -> None:
    assert "fp32" in CARD["variants"] and CARD["default_variant"] in CARD["variants"]
    fp32 = CARD["variants"]["fp32"]
    for name, v in CARD["variants"].items():
        f = CARD_PATH.with_name(v["file"])
        assert hashlib.sha256(f.read_bytes()).hexdigest() == v["sha256"], name
        assert 0.0 < v["validation_iou"] < v["validation_dice"] <= 1.0
        assert v["speed_1_thread"]["predict_ratio_vs_fp32"] > 0.0
        assert v["input_sizes"][0] == v["input_size"] == 256
    assert fp32["speed_1_thread"]["predict_ratio_vs_fp32"] == 1.0
    default = CARD["variants"][CARD["default_variant"]]
    assert default["validation_dice"] >= fp32["validation_dice"] - 0.01  # the accuracy rule
    assert CARD["file"] == default["file"] and CARD["sha256"] == default["sha256"]


@pytest.mark.parametrize("name", VARIANT_NAMES)
def test_every_variant_loads_and_segments(name: str) -> None:
    seg = PolypSegmenter(variant=name).load()
    assert seg.variant == name
    r = seg.predict(np.zeros((480, 640, 3), np.uint8))
    assert r.mask.shape == (480, 640) and r.input_size == 256 and r.polyp_probability < 0.5


def test_default_variant_is_the_cards() -> None:
    assert PolypSegmenter().load().variant == CARD["default_variant"]


def test_unknown_variant_is_model_error() -> None:
    with pytest.raises(ModelError, match="unknown polyp_seg variant"):
        PolypSegmenter(variant="fp64").load()


@pytest.mark.parametrize("name", [n for n in VARIANT_NAMES if len(CARD["variants"][n]["input_sizes"]) > 1])
def test_lower_input_sizes(name: str) -> None:
    seg = PolypSegmenter(variant=name).load()
    rgb = np.random.default_rng(7).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    for size in seg.input_sizes:
        assert seg.preprocess(rgb, size).shape == (1, 3, size, size)
        r = seg.predict(rgb, size)
        assert r.input_size == size and r.mask.shape == (480, 640)
    with pytest.raises(ModelError, match="input_size must be one of"):
        seg.predict(rgb, 200)


def test_fixed_size_variant_refuses_other_sizes() -> None:
    seg = PolypSegmenter(variant="fp32").load()
    assert seg.input_sizes == (256,)
    with pytest.raises(ModelError, match="input_size must be one of"):
        seg.predict(np.zeros((64, 64, 3), np.uint8), 192)


@pytest.mark.data
@pytest.mark.parametrize("name", VARIANT_NAMES)
def test_variant_dice_floor_on_validation_images(name: str, kvasir_val: Path) -> None:
    seg = PolypSegmenter(variant=name).load()
    r = evaluate_folder(lambda x: seg.predict(x).mask, kvasir_val, limit=10)
    assert r["dice"] >= DICE_FLOOR_10, (name, r["dice"])


@pytest.mark.data
@pytest.mark.slow
@pytest.mark.parametrize("name", VARIANT_NAMES)
def test_variant_card_figures_reproduce(name: str, kvasir_val: Path) -> None:
    """Each variant's card Dice/IoU (all 100 validation images) is what the runtime scores."""
    seg = PolypSegmenter(variant=name, tta="none").load()
    r = evaluate_folder(lambda x: seg.predict(x).mask, kvasir_val)
    v = CARD["variants"][name]
    # int8 kernels differ by CPU (AVX2 u8s8 may saturate 16-bit sums, VNNI does not): 0.8505 on the card's
    # machine, 0.8557 on an AMD EPYC with AVX512-VNNI and onnxruntime 1.32.0 (models/polyp_seg/README.md)
    tol = 8e-3 if name.endswith("int8") else 2e-3
    assert r["dice"] == pytest.approx(v["validation_dice"], abs=tol)
    assert r["iou"] == pytest.approx(v["validation_iou"], abs=tol)


# ---------------------------------------------------------------- accuracy guard (real data)
@pytest.mark.data
def test_dice_floor_on_validation_images(seg: PolypSegmenter, kvasir_val: Path) -> None:
    r = evaluate_folder(lambda x: seg.predict(x).mask, kvasir_val, limit=10)
    assert r["n_images"] == 10
    assert r["dice"] >= DICE_FLOOR_10, r["per_image"]
    assert r["iou"] <= r["dice"]


@pytest.mark.data
@pytest.mark.slow
def test_card_figures_reproduce_on_validation(seg: PolypSegmenter, kvasir_val: Path) -> None:
    """The card's validation Dice/IoU are what the runtime scores now (all 100 images)."""
    card = json.loads(CARD_PATH.read_text())
    r = evaluate_folder(lambda x: seg.predict(x).mask, kvasir_val)
    tol = 8e-3 if seg.variant.endswith("int8") else 2e-3  # see test_variant_card_figures_reproduce
    assert r["dice"] == pytest.approx(card["metrics"]["dice"], abs=tol)
    assert r["iou"] == pytest.approx(card["metrics"]["iou"], abs=tol)


@pytest.mark.data
def test_threshold_sweep_agrees_with_evaluate_folder(kvasir_val: Path) -> None:
    seg = PolypSegmenter(threshold=0.4, tta="none").load()
    sweep = sweep_thresholds(lambda x: seg.predict(x).prob_map, kvasir_val, [0.4, 0.6], limit=5)
    r = evaluate_folder(lambda x: seg.predict(x).mask, kvasir_val, limit=5)
    assert sweep[0.4] == pytest.approx((r["dice"], r["iou"]))
    assert sweep[0.6] != sweep[0.4]


@pytest.mark.data
def test_real_frame_gives_polyp(seg: PolypSegmenter, kvasir_val: Path) -> None:
    name = sorted((kvasir_val / "images").iterdir())[0].name
    rgb = read_rgb(kvasir_val / "images" / name)
    truth = read_mask(kvasir_val / "masks" / name)
    r = seg.predict(rgb)
    assert r.polyp_probability > 0.5 and r.boxes
    assert truth.shape == r.mask.shape


# ---------------------------------------------------------------- resampling
def _oracle_resize_1d(x: np.ndarray, n_out: int) -> np.ndarray:
    """Direct triangle-filter resampling of one axis, written loop by loop (PIL's definition)."""
    n_in = x.shape[0]
    scale = n_in / n_out
    support = max(scale, 1.0)
    out = np.zeros((n_out,) + x.shape[1:])
    for i in range(n_out):
        c = (i + 0.5) * scale
        ws, vs = [], []
        for j in range(n_in):
            w = max(0.0, 1.0 - abs((j + 0.5 - c) / support))
            if w > 0:
                ws.append(w)
                vs.append(x[j])
        out[i] = np.tensordot(np.array(ws) / sum(ws), np.array(vs, dtype=float), axes=1)
    return out


@pytest.mark.parametrize("shape,out", [((23, 31, 3), (9, 12)), ((10, 7), (25, 3)), ((5, 5), (5, 13))])
def test_resize_matches_oracle(shape: tuple[int, ...], out: tuple[int, int]) -> None:
    rng = np.random.default_rng(2)
    x = rng.integers(0, 256, shape, dtype=np.uint8)
    want = _oracle_resize_1d(x.astype(float), out[0])
    want = np.swapaxes(_oracle_resize_1d(np.swapaxes(want, 0, 1), out[1]), 0, 1)
    got = resize(x, *out)
    assert got.shape == out + shape[2:] and got.dtype == np.float32
    np.testing.assert_allclose(got, want, atol=1e-3)


def test_upsampling_is_half_pixel_bilinear() -> None:
    rng = np.random.default_rng(3)
    row = rng.random(16)
    up = resize(row[None, :], 1, 40)[0]
    c = np.clip((np.arange(40) + 0.5) * 16 / 40 - 0.5, 0, 15)
    np.testing.assert_allclose(up, np.interp(c, np.arange(16), row), atol=1e-6)


def test_taps_are_normalised() -> None:
    for n_in, n_out in [(480, 256), (640, 256), (128, 720), (352, 256)]:
        idx, w = taps(n_in, n_out)
        np.testing.assert_allclose(w.sum(axis=1), 1.0, atol=1e-6)
        assert idx.min() >= 0 and idx.max() < n_in


# ---------------------------------------------------------------- metrics
def test_dice_iou_hand_computed() -> None:
    a = np.zeros((10, 10), bool)
    b = np.zeros((10, 10), bool)
    a[:4] = True  # 40 px
    b[2:8] = True  # 60 px, overlap 20
    d, j = dice_iou(a, b)
    assert d == pytest.approx(2 * 20 / 100) and j == pytest.approx(20 / 80)
    assert dice_iou(np.zeros((3, 3)), np.zeros((3, 3))) == (1.0, 1.0)
    assert dice_iou(np.ones((3, 3)), np.zeros((3, 3))) == (0.0, 0.0)


def test_mean_is_over_images_not_pixels() -> None:
    rng = np.random.default_rng(4)
    p = rng.random((5, 12, 12)) > 0.5
    t = rng.random((5, 12, 12)) > 0.4
    d, j = per_image_dice_iou(p, t)
    for i in range(5):
        assert (d[i], j[i]) == pytest.approx(dice_iou(p[i], t[i]))
    assert mean_dice_iou(p, t) == pytest.approx((d.mean(), j.mean()))
    assert np.all(2 * j / (1 + j) == pytest.approx(d))  # Dice = 2 IoU / (1 + IoU) per image


def test_metric_shape_errors() -> None:
    with pytest.raises(DataError, match="same shape"):
        dice_iou(np.zeros((3, 3)), np.zeros((3, 4)))
    with pytest.raises(DataError, match="N, H, W"):
        per_image_dice_iou(np.zeros((3, 3)), np.zeros((3, 3)))


# -- issue 21: the Numba pre/post-processing must equal the SciPy/NumPy definitions bit for bit


@pytest.mark.parametrize("shape,side", [((480, 640, 3), 256), ((480, 640, 3), 192), ((720, 1280, 3), 224),
                                        ((97, 131, 3), 256)])
def test_fast_resize_is_bit_identical(shape: tuple[int, int, int], side: int) -> None:
    from telediag.models.polyp_seg._resize import resize_chw, resize_chw_fast

    x = np.random.default_rng(side).integers(0, 256, shape, dtype=np.uint8)
    np.testing.assert_array_equal(resize_chw_fast(x, side, side), resize_chw(x, side, side))
    np.testing.assert_array_equal(resize_chw_fast(x[:, ::-1], side, side), resize_chw(x[:, ::-1], side, side))


@pytest.mark.parametrize("variant", ["fp32", "student_int8"])
def test_predict_equals_the_reference_post_processing(variant: str) -> None:
    """prob_map/mask/boxes of predict() == clip(resize(low)) > threshold and the region_boxes loop."""
    from scipy import ndimage

    from telediag.models.polyp_seg._resize import resize_chw
    from telediag.sources.synth_endoscopy import EndoscopySynth

    seg = PolypSegmenter(threads=1, variant=variant).load()
    synth = EndoscopySynth(640, 480, 30.0, seed=3)
    for i in (0, 7, 15):
        rgb = np.ascontiguousarray(synth.frame(i)[0])
        low = seg.network_prob(resize_chw(rgb, seg.input_size, seg.input_size)[None])
        prob = np.clip(resize(low, 480, 640), 0.0, 1.0)
        mask = prob > seg.threshold
        # float64 prob: region_boxes takes its NumPy loop (the reference), not the Numba pass
        ref = region_boxes(low, prob.astype(np.float64), mask, seg.threshold, min_area_frac=seg.min_box_area_frac)
        r = seg.predict(rgb)
        np.testing.assert_array_equal(r.mask, mask)
        np.testing.assert_array_equal(r.prob_map, prob)
        assert r.boxes == ref and r.polyp_probability == float(
            ndimage.uniform_filter(low, size=3, mode="nearest").max())
        assert mask.any() or i == 0  # the synthetic frames have a polyp-like blob
