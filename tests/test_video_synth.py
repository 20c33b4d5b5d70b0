"""The synthetic endoscopy clip generator: deterministic frames, ground truth, MP4 output."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest

from telediag.errors import DataError
from telediag.sources.synth_endoscopy import EndoscopySynth, load_masks, main, write_clip


def test_same_seed_same_frames_other_seed_other_frames() -> None:
    a, b, c = (EndoscopySynth(96, 64, 30.0, seed=s) for s in (1, 1, 2))
    ra, ma = a.frame(17)
    rb, mb = b.frame(17)
    np.testing.assert_array_equal(ra, rb)
    np.testing.assert_array_equal(ma, mb)
    assert not np.array_equal(ra, c.frame(17)[0])


def test_frames_look_like_mucosa_and_the_mask_is_a_compact_moving_blob() -> None:
    synth = EndoscopySynth(320, 240, 30.0, seed=0)
    rgb0, m0 = synth.frame(0)
    rgb1, m1 = synth.frame(90)
    for rgb, m in ((rgb0, m0), (rgb1, m1)):
        mean = rgb.reshape(-1, 3).mean(axis=0)
        assert mean[0] > mean[1] and mean[0] > mean[2]  # reddish
        assert 0.005 < m.mean() < 0.25  # a polyp, not the whole frame
        ys, xs = np.nonzero(m)
        box = (ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1)
        assert m.sum() / box > 0.6  # compact blob
        inside = rgb[m].astype(float)
        outside = rgb[~m].astype(float)
        # the polyp is paler/more orange than the mucosa around it (what makes it visible)
        assert (inside[:, 1] / (inside[:, 0] + 1)).mean() > (outside[:, 1] / (outside[:, 0] + 1)).mean()
    assert not np.array_equal(m0, m1)  # it moves
    assert np.abs(rgb0.astype(int) - rgb1.astype(int)).mean() > 3  # the camera moves
    assert (rgb0.min(axis=-1) > 240).any()  # specular highlights
    corner, centre = rgb0[:10, :10].mean(), rgb0[110:130, 150:170].mean()
    assert corner < centre  # vignette


def test_no_polyp_option() -> None:
    rgb, m = EndoscopySynth(96, 64, seed=0, polyp=False).frame(3)
    assert not m.any() and rgb.shape == (64, 96, 3)


def test_clip_file_and_masks_round_trip(tmp_path: Path) -> None:
    out = tmp_path / "c.mp4"
    info = write_clip(out, 1.0, fps=20, width=160, height=96, seed=4, keyint=10,
                      masks_path=tmp_path / "m.npz")
    assert info.frames == 20
    masks = load_masks(tmp_path / "m.npz")
    synth = EndoscopySynth(160, 96, 20, seed=4)
    np.testing.assert_array_equal(masks[7], synth.frame(7)[1])
    with av.open(str(out)) as c:
        st = c.streams.video[0]
        assert st.codec_context.name == "h264" and (st.width, st.height) == (160, 96)
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    assert len(frames) == 20
    err = np.abs(frames[7].astype(int) - synth.frame(7)[0].astype(int)).mean()
    assert err < 8  # the file holds these pictures (lossy, small error)


def test_cli_and_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(tmp_path / "x.mp4"), "--seconds", "0.2", "--width", "64", "--height", "48"]) == 0
    assert "6 frames 64x48" in capsys.readouterr().out
    assert main([str(tmp_path / "y.mp4"), "--width", "63"]) == 2
    with pytest.raises(DataError, match="seconds"):
        write_clip(tmp_path / "z.mp4", 0.0)
