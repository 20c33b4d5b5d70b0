"""A small reader of ONNX model files (protobuf wire format), without the ``onnx`` package.

:mod:`telediag.engine.stages.ecg_parts.trees` reads the beat classifier's tree arrays out of
its ``.onnx`` file. The ``onnx`` package is not a runtime dependency (only ONNX Runtime is),
and importing it costs about a second, so this module decodes the few messages needed, from
the protobuf encoding (https://protobuf.dev/programming-guides/encoding/: varint keys
``field << 3 | wire type``; wire types 0 varint, 1 fixed 64-bit, 2 length-delimited, 5 fixed
32-bit; repeated scalars packed or not) and ``onnx/onnx.proto`` (ModelProto.graph = 7;
GraphProto node 1, initializer 5, input 11, output 12; NodeProto input 1, output 2, name 3,
op_type 4, attribute 5, domain 7; AttributeProto name 1, f 2, i 3, s 4, t 5, floats 7, ints 8,
strings 9, type 20; TensorProto dims 1, data_type 2, float_data 4, int32_data 5, int64_data 7,
name 8, raw_data 9, double_data 10; ValueInfoProto name 1, type 2; TypeProto tensor_type 1;
Tensor elem_type 1, shape 2; TensorShapeProto dim 1; Dimension dim_value 1, dim_param 2).

Anything it does not understand raises ``ValueError``; the caller then keeps ONNX Runtime
(and checks what it read against ONNX Runtime's output in any case).

Examples
--------
>>> _varint(bytes([0xAC, 0x02]), 0)
(300, 2)
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["Graph", "Node", "load_graph"]

_FLOAT, _INT32, _INT64, _DOUBLE = 1, 6, 7, 11
_NP = {_FLOAT: np.float32, _INT32: np.int32, _INT64: np.int64, _DOUBLE: np.float64}


def _varint(b: bytes, i: int) -> tuple[int, int]:
    """Decode a varint at ``b[i]``; ``(value, next index)``."""
    v = shift = 0
    while True:
        if i >= len(b):
            raise ValueError("truncated varint")
        c = b[i]
        i += 1
        v |= (c & 0x7F) << shift
        if c < 0x80:
            return v, i
        shift += 7
        if shift > 63:
            raise ValueError("varint longer than 10 bytes")


def _fields(b: bytes) -> list[tuple[int, int, Any]]:
    """``(field number, wire type, value)`` of a message: int for varints, bytes otherwise."""
    out = []
    i, n = 0, len(b)
    while i < n:
        key, i = _varint(b, i)
        num, wt = key >> 3, key & 7
        v: Any
        if wt == 0:
            v, i = _varint(b, i)
        elif wt == 2:
            ln, i = _varint(b, i)
            if i + ln > n:
                raise ValueError("truncated field")
            v, i = b[i:i + ln], i + ln
        elif wt == 5:
            v, i = b[i:i + 4], i + 4
        elif wt == 1:
            v, i = b[i:i + 8], i + 8
        else:
            raise ValueError(f"unsupported wire type {wt}")
        out.append((num, wt, v))
    if i != n:
        raise ValueError("truncated message")
    return out


def _int64(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


def _ints(vals: list[tuple[int, Any]]) -> list[int]:
    """Repeated int64: unpacked varints and/or packed runs."""
    out: list[int] = []
    for wt, v in vals:
        if wt == 0:
            out.append(_int64(v))
        elif wt == 2:
            i = 0
            while i < len(v):
                x, i = _varint(v, i)
                out.append(_int64(x))
        else:
            raise ValueError("repeated int with a fixed-width wire type")
    return out


def _floats(vals: list[tuple[int, Any]], fmt: str = "<f", size: int = 4) -> list[float]:
    """Repeated float (``<f``) or double (``<d``): unpacked and/or packed."""
    out: list[float] = []
    for wt, v in vals:
        if wt in (1, 5) and len(v) == size:
            out.append(struct.unpack(fmt, v)[0])
        elif wt == 2 and len(v) % size == 0:
            out.extend(struct.unpack(f"<{len(v) // size}{fmt[1]}", v))
        else:
            raise ValueError("bad repeated float")
    return out


def _group(fs: list[tuple[int, int, Any]]) -> dict[int, list[tuple[int, Any]]]:
    g: dict[int, list[tuple[int, Any]]] = {}
    for num, wt, v in fs:
        g.setdefault(num, []).append((wt, v))
    return g


def _str(g: dict[int, list[tuple[int, Any]]], num: int) -> str:
    vals = g.get(num)
    return bytes(vals[-1][1]).decode() if vals else ""


def _tensor(b: bytes) -> tuple[str, np.ndarray]:
    """``(name, array)`` of a TensorProto."""
    g = _group(_fields(b))
    dims = _ints(g.get(1, []))
    dtype = g.get(2, [(0, 0)])[-1][1]
    if dtype not in _NP:
        raise ValueError(f"tensor data type {dtype} not supported")
    npt = _NP[dtype]
    if 9 in g:
        arr = np.frombuffer(bytes(g[9][-1][1]), dtype=np.dtype(npt).newbyteorder("<")).astype(npt)
    elif dtype == _FLOAT:
        arr = np.array(_floats(g.get(4, [])), np.float32)
    elif dtype == _DOUBLE:
        arr = np.array(_floats(g.get(10, []), "<d", 8), np.float64)
    elif dtype == _INT64:
        arr = np.array(_ints(g.get(7, [])), np.int64)
    else:
        arr = np.array(_ints(g.get(5, [])), np.int64).astype(np.int32)
    n = int(np.prod(dims)) if dims else 1
    if arr.size != n:
        raise ValueError(f"tensor {_str(g, 8)!r}: {arr.size} values for dims {dims}")
    return _str(g, 8), arr.reshape(dims)


def _attribute(b: bytes) -> tuple[str, Any]:
    """``(name, value)`` of an AttributeProto (float, int, bytes, array or a list of them)."""
    g = _group(_fields(b))
    name = _str(g, 1)
    kind = g.get(20, [(0, 0)])[-1][1]
    if kind == 1 or (kind == 0 and 2 in g):
        return name, _floats(g[2])[0]
    if kind == 2 or (kind == 0 and 3 in g):
        return name, _int64(g[3][-1][1])
    if kind == 3 or (kind == 0 and 4 in g):
        return name, bytes(g[4][-1][1])
    if kind == 4:
        return name, _tensor(bytes(g[5][-1][1]))[1]
    if kind == 6:
        return name, _floats(g.get(7, []))
    if kind == 7:
        return name, _ints(g.get(8, []))
    if kind == 8:
        return name, [bytes(v) for _, v in g.get(9, [])]
    raise ValueError(f"attribute {name!r} of type {kind} not supported")


@dataclass
class Node:
    """A graph node: operator, input and output names, attributes."""

    op_type: str
    inputs: list[str]
    outputs: list[str]
    attrs: dict[str, Any] = field(default_factory=dict)
    domain: str = ""


@dataclass
class Graph:
    """The parts of a model's graph the tree reader needs."""

    nodes: list[Node]
    initializers: dict[str, np.ndarray]
    inputs: dict[str, list[int]]  # name -> dims (0 for a symbolic dimension)
    outputs: list[str]


def _value_info(b: bytes) -> tuple[str, list[int]]:
    g = _group(_fields(b))
    dims: list[int] = []
    if 2 in g:
        tg = _group(_fields(bytes(g[2][-1][1])))
        if 1 in tg:
            tt = _group(_fields(bytes(tg[1][-1][1])))
            if 2 in tt:
                for _, d in _group(_fields(bytes(tt[2][-1][1]))).get(1, []):
                    dg = _group(_fields(bytes(d)))
                    dims.append(_int64(dg[1][-1][1]) if 1 in dg else 0)
    return _str(g, 1), dims


def load_graph(path: str | Path) -> Graph:
    """Read the main graph of an ONNX model file.

    Raises
    ------
    ValueError
        A malformed file or a construct this reader does not support.
    """
    data = Path(path).read_bytes()
    model = _group(_fields(data))
    if 7 not in model:
        raise ValueError("no graph in the model")
    g = _group(_fields(bytes(model[7][-1][1])))
    nodes = []
    for _, nb in g.get(1, []):
        ng = _group(_fields(bytes(nb)))
        nodes.append(Node(
            op_type=_str(ng, 4),
            inputs=[bytes(v).decode() for _, v in ng.get(1, [])],
            outputs=[bytes(v).decode() for _, v in ng.get(2, [])],
            attrs=dict(_attribute(bytes(a)) for _, a in ng.get(5, [])),
            domain=_str(ng, 7),
        ))
    inits = dict(_tensor(bytes(t)) for _, t in g.get(5, []))
    inputs = dict(_value_info(bytes(v)) for _, v in g.get(11, []))
    outputs = [_value_info(bytes(v))[0] for _, v in g.get(12, [])]
    return Graph(nodes, inits, inputs, outputs)
