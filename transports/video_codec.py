"""Low-latency H.264 encoding and wire-chunk decoding with PyAV (FFmpeg).

Shared by the video source agent (:mod:`telediag.sources.video`), the engine's video stages
(:mod:`telediag.engine.stages.video`), tests and viewers, so every part of the chain speaks
exactly the same H.264 dialect:

* **libx264** with ``tune=zerolatency`` and ``preset=ultrafast`` (no look-ahead, no frame
  threading delay): one frame in gives one packet out, immediately;
* **no B-frames** (``bframes=0``): decode order equals presentation order, so a packet can be
  shown as soon as it arrives;
* a **fixed keyframe interval** ``keyint`` (``scenecut=0`` so x264 adds none of its own);
* **Annex-B** packets (start codes) with the SPS/PPS parameter sets **repeated in-band before
  every keyframe** (x264 ``repeat-headers=1``; no ``extradata``), so a consumer that joins late
  needs nothing out of band: it skips packets until the next ``keyframe`` and decodes from there.

:class:`PacketDecoder` is the receiving half: it decodes ``video`` chunks (H.264 packets or
raw frames), waits for a keyframe at start and after a loss or a corrupt packet, and reopens
itself when a stream changes codec or resolution mid-stream.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import av
import numpy as np
from av.video.frame import PictureType, VideoFrame

from telediag.errors import DataError
from telediag.transports.wire import Chunk

__all__ = ["DecodedFrame", "EncodedPacket", "H264Encoder", "PacketDecoder", "x264_params"]

#: FFmpeg pixel formats accepted in raw video chunks (``codec = "raw"``).
RAW_PIX_FMTS = frozenset({"rgb24", "bgr24", "gray", "yuv420p"})


def x264_params(keyint: int) -> str:
    """The x264 option string for low-latency, late-joiner-friendly streams.

    Examples
    --------
    >>> x264_params(30)
    'keyint=30:min-keyint=30:scenecut=0:bframes=0:repeat-headers=1:annexb=1'
    """
    return f"keyint={keyint}:min-keyint={keyint}:scenecut=0:bframes=0:repeat-headers=1:annexb=1"


@dataclass(frozen=True, slots=True)
class EncodedPacket:
    """One H.264 access unit in Annex-B format."""

    data: bytes
    keyframe: bool


class H264Encoder:
    """Low-latency libx264 encoder producing Annex-B access units, SPS/PPS on every keyframe.

    Parameters
    ----------
    width, height : int
        Encoded size in pixels (even numbers; odd sizes are rounded down for 4:2:0).
    fps : float
        Nominal frame rate (rate control and the stream's ``VideoSpec.fps``).
    keyint : int
        Keyframe interval in frames (1..600): a late joiner waits at most this many frames.
    preset : str
        x264 preset (``ultrafast`` by default: the cheapest on CPU).
    crf : int
        Constant rate factor (0..51; lower is better quality and more bits).
    threads : int
        Encoder threads (0: FFmpeg's choice). The engine uses 1 so video never competes
        with biosignal work for more than one core.

    Examples
    --------
    >>> enc = H264Encoder(64, 48, 30.0, keyint=10)
    >>> pkts = enc.encode(np.zeros((48, 64, 3), np.uint8))
    >>> len(pkts), pkts[0].keyframe, pkts[0].data[:4]
    (1, True, b'\\x00\\x00\\x00\\x01')
    """

    def __init__(
        self,
        width: int,
        height: int,
        fps: float,
        *,
        keyint: int = 30,
        preset: str = "ultrafast",
        crf: int = 23,
        threads: int = 0,
    ) -> None:
        if not 1 <= keyint <= 600:
            raise DataError(f"keyint must be in 1..600 frames, got {keyint}")
        if not (np.isfinite(fps) and 0 < fps <= 1000):
            raise DataError(f"fps must be in (0, 1000], got {fps}")
        if not 0 <= crf <= 51:
            raise DataError(f"crf must be in 0..51, got {crf}")
        w, h = int(width) & ~1, int(height) & ~1
        if w < 2 or h < 2:
            raise DataError(f"frame size must be at least 2x2, got {width}x{height}")
        self.width, self.height, self.fps, self.keyint = w, h, float(fps), int(keyint)
        cc: Any = av.CodecContext.create("libx264", "w")
        cc.width, cc.height = w, h
        cc.pix_fmt = "yuv420p"
        rate = Fraction(fps).limit_denominator(1001)
        cc.framerate = rate
        cc.time_base = 1 / rate
        cc.gop_size = self.keyint
        cc.max_b_frames = 0
        cc.thread_count = threads
        cc.options = {
            "preset": preset,
            "tune": "zerolatency",
            "crf": str(crf),
            "x264-params": x264_params(self.keyint),
        }
        try:
            cc.open()
        except av.error.FFmpegError as e:
            raise DataError(f"cannot open libx264 ({w}x{h} @ {fps} fps, preset {preset!r}): {e}") from e
        self._cc = cc
        self._pts = 0
        self.frames = 0

    def encode(self, image: np.ndarray | VideoFrame, *, keyframe: bool = False) -> list[EncodedPacket]:
        """Encode one frame (RGB ``(h, w, 3)`` uint8 or a PyAV frame); rescaled if its size differs.

        ``keyframe=True`` forces an IDR frame now (e.g. after the sender dropped a packet).
        """
        if isinstance(image, VideoFrame):
            frame = image
        else:
            arr = np.ascontiguousarray(image)
            if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
                raise DataError(f"image must be (h, w, 3) uint8 RGB, got {arr.shape} {arr.dtype}")
            frame = VideoFrame.from_ndarray(arr, format="rgb24")
        if frame.width != self.width or frame.height != self.height or frame.format.name != "yuv420p":
            frame = frame.reformat(width=self.width, height=self.height, format="yuv420p")
        frame.pts = self._pts
        frame.time_base = self._cc.time_base
        frame.pict_type = PictureType.I if keyframe else PictureType.NONE
        self._pts += 1
        self.frames += 1
        return [EncodedPacket(bytes(p), bool(p.is_keyframe)) for p in self._cc.encode(frame)]

    def flush(self) -> list[EncodedPacket]:
        """Drain the encoder (nothing is pending with ``zerolatency``; kept for symmetry)."""
        try:
            return [EncodedPacket(bytes(p), bool(p.is_keyframe)) for p in self._cc.encode(None)]
        except av.error.EOFError:
            return []


@dataclass(frozen=True, slots=True)
class DecodedFrame:
    """A decoded picture with the wire timing of the packet it came from."""

    frame: VideoFrame
    seq: int
    t0_ns: int
    meta: dict[str, Any]

    def rgb(self) -> np.ndarray:
        """The picture as ``(h, w, 3)`` uint8 RGB."""
        return np.asarray(self.frame.to_ndarray(format="rgb24"))


class PacketDecoder:
    """Decode ``video`` wire chunks into frames, robust to late joins, losses and corruption.

    * Until the first keyframe (and after :meth:`resync`, a decode error, or a codec/size
      change) non-keyframe packets are skipped and counted in ``skipped``.
    * A packet that FFmpeg rejects counts in ``errors``; the decoder then waits for the next
      keyframe rather than showing smeared pictures.
    * A change of codec or size in the chunk's ``VideoSpec`` reopens the decoder
      (``reopened`` counts it).

    Parameters
    ----------
    threads : int
        Decoder threads (1 keeps decoding on one core with no frame delay).

    Examples
    --------
    >>> from telediag.transports.wire import VideoSpec
    >>> enc = H264Encoder(64, 48, 25.0, keyint=5)
    >>> spec = VideoSpec("h264", 64, 48, "yuv420p", 25.0, keyframe=True)
    >>> dec = PacketDecoder()
    >>> p = enc.encode(np.zeros((48, 64, 3), np.uint8))[0]
    >>> [f.rgb().shape for f in dec.decode(Chunk.video_packet("s", 0, 0, p.data, spec))]
    [(48, 64, 3)]
    """

    def __init__(self, *, threads: int = 1) -> None:
        self.threads = threads
        self._cc: Any = None
        self._key: tuple[str, int, int, str] | None = None
        self._waiting_key = True
        self._pending: OrderedDict[int, tuple[int, int, dict[str, Any]]] = OrderedDict()
        self._pts = 0
        self.errors = 0
        self.skipped = 0
        self.reopened = 0
        self.decoded = 0
        self.last_error = ""

    @property
    def waiting_for_keyframe(self) -> bool:
        return self._waiting_key

    def resync(self) -> None:
        """Forget decoder state and wait for the next keyframe (call after lost packets)."""
        self._waiting_key = True
        self._pending.clear()
        if self._cc is not None and self._key is not None and self._key[0] == "h264":
            self._open_h264()

    def _open_h264(self) -> None:
        cc: Any = av.CodecContext.create("h264", "r")
        cc.thread_count = self.threads
        cc.thread_type = "SLICE"  # frame threading would delay output by a frame per thread
        cc.options = {"flags": "low_delay"}
        self._cc = cc

    def decode(self, chunk: Chunk) -> list[DecodedFrame]:
        """Frames completed by this chunk (zero or one for the streams telediag sends)."""
        v = chunk.video
        if chunk.kind != "video" or v is None:
            raise DataError(f"expected a video chunk, got kind {chunk.kind!r}")
        key = (v.codec, v.width, v.height, v.pix_fmt)
        if key != self._key:
            if self._key is not None:
                self.reopened += 1
            self._key = key
            self._cc = None
            self._waiting_key = True
            self._pending.clear()
            if v.codec == "h264":
                self._open_h264()
        meta = dict(chunk.meta)
        if v.codec == "raw":
            self._waiting_key = False
            frame = self._raw_frame(chunk)
            if frame is None:
                return []
            self.decoded += 1
            return [DecodedFrame(frame, chunk.seq, chunk.t0_ns, meta)]
        if self._waiting_key and not v.keyframe:
            self.skipped += 1
            return []
        assert chunk.packet is not None
        pkt = av.Packet(bytes(chunk.packet))
        pkt.pts = pkt.dts = self._pts
        self._pending[self._pts] = (chunk.seq, chunk.t0_ns, meta)
        while len(self._pending) > 64:
            self._pending.popitem(last=False)
        self._pts += 1
        try:
            frames = self._cc.decode(pkt)
        except av.error.FFmpegError as e:
            self.errors += 1
            self.last_error = f"{type(e).__name__}: {e}"
            self.resync()
            return []
        self._waiting_key = False
        out = []
        for f in frames:
            seq, t0, m = self._pending.pop(f.pts, (chunk.seq, chunk.t0_ns, meta)) if f.pts is not None else (
                chunk.seq, chunk.t0_ns, meta)
            self.decoded += 1
            out.append(DecodedFrame(f, seq, t0, m))
        return out

    def _raw_frame(self, chunk: Chunk) -> VideoFrame | None:
        v = chunk.video
        assert v is not None
        if v.pix_fmt not in RAW_PIX_FMTS:
            self.errors += 1
            self.last_error = f"raw pix_fmt {v.pix_fmt!r} not supported; expected one of {sorted(RAW_PIX_FMTS)}"
            return None
        if chunk.data is not None:
            arr = np.asarray(chunk.data)
        else:
            assert chunk.packet is not None
            arr = np.frombuffer(chunk.packet, dtype=np.uint8)
        comps = {"rgb24": 3, "bgr24": 3, "gray": 1}.get(v.pix_fmt)
        try:
            if comps is None:  # yuv420p: Y plane then U and V at half resolution
                if v.width % 2 or v.height % 2 or arr.size != v.width * v.height * 3 // 2:
                    raise ValueError(f"yuv420p {v.width}x{v.height} needs {v.width * v.height * 3 // 2} bytes")
                img = arr.reshape(v.height * 3 // 2, v.width)
            else:
                if arr.dtype != np.uint8 or arr.size != v.width * v.height * comps:
                    raise ValueError(f"{v.pix_fmt} {v.width}x{v.height} needs {v.width * v.height * comps} "
                                     f"uint8 values, got {arr.size} {arr.dtype}")
                img = arr.reshape((v.height, v.width) if comps == 1 else (v.height, v.width, comps))
            return VideoFrame.from_ndarray(np.ascontiguousarray(img), format=v.pix_fmt)
        except ValueError as e:
            self.errors += 1
            self.last_error = f"bad raw frame: {e}"
            return None
