"""Call the inference API and print its JSON reply (``telediag infer``).

``telediag infer ecg RECORD`` reads a WFDB/EDF/CSV record, sends it (float64, so the result
equals ``telediag analyze ecg`` on the same input) and prints the analysis; ``pcg FILE`` does
the same for a WAV/WFDB heart-sound recording; ``image FILE`` sends a PNG/JPEG (``--mask-out``
writes the returned mask PNG); ``models`` and ``health`` take no input.  ``--http URL`` uses
the HTTP/JSON gateway instead of ZeroMQ.

Examples (shell)::

    telediag api &                                   # serve ZeroMQ :5557 and HTTP :8557
    telediag infer ecg ../shared/data/mitdb/101 --start-s 0 --duration-s 10
    telediag infer pcg ../shared/data/pcg2016/training-a/a0001.wav --http http://127.0.0.1:8557
    telediag infer health
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from telediag.api.schema import ApiError
from telediag.api.server import DEFAULT_ADDR
from telediag.errors import DataError
from telediag.transports.sockets import endpoint_arg

__all__ = ["add_arguments", "run"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Arguments of ``telediag infer``."""
    p.add_argument("what", choices=["ecg", "pcg", "image", "models", "health"], help="operation")
    p.add_argument("input", nargs="?", help="record / audio / image file (ecg, pcg, image)")
    p.add_argument("--addr", type=endpoint_arg, default=DEFAULT_ADDR, help=f"ZeroMQ server (default {DEFAULT_ADDR})")
    p.add_argument("--http", metavar="URL", help="use the HTTP gateway at URL instead (e.g. http://127.0.0.1:8557)")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds per attempt (default 60)")
    p.add_argument("--retries", type=int, default=2, help="extra attempts after a timeout (default 2)")
    p.add_argument("--fs", type=float, help="sample rate of a CSV record without a time column")
    p.add_argument("--leads", metavar="I,J", help="ecg: channel indices to send (default all)")
    p.add_argument("--lead", type=int, help="ecg: detection lead index (default: the engine config's)")
    p.add_argument("--start-s", type=float, default=0.0, help="ecg: first second to send (default 0)")
    p.add_argument("--duration-s", type=float, help="ecg: seconds to send (default: to the end)")
    p.add_argument("--chunk-s", type=float, help="ecg: chunk length fed to the stages (results do not depend on it)")
    p.add_argument("--no-classifier", action="store_true", help="pcg: skip the abnormality classifier")
    p.add_argument("--mask-out", metavar="PNG", help="image: write the mask PNG here")
    p.add_argument("--indent", type=int, default=1, help="JSON indent (default 1; 0: one line)")


def _client(args: argparse.Namespace) -> Any:
    from telediag.api.client import HttpInferenceClient, InferenceClient

    if args.http:
        return HttpInferenceClient(args.http, timeout_s=args.timeout, retries=args.retries)
    return InferenceClient(args.addr, timeout_s=args.timeout, retries=args.retries)


def _need_input(args: argparse.Namespace) -> str:
    if not args.input:
        raise DataError(f"telediag infer {args.what} needs an INPUT file")
    return str(args.input)


def _ecg(client: Any, args: argparse.Namespace) -> dict[str, Any]:
    from telediag.sources.readers import read_any

    path = _need_input(args)
    rec = read_any(path, fs=args.fs)
    if args.leads:
        rec = rec.select([int(x) for x in args.leads.split(",")])
    x = rec.signal
    if args.start_s or args.duration_s is not None:
        a = int(round(args.start_s * rec.fs))
        b = x.shape[0] if args.duration_s is None else a + int(round(args.duration_s * rec.fs))
        if not 0 <= a < b <= x.shape[0]:
            raise DataError(f"--start-s/--duration-s select samples [{a}, {b}) outside the record's "
                            f"{x.shape[0]} samples")
        x = x[a:b]
    return dict(client.analyze_ecg(np.ascontiguousarray(x, dtype=np.float64), rec.fs,
                                   channels=list(rec.channels), units=list(rec.units), lead=args.lead,
                                   name=rec.name, source=path, chunk_s=args.chunk_s))


def _pcg(client: Any, args: argparse.Namespace) -> dict[str, Any]:
    from telediag.sources.readers import read_pcg

    path = _need_input(args)
    audio, fs = read_pcg(path)
    return dict(client.analyze_pcg(audio, fs, classify=not args.no_classifier, source=path))


def _image(client: Any, args: argparse.Namespace) -> dict[str, Any]:
    path = Path(_need_input(args))
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DataError(f"cannot read image {path}: {e}") from e
    res = dict(client.segment_image(data, mask="png" if args.mask_out else "none"))
    if args.mask_out:
        png = res.pop("mask")
        Path(args.mask_out).write_bytes(bytes(png))
        res["mask_file"] = str(args.mask_out)
    return res


def run(args: argparse.Namespace) -> int:
    """Run ``telediag infer``: print the reply as JSON; exit 1 on an API error."""
    client = _client(args)
    try:
        if args.what == "ecg":
            out: Any = _ecg(client, args)
        elif args.what == "pcg":
            out = _pcg(client, args)
        elif args.what == "image":
            out = _image(client, args)
        elif args.what == "models":
            out = client.models()
        else:
            out = client.health()
    except ApiError as e:
        print(json.dumps({"ok": False, "error": {"code": e.code, "message": e.message}}), file=sys.stderr)
        return 1
    finally:
        if hasattr(client, "close"):
            client.close()
    print(json.dumps(out, indent=args.indent or None, allow_nan=False))
    return 0
