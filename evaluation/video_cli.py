"""Offline polyp segmentation of a video file (``telediag analyze video``).

Usage::

    telediag analyze video clip.mp4 [--out-dir DIR] [--every N] [--max-frames N] [--model polyp_seg]

Writes ``DIR/<name>.jsonl``: one JSON object per analysed frame with ``frame`` (index in the
file), ``time_s`` (presentation time), ``polyp_probability``, ``detected``, ``boxes``
(``[x0, y0, x1, y1, score]`` in pixels), ``mask_fraction`` and ``mask`` (the run-length-coded
downscaled mask, as published live on ``polyp/<stream>``; decode with
:func:`telediag.engine.stages.video.rle_decode`). Every frame is analysed, in order (offline:
no frame is dropped), unless ``--every N`` asks for one in N.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import av
import numpy as np

from telediag.errors import DataError

__all__ = ["add_arguments", "run"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``telediag analyze video``."""
    p.add_argument("input", metavar="FILE", help="video file (anything FFmpeg decodes)")
    p.add_argument("--out-dir", default=".", metavar="DIR", help="where to write <name>.jsonl")
    p.add_argument("--every", type=int, default=1, metavar="N", help="analyse one frame in N (default 1)")
    p.add_argument("--max-frames", type=int, default=0, metavar="N", help="stop after N analysed frames")
    p.add_argument("--model", default="polyp_seg", help="segmenter name (default polyp_seg, the shipped model)")


def run(args: argparse.Namespace) -> int:
    """Analyse the file; print a summary line."""
    from telediag.engine.stages.video import load_segmenter
    from telediag.evaluation.image_cli import analyze_image

    if args.every < 1:
        raise DataError(f"--every must be >= 1, got {args.every}")
    src = Path(args.input)
    if not src.is_file():
        raise DataError(f"video {str(src)!r} not found")
    seg = load_segmenter(args.model)
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / f"{src.stem}.jsonl"
    n = detected = 0
    probs: list[float] = []
    t = time.perf_counter()
    try:
        with av.open(str(src)) as c, out.open("w", encoding="utf-8") as f:
            if not c.streams.video:
                raise DataError(f"{str(src)!r} has no video stream")
            for i, frame in enumerate(c.decode(video=0)):
                if i % args.every:
                    continue
                body, _ = analyze_image(seg, np.asarray(frame.to_ndarray(format="rgb24")))
                doc = {"frame": i, "time_s": None if frame.time is None else round(float(frame.time), 6), **body}
                f.write(json.dumps(doc, separators=(",", ":")) + "\n")
                n += 1
                detected += bool(body["detected"])
                probs.append(body["polyp_probability"])
                if args.max_frames and n >= args.max_frames:
                    break
    except av.error.FFmpegError as e:
        raise DataError(f"cannot decode {str(src)!r}: {e}") from e
    dt = time.perf_counter() - t
    print(f"{src}: {n} frames analysed in {dt:.1f} s ({n / max(dt, 1e-9):.1f} fps), polyp detected in "
          f"{detected}, max probability {max(probs, default=0.0):.3f} -> {out}", flush=True)
    return 0
