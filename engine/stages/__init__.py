"""Built-in stages; importing this package registers them."""

from telediag.engine.stages.ecg import EcgFilter

__all__ = ["EcgFilter"]
