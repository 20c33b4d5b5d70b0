"""Low-latency H.264 encoder and the wire-chunk decoder (late join, corruption, size change)."""

from __future__ import annotations

import numpy as np
import pytest

from telediag.errors import DataError
from telediag.sources.synth_endoscopy import EndoscopySynth
from telediag.sources.video_codec import H264Encoder, PacketDecoder
from telediag.transports.wire import Chunk, VideoSpec, decode, encode

FPS = 30.0


def packets(n: int, w: int = 160, h: int = 120, keyint: int = 10, seed: int = 0) -> list[Chunk]:
    synth = EndoscopySynth(w, h, FPS, seed=seed)
    enc = H264Encoder(w, h, FPS, keyint=keyint, threads=1)
    out = []
    for i in range(n):
        (pk,) = enc.encode(synth.frame(i)[0])  # zerolatency: exactly one packet per frame
        spec = VideoSpec("h264", w, h, "yuv420p", FPS, keyframe=pk.keyframe)
        out.append(Chunk.video_packet("t/endo", i, i * 33_333_333, pk.data, spec))
    return out


def nal_types(data: bytes) -> list[int]:
    """NAL unit types of an Annex-B access unit."""
    b = np.frombuffer(data, np.uint8)
    starts = [i + 3 for i in range(len(b) - 3) if b[i] == 0 and b[i + 1] == 0 and b[i + 2] == 1]
    return [int(b[s]) & 0x1F for s in starts if s < len(b)]


def test_keyframes_every_keyint_with_sps_pps_in_band() -> None:
    ps = packets(31, keyint=10)
    keys = [c.seq for c in ps if c.video is not None and c.video.keyframe]
    assert keys == [0, 10, 20, 30]
    for c in ps:
        assert c.packet is not None and bytes(c.packet[:4]) in (b"\x00\x00\x00\x01", b"\x00\x00\x01\x09")
        types = nal_types(bytes(c.packet))
        if c.video is not None and c.video.keyframe:
            assert 7 in types and 8 in types and 5 in types  # SPS, PPS, IDR slice
        else:
            assert 7 not in types and 5 not in types


def test_every_packet_decodes_in_order_without_delay() -> None:
    dec = PacketDecoder()
    for c in packets(20):
        frames = dec.decode(decode(encode(c)))  # through the wire codec
        assert [f.seq for f in frames] == [c.seq]  # no B-frames, no frame threading: no delay
        assert frames[0].t0_ns == c.t0_ns
    assert dec.errors == 0 and dec.skipped == 0


def test_late_joiner_decodes_from_the_next_keyframe() -> None:
    ps = packets(30, keyint=10)
    dec = PacketDecoder()
    first = None
    for c in ps[13:]:
        frames = dec.decode(c)
        if frames and first is None:
            first = frames[0].seq
    assert first == 20  # within one keyframe interval of joining
    assert dec.skipped == 7 and dec.errors == 0


def test_corrupt_packets_are_counted_and_decoding_recovers_at_a_keyframe() -> None:
    ps = packets(30, keyint=10)
    rng = np.random.default_rng(0)
    dec = PacketDecoder()
    got = []
    for c in ps:
        if c.seq in (4, 12):
            junk = b"\x00\x00\x00\x01" + rng.integers(0, 256, 300, dtype=np.uint8).tobytes()
            c = Chunk.video_packet(c.stream, c.seq, c.t0_ns, junk, c.video)  # type: ignore[arg-type]
        got += [f.seq for f in dec.decode(c)]
    assert dec.errors >= 1
    assert got[-10:] == list(range(20, 30))  # clean again from the keyframe after the damage
    assert all(s not in got for s in (4, 12))


def test_resolution_change_mid_stream_reopens_the_decoder() -> None:
    a = packets(12, 160, 120, keyint=6)
    b = [Chunk.video_packet(c.stream, c.seq + 12, c.t0_ns, c.packet, c.video)  # type: ignore[arg-type]
         for c in packets(12, 96, 64, keyint=6, seed=1)]
    dec = PacketDecoder()
    sizes = [f.rgb().shape[:2] for c in a + b for f in dec.decode(c)]
    assert sizes == [(120, 160)] * 12 + [(64, 96)] * 12
    assert dec.reopened == 1 and dec.errors == 0


def test_raw_frames_and_bad_raw_sizes() -> None:
    img = np.arange(48 * 64 * 3, dtype=np.uint8).reshape(48, 64, 3)
    c = Chunk(kind="video", stream="s", seq=0, t0_ns=0, data=img,
              video=VideoSpec("raw", 64, 48, "rgb24", 25.0, keyframe=True))
    dec = PacketDecoder()
    (f,) = dec.decode(decode(encode(c)))
    np.testing.assert_array_equal(f.rgb(), img)
    bad = Chunk.video_packet("s", 1, 0, b"\x00" * 100, VideoSpec("raw", 64, 48, "rgb24", 25.0, keyframe=True))
    assert dec.decode(bad) == [] and dec.errors == 1 and "needs 9216" in dec.last_error


def test_encoder_forces_keyframes_and_rejects_bad_input() -> None:
    enc = H264Encoder(64, 48, 30.0, keyint=100)
    img = np.zeros((48, 64, 3), np.uint8)
    flags = [enc.encode(img, keyframe=(i == 5))[0].keyframe for i in range(8)]
    assert flags == [True, False, False, False, False, True, False, False]
    with pytest.raises(DataError, match="keyint"):
        H264Encoder(64, 48, 30.0, keyint=0)
    with pytest.raises(DataError, match="uint8 RGB"):
        enc.encode(np.zeros((48, 64), np.float32))
