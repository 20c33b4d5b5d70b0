"""The operations of the inference API, independent of the transport.

Each :class:`OpSpec` declares its parameters (:class:`telediag.api.schema.Param`), its input
(``signal``/``audio`` arrays, an ``image``, named ``inputs`` arrays or nothing), whether its
module is importable (:attr:`OpSpec.requires`), and the function that runs it.  The ZeroMQ
server and the HTTP gateway both parse their own framing into :class:`Inputs` and call
:meth:`OpSpec.run`; results are the same dicts on both, binary outputs (mask PNG, raw arrays)
travel as payload frames (ZeroMQ) or base64 (HTTP).

The analyses are not re-implemented here: ``ecg.analyze`` calls
:func:`telediag.evaluation.ecg_analyze.analyze_recording` (what ``telediag analyze ecg``
runs), ``pcg.analyze`` calls :func:`telediag.dsp.pcg.analyze_signal` and formats it as
:func:`telediag.evaluation.pcg_analyze.analyze_pcg` does, ``image.segment`` calls
``telediag.models.polyp_seg``.

Examples
--------
>>> ops = default_ops()
>>> "health" in ops and ops["health"].inline
True
"""

from __future__ import annotations

import importlib
import io
import math
import struct
import threading
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from telediag.api.schema import ApiError, Param, short
from telediag.errors import TelediagError

if TYPE_CHECKING:
    from telediag.api.registry import ModelRegistry

__all__ = ["Context", "Inputs", "OpSpec", "OpOutput", "decode_image", "default_ops", "encode_png"]

ECG_FS_RANGE = (125.0, 2000.0)
PCG_FS_RANGE = (800, 384_000)
MAX_ECG_CHANNELS = 16


@dataclass(slots=True)
class Inputs:
    """Decoded request inputs: ``arrays`` by name, and an encoded or raw ``image``."""

    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    image: bytes | memoryview | np.ndarray | None = None
    image_format: str | None = None


@dataclass(slots=True)
class OpOutput:
    """A result dict and binary outputs ``name -> (bytes, descriptor)``."""

    result: dict[str, Any]
    binary: dict[str, tuple[bytes | memoryview, dict[str, Any]]] = field(default_factory=dict)


@dataclass(slots=True)
class Context:
    """What an operation may use besides its inputs."""

    registry: ModelRegistry
    engine_config: Any = None
    health: Callable[[], dict[str, Any]] | None = None
    max_image_pixels: int = 4096 * 4096


Runner = Callable[[Context, dict[str, Any], Inputs], OpOutput]


@dataclass(frozen=True, slots=True)
class OpSpec:
    """One operation.

    Attributes
    ----------
    name : str
        ``ecg.analyze``, ``pcg.analyze``, ``image.segment``, ``model.infer``, ``models.list``,
        ``health``.
    input : str or None
        ``"signal"``, ``"audio"``, ``"image"``, ``"inputs"`` (named arrays) or None.
    requires : callable
        Returns None when the op can run here, else why not (a missing module).
    inline : bool
        Cheap and never blocking: answered on the I/O thread, not queued on the worker pool.
    """

    name: str
    summary: str
    params: tuple[Param, ...]
    input: str | None
    run: Runner
    requires: Callable[[], str | None] = lambda: None
    inline: bool = False
    result_schema: dict[str, Any] = field(default_factory=lambda: {"type": "object"})
    binary_outputs: tuple[str, ...] = ()


def _module_available(module: str, attr: str | None = None) -> Callable[[], str | None]:
    def check() -> str | None:
        try:
            m = importlib.import_module(module)
        except Exception as e:  # noqa: BLE001 - any import failure makes the op unavailable
            return f"{module} is not importable ({type(e).__name__}: {short(str(e), 120)})"
        if attr is not None and not hasattr(m, attr):
            return f"{module} has no {attr}"
        return None

    return check


def _as_float_signal(a: np.ndarray, where: str, *, allow_nan: bool) -> np.ndarray:
    x = np.ascontiguousarray(a, dtype=np.float64)
    if allow_nan:
        bad = np.isinf(x)
        if bad.any():
            raise ApiError("bad_request", f"{where} must not contain infinities (NaN marks a missing "
                                          f"sample), got {int(bad.sum())} inf values")
    else:
        bad = ~np.isfinite(x)
        if bad.any():
            raise ApiError("bad_request", f"{where} must contain only finite samples, got {int(bad.sum())} NaN/inf")
    return x


# --------------------------------------------------------------------------- ecg.analyze

ECG_PARAMS = (
    Param("fs", "number", required=True, minimum=ECG_FS_RANGE[0], maximum=ECG_FS_RANGE[1],
          doc="sample rate of the signal in Hz", example=360.0),
    Param("channels", "strings", max_len=MAX_ECG_CHANNELS,
          doc="lead names, one per column (default ch0, ch1, ...)", example=["MLII", "V1"]),
    Param("units", "strings", max_len=MAX_ECG_CHANNELS, doc="units per column (default mV)"),
    Param("lead", "index_or_name", doc="detection lead: column index or channel name "
                                       "(default: the engine config's lead)"),
    Param("name", "string", default="request", max_len=128, doc="record name echoed in the result"),
    Param("source", "string", max_len=1024, doc="input path/description echoed in the result"),
    Param("chunk_s", "number", default=1.0, minimum=0.01, maximum=60.0,
          doc="chunk length fed to the engine stages; does not change beats/HR/HRV"),
    Param("classify", "boolean", default=True,
          doc="label every beat with the beat classifier (AAMI N/S/V/F/Q); false: labels are null"),
)


def _run_ecg(ctx: Context, p: dict[str, Any], inp: Inputs) -> OpOutput:
    from telediag.evaluation.ecg_analyze import analyze_recording
    from telediag.sources.readers import Recording

    sig = inp.arrays["signal"]
    if sig.ndim == 1:
        sig = sig[:, None]
    if sig.ndim != 2:
        raise ApiError("bad_request", f"signal must have shape (n_samples,) or (n_samples, n_channels), "
                                      f"got {list(sig.shape)}")
    n, c = sig.shape
    if not 1 <= c <= MAX_ECG_CHANNELS:
        raise ApiError("bad_request", f"signal must have 1 to {MAX_ECG_CHANNELS} channels, got {c} "
                                      f"(shape {list(sig.shape)})")
    fs = float(p["fs"])
    if n < int(math.ceil(fs)):
        raise ApiError("invalid_input", f"signal must hold at least 1 s ({int(math.ceil(fs))} samples at "
                                        f"{fs:g} Hz), got {n} samples")
    channels = p["channels"] or tuple(f"ch{i}" for i in range(c))
    units = p["units"] or ("mV",) * c
    for key, val in (("channels", channels), ("units", units)):
        if len(val) != c:
            raise ApiError("bad_request", f"params.{key} must have one entry per signal column ({c}), "
                                          f"got {len(val)}: {list(val)}")
    lead = p["lead"]
    if isinstance(lead, str):
        if lead not in channels:
            raise ApiError("bad_request", f"params.lead {lead!r} is not a channel; channels are {list(channels)}")
        lead = list(channels).index(lead)
    elif isinstance(lead, int) and not 0 <= lead < c:
        raise ApiError("bad_request", f"params.lead must be a column index in [0, {c - 1}], got {lead}")
    x = _as_float_signal(sig, "signal", allow_nan=True)
    rec = Recording(x, fs, tuple(channels), tuple(units), p["name"])
    from telediag.evaluation.ecg_analyze import with_classify

    try:
        res = analyze_recording(rec, config=with_classify(ctx.engine_config, "on" if p["classify"] else "off"),
                                lead=lead, chunk_s=p["chunk_s"], source=p["source"])
    except TelediagError as e:
        raise ApiError("invalid_input", str(e)) from e
    return OpOutput(res)


# --------------------------------------------------------------------------- pcg.analyze

PCG_PARAMS = (
    Param("fs", "integer", required=True, minimum=PCG_FS_RANGE[0], maximum=PCG_FS_RANGE[1],
          doc="sample rate of the audio in Hz (whole number)", example=2000),
    Param("classify", "boolean", default=True,
          doc="run the abnormality classifier (abnormal_prob and label are null without it)"),
    Param("source", "string", max_len=1024, doc="input path/description echoed in the result"),
)


def _num(v: float) -> float | None:
    return float(v) if math.isfinite(v) else None


def analyze_pcg_array(audio: np.ndarray, fs: int, *, classify: bool = True,
                      source: str | None = None) -> dict[str, Any]:
    """Heart-sound analysis of samples: the document of ``telediag analyze pcg``.

    Uses ``telediag.evaluation.pcg_cli.analyze_array`` when it exists (one implementation);
    until then it builds the same document as
    :func:`telediag.evaluation.pcg_cli.analyze_file` from
    :func:`telediag.dsp.pcg.analyze_signal` (what
    :func:`~telediag.evaluation.pcg_analyze.analyze_pcg` runs) and the engine's abnormality
    classifier (:func:`telediag.engine.stages.pcg.load_abnormality_model`).

    Examples
    --------
    >>> analyze_pcg_array(np.zeros(4000), 2000, classify=False)["segments"]
    []
    """
    try:
        shared = getattr(importlib.import_module("telediag.evaluation.pcg_cli"), "analyze_array", None)
    except ImportError:
        shared = None
    if shared is not None:
        return dict(shared(audio, fs, classify=classify, source=source))
    from telediag.dsp.pcg import analyze_signal
    from telediag.engine.stages.pcg import verdict_text

    a = analyze_signal(audio, fs)
    prob: float | None = None
    label: str | None = None
    error: str | None = None
    if classify:
        from telediag.engine.stages.pcg import load_abnormality_model

        model = load_abnormality_model()
        if model is not None:
            try:
                prob, label = model.predict(np.asarray(audio, dtype=np.float64), fs)
            except Exception as e:  # noqa: BLE001 - as analyze_file: the segmentation stands
                error = f"{model.name}: {type(e).__name__}: {e}"[:500]
    doc: dict[str, Any] = {
        "segments": [s.to_dict() for s in a.segments],
        "heart_rate_bpm": _num(a.heart_rate_bpm),
        "abnormal_prob": prob,
        "label": label,
        "verdict": verdict_text(prob, label),
        "systolic_interval_s": _num(a.systolic_interval_s),
        "diastolic_interval_s": _num(a.diastolic_interval_s),
        "quality": float(a.quality),
        "duration_s": float(a.duration_s),
        "fs": int(a.fs),
        "source": source,
    }
    if error is not None:
        doc["abnormal_error"] = error
    return doc


def _run_pcg(ctx: Context, p: dict[str, Any], inp: Inputs) -> OpOutput:
    a = inp.arrays["audio"]
    if a.ndim == 2 and a.shape[1] == 1:
        a = a[:, 0]
    if a.ndim != 1:
        raise ApiError("bad_request", f"audio must be mono, shape (n_samples,) or (n_samples, 1), got {list(a.shape)}")
    fs = int(p["fs"])
    if a.shape[0] < fs:
        raise ApiError("invalid_input", f"audio must hold at least 1 s ({fs} samples at {fs} Hz), got {a.shape[0]}")
    if a.dtype.kind == "f":
        a = _as_float_signal(a, "audio", allow_nan=False)
    try:
        return OpOutput(analyze_pcg_array(a, fs, classify=p["classify"], source=p["source"]))
    except TelediagError as e:
        raise ApiError("invalid_input", str(e)) from e


# --------------------------------------------------------------------------- images


def encode_png(img: np.ndarray) -> bytes:
    """Encode a (h, w) uint8 grey or (h, w, 3) uint8 RGB image as PNG (stdlib zlib only).

    Examples
    --------
    >>> encode_png(np.zeros((2, 3), np.uint8))[:8]
    b'\\x89PNG\\r\\n\\x1a\\n'
    """
    a = np.ascontiguousarray(img, dtype=np.uint8)
    if a.ndim == 2:
        color = 0
    elif a.ndim == 3 and a.shape[2] == 3:
        color = 2
    else:
        raise ValueError(f"image must be (h, w) or (h, w, 3) uint8, got {a.shape}")
    h, w = a.shape[:2]
    rows = a.reshape(h, -1)
    raw = np.concatenate([np.zeros((h, 1), np.uint8), rows], axis=1).tobytes()

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    ihdr = struct.pack(">IIBBBBB", w, h, 8, color, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b"")


def decode_image(data: bytes | memoryview, fmt: str, *, max_pixels: int) -> np.ndarray:
    """Decode PNG/JPEG bytes to (h, w, 3) uint8 RGB, checking the size before decoding.

    Raises
    ------
    ApiError
        ``bad_request`` for undecodable bytes or a format mismatch, ``payload_too_large``
        above ``max_pixels``, ``unavailable`` without Pillow.
    """
    try:
        from PIL import Image
    except ImportError as e:
        raise ApiError("unavailable", "decoding PNG/JPEG needs Pillow: pip install pillow "
                                      "(or send raw RGB with format 'raw')") from e
    try:
        im = Image.open(io.BytesIO(bytes(data)))
        kind = (im.format or "").lower()
        if kind not in ("png", "jpeg"):
            raise ApiError("bad_request", f"image must be PNG or JPEG, got {im.format or 'unknown'}")
        if kind != fmt:
            raise ApiError("bad_request", f"image format says {fmt!r} but the bytes are {kind}")
        w, h = im.size
        if w * h > max_pixels:
            raise ApiError("payload_too_large", f"image is {w}x{h} = {w * h} pixels, the limit is {max_pixels}")
        if w < 1 or h < 1:
            raise ApiError("bad_request", f"image is empty ({w}x{h})")
        rgb = np.asarray(im.convert("RGB"))
    except ApiError:
        raise
    except Exception as e:  # Pillow raises many types for corrupt data
        raise ApiError("bad_request", f"image bytes are not a decodable {fmt} ({type(e).__name__}: "
                                      f"{short(str(e), 80)})") from e
    return np.ascontiguousarray(rgb, dtype=np.uint8)


IMAGE_PARAMS = (
    Param("mask", "string", default="png", choices=("png", "raw", "none"),
          doc="how the mask comes back: PNG (0/255 grey), raw uint8 (h, w) 0/1, or not at all"),
)


def _run_image(ctx: Context, p: dict[str, Any], inp: Inputs) -> OpOutput:
    img = inp.image
    if img is None:  # pragma: no cover - the transports always fill it
        raise ApiError("bad_request", "image is required")
    if isinstance(img, np.ndarray):
        if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
            raise ApiError("bad_request", f"raw image must be (height, width, 3) uint8 RGB, got "
                                          f"{list(img.shape)} {img.dtype}")
        if img.shape[0] * img.shape[1] > ctx.max_image_pixels or 0 in img.shape:
            raise ApiError("payload_too_large" if img.size else "bad_request",
                           f"raw image is {img.shape[1]}x{img.shape[0]}; limit {ctx.max_image_pixels} pixels")
        rgb = img
    else:
        rgb = decode_image(img, inp.image_format or "png", max_pixels=ctx.max_image_pixels)
    seg = _polyp_segmenter(ctx)
    try:
        res = seg.predict(rgb)
    except TelediagError as e:
        raise ApiError("invalid_input", str(e)) from e
    out = _polyp_result(res, rgb.shape[:2])
    mask = out.pop("_mask")
    binary: dict[str, tuple[bytes | memoryview, dict[str, Any]]] = {}
    if p["mask"] == "png":
        binary["mask"] = (encode_png(mask * np.uint8(255)), {"format": "png", "shape": list(mask.shape)})
    elif p["mask"] == "raw":
        binary["mask"] = (mask.tobytes(), {"format": "raw", "dtype": "|u1", "shape": list(mask.shape)})
    return OpOutput(out, binary)


_SEGMENTERS: dict[Any, Any] = {}
_SEGMENTER_LOCK = threading.Lock()


def _polyp_segmenter(ctx: Context) -> Any:
    """The polyp segmenter of the registry's current ``polyp_seg`` entry (hot-reloadable).

    One segmenter per card entry (file, version, modification times): a new version in the
    registry gets a new segmenter on the next request, requests already running keep theirs.
    """
    from telediag.models.polyp_seg import PolypSegmenter  # type: ignore[import-not-found]

    try:
        entry = ctx.registry.entry("polyp_seg")
        key: Any = (entry.file, entry.sha256, entry.fingerprint)
        paths: dict[str, Any] = {"model_path": entry.file, "card_path": entry.directory / "card.json"}
    except KeyError:
        key, paths = "default", {}
    with _SEGMENTER_LOCK:
        seg = _SEGMENTERS.get(key)
    if seg is None:
        seg = PolypSegmenter(**paths).load()  # ModelError -> model_error
        with _SEGMENTER_LOCK:
            _SEGMENTERS.clear()
            _SEGMENTERS[key] = seg
    return seg


def _polyp_result(res: Any, hw: tuple[int, ...]) -> dict[str, Any]:
    """Flatten a ``PolypResult`` into JSON + a (h, w) 0/1 uint8 mask under ``_mask``."""
    mask = np.asarray(res.mask)
    if mask.ndim == 3:
        mask = mask[..., 0]
    mask01 = (mask > (127 if mask.dtype == np.uint8 and mask.max(initial=0) > 1 else 0)).astype(np.uint8)
    out: dict[str, Any] = {"height": int(hw[0]), "width": int(hw[1]),
                           "mask_fraction": float(mask01.mean()) if mask01.size else 0.0}
    for name in ("polyp_probability", "probability", "boxes"):
        if hasattr(res, name):
            out[name] = _jsonable(getattr(res, name))
    out["_mask"] = np.ascontiguousarray(mask01)
    return out


def _jsonable(v: Any) -> Any:
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist() if v.size <= 4096 else None
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_jsonable(x) for x in v]
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


# --------------------------------------------------------------------------- models


MODEL_PARAMS = (Param("model", "string", required=True, max_len=64, doc="registry model name", example="ecg_beats"),)


def _run_model(ctx: Context, p: dict[str, Any], inp: Inputs) -> OpOutput:
    from telediag.errors import ModelError

    name = p["model"]
    try:
        m = ctx.registry.get(name)
    except KeyError:
        raise ApiError("unknown_model", f"no model {name!r}; the registry has {ctx.registry.names()}") from None
    except ModelError as e:
        raise ApiError("model_error", str(e)) from e
    try:
        outs = m.run(dict(inp.arrays))
    except ModelError as e:
        raise ApiError("bad_request", str(e)) from e
    binary: dict[str, tuple[bytes | memoryview, dict[str, Any]]] = {}
    for k, v in outs.items():
        a = np.ascontiguousarray(v)
        if a.dtype == np.bool_:
            a = a.astype(np.uint8)
        a = a.astype(a.dtype.newbyteorder("<"), copy=False)
        binary[f"output:{k}"] = (a.tobytes(), {"dtype": a.dtype.str, "shape": list(a.shape)})
    return OpOutput({"model": m.entry.name, "version": m.entry.version, "sha256": m.entry.sha256}, binary)


def _run_models_list(ctx: Context, p: dict[str, Any], inp: Inputs) -> OpOutput:
    return OpOutput({"models": ctx.registry.list()})


def _run_health(ctx: Context, p: dict[str, Any], inp: Inputs) -> OpOutput:
    return OpOutput(ctx.health() if ctx.health else {"status": "ok"})


ECG_RESULT = {
    "type": "object",
    "description": "exactly the JSON of `telediag analyze ecg` "
                   "(telediag.evaluation.ecg_analyze.analyze_recording)",
    "required": ["beats", "heart_rate", "hrv", "quality", "fs", "n_samples"],
    "properties": {"beats": {"type": "array", "items": {"type": "object"}},
                   "heart_rate": {"type": "object"}, "hrv": {"type": "object"},
                   "quality": {"type": "object"}, "fs": {"type": "number"},
                   "n_samples": {"type": "integer"}},
}
PCG_RESULT = {
    "type": "object",
    "description": "exactly the JSON of `telediag analyze pcg`",
    "required": ["segments", "heart_rate_bpm", "abnormal_prob", "label", "quality", "duration_s", "fs"],
    "properties": {
        "segments": {"type": "array", "items": {"type": "object", "properties": {
            "start": {"type": "number"}, "end": {"type": "number"},
            "state": {"type": "string", "enum": ["S1", "systole", "S2", "diastole"]}}}},
        "heart_rate_bpm": {"type": "number", "nullable": True},
        "systolic_interval_s": {"type": "number", "nullable": True},
        "diastolic_interval_s": {"type": "number", "nullable": True},
        "abnormal_prob": {"type": "number", "nullable": True},
        "label": {"type": "string", "nullable": True, "enum": ["normal", "abnormal", "uncertain", None]},
        "verdict": {"type": "string", "nullable": True},
        "source": {"type": "string", "nullable": True},
        "quality": {"type": "number"}, "duration_s": {"type": "number"}, "fs": {"type": "integer"},
    },
}
IMAGE_RESULT = {
    "type": "object",
    "required": ["height", "width", "mask_fraction"],
    "properties": {"height": {"type": "integer"}, "width": {"type": "integer"},
                   "mask_fraction": {"type": "number"},
                   "polyp_probability": {"type": "number", "description": "frame-level score in [0, 1] "
                                         "(a heuristic, see the polyp_seg model card)"},
                   "boxes": {"type": "array", "items": {"type": "array", "items": {"type": "number"}},
                             "description": "[x0, y0, x1, y1, score] per connected component"},
                   "mask": {"$ref": "#/components/schemas/Binary"}},
}
MODELS_RESULT = {"type": "object", "required": ["models"],
                 "properties": {"models": {"type": "array", "items": {"type": "object"}}}}
HEALTH_RESULT = {"type": "object", "required": ["status", "api_version", "ops"],
                 "properties": {"status": {"type": "string"}, "api_version": {"type": "integer"},
                                "version": {"type": "string"}, "uptime_s": {"type": "number"},
                                "ops": {"type": "object"}, "workers": {"type": "integer"},
                                "pending": {"type": "integer"}, "counters": {"type": "object"}}}
MODEL_RESULT = {"type": "object", "required": ["model", "version", "sha256"],
                "properties": {"model": {"type": "string"}, "sha256": {"type": "string"},
                               "outputs": {"type": "object",
                                           "additionalProperties": {"$ref": "#/components/schemas/Binary"}}}}


def default_ops() -> dict[str, OpSpec]:
    """The operations of API v1, by name."""
    ops = [
        OpSpec("ecg.analyze", "ECG segment -> beats (labels), heart rate, HRV, rhythm/quality events",
               ECG_PARAMS, "signal", _run_ecg,
               requires=_module_available("telediag.evaluation.ecg_analyze", "analyze_recording"),
               result_schema=ECG_RESULT),
        OpSpec("pcg.analyze", "heart-sound recording -> S1/systole/S2/diastole segments, heart rate, "
               "abnormal probability",
               PCG_PARAMS, "audio", _run_pcg,
               requires=_module_available("telediag.evaluation.pcg_analyze"), result_schema=PCG_RESULT),
        OpSpec("image.segment", "endoscopy image -> polyp mask and probability", IMAGE_PARAMS, "image",
               _run_image, requires=_module_available("telediag.models.polyp_seg", "PolypSegmenter"),
               result_schema=IMAGE_RESULT, binary_outputs=("mask",)),
        OpSpec("model.infer", "run a registry model on named input arrays", MODEL_PARAMS, "inputs",
               _run_model, result_schema=MODEL_RESULT),
        OpSpec("models.list", "the registry's models and their cards", (), None, _run_models_list,
               inline=True, result_schema=MODELS_RESULT),
        OpSpec("health", "server status, available operations, queue and counters", (), None,
               _run_health, inline=True, result_schema=HEALTH_RESULT),
    ]
    return {o.name: o for o in ops}
