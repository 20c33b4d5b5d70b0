"""Int8 static quantisation of a polyp_seg network with ONNX Runtime (QDQ format).

The fp32 graph is first pre-processed (``quant_pre_process``: ONNX shape inference and graph
optimisation, so that Conv/ReLU pairs are fused before the quantisation parameters are chosen),
then quantised statically (``quantize_static``): weights int8 per output channel (symmetric),
activations uint8 per tensor (asymmetric), each activation's range calibrated (MinMax) on
Kvasir-SEG **train** frames (never validation frames: those select and report the variant),
prepared exactly like the runtime prepares a frame (anti-aliased bilinear resize to the network
input, 0-255 float, channel-first). QDQ (QuantizeLinear/DequantizeLinear pairs around each
quantised op) is the format ONNX Runtime fuses into its integer kernels (QLinearConv etc.) on
CPU. On a CPU without VNNI the uint8 x int8 kernels may saturate the 16-bit intermediate sums
(``vpmaddubsw``); the validation Dice of the result (see ``card.json``) shows whether that
matters, and ``--reduce-range`` (7-bit weights) is there to avoid it if it ever does.

Run (needs ``onnx``, in the ``train`` extra)::

    python -m telediag.models.polyp_seg.quantize --data ../shared/data/kvasir-seg \\
        --model models/polyp_seg/polyp_seg_student.onnx \\
        --out models/polyp_seg/polyp_seg_student_int8.onnx --n-calib 200

Data: Jha et al., "Kvasir-SEG: A Segmented Polyp Dataset", MMM 2020 (research and
educational use only).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from telediag.models.polyp_seg._resize import resize_chw

__all__ = ["calibration_frames", "main", "quantize"]


def calibration_frames(root: Path, n: int, size: int, seed: int = 0) -> NDArray[np.float32]:
    """``n`` random Kvasir-SEG train images as network inputs ``(n, 3, size, size)``."""
    from PIL import Image

    names = sorted((root / "train" / "images").glob("*.jpg"))
    if not names:
        raise FileNotFoundError(f"no images in {root / 'train' / 'images'}")
    pick = np.random.default_rng(seed).choice(len(names), min(n, len(names)), replace=False)
    frames = [resize_chw(np.asarray(Image.open(names[i]).convert("RGB")), size, size)
              for i in sorted(pick)]
    return np.stack(frames).astype(np.float32)


def _dynamic_hw(m: Any) -> None:
    """Make the graph's input and output height/width dynamic (the decoder sizes its
    upsampling from the skip tensors' shapes, so the network runs at any multiple of 32)."""
    for v, names in ((m.graph.input[0], ("height", "width")),
                     (m.graph.output[0], ("prob_height", "prob_width"))):
        d = v.type.tensor_type.shape.dim
        d[2].dim_param, d[3].dim_param = names
    del m.graph.value_info[:]


def quantize(model: Path, out: Path, frames: NDArray[np.float32], *, reduce_range: bool = False,
             exclude: tuple[str, ...] = ()) -> dict[str, Any]:
    """Quantise ``model`` to ``out`` (QDQ, int8 weights per channel, uint8 activations).

    The quantised graph has a dynamic input height/width (see :func:`_dynamic_hw`), so the
    runtime may lower its input size; calibration runs at the frames' size.
    """
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            self.it = iter(frames)

        def get_next(self) -> dict[str, NDArray[np.float32]] | None:
            x = next(self.it, None)
            return None if x is None else {"image": x[None]}

    import onnx

    t = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        src, pre = Path(tmp) / "dyn.onnx", Path(tmp) / "pre.onnx"
        m = onnx.load(str(model))
        _dynamic_hw(m)
        onnx.save(m, str(src))
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        quantize_static(
            str(pre), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
            reduce_range=reduce_range, activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax,
            nodes_to_exclude=list(exclude),
        )
    return {"method": "onnxruntime.quantization.quantize_static, QDQ, MinMax calibration",
            "weights": "int8 per output channel, symmetric", "activations": "uint8 per tensor",
            "reduce_range": reduce_range, "calibration_frames": int(len(frames)),
            "calibration_data": "Kvasir-SEG train split (random images, seed 0)",
            "excluded_nodes": list(exclude), "seconds": round(time.time() - t, 1)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Int8 static quantisation of a polyp_seg ONNX file")
    ap.add_argument("--data", type=Path, default=Path("../shared/data/kvasir-seg"))
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--n-calib", type=int, default=200)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--reduce-range", action="store_true")
    ap.add_argument("--exclude", default="", help="comma-separated node names kept in fp32")
    a = ap.parse_args(argv)
    frames = calibration_frames(a.data, a.n_calib, a.size)
    info = quantize(a.model, a.out, frames, reduce_range=a.reduce_range,
                    exclude=tuple(x for x in a.exclude.split(",") if x))
    print(info)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
