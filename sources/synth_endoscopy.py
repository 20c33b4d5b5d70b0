"""Synthetic endoscopy clips with a known polyp mask per frame (for tests and the demo).

The picture is built from the cues a colonoscopy frame has, each one simple:

* **mucosa**: a reddish-pink surface whose brightness and hue vary over several spatial
  scales (band-limited noise, synthesised once in the Fourier domain), with thin darker
  **vessels** along the zero crossings of another noise field;
* **camera motion**: the frame is a moving, slowly zooming window over that surface (a
  Lissajous path, bilinear sampling), so everything drifts smoothly as with a real scope;
* **polyp**: a dome with a wobbly outline (a few angular harmonics of its radius), paler and
  more orange than the mucosa, shaded by the light at the tip of the scope, with a soft
  shadow at its base; it moves with the surface plus a slow drift of its own. Its outline
  is the **ground-truth mask** of the frame;
* **light**: the scope's point light falls off from the centre (vignette, cos^4-like), and
  wet tissue shows small saturated **specular highlights**.

No claim of realism beyond that: it exercises the video chain (decoders, latest-frame-wins,
masks, overlays) with pixels that look like the real thing from a distance, and gives a
segmentation a ground truth to be checked against.

Command line::

    python -m telediag.sources.synth_endoscopy out.mp4 --seconds 10 [--masks out_masks.npz]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from numpy.typing import NDArray

from telediag.errors import DataError
from telediag.transports.video_codec import x264_params

__all__ = ["ClipInfo", "EndoscopySynth", "load_masks", "main", "write_clip"]


def _band_noise(rng: np.random.Generator, h: int, w: int, scale_px: float) -> NDArray[np.float32]:
    """Zero-mean, unit-variance Gaussian noise low-passed at about ``scale_px`` pixels."""
    white = rng.standard_normal((h, w))
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.rfftfreq(w)[None, :]
    f2 = fy**2 + fx**2
    spec = np.fft.rfft2(white) * np.exp(-0.5 * f2 * (2.0 * np.pi * scale_px) ** 2 / 4.0)
    out = np.fft.irfft2(spec, s=(h, w))
    out -= out.mean()
    out /= out.std() + 1e-12
    return out.astype(np.float32)


@dataclass(frozen=True, slots=True)
class ClipInfo:
    """What :func:`write_clip` wrote."""

    path: str
    frames: int
    width: int
    height: int
    fps: float
    masks_path: str | None


class EndoscopySynth:
    """Deterministic generator of ``(rgb, mask)`` frames.

    Parameters
    ----------
    width, height : int
        Frame size in pixels (16..4096).
    fps : float
        Frame rate (sets the speed of the camera and polyp motion per frame).
    seed : int
        Everything is drawn from this seed: the same seed gives the same clip.
    polyp : bool
        Draw the polyp (the mask is all False when not).

    Examples
    --------
    >>> synth = EndoscopySynth(160, 120, 30.0, seed=1)
    >>> rgb, mask = synth.frame(0)
    >>> rgb.shape, rgb.dtype, mask.shape, bool(mask.any())
    ((120, 160, 3), dtype('uint8'), (120, 160), True)
    """

    def __init__(self, width: int = 640, height: int = 480, fps: float = 30.0, *, seed: int = 0,
                 polyp: bool = True) -> None:
        if not (16 <= width <= 4096 and 16 <= height <= 4096):
            raise DataError(f"frame size must be 16..4096 pixels per side, got {width}x{height}")
        if not (np.isfinite(fps) and 0 < fps <= 240):
            raise DataError(f"fps must be in (0, 240], got {fps}")
        self.width, self.height, self.fps, self.polyp = int(width), int(height), float(fps), polyp
        rng = np.random.default_rng(seed)
        self._rng_seed = seed
        # the surface: 1.6 x the frame so the window can wander and zoom
        m = 1.6
        self._ch, self._cw = int(height * m), int(width * m)
        s = min(width, height)
        coarse = _band_noise(rng, self._ch, self._cw, 0.25 * s)
        mid = _band_noise(rng, self._ch, self._cw, 0.05 * s)
        fine = _band_noise(rng, self._ch, self._cw, 0.008 * s)
        vessel_field = _band_noise(rng, self._ch, self._cw, 0.04 * s)
        vessels = np.exp(-((vessel_field / 0.06) ** 2)) * (0.5 + 0.5 * np.tanh(mid))  # thin ridges
        shade = 0.78 + 0.12 * coarse + 0.05 * mid + 0.03 * fine
        hue = 0.5 * coarse + 0.3 * mid
        base = np.array([205.0, 95.0, 100.0], np.float32)  # pink-red mucosa
        tint = np.array([20.0, 18.0, 8.0], np.float32)
        surf = shade[..., None] * (base + hue[..., None] * tint)
        surf *= (1.0 - 0.45 * vessels[..., None] * np.array([0.35, 0.8, 0.7], np.float32))
        # specular highlights fixed on the surface (they move with it)
        n_spec = int(rng.integers(25, 45))
        ys = rng.uniform(0, self._ch, n_spec)
        xs = rng.uniform(0, self._cw, n_spec)
        rs = rng.uniform(0.004, 0.012, n_spec) * s
        yy, xx = np.mgrid[0 : self._ch, 0 : self._cw].astype(np.float32)
        spec = np.zeros((self._ch, self._cw), np.float32)
        for y, x, r in zip(ys, xs, rs, strict=True):
            y0, y1 = max(int(y - 4 * r), 0), min(int(y + 4 * r) + 1, self._ch)
            x0, x1 = max(int(x - 4 * r), 0), min(int(x + 4 * r) + 1, self._cw)
            d2 = ((yy[y0:y1, x0:x1] - y) ** 2 + ((xx[y0:y1, x0:x1] - x) * 0.6) ** 2) / (r * r)
            spec[y0:y1, x0:x1] = np.maximum(spec[y0:y1, x0:x1], np.exp(-d2))
        # RGB + specular weight in one array: one sampling pass per frame
        self._surface = np.concatenate([surf, spec[..., None]], axis=-1).astype(np.float32)
        # camera path (Lissajous, a period of tens of seconds) and zoom
        self._cam_f = rng.uniform(0.03, 0.07, 2)
        self._cam_phase = rng.uniform(0, 2 * np.pi, 3)
        # polyp: anchored on the surface near the window centre, own slow drift
        self._p_anchor = np.array([self._ch / 2, self._cw / 2]) + rng.uniform(-0.15, 0.15, 2) * s
        self._p_r0 = rng.uniform(0.09, 0.14) * s
        self._p_harm = [(k, rng.uniform(0.02, 0.08) / k ** 0.5, rng.uniform(0, 2 * np.pi)) for k in (2, 3, 5)]
        self._p_drift = rng.uniform(0.04, 0.1, 2)
        self._p_phase = rng.uniform(0, 2 * np.pi, 2)
        self._p_color = np.array([225.0, 140.0, 120.0], np.float32) * rng.uniform(0.92, 1.05)
        self._p_tex = _band_noise(rng, int(4 * self._p_r0) + 8, int(4 * self._p_r0) + 8, 0.08 * s)
        gy, gx = np.mgrid[0:height, 0:width].astype(np.float32)
        self._gy, self._gx = gy, gx
        r2 = ((gx - width / 2) / (0.75 * width)) ** 2 + ((gy - height / 2) / (0.75 * height)) ** 2
        self._vignette = (np.clip(1.0 - 0.55 * r2, 0.0, 1.0) ** 1.6 * 1.12).astype(np.float32)

    def _window(self, t: float) -> tuple[float, float, float]:
        """Top-left corner (y, x) on the surface and zoom (surface px per frame px) at time t."""
        fy, fx = self._cam_f
        py, px, pz = self._cam_phase
        zoom = 1.0 + 0.15 * np.sin(2 * np.pi * 0.02 * t + pz)
        span_y = self._ch - self.height * zoom
        span_x = self._cw - self.width * zoom
        oy = 0.5 * span_y * (1 + 0.9 * np.sin(2 * np.pi * fy * t + py))
        ox = 0.5 * span_x * (1 + 0.9 * np.sin(2 * np.pi * fx * t + px))
        return float(oy), float(ox), float(zoom)

    @staticmethod
    def _sample(img: NDArray[np.float32], sy: NDArray[np.floating], sx: NDArray[np.floating]) -> NDArray[np.float32]:
        """Bilinear sampling of ``img`` on the grid ``sy`` (rows) x ``sx`` (columns), separably."""
        h, w = img.shape[:2]
        y0 = np.clip(np.floor(sy).astype(np.intp), 0, h - 2)
        x0 = np.clip(np.floor(sx).astype(np.intp), 0, w - 2)
        wy = np.clip(sy - y0, 0.0, 1.0).astype(np.float32)
        wx = np.clip(sx - x0, 0.0, 1.0).astype(np.float32)
        ext = (1,) * (img.ndim - 2)
        wy = wy.reshape((-1, 1) + ext)
        wx = wx.reshape((1, -1) + ext)
        rows = img[y0] * (1 - wy) + img[y0 + 1] * wy
        return np.asarray(rows[:, x0] * (1 - wx) + rows[:, x0 + 1] * wx, dtype=np.float32)

    def frame(self, index: int) -> tuple[NDArray[np.uint8], NDArray[np.bool_]]:
        """Frame ``index``: ``(rgb (h, w, 3) uint8, mask (h, w) bool)``."""
        t = index / self.fps
        oy, ox, zoom = self._window(t)
        sy = oy + np.arange(self.height) * zoom
        sx = ox + np.arange(self.width) * zoom
        both = self._sample(self._surface, sy, sx)
        img, spec = both[..., :3], both[..., 3]
        mask = np.zeros((self.height, self.width), bool)
        if self.polyp:
            # polyp centre in frame pixels: its surface anchor seen through the window + drift
            s = min(self.width, self.height)
            drift = 0.12 * s * np.sin(2 * np.pi * self._p_drift * t + self._p_phase)
            cy = (self._p_anchor[0] - oy) / zoom + drift[0]
            cx = (self._p_anchor[1] - ox) / zoom + drift[1]
            r0 = self._p_r0 / zoom
            # all polyp work happens in its bounding box (shadow included)
            reach = 1.6 * r0 * (1.0 + sum(a for _, a, _ in self._p_harm))
            y0, y1 = max(int(cy - reach), 0), min(int(cy + reach) + 2, self.height)
            x0, x1 = max(int(cx - reach), 0), min(int(cx + reach) + 2, self.width)
            if y1 > y0 and x1 > x0:
                dy = self._gy[y0:y1, x0:x1] - cy
                dx = self._gx[y0:y1, x0:x1] - cx
                theta = np.arctan2(dy, dx)
                r_theta = r0 * (1.0 + sum(a * np.cos(k * theta + ph) for k, a, ph in self._p_harm))
                rho = np.sqrt(dy * dy + dx * dx) / r_theta  # < 1 inside the polyp
                inside_mask = rho < 1.0
                mask[y0:y1, x0:x1] = inside_mask
                box = img[y0:y1, x0:x1]
                # base shadow just outside the rim
                shadow = np.exp(-(((rho - 1.05) / 0.12) ** 2)) * (rho > 1.0)
                box *= (1.0 - 0.35 * shadow)[..., None]
                # dome shading (light from the scope, slightly up-left) and own texture
                height_map = np.sqrt(np.clip(1.0 - rho * rho, 0.0, 1.0))
                nx, ny = -dx / (r_theta + 1e-6), -dy / (r_theta + 1e-6)
                light = 0.75 + 0.25 * height_map + 0.12 * (0.6 * nx + 0.8 * ny) * (1 - height_map)
                th, tw = self._p_tex.shape
                ty = np.clip((dy / r0 + 2.0) * (th - 1) / 4.0, 0, th - 1).astype(np.intp)
                tx = np.clip((dx / r0 + 2.0) * (tw - 1) / 4.0, 0, tw - 1).astype(np.intp)
                tex = 1.0 + 0.06 * self._p_tex[ty, tx]
                polyp_rgb = self._p_color * (light * tex)[..., None]
                alpha = np.clip((1.0 - rho) / 0.06, 0.0, 1.0)[..., None]  # soft 6 % rim
                img[y0:y1, x0:x1] = box * (1 - alpha) + polyp_rgb * alpha
                # wet highlight near the dome top
                hl = np.exp(-(((dy + 0.35 * r0) ** 2 + (dx + 0.25 * r0) ** 2) / (0.012 * r0 * r0 + 1.0)))
                spec[y0:y1, x0:x1] = np.maximum(spec[y0:y1, x0:x1], hl * inside_mask)
        img *= self._vignette[..., None]
        img += spec[..., None] * (255.0 - img)
        return np.clip(img, 0, 255).astype(np.uint8), mask

    def frames(self, n: int, start: int = 0) -> Iterator[tuple[NDArray[np.uint8], NDArray[np.bool_]]]:
        """``n`` consecutive frames from ``start``."""
        for i in range(start, start + n):
            yield self.frame(i)


def write_clip(
    path: str | Path,
    seconds: float = 10.0,
    *,
    fps: float = 30.0,
    width: int = 640,
    height: int = 480,
    seed: int = 0,
    keyint: int = 30,
    crf: int = 20,
    polyp: bool = True,
    masks_path: str | Path | None = None,
) -> ClipInfo:
    """Write an MP4 (H.264, libx264 ``tune=zerolatency``) and optionally its masks.

    The masks are saved as ``np.savez_compressed(masks=packbits(mask, axis=-1), shape=...)``;
    read them back with :func:`load_masks`.

    Examples
    --------
    >>> import tempfile, os
    >>> d = tempfile.mkdtemp()
    >>> write_clip(os.path.join(d, "c.mp4"), 0.2, width=64, height=48).frames
    6
    """
    if not (np.isfinite(seconds) and 0 < seconds <= 3600):
        raise DataError(f"seconds must be in (0, 3600], got {seconds}")
    if width % 2 or height % 2:
        raise DataError(f"width and height must be even for 4:2:0 H.264, got {width}x{height}")
    synth = EndoscopySynth(width, height, fps, seed=seed, polyp=polyp)
    n = max(1, int(round(seconds * fps)))
    masks: list[NDArray[np.uint8]] = []
    rate = Fraction(fps).limit_denominator(1001)
    with av.open(str(path), "w") as out:
        st = out.add_stream("libx264", rate=rate)
        st.width, st.height, st.pix_fmt = width, height, "yuv420p"
        st.codec_context.options = {"preset": "veryfast", "tune": "zerolatency", "crf": str(crf),
                                    "x264-params": x264_params(keyint)}
        for i, (rgb, mask) in enumerate(synth.frames(n)):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts = i
            frame.time_base = 1 / rate
            for p in st.encode(frame):
                out.mux(p)
            if masks_path is not None:
                masks.append(np.packbits(mask, axis=-1))
        for p in st.encode(None):
            out.mux(p)
    if masks_path is not None:
        np.savez_compressed(str(masks_path), masks=np.stack(masks), shape=np.array([n, height, width]),
                            seed=np.array(seed), fps=np.array(fps))
    return ClipInfo(str(path), n, width, height, float(fps), None if masks_path is None else str(masks_path))


def load_masks(path: str | Path) -> NDArray[np.bool_]:
    """The ``(frames, height, width)`` bool masks saved by :func:`write_clip`."""
    with np.load(str(path)) as z:
        n, h, w = (int(v) for v in z["shape"])
        return np.unpackbits(z["masks"], axis=-1, count=w).astype(bool).reshape(n, h, w)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m telediag.sources.synth_endoscopy out.mp4 --seconds 10``."""
    p = argparse.ArgumentParser(prog="python -m telediag.sources.synth_endoscopy",
                                description=__doc__.strip().split("\n\n")[0] if __doc__ else None)
    p.add_argument("out", help="output MP4 path")
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--fps", type=float, default=30.0)
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--keyint", type=int, default=30, help="keyframe interval in frames")
    p.add_argument("--no-polyp", action="store_true", help="mucosa only (empty masks)")
    p.add_argument("--masks", metavar="NPZ", help="also write the ground-truth masks here")
    a = p.parse_args(argv)
    try:
        info = write_clip(a.out, a.seconds, fps=a.fps, width=a.width, height=a.height, seed=a.seed,
                          keyint=a.keyint, polyp=not a.no_polyp, masks_path=a.masks)
    except DataError as e:
        print(f"synth_endoscopy: error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {info.path}: {info.frames} frames {info.width}x{info.height} @ {info.fps:g} fps"
          f"{f', masks {info.masks_path}' if info.masks_path else ''}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
