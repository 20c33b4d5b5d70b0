"""Offline polyp segmentation of images (``telediag analyze image``).

Usage::

    telediag analyze image frame1.png frame2.jpg ... [--out-dir DIR] [--model polyp_seg]

For each input ``NAME.ext`` it writes ``DIR/NAME.json`` (polyp probability, detection flag,
boxes ``[x0, y0, x1, y1, score]`` in input pixels, mask area fraction, the run-length-coded
downscaled mask as published live on ``polyp/<stream>``) and ``DIR/NAME.mask.png`` (binary
mask, 0/255, the same size as the input). Images are read with FFmpeg (PyAV): PNG, JPEG,
BMP, TIFF, WebP and anything else it decodes. The model is the engine's
(:func:`telediag.engine.stages.video.load_segmenter`).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import av
import numpy as np
from numpy.typing import NDArray

from telediag.errors import DataError

__all__ = ["add_arguments", "analyze_image", "read_image", "run", "write_mask_png"]


def read_image(path: str | Path) -> NDArray[np.uint8]:
    """The first picture of ``path`` as ``(h, w, 3)`` uint8 RGB.

    Raises
    ------
    DataError
        When the file is missing or FFmpeg cannot decode a picture from it.
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(f"image {str(p)!r} not found")
    try:
        with av.open(str(p)) as c:
            if not c.streams.video:
                raise DataError(f"{str(p)!r} holds no image")
            for frame in c.decode(video=0):
                return np.asarray(frame.to_ndarray(format="rgb24"))
    except av.error.FFmpegError as e:
        raise DataError(f"cannot decode image {str(p)!r}: {e}") from e
    raise DataError(f"{str(p)!r} holds no decodable picture")


def write_mask_png(path: str | Path, mask: NDArray[Any]) -> None:
    """Write a binary mask as an 8-bit grayscale PNG (0 and 255).

    Examples
    --------
    >>> import tempfile, os
    >>> p = os.path.join(tempfile.mkdtemp(), "m.png")
    >>> write_mask_png(p, np.eye(4, dtype=bool)); (read_image(p)[..., 0] > 127).sum()
    np.int64(4)
    """
    m = np.ascontiguousarray(np.where(np.asarray(mask, bool), 255, 0).astype(np.uint8))
    cc: Any = av.CodecContext.create("png", "w")
    cc.width, cc.height, cc.pix_fmt = m.shape[1], m.shape[0], "gray"
    cc.open()
    data = b"".join(bytes(p) for p in cc.encode(av.VideoFrame.from_ndarray(m, format="gray")))
    Path(path).write_bytes(data)


def analyze_image(seg: Any, rgb: NDArray[np.uint8], *, mask_max_side: int = 96) -> tuple[dict[str, Any], NDArray[np.bool_]]:
    """Run ``seg`` on one picture: the JSON document and the full-size mask."""
    from telediag.engine.stages.video import _resize_nearest, polyp_body

    h, w = rgb.shape[:2]
    result = seg.predict(rgb)
    body = polyp_body(result, w, h, mask_max_side=mask_max_side)
    return body, _resize_nearest(np.asarray(result.mask), h, w)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``telediag analyze image``."""
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files (PNG, JPEG, ...)")
    p.add_argument("--out-dir", default=".", metavar="DIR", help="where to write NAME.json and NAME.mask.png")
    p.add_argument("--model", default="polyp_seg", help="segmenter name (default polyp_seg, the shipped model)")


def run(args: argparse.Namespace) -> int:
    """Analyse every input; return 0, or 1 when some inputs could not be read."""
    from telediag.engine.stages.video import load_segmenter

    seg = load_segmenter(args.model)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    failed = 0
    for name in args.inputs:
        try:
            rgb = read_image(name)
        except DataError as e:
            print(f"telediag analyze image: {e}", flush=True)
            failed += 1
            continue
        body, mask = analyze_image(seg, rgb)
        stem = Path(name).stem
        doc = {"input": str(name), "model": args.model, **body}
        (out / f"{stem}.json").write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
        write_mask_png(out / f"{stem}.mask.png", mask)
        print(f"{name}: polyp probability {body['polyp_probability']:.3f}, {len(body['boxes'])} box(es), "
              f"mask {100 * body['mask_fraction']:.1f} % -> {out / stem}.json, .mask.png", flush=True)
    return 1 if failed else 0
