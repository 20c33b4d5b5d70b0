"""Python clients of the inference API: ZeroMQ (:class:`InferenceClient`) and HTTP.

:class:`InferenceClient` talks to the ROUTER server over a DEALER socket. Every request has a
unique id; replies with another id (late answers to an abandoned attempt) are discarded. When
no reply comes within ``timeout_s`` the socket is closed and reopened and the request re-sent
with the same id, up to ``retries`` times (the "lazy pirate" pattern; every operation is
idempotent); ``busy`` replies are retried after a short back-off. The deadline sent to the
server is what is left of the caller's time, so the server never works for a client that gave
up. One request at a time per client (a lock makes it thread-safe); use one client per thread
for concurrency.

:class:`HttpInferenceClient` has the same methods over the HTTP/JSON gateway (stdlib only).

Examples
--------
>>> import numpy as np
>>> with InferenceClient("tcp://127.0.0.1:5557", timeout_s=5) as c:  # doctest: +SKIP
...     r = c.analyze_ecg(np.zeros((3600, 2)), 360.0, channels=["MLII", "V1"])
...     len(r["beats"])
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import zmq

from telediag.api.schema import (
    API_VERSION,
    ApiError,
    array_from_json,
    array_to_json,
    decode_array,
    pack_header,
)

__all__ = ["HttpInferenceClient", "InferenceClient"]

_RETRY_CODES = frozenset({"busy"})
#: Seconds a ZeroMQ request waits for the server's handshake before it reports ``unreachable``.
CONNECT_PROBE_S = 15.0


def _le(a: np.ndarray) -> np.ndarray:
    arr = np.asarray(a)
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8)
    if arr.dtype.kind == "f" and arr.dtype.itemsize not in (4, 8):
        arr = arr.astype(np.float64)
    return np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<"))


def _image_bytes(image: np.ndarray | bytes | bytearray | memoryview) -> tuple[str, bytes | np.ndarray]:
    if isinstance(image, bytes | bytearray | memoryview):
        b = bytes(image)
        if b[:8] == b"\x89PNG\r\n\x1a\n":
            return "png", b
        if b[:3] == b"\xff\xd8\xff":
            return "jpeg", b
        raise ApiError("bad_request", "image bytes are neither PNG nor JPEG (pass an (h, w, 3) uint8 array for raw RGB)")
    arr = np.ascontiguousarray(image)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
        raise ApiError("bad_request", f"image must be (height, width, 3) uint8 RGB, got {arr.shape} {arr.dtype}")
    return "raw", arr


class InferenceClient:
    """ZeroMQ DEALER client with timeouts, retries and request ids.

    Parameters
    ----------
    addr : str
        Server address (default ``tcp://127.0.0.1:5557``).
    timeout_s : float
        Time to wait for each attempt's reply.
    retries : int
        Extra attempts after a timeout or a ``busy`` reply.
    context : zmq.Context, optional
    curve_server_key : bytes, optional
        The server's Z85 public key: use CurveZMQ (a client key pair is generated).
    curve_secret, server_key : str or Path, optional
        CurveZMQ with this client's own ``.key_secret`` file (its public key must be in the
        server's allow-list, ``telediag keys allow``) and the server's ``.key`` file.

    Raises
    ------
    ApiError
        From every method: the server's error (``code``, ``message``) or ``timeout``.
    """

    _seq = itertools.count(1)

    def __init__(self, addr: str = "tcp://127.0.0.1:5557", *, timeout_s: float = 30.0, retries: int = 2,
                 context: zmq.Context | None = None, curve_server_key: bytes | None = None,
                 curve_secret: str | Path | None = None,
                 server_key: str | Path | None = None) -> None:
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        if retries < 0:
            raise ValueError(f"retries must be >= 0, got {retries}")
        from telediag.transports.sockets import endpoint

        self.addr = endpoint(addr)
        self.timeout_s = float(timeout_s)
        self.retries = int(retries)
        self._ctx = context or zmq.Context.instance()
        self._curve = curve_server_key
        if (curve_secret is None) != (server_key is None):
            raise ValueError("CurveZMQ needs both curve_secret (this client's .key_secret) and server_key "
                             f"(the server's .key), got curve_secret={curve_secret!r} server_key={server_key!r}")
        self._curve_files = (curve_secret, server_key)
        self._lock = threading.Lock()
        self._sock: zmq.Socket | None = None
        self._watch: Any = None  # PeerWatch of _sock: did a server ever complete the handshake?
        self._prefix = f"{os.getpid():x}-{id(self):x}-"
        self.last_timing: dict[str, float] = {}

    def _socket(self) -> zmq.Socket:
        if self._sock is None:
            s = self._ctx.socket(zmq.DEALER)
            s.setsockopt(zmq.LINGER, 0)
            secret_file, server_file = self._curve_files
            if secret_file is not None and server_file is not None:
                from telediag.transports.security import secure_client

                secure_client(s, secret_file, server_file)
            elif self._curve is not None:
                pub, sec = zmq.curve_keypair()
                s.curve_serverkey = self._curve
                s.curve_publickey = pub
                s.curve_secretkey = sec
            from telediag.transports.sockets import PeerWatch

            self._watch = PeerWatch(s)
            s.connect(self.addr)
            self._sock = s
        return self._sock

    def _reset(self) -> None:
        if self._sock is not None:
            if self._watch is not None:
                self._watch.close(self._sock)
                self._watch = None
            self._sock.close(0)
            self._sock = None

    def close(self) -> None:
        """Close the socket."""
        with self._lock:
            self._reset()

    def __enter__(self) -> InferenceClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def request(self, op: str, params: Mapping[str, Any] | None = None, *, payloads: Sequence[Any] = (),
                header: Mapping[str, Any] | None = None, timeout_s: float | None = None,
                deadline_ms: float | None = None) -> tuple[dict[str, Any], list[bytes]]:
        """Send one request; return the reply's ``result`` and its payload frames.

        Parameters
        ----------
        op : str
            Operation name.
        params : mapping, optional
            Operation parameters.
        payloads : sequence of bytes-like
            Payload frames.
        header : mapping, optional
            Extra header keys (``dtype``, ``shape``, ``format``, ``inputs``).
        timeout_s : float, optional
            Per-attempt timeout (default: the client's).
        deadline_ms : float, optional
            Deadline sent to the server (default: the time left for all attempts).
        """
        t = self.timeout_s if timeout_s is None else float(timeout_s)
        req_id = f"{self._prefix}{next(self._seq)}"
        attempts = self.retries + 1
        end = time.monotonic() + t * attempts
        last: ApiError | None = None
        with self._lock:
            for attempt in range(attempts):
                left_ms = max(1.0, (end - time.monotonic()) * 1000.0)
                head = {"v": API_VERSION, "op": op, "id": req_id,
                        "deadline_ms": float(deadline_ms) if deadline_ms is not None else min(left_ms, 600_000.0),
                        **({"params": dict(params)} if params else {}), **(header or {})}
                sock = self._socket()
                sock.send_multipart([b"", pack_header(head), *payloads], copy=False)
                until = time.monotonic() + t
                probe = time.monotonic() + min(t, CONNECT_PROBE_S)
                frames = self._wait(sock, req_id, min(until, probe))
                if frames is None and self._watch is not None and not self._watch.poll():
                    self._reset()  # no server ever answered the handshake: waiting longer cannot help
                    raise ApiError("unreachable", f"no API server reached at {self.addr} within "
                                                  f"{min(t, CONNECT_PROBE_S):g} s (no ZMQ handshake: is "
                                                  "`telediag api` up on that address?)")
                if frames is None and time.monotonic() < until:
                    frames = self._wait(sock, req_id, until)
                if frames is None:
                    self._reset()  # lazy pirate: a fresh socket drops the stale exchange
                    last = ApiError("timeout", f"no reply to {op} (id {req_id}) from {self.addr} within {t:g} s "
                                               f"(attempt {attempt + 1}/{attempts})")
                    continue
                rh, rp = frames
                self.last_timing = rh.get("timing") or {}
                if rh.get("ok"):
                    return rh.get("result") or {}, rp
                err = rh.get("error") or {}
                last = ApiError(str(err.get("code", "internal")), str(err.get("message", "")))
                if last.code in _RETRY_CODES and attempt + 1 < attempts:
                    time.sleep(min(0.05 * 2**attempt, 1.0))
                    continue
                raise last
        assert last is not None
        raise last

    @staticmethod
    def _wait(sock: zmq.Socket, req_id: str, until: float) -> tuple[dict[str, Any], list[bytes]] | None:
        while True:
            left = until - time.monotonic()
            if left <= 0 or not sock.poll(int(left * 1000) + 1, zmq.POLLIN):
                return None
            frames = sock.recv_multipart()
            if frames and frames[0] == b"":
                frames = frames[1:]
            if not frames:
                continue
            try:
                head = msgpack.unpackb(frames[0], raw=False, strict_map_key=True)
            except Exception:  # noqa: BLE001 - a garbled reply is ignored like a stale one
                continue
            if isinstance(head, dict) and head.get("id") == req_id:
                return head, frames[1:]

    # ------------------------------------------------------------------ operations

    def analyze_ecg(self, signal: np.ndarray, fs: float, *, channels: Sequence[str] | None = None,
                    units: Sequence[str] | None = None, lead: int | str | None = None,
                    name: str | None = None, source: str | None = None, chunk_s: float | None = None,
                    timeout_s: float | None = None) -> dict[str, Any]:
        """ECG analysis of a (n_samples, n_channels) signal; the dict of ``telediag analyze ecg``.

        The samples are sent as they are (float64 stays float64, so the result equals a local
        :func:`~telediag.evaluation.ecg_analyze.analyze_recording`).
        """
        a = _le(signal)
        params = {k: v for k, v in (("fs", float(fs)), ("channels", list(channels) if channels else None),
                                    ("units", list(units) if units else None), ("lead", lead),
                                    ("name", name), ("source", source), ("chunk_s", chunk_s)) if v is not None}
        res, _ = self.request("ecg.analyze", params, payloads=[a.data],
                              header={"dtype": a.dtype.str, "shape": list(a.shape)}, timeout_s=timeout_s)
        return res

    def analyze_pcg(self, audio: np.ndarray, fs: int, *, classify: bool = True, source: str | None = None,
                    timeout_s: float | None = None) -> dict[str, Any]:
        """Heart-sound analysis of mono samples (float in [-1, 1] or integer PCM).

        Returns the document of ``telediag analyze pcg`` (segments, heart rate, intervals,
        ``abnormal_prob``/``label``, quality).
        """
        a = _le(audio)
        params: dict[str, Any] = {"fs": int(fs), "classify": bool(classify)}
        if source is not None:
            params["source"] = source
        res, _ = self.request("pcg.analyze", params, payloads=[a.data],
                              header={"dtype": a.dtype.str, "shape": list(a.shape)}, timeout_s=timeout_s)
        return res

    def segment_image(self, image: np.ndarray | bytes, *, mask: str = "raw",
                      timeout_s: float | None = None) -> dict[str, Any]:
        """Polyp segmentation of an RGB array or PNG/JPEG bytes.

        Returns the result dict with ``mask`` replaced by a (h, w) uint8 0/1 array (or PNG
        bytes with ``mask="png"``; absent with ``mask="none"``).
        """
        fmt, data = _image_bytes(image)
        header: dict[str, Any] = {"format": fmt}
        if isinstance(data, np.ndarray):
            header.update(dtype="|u1", shape=list(data.shape))
            frame: Any = data.data
        else:
            frame = data
        res, frames = self.request("image.segment", {"mask": mask}, payloads=[frame], header=header,
                                   timeout_s=timeout_s)
        m = res.get("mask")
        if isinstance(m, dict) and "frame" in m:
            buf = frames[m["frame"]]
            res["mask"] = buf if m.get("format") == "png" else decode_array(
                buf, m["dtype"], m["shape"], "mask", max_bytes=len(buf)).copy()
        return res

    def infer_model(self, model: str, inputs: Mapping[str, np.ndarray], *,
                    timeout_s: float | None = None) -> dict[str, np.ndarray]:
        """Run a registry model; returns its outputs by name."""
        arrs = {k: _le(v) for k, v in inputs.items()}
        descs = [{"name": k, "dtype": a.dtype.str, "shape": list(a.shape)} for k, a in arrs.items()]
        res, frames = self.request("model.infer", {"model": model}, payloads=[a.data for a in arrs.values()],
                                   header={"inputs": descs}, timeout_s=timeout_s)
        return {k: decode_array(frames[d["frame"]], d["dtype"], d["shape"], k, max_bytes=1 << 40).copy()
                for k, d in (res.get("outputs") or {}).items()}

    def models(self) -> list[dict[str, Any]]:
        """The registry's models (name, version, sha256, card summary, loaded)."""
        return list(self.request("models.list")[0]["models"])

    def health(self) -> dict[str, Any]:
        """Server status, available operations, queue and counters."""
        return self.request("health")[0]


class HttpInferenceClient:
    """The same operations over the HTTP/JSON gateway (arrays sent as base64).

    Examples
    --------
    >>> c = HttpInferenceClient("http://127.0.0.1:8557")  # doctest: +SKIP
    >>> c.health()["status"]  # doctest: +SKIP
    'ok'
    """

    def __init__(self, url: str = "http://127.0.0.1:8557", *, timeout_s: float = 30.0, retries: int = 2) -> None:
        self.url = url.rstrip("/")
        self.timeout_s = float(timeout_s)
        self.retries = int(retries)

    def request(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        """One HTTP call; returns ``result`` or raises :class:`ApiError`."""
        data = None if body is None else json.dumps(body, allow_nan=False).encode()
        last: ApiError | None = None
        for attempt in range(self.retries + 1):
            req = urllib.request.Request(self.url + path, data=data, method=method,
                                         headers={"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(req, timeout=self.timeout_s) as r:
                    doc = json.loads(r.read())
            except urllib.error.HTTPError as e:
                try:
                    doc = json.loads(e.read())
                except ValueError:
                    raise ApiError("internal", f"HTTP {e.code} from {self.url}{path} without a JSON body") from e
            except (urllib.error.URLError, TimeoutError, OSError) as e:
                why = e.reason if isinstance(e, urllib.error.URLError) else e
                if isinstance(why, (TimeoutError, socket.timeout)):
                    last = ApiError("timeout", f"{method} {self.url}{path}: no reply within {self.timeout_s:g} s")
                    continue
                # refused, unknown host, network unreachable: retrying at once will not help
                refused = isinstance(why, ConnectionRefusedError)
                raise ApiError("unreachable", f"{method} {self.url}{path}: "
                               + ("connection refused: nothing listens there (is `telediag api` up?)"
                                  if refused else f"cannot connect ({why})")) from e
            if doc.get("ok"):
                return dict(doc.get("result") or {})
            err = doc.get("error") or {}
            last = ApiError(str(err.get("code", "internal")), str(err.get("message", "")))
            if last.code in _RETRY_CODES and attempt < self.retries:
                time.sleep(min(0.05 * 2**attempt, 1.0))
                continue
            raise last
        assert last is not None
        raise last

    def analyze_ecg(self, signal: np.ndarray, fs: float, **params: Any) -> dict[str, Any]:
        """As :meth:`InferenceClient.analyze_ecg`."""
        p = {k: (list(v) if isinstance(v, tuple) else v) for k, v in params.items() if v is not None}
        p["fs"] = float(fs)
        return self.request("POST", "/v1/ecg/analyze", {"params": p, "signal": array_to_json(_le(signal))})

    def analyze_pcg(self, audio: np.ndarray, fs: int, *, classify: bool = True,
                    source: str | None = None) -> dict[str, Any]:
        """As :meth:`InferenceClient.analyze_pcg`."""
        params: dict[str, Any] = {"fs": int(fs), "classify": bool(classify)}
        if source is not None:
            params["source"] = source
        return self.request("POST", "/v1/pcg/analyze", {"params": params, "audio": array_to_json(_le(audio))})

    def segment_image(self, image: np.ndarray | bytes, *, mask: str = "raw") -> dict[str, Any]:
        """As :meth:`InferenceClient.segment_image`."""
        fmt, data = _image_bytes(image)
        if isinstance(data, np.ndarray):
            img = {"format": "raw", "b64": base64.b64encode(data.tobytes()).decode(), "shape": list(data.shape)}
        else:
            img = {"format": fmt, "b64": base64.b64encode(data).decode()}
        res = self.request("POST", "/v1/image/segment", {"params": {"mask": mask}, "image": img})
        m = res.get("mask")
        if isinstance(m, dict) and "b64" in m:
            raw = base64.b64decode(m["b64"])
            res["mask"] = raw if m.get("format") == "png" else decode_array(
                raw, m["dtype"], m["shape"], "mask", max_bytes=len(raw)).copy()
        return res

    def infer_model(self, model: str, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """As :meth:`InferenceClient.infer_model`."""
        res = self.request("POST", "/v1/model/infer", {"params": {"model": model},
                                                       "inputs": {k: array_to_json(_le(v)) for k, v in inputs.items()}})
        return {k: array_from_json(v, k, max_bytes=1 << 40).copy() for k, v in (res.get("outputs") or {}).items()}

    def models(self) -> list[dict[str, Any]]:
        """As :meth:`InferenceClient.models`."""
        return list(self.request("GET", "/v1/models")["models"])

    def health(self) -> dict[str, Any]:
        """As :meth:`InferenceClient.health`."""
        return self.request("GET", "/v1/health")
