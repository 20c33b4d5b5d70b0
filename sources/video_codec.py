"""Compatibility alias: the H.264 codec moved to :mod:`telediag.transports.video_codec`.

It is shared by sources and the engine, so it lives in the transports layer (the engine may not
import sources; see ``tests/test_layering.py``).
"""

from telediag.transports.video_codec import (  # noqa: F401
    RAW_PIX_FMTS,
    DecodedFrame,
    EncodedPacket,
    H264Encoder,
    PacketDecoder,
    x264_params,
)

__all__ = ["DecodedFrame", "EncodedPacket", "H264Encoder", "PacketDecoder", "x264_params"]
