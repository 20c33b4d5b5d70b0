"""Video stages: decode every packet, segment polyps on the newest frame, re-encode an overlay.

The ``video`` pipeline (``engine/default.toml``) is::

    video_decode (every packet) -> polyp_seg (newest frame only) -> video_encode (publish)

Video is **latest-frame-wins** (DESIGN.md): H.264 needs every packet to stay in sync, so
:class:`VideoDecode` declares ``every_chunk = True`` and the video worker
(:mod:`telediag.engine.video_worker`) feeds it every packet; the stages after it run only on
the newest decoded frame of each stream when the worker gets to them, and the frames decoded
but never analysed are counted as ``drops`` in the stream's stats. Stages never decide when
they run (STYLE.md rule 5).

Outputs, per analysed frame:

* ``polyp/<stream>`` (msgpack): see :func:`polyp_body` (probability, boxes, run-length-coded
  downscaled mask, source ``t0_ns`` and ``seq`` of the frame, processing time);
* ``video/<stream>/annotated``: the frame with the mask outline, the boxes and a probability
  bar drawn, re-encoded as low-latency H.264 (``zerolatency``, no B-frames, SPS/PPS before
  every keyframe, keyframe every ``keyint`` frames, so a viewer that joins late decodes from
  the next keyframe). H.264 rather than JPEG because wire v1 carries ``h264`` or ``raw``
  only, and an H.264 P-frame of an overlay is ~10x smaller than a JPEG.

The segmentation model is :class:`telediag.models.polyp_seg.PolypSegmenter` (``model =
"polyp_seg"``, the default). Other segmenters can be registered by name with
:func:`register_segmenter` (tests use that for a clearly named stand-in); a missing or
broken model raises :class:`~telediag.errors.ModelError` at ``open``, so the stream is
refused with that message instead of running without a model.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import numpy as np
from numpy.typing import NDArray

from telediag.engine.stage import Outputs, Stage, StageParams, StreamSpec, register
from telediag.errors import ConfigError, ModelError
from telediag.transports.video_codec import H264Encoder, PacketDecoder
from telediag.transports.wire import Chunk, VideoSpec

__all__ = [
    "PolypSegment",
    "Segmenter",
    "VideoDecode",
    "VideoEncode",
    "draw_overlay",
    "load_segmenter",
    "normalize_boxes",
    "polyp_body",
    "register_segmenter",
    "rle_decode",
    "rle_encode",
]


# ---------------------------------------------------------------------------- segmenters


class Segmenter(Protocol):
    """What the polyp stage needs from a model: ``predict(rgb) -> PolypResult``-like.

    The result has ``prob_map`` (float array), ``mask`` (bool/uint8 array; any size, scaled to
    the frame), ``polyp_probability`` (float in [0, 1]) and ``boxes`` (``(n, 4)`` or
    ``(n, 5)``: ``x0, y0, x1, y1[, score]`` in frame pixels). A segmenter that can run at
    several network input sizes says so with ``input_sizes`` (largest first) and accepts
    ``predict(rgb, input_size=s)``; :class:`PolypSegment` then lowers the size when behind.
    """

    def predict(self, rgb: NDArray[np.uint8]) -> Any: ...


_SEGMENTERS: dict[str, Callable[[], Segmenter]] = {}
#: Loaded ``polyp_seg`` models by (variant, threads), shared by the streams of this process (a
#: stream opens at once, with the ONNX Runtime session and kernels already loaded; ``predict`` is
#: stateless and a worker runs its streams one at a time).
_LOADED: dict[tuple[str, int], Any] = {}


def register_segmenter(name: str, factory: Callable[[], Segmenter]) -> None:
    """Make ``model = "<name>"`` in a ``polyp_seg`` section load ``factory()``.

    Examples
    --------
    >>> class Never:
    ...     def predict(self, rgb): raise NotImplementedError
    >>> register_segmenter("doc-never", Never)
    >>> type(load_segmenter("doc-never")).__name__
    'Never'
    """
    if name == "polyp_seg":
        raise ConfigError("the name 'polyp_seg' is reserved for telediag.models.polyp_seg")
    _SEGMENTERS[name] = factory


def load_segmenter(name: str = "polyp_seg", variant: str = "", threads: int = 1) -> Segmenter:
    """Load the segmenter called ``name``; raise :class:`ModelError` when it is unavailable.

    ``variant`` picks one of the shipped model's variants (``"fp32"``, ``"int8"``, ...; empty:
    the model card's default) and ``threads`` its ONNX Runtime intra-op threads (1 keeps the
    other core of a 2-core machine for biosignals); other segmenters take neither. The shipped
    model is loaded once per (variant, threads) in a process and shared; registered segmenters
    are built by their factory on every call.
    """
    if name == "polyp_seg":
        try:
            from telediag.models.polyp_seg import PolypSegmenter
        except ImportError as e:
            raise ModelError(
                f"the polyp segmentation model is not installed (cannot import "
                f"telediag.models.polyp_seg: {e}); train/ship models/polyp_seg or set "
                "[pipeline.video.polyp] model to a registered segmenter") from e
        key = (variant, threads)
        cached = _LOADED.get(key)
        if cached is not None:
            return cached
        try:
            seg = PolypSegmenter(threads=threads, variant=variant or None).load()
            _LOADED[key] = seg
            return seg  # type: ignore[no-any-return]
        except ModelError:
            raise
        except Exception as e:
            raise ModelError(f"cannot load telediag.models.polyp_seg.PolypSegmenter: {type(e).__name__}: {e}") from e
    if variant:
        raise ModelError(f"segmenter {name!r} has no variants (variant={variant!r})")
    factory = _SEGMENTERS.get(name)
    if factory is None:
        raise ModelError(f"unknown polyp segmenter {name!r}; known: {sorted(['polyp_seg', *_SEGMENTERS])}")
    try:
        return factory()
    except ModelError:
        raise
    except Exception as e:
        raise ModelError(f"cannot load segmenter {name!r}: {type(e).__name__}: {e}") from e


# ---------------------------------------------------------------------------- helpers


def rle_encode(mask: NDArray[Any]) -> list[int]:
    """Run lengths of a 2-D mask read row by row, starting with a run of zeros (maybe 0).

    Examples
    --------
    >>> rle_encode(np.array([[0, 1, 1], [1, 0, 0]], bool))
    [1, 3, 2]
    """
    flat = np.asarray(mask, dtype=bool).ravel()
    if flat.size == 0:
        return []
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate(([0], change, [flat.size]))
    runs = np.diff(bounds).tolist()
    return ([0] + runs) if flat[0] else runs


def rle_decode(counts: list[int], shape: tuple[int, int]) -> NDArray[np.bool_]:
    """Inverse of :func:`rle_encode`.

    Examples
    --------
    >>> rle_decode([1, 3, 2], (2, 3)).astype(int).tolist()
    [[0, 1, 1], [1, 0, 0]]
    """
    n = int(shape[0]) * int(shape[1])
    if sum(counts) != n:
        raise ValueError(f"run lengths sum to {sum(counts)}, shape {shape} needs {n}")
    vals = np.arange(len(counts)) % 2 == 1
    return np.repeat(vals, counts).reshape(shape)


def _resize_nearest(mask: NDArray[Any], height: int, width: int) -> NDArray[np.bool_]:
    m = np.asarray(mask)
    if m.ndim == 3:
        m = m[..., 0]
    m = m.astype(bool) if m.dtype != bool else m
    if m.shape == (height, width):
        return m
    ri = np.minimum((np.arange(height) + 0.5) * m.shape[0] / height, m.shape[0] - 1).astype(np.intp)
    ci = np.minimum((np.arange(width) + 0.5) * m.shape[1] / width, m.shape[1] - 1).astype(np.intp)
    return m[ri[:, None], ci[None, :]]


def normalize_boxes(boxes: Any, width: int, height: int) -> list[list[float]]:
    """Boxes as ``[[x0, y0, x1, y1, score], ...]`` (floats, clipped to the frame).

    Examples
    --------
    >>> normalize_boxes([(10, 20, 30, 40)], 64, 48)
    [[10.0, 20.0, 30.0, 40.0, 1.0]]
    """
    if boxes is None:
        return []
    arr = np.asarray(boxes, dtype=np.float64)
    if arr.size == 0:
        return []
    if arr.ndim == 1:
        arr = arr.reshape(1, -1)
    if arr.ndim != 2 or arr.shape[1] not in (4, 5):
        raise ModelError(f"segmenter boxes must be (n, 4) or (n, 5), got shape {arr.shape}")
    out = []
    for row in arr:
        x0, x1 = np.clip(sorted((row[0], row[2])), 0, width)
        y0, y1 = np.clip(sorted((row[1], row[3])), 0, height)
        score = float(row[4]) if arr.shape[1] == 5 else 1.0
        out.append([round(float(x0), 2), round(float(y0), 2), round(float(x1), 2), round(float(y1), 2),
                    round(score, 4)])
    return out


def polyp_body(result: Any, width: int, height: int, *, mask_max_side: int = 96) -> dict[str, Any]:
    """The msgpack body of a ``polyp`` record from a segmenter's result.

    Keys: ``polyp_probability`` (float), ``detected`` (bool: any mask pixel), ``boxes``
    (``[[x0, y0, x1, y1, score], ...]`` in frame pixels), ``mask`` (``{"rows", "cols", "rle"}``:
    the mask nearest-downscaled to at most ``mask_max_side`` per side, run lengths row by row
    starting with zeros, see :func:`rle_decode`), ``mask_fraction`` (mask area / frame area),
    ``width``, ``height``.
    """
    prob = float(getattr(result, "polyp_probability", 0.0))
    if not np.isfinite(prob):
        raise ModelError(f"segmenter returned polyp_probability {prob}")
    mask = np.asarray(result.mask)
    if mask.ndim == 3:
        mask = mask[..., 0]
    if mask.ndim != 2 or mask.size == 0:
        raise ModelError(f"segmenter mask must be 2-D, got shape {mask.shape}")
    scale = min(1.0, mask_max_side / max(height, width))
    rows, cols = max(1, round(height * scale)), max(1, round(width * scale))
    small = _resize_nearest(mask, rows, cols)
    return {
        "polyp_probability": round(prob, 5),
        "detected": bool(small.any()),
        "boxes": normalize_boxes(getattr(result, "boxes", None), width, height),
        "mask": {"rows": rows, "cols": cols, "rle": rle_encode(small)},
        "mask_fraction": round(float(np.count_nonzero(mask)) / mask.size, 6),
        "width": width,
        "height": height,
    }


_OUTLINE = np.array([0, 255, 64], np.uint8)
_BOX = np.array([255, 230, 0], np.uint8)


def draw_overlay(rgb: NDArray[np.uint8], mask: NDArray[Any], boxes: list[list[float]], prob: float,
                 threshold: float = 0.5) -> NDArray[np.uint8]:
    """A copy of ``rgb`` with the mask outline (green), boxes (yellow) and a probability bar.

    The bar along the top-left edge has the length of ``prob`` (a quarter of the width at 1.0),
    red when ``prob >= threshold``, green otherwise.

    Examples
    --------
    >>> img = np.zeros((48, 64, 3), np.uint8); m = np.zeros((48, 64), bool); m[10:20, 10:20] = True
    >>> out = draw_overlay(img, m, [[10, 10, 20, 20, 1.0]], 0.9)
    >>> out[10, 15].tolist() != [0, 0, 0], int(img.max())
    (True, 0)
    """
    out = np.array(rgb, dtype=np.uint8, copy=True)
    h, w = out.shape[:2]
    m = _resize_nearest(mask, h, w)
    rows = np.flatnonzero(m.any(axis=1))  # the mask's extent (cheaper than np.nonzero of every pixel)
    if rows.size:
        cols = np.flatnonzero(m[rows[0] : rows[-1] + 1].any(axis=0))
        y0, y1 = max(int(rows[0]) - 2, 0), min(int(rows[-1]) + 3, h)
        x0, x1 = max(int(cols[0]) - 2, 0), min(int(cols[-1]) + 3, w)
        sub = m[y0:y1, x0:x1]
        pad = np.pad(sub, 1)
        interior = pad[:-2, 1:-1] & pad[2:, 1:-1] & pad[1:-1, :-2] & pad[1:-1, 2:] & sub
        edge = sub & ~interior
        if max(h, w) >= 320:  # thicken to 2-3 px so it survives compression
            pe = np.pad(edge, 1)
            edge = pe[1:-1, 1:-1] | pe[:-2, 1:-1] | pe[2:, 1:-1] | pe[1:-1, :-2] | pe[1:-1, 2:]
        out[y0:y1, x0:x1][edge] = _OUTLINE
    t = 2 if max(h, w) >= 320 else 1
    for x0f, y0f, x1f, y1f, *_ in boxes:
        bx0, by0 = int(np.clip(x0f, 0, w - 1)), int(np.clip(y0f, 0, h - 1))
        bx1, by1 = int(np.clip(x1f, 0, w - 1)), int(np.clip(y1f, 0, h - 1))
        out[by0 : by0 + t, bx0 : bx1 + 1] = _BOX
        out[max(by1 - t + 1, 0) : by1 + 1, bx0 : bx1 + 1] = _BOX
        out[by0 : by1 + 1, bx0 : bx0 + t] = _BOX
        out[by0 : by1 + 1, max(bx1 - t + 1, 0) : bx1 + 1] = _BOX
    bar_h = max(2, h // 60)
    bar_w = int(round(np.clip(prob, 0.0, 1.0) * (w // 4)))
    out[2 : 2 + bar_h, 2 : 2 + w // 4] = 40
    if bar_w:
        out[2 : 2 + bar_h, 2 : 2 + bar_w] = (230, 40, 40) if prob >= threshold else (40, 200, 60)
    return out


def _raw_frame_chunk(stream: str, seq: int, t0_ns: int, rgb: NDArray[np.uint8], fps: float,
                     meta: dict[str, Any]) -> Chunk:
    h, w = rgb.shape[:2]
    return Chunk(kind="video", stream=stream, seq=seq, t0_ns=t0_ns, data=rgb,
                 video=VideoSpec("raw", w, h, "rgb24", fps, keyframe=True), meta=meta)


def _event(stream: str, t0_ns: int, body: dict[str, Any]) -> Chunk:
    return Chunk.record("event", stream, 0, t0_ns, body)


# ---------------------------------------------------------------------------- stages


@register
class VideoDecode(Stage):
    """Decode every video packet (H.264 or raw) to an RGB frame (``video_decode``).

    ``every_chunk = True``: the video worker feeds this stage every packet (decoders need
    them all); later stages see only the newest frame. For a packet that a newer one of the
    same stream already follows in the worker's queue, the worker calls :meth:`advance`
    (decode, no RGB conversion) instead of :meth:`process`. Waits for a keyframe at start
    (late join), after a sequence gap (:meth:`resync`, called by the worker) and after a
    corrupt packet; reopens the decoder when the codec or size changes mid-stream. Emits
    ``event/<stream>`` records ``video_format`` (first frame and every size change) and
    ``video_decode_error`` (first error after good pictures).
    """

    type_name: ClassVar[str] = "video_decode"
    kinds: ClassVar[frozenset[str]] = frozenset({"video"})
    every_chunk: ClassVar[bool] = True

    @dataclass(frozen=True, slots=True)
    class Params(StageParams):
        threads: int = 1  # decoder threads (slice threading only: no added delay)

        def __post_init__(self) -> None:
            if not 0 <= self.threads <= 16:
                raise ConfigError(f"video_decode threads must be in 0..16, got {self.threads}")

    params: Params

    def open(self, spec: StreamSpec) -> StreamSpec:
        self.spec = spec
        self._dec = PacketDecoder(threads=self.params.threads)
        self._format: tuple[int, int, str] | None = None
        self._errors_seen = 0
        self.last_decoded = 0
        return spec

    @property
    def decoder(self) -> PacketDecoder:
        return self._dec

    def resync(self) -> None:
        """Packets were lost upstream: wait for the next keyframe."""
        self._dec.resync()

    def process(self, chunk: Chunk) -> Outputs:
        return self._decode(chunk, convert=True)

    def advance(self, chunk: Chunk) -> Outputs:
        """Decode ``chunk`` without producing a frame (the worker knows a newer one is queued).

        Keeps the decoder in sync and reports events; skips the RGB conversion. Its
        ``signal`` is ``None``; ``last_decoded`` tells whether a picture was
        completed (and so dropped).
        """
        return self._decode(chunk, convert=False)

    def _decode(self, chunk: Chunk, *, convert: bool) -> Outputs:
        assert chunk.video is not None
        before = self._dec.decoded
        frames = self._dec.decode(chunk)
        self.last_decoded = self._dec.decoded - before
        records: list[Chunk] = []
        if self._dec.errors > self._errors_seen:
            if self._errors_seen == 0 or self._format is not None:
                records.append(_event(chunk.stream, chunk.t0_ns, {
                    "type": "video_decode_error", "stream": chunk.stream, "seq": chunk.seq,
                    "errors": self._dec.errors, "detail": self._dec.last_error[:300]}))
            self._errors_seen = self._dec.errors
            self._format = None  # report the format again when pictures come back
        if not frames:
            return Outputs(records=records)
        f = frames[-1]
        fmt = (f.frame.width, f.frame.height, chunk.video.codec)
        if fmt != self._format:
            records.append(_event(chunk.stream, f.t0_ns, {
                "type": "video_format", "stream": chunk.stream, "codec": fmt[2], "width": fmt[0],
                "height": fmt[1], "fps": chunk.video.fps, "seq": f.seq,
                "reopened": self._dec.reopened}))
            self._format = fmt
        if not convert:
            return Outputs(records=records)
        rgb = f.rgb()
        meta = dict(f.meta)
        meta["decoded_extra"] = len(frames) - 1
        return Outputs(signal=_raw_frame_chunk(chunk.stream, f.seq, f.t0_ns, rgb, chunk.video.fps, meta),
                       records=records)


#: Adaptation: frames dropped before the stage in >= DROP_EVENTS of the last DROP_WINDOW frames
#: count as "behind"; SETTLE_FRAMES frames pass between two steps down (unless far over budget).
DROP_WINDOW, DROP_EVENTS, SETTLE_FRAMES = 10, 3, 5


@register
class PolypSegment(Stage):
    """Polyp segmentation of a decoded frame (``polyp_seg``); publishes ``polyp/<stream>``.

    Runs the segmenter named by ``model`` on the RGB frame (the model owns its resizing and
    normalisation, identical to training), publishes :func:`polyp_body` plus ``t0_ns``,
    ``seq`` (source frame), ``proc_ms`` (this stage's time for the frame), ``model`` and the
    adaptation keys below; its signal output is the frame with the overlay drawn, on stream
    ``<stream>/annotated`` (``draw = true``), for :class:`VideoEncode`.

    **Graceful when behind** (``adapt = true``): the stage keeps, per input size, a moving
    average of the model's wall-clock time and of its own other work (overlay, body), and
    compares the expected time per *source* frame with ``budget`` x the frame interval
    (``1 / target_fps``; ``target_fps = 0``: the source's rate). Over budget, or when frames
    keep being dropped before reaching it (``seq`` gaps in 3 of the last 10 frames), it steps
    down a ladder of operating points, cheapest last::

        (largest input size, every frame), (smaller sizes..., every frame),
        (largest size, every 2nd frame), (smaller sizes..., every 2nd frame)

    (input sizes: the segmenter's ``input_sizes`` down to ``min_input_size``; a model with one
    size goes straight to every second frame). After ``recover_frames`` frames with
    headroom (the better point's expected time within 80 % of the budget) it steps back up.
    A ``target_fps`` below the source's rate analyses every ``round(source / target)``-th
    frame at least.

    A frame that is **not analysed** still gets a ``polyp`` record and an annotated frame:
    the last analysis (mask outline, boxes, probability bar) is drawn on the new frame, so
    the annotated stream never stutters, and the record says so. Keys added to every body:

    * ``analysed_at``: source ``t0_ns`` of the frame the model actually analysed for this
      record (equal to ``t0_ns`` when this frame was analysed), ``analysed_seq`` its ``seq``;
    * ``reused``: ``true`` when the result is the previous analysis re-used;
    * ``input_size``: the network input side of that analysis (e.g. 256, 224, 192; absent for
      a segmenter that does not report one);
    * ``analyse_every``: 1 or 2, the current operating point's frame step;
    * ``model_ms``: the model's wall-clock time for that analysis;
    * ``target_fps``: the analysed-frame rate aimed at.
    """

    type_name: ClassVar[str] = "polyp_seg"
    kinds: ClassVar[frozenset[str]] = frozenset({"video"})

    @dataclass(frozen=True, slots=True)
    class Params(StageParams):
        model: str = "polyp_seg"
        variant: str = ""  # polyp_seg variant ("fp32", "int8", ...); empty: the card's default
        threads: int = 1  # ONNX Runtime intra-op threads (1: the other core stays for biosignals)
        draw: bool = True
        suffix: str = "annotated"
        mask_max_side: int = 96
        bar_threshold: float = 0.5
        target_fps: float = 0.0  # analysed frames per second wanted; 0 = the source's rate
        adapt: bool = True  # lower the input size / analyse every 2nd frame when behind
        budget: float = 0.8  # fraction of the frame interval the stage may use per frame
        min_input_size: int = 192  # smallest network input the adaptation may choose
        recover_frames: int = 30  # frames with headroom before stepping back up

        def __post_init__(self) -> None:
            if not 8 <= self.mask_max_side <= 1024:
                raise ConfigError(f"polyp_seg mask_max_side must be in 8..1024, got {self.mask_max_side}")
            if re.fullmatch(r"[A-Za-z0-9._-]{1,32}", self.suffix) is None:
                raise ConfigError(f"polyp_seg suffix must be a plain name like 'annotated', got {self.suffix!r}")
            if not 0.0 <= self.bar_threshold <= 1.0:
                raise ConfigError(f"polyp_seg bar_threshold must be in [0, 1], got {self.bar_threshold}")
            if not (self.target_fps == 0.0 or 0.5 <= self.target_fps <= 240.0):
                raise ConfigError(f"polyp_seg target_fps must be 0 (source rate) or in 0.5..240, "
                                  f"got {self.target_fps}")
            if not 0.05 <= self.budget <= 1.0:
                raise ConfigError(f"polyp_seg budget must be in 0.05..1 of the frame interval, got {self.budget}")
            if not 32 <= self.min_input_size <= 1024:
                raise ConfigError(f"polyp_seg min_input_size must be in 32..1024, got {self.min_input_size}")
            if not 1 <= self.threads <= 16:
                raise ConfigError(f"polyp_seg threads must be in 1..16, got {self.threads}")
            if not 1 <= self.recover_frames <= 10_000:
                raise ConfigError(f"polyp_seg recover_frames must be in 1..10000, got {self.recover_frames}")

    params: Params

    def open(self, spec: StreamSpec) -> StreamSpec:
        self.spec = spec
        self._model = load_segmenter(self.params.model, self.params.variant, self.params.threads)
        self._out_stream = f"{spec.stream}/{self.params.suffix}"
        self.frames = 0
        self.analysed = 0
        self._clock: Callable[[], float] = time.perf_counter
        sizes = tuple(int(x) for x in getattr(self._model, "input_sizes", ()) or ())
        self._native = sizes[0] if sizes else int(getattr(self._model, "input_size", 0) or 0)
        usable = [x for x in sizes if x >= self.params.min_input_size] or list(sizes[:1])
        self._sized = len(sizes) > 1
        sz = usable if (self._sized and self.params.adapt) else [self._native]
        self.ladder: list[tuple[int, int]] = [(x, 1) for x in sz] + [(x, 2) for x in sz]
        if not self.params.adapt:
            self.ladder = self.ladder[:1]
        self.level = 0
        self._norm_ms: float | None = None  # model ms, normalised to the largest input size
        self._other_ms = 0.0
        self._since_change = 0
        self._drops: list[bool] = []  # per recent frame: were frames dropped before it?
        self._prev_seq: int | None = None
        self._late = 0  # frames given to reuse() (dropped before analysis) since the last process()
        self._last: dict[str, Any] | None = None  # the last analysis, for re-use
        return StreamSpec(stream=self._out_stream, kind="video", rate_hz=spec.rate_hz)

    # -- adaptation ----------------------------------------------------------------------
    def _expected_ms(self, level: int) -> float | None:
        """Expected stage time per source frame at ``level`` (None before any measurement).

        The model's time is tracked as one moving average normalised to the largest input
        size (a network's cost grows with the pixel count), so the estimate for every size
        follows the current load of the machine, not a stale measurement.
        """
        if self._norm_ms is None:
            return None
        size, every = self.ladder[level]
        scale = (size / self._native) ** 2 if self._native and size else 1.0
        return self._norm_ms * scale / every + self._other_ms

    def _adapt(self, interval_ms: float, dropped: int) -> None:
        """Step down when over budget or dropping repeatedly; back up after a calm stretch.

        A single ``seq`` gap (a scheduling hiccup, a lost packet) is not enough: frames dropped
        before the stage must show up in at least :data:`DROP_EVENTS` of the last
        :data:`DROP_WINDOW` frames. After each change the stage waits :data:`SETTLE_FRAMES`
        frames (so the moving averages reflect the new point) before stepping down again.
        """
        if not self.params.adapt or len(self.ladder) == 1:
            return
        self._drops.append(dropped > 0)
        del self._drops[:-DROP_WINDOW]
        self._since_change += 1
        budget = self.params.budget * interval_ms
        now = self._expected_ms(self.level)
        dropping = sum(self._drops) >= DROP_EVENTS
        over = now is not None and now > budget
        if (over or dropping) and self.level < len(self.ladder) - 1:
            if self._since_change >= SETTLE_FRAMES or (over and now is not None and now > 1.5 * budget):
                self.level += 1
                self._since_change = 0
                self._drops.clear()
            return
        if any(self._drops):
            return
        if self.level > 0 and self._since_change >= self.params.recover_frames:
            better = self._expected_ms(self.level - 1)
            if better is not None and better <= 0.8 * budget:
                self.level -= 1
                self._since_change = 0

    def process(self, chunk: Chunk) -> Outputs:
        if chunk.data is None or chunk.video is None or chunk.data.ndim != 3:
            raise ModelError("polyp_seg needs decoded RGB frames (put video_decode before it)")
        t = self._clock()
        rgb = np.asarray(chunk.data)
        h, w = rgb.shape[:2]
        src_fps = float(chunk.video.fps) if chunk.video.fps and chunk.video.fps > 0 else 30.0
        target = self.params.target_fps or src_fps
        min_every = max(1, int(round(src_fps / target)))
        dropped = 0 if self._prev_seq is None else max(0, int(chunk.seq) - self._prev_seq - 1)
        dropped += self._late
        self._late = 0
        self._prev_seq = int(chunk.seq)
        size, every = self.ladder[self.level]
        every = max(every, min_every)
        last = self._last
        analyse = (last is None or every == 1 or (last["h"], last["w"]) != (h, w)
                   or int(chunk.seq) - int(last["seq"]) >= every)
        model_t = 0.0
        if analyse:
            t_model = self._clock()
            model: Any = self._model
            result = model.predict(rgb, input_size=size) if self._sized else model.predict(rgb)
            model_t = (self._clock() - t_model) * 1e3
            used = int(getattr(result, "input_size", 0) or size or 0)
            body0 = polyp_body(result, w, h, mask_max_side=self.params.mask_max_side)
            last = self._last = {"body": body0, "mask": result.mask, "seq": int(chunk.seq),
                                 "t0_ns": int(chunk.t0_ns), "input_size": used, "h": h, "w": w,
                                 "model_ms": round(model_t, 3)}
            self.analysed += 1
            norm = model_t / ((used / self._native) ** 2 if self._native and used else 1.0)
            self._norm_ms = norm if self._norm_ms is None else 0.7 * self._norm_ms + 0.3 * norm
        assert last is not None
        out = self._publish(chunk, rgb, last, reused=not analyse, every=every, target=target)
        total = (self._clock() - t) * 1e3
        other = max(0.0, total - model_t)
        self._other_ms = other if self.frames == 0 else 0.8 * self._other_ms + 0.2 * other
        assert out.records
        out.records[0].body["proc_ms"] = round(total, 3)
        self.frames += 1
        self._adapt(1e3 / src_fps, dropped)
        return out

    def _publish(self, chunk: Chunk, rgb: NDArray[np.uint8], last: dict[str, Any], *, reused: bool,
                 every: int, target: float) -> Outputs:
        """The ``polyp`` record and the annotated frame of ``chunk`` from the analysis ``last``."""
        assert chunk.video is not None
        body = dict(last["body"])
        signal = None
        if self.params.draw:
            over = draw_overlay(rgb, last["mask"], body["boxes"], body["polyp_probability"],
                                self.params.bar_threshold)
            signal = _raw_frame_chunk(self._out_stream, chunk.seq, chunk.t0_ns, over, chunk.video.fps,
                                      {"source_seq": chunk.seq})
        body.update({"t0_ns": int(chunk.t0_ns), "seq": int(chunk.seq), "frame": self.frames,
                     "proc_ms": 0.0, "model": self.params.model,
                     "analysed_at": last["t0_ns"], "analysed_seq": last["seq"], "reused": reused,
                     "analyse_every": every, "model_ms": last["model_ms"], "target_fps": round(target, 3)})
        if last["input_size"]:  # a segmenter that does not say its input size: key omitted
            body["input_size"] = last["input_size"]
        return Outputs(signal=signal, records=[Chunk.record("polyp", chunk.stream, 0, chunk.t0_ns, body)])

    def reuse(self, chunk: Chunk) -> Outputs:
        """A frame the worker drops before analysis (a newer one is queued): the last analysis on it.

        Publishes a ``polyp`` record with ``reused: true`` and the annotated frame with the last
        overlay (mask outline, boxes, bar), exactly like a frame the adaptation skips, so the
        annotated stream keeps every frame that was decoded. The frame counts as dropped for the
        adaptation (it is behind). Before any analysis of this stream it outputs nothing.
        """
        if chunk.data is None or chunk.video is None or chunk.data.ndim != 3:
            raise ModelError("polyp_seg needs decoded RGB frames (put video_decode before it)")
        t = self._clock()
        self._late += 1
        last = self._last
        rgb = np.asarray(chunk.data)
        h, w = rgb.shape[:2]
        if self._prev_seq is not None:
            self._late += max(0, int(chunk.seq) - self._prev_seq - 1)
        self._prev_seq = int(chunk.seq)
        if last is None or (last["h"], last["w"]) != (h, w):
            return Outputs()
        src_fps = float(chunk.video.fps) if chunk.video.fps and chunk.video.fps > 0 else 30.0
        target = self.params.target_fps or src_fps
        every = max(self.ladder[self.level][1], max(1, int(round(src_fps / target))))
        out = self._publish(chunk, rgb, last, reused=True, every=every, target=target)
        out.records[0].body["proc_ms"] = round((self._clock() - t) * 1e3, 3)
        self.frames += 1
        return out


@register
class VideoEncode(Stage):
    """Re-encode RGB frames as low-latency H.264 packets (``video_encode``).

    libx264 ``preset`` (``ultrafast``), ``tune=zerolatency``, no B-frames, a keyframe every
    ``keyint`` frames with SPS/PPS in-band (late viewers decode from the next keyframe),
    ``threads`` encoder threads (1: video never takes more than its core). A frame of a new
    size reopens the encoder (its first packet is a keyframe). Output: ``video`` chunks on the
    input's stream (e.g. ``<stream>/annotated``); set ``publish = true`` to publish them.
    """

    type_name: ClassVar[str] = "video_encode"
    kinds: ClassVar[frozenset[str]] = frozenset({"video"})

    @dataclass(frozen=True, slots=True)
    class Params(StageParams):
        keyint: int = 15
        crf: int = 28
        preset: str = "ultrafast"
        threads: int = 1

        def __post_init__(self) -> None:
            if not 1 <= self.keyint <= 600:
                raise ConfigError(f"video_encode keyint must be in 1..600 frames, got {self.keyint}")
            if not 0 <= self.crf <= 51:
                raise ConfigError(f"video_encode crf must be in 0..51, got {self.crf}")
            presets = {"ultrafast", "superfast", "veryfast", "faster", "fast", "medium"}
            if self.preset not in presets:
                raise ConfigError(f"video_encode preset must be one of {sorted(presets)}, got {self.preset!r}")
            if not 0 <= self.threads <= 16:
                raise ConfigError(f"video_encode threads must be in 0..16, got {self.threads}")

    params: Params

    def open(self, spec: StreamSpec) -> StreamSpec:
        self.spec = spec
        self._enc: H264Encoder | None = None
        return spec

    def process(self, chunk: Chunk) -> Outputs:
        if chunk.data is None or chunk.video is None or chunk.data.ndim != 3:
            raise ModelError("video_encode needs RGB frames")
        rgb = np.asarray(chunk.data)
        h, w = rgb.shape[:2]
        h2, w2 = h & ~1, w & ~1
        if h2 != h or w2 != w:
            rgb = rgb[:h2, :w2]
        p = self.params
        if self._enc is None or (self._enc.width, self._enc.height) != (w2, h2):
            self._enc = H264Encoder(w2, h2, chunk.video.fps, keyint=p.keyint, preset=p.preset, crf=p.crf,
                                    threads=p.threads)
        packets = self._enc.encode(rgb)
        if not packets:
            return Outputs()
        pk = packets[-1]
        spec = VideoSpec("h264", w2, h2, "yuv420p", chunk.video.fps, keyframe=pk.keyframe)
        return Outputs(signal=Chunk.video_packet(chunk.stream, chunk.seq, chunk.t0_ns, pk.data, spec,
                                                 meta=dict(chunk.meta)))
