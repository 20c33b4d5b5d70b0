"""telediag — real-time signal-processing and telediagnosis engine.

The package is one namespace assembled from the repository's top-level folders:
``telediag.dsp`` (Numba kernels), ``telediag.transports`` (wire protocol, sockets),
``telediag.engine`` (stages, pipelines, the engine process), ``telediag.models``
(ONNX models and their cards), ``telediag.sources`` (edge agents) and
``telediag.client`` (subscribers).
"""

from telediag.errors import (
    ConfigError,
    DataError,
    DSPError,
    EngineError,
    ModelError,
    ProtocolError,
    TelediagError,
)

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "DSPError",
    "DataError",
    "EngineError",
    "ModelError",
    "ProtocolError",
    "TelediagError",
    "__version__",
]
