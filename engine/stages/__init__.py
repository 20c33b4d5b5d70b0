"""Built-in stages; importing this package registers them."""

from telediag.engine.stages.ecg import EcgFilter
from telediag.engine.stages.ecg_analysis import EcgAnalysis  # noqa: F401

__all__ = ["EcgFilter"]
from telediag.engine.stages.pcg import PcgSegment  # noqa: F401
from telediag.engine.stages.video import PolypSegment, VideoDecode, VideoEncode  # noqa: F401
