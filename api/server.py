"""ZeroMQ ROUTER server of the inference API (request/reply, many concurrent clients).

One I/O thread owns the ROUTER socket: it reads requests, validates their framing and header
(cheap), answers errors and inline operations at once and hands the rest to the
:class:`~telediag.api.service.Service` worker pool.  Workers send finished replies back over
an ``inproc`` PUSH/PULL pair that the I/O thread forwards to the ROUTER, so the ROUTER is only
ever touched by its own thread and a slow analysis never stalls it.

Frames (see ``api/API.md``)::

    request: [identity, b"", header(msgpack), payload...]   (the empty delimiter is optional:
             DEALER clients may omit it, REQ clients always send it; the reply mirrors it)
    reply:   [identity, b"", header(msgpack), payload...]

Examples
--------
>>> from telediag.api.client import InferenceClient
>>> srv = ApiServer(Service(workers=1), "tcp://127.0.0.1:*").start()
>>> with InferenceClient(srv.endpoint, timeout_s=5) as c:
...     c.health()["status"]
'ok'
>>> srv.stop()
"""

from __future__ import annotations

import itertools
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import zmq

from telediag.api.ops import Inputs, OpSpec
from telediag.api.schema import (
    API_VERSION,
    ApiError,
    Reply,
    Timing,
    check_shape,
    decode_array,
    pack_header,
    short,
    unpack_header,
)
from telediag.api.service import Call, Outcome, Service
from telediag.errors import ConfigError

if TYPE_CHECKING:
    from telediag.transports.security import CurveServer

__all__ = ["DEFAULT_ADDR", "ApiServer", "parse_request", "reply_frames"]

DEFAULT_ADDR = "tcp://127.0.0.1:5557"
_HEADER_KEYS = frozenset({"v", "op", "id", "deadline_ms", "params", "dtype", "shape", "format", "inputs"})


def _check_id(value: Any) -> Any:
    if isinstance(value, bool) or not (
        (isinstance(value, str) and len(value) <= 128) or (isinstance(value, int) and -(1 << 63) <= value < 1 << 63)
    ):
        raise ApiError("bad_request", f"header.id must be a string (<= 128 characters) or an int64, got {short(value)}")
    return value


def _buf(frame: Any) -> memoryview:
    return frame.buffer if isinstance(frame, zmq.Frame) else memoryview(frame)


def _inputs(spec: OpSpec, header: dict[str, Any], payloads: list[Any], max_bytes: int) -> Inputs:
    """Decode the payload frames an operation takes (zero copy for arrays)."""
    total = sum(len(_buf(p)) for p in payloads)
    if total > max_bytes:
        raise ApiError("payload_too_large", f"payload frames hold {total} bytes, the limit is {max_bytes}")
    kind = spec.input
    for key in ("dtype", "shape", "format", "inputs"):
        allowed = (kind in ("signal", "audio") and key in ("dtype", "shape")) or (
            kind == "image" and key in ("dtype", "shape", "format")) or (kind == "inputs" and key == "inputs")
        if key in header and not allowed:
            raise ApiError("bad_request", f"header.{key} is not used by {spec.name}")
    if kind is None:
        if payloads:
            raise ApiError("bad_request", f"{spec.name} takes no payload frames, got {len(payloads)}")
        return Inputs()
    if kind in ("signal", "audio"):
        if len(payloads) != 1:
            raise ApiError("bad_request", f"{spec.name} takes exactly 1 payload frame (the {kind}), got {len(payloads)}")
        for key in ("dtype", "shape"):
            if key not in header:
                raise ApiError("bad_request", f"header.{key} is required for the {kind} payload")
        arr = decode_array(_buf(payloads[0]), header["dtype"], header["shape"], kind, max_bytes=max_bytes)
        return Inputs(arrays={kind: arr})
    if kind == "image":
        if len(payloads) != 1:
            raise ApiError("bad_request", f"{spec.name} takes exactly 1 payload frame (the image), got {len(payloads)}")
        fmt = header.get("format")
        if fmt not in ("png", "jpeg", "raw"):
            raise ApiError("bad_request", f"header.format must be 'png', 'jpeg' or 'raw', got {short(fmt)}")
        if fmt == "raw":
            shape = check_shape(header.get("shape"), "header.shape")
            if len(shape) != 3 or shape[2] != 3:
                raise ApiError("bad_request", f"header.shape of a raw image must be [height, width, 3], got {list(shape)}")
            arr = decode_array(_buf(payloads[0]), header.get("dtype", "|u1"), list(shape), "image", max_bytes=max_bytes)
            if arr.dtype.str != "|u1":
                raise ApiError("bad_request", f"header.dtype of a raw image must be '|u1', got {arr.dtype.str!r}")
            return Inputs(image=arr, image_format="raw")
        return Inputs(image=_buf(payloads[0]), image_format=fmt)
    # kind == "inputs": named arrays
    descs = header.get("inputs")
    if not isinstance(descs, list) or len(descs) != len(payloads):
        raise ApiError("bad_request", f"header.inputs must list one {{name, dtype, shape}} per payload frame "
                                      f"({len(payloads)}), got {short(descs)}")
    arrays = {}
    for i, (d, p) in enumerate(zip(descs, payloads, strict=True)):
        if not isinstance(d, dict) or not isinstance(d.get("name"), str) or set(d) - {"name", "dtype", "shape"}:
            raise ApiError("bad_request", f"header.inputs[{i}] must be a map {{name, dtype, shape}}, got {short(d)}")
        if d["name"] in arrays:
            raise ApiError("bad_request", f"header.inputs[{i}].name {d['name']!r} is repeated")
        arrays[d["name"]] = decode_array(_buf(p), d.get("dtype"), d.get("shape"), f"inputs[{i}]", max_bytes=max_bytes)
    return Inputs(arrays=arrays)


def parse_request(frames: list[Any], service: Service) -> tuple[Call, Any]:
    """Turn ``[header, payload...]`` into a :class:`Call`; also return the id for error replies.

    Raises
    ------
    ApiError
        With the request id known so far attached as ``err.req_id``.
    """
    req_id: Any = None
    try:
        lim = service.limits
        if not frames:
            raise ApiError("bad_request", "no header frame after the envelope")
        if len(frames) - 1 > lim.max_frames:
            raise ApiError("bad_request", f"{len(frames) - 1} payload frames, at most {lim.max_frames} allowed")
        header = unpack_header(_buf(frames[0]), max_bytes=lim.max_header_bytes)
        if "id" in header:
            req_id = _check_id(header["id"])
        else:
            raise ApiError("bad_request", "header.id is required (a string or an int)")
        v = header.get("v")
        if v != API_VERSION:
            raise ApiError("unsupported_version", f"header.v must be {API_VERSION}, got {short(v)}")
        extra = sorted(set(header) - _HEADER_KEYS)
        if extra:
            raise ApiError("bad_request", f"unknown header key(s) {extra}; known: {sorted(_HEADER_KEYS)}")
        if "op" not in header:
            raise ApiError("bad_request", "header.op is required")
        spec = service.resolve(header["op"])
        inputs = _inputs(spec, header, frames[1:], lim.max_payload_bytes)
        return Call(spec.name, req_id, header.get("params"), inputs, header.get("deadline_ms"), keep=frames), req_id
    except ApiError as e:
        e.req_id = req_id  # type: ignore[attr-defined]
        raise


def reply_frames(outcome: Outcome) -> list[bytes | memoryview]:
    """Reply header + payload frames; binary outputs get ``{"frame": i, ...}`` in the result."""
    if outcome.error is not None:
        r = Reply.failure(outcome.id, outcome.error, outcome.timing)
    else:
        assert outcome.output is not None
        result = dict(outcome.output.result)
        payloads: list[bytes | memoryview] = []
        outputs: dict[str, Any] = {}
        for name, (data, desc) in outcome.output.binary.items():
            entry = dict(desc, frame=len(payloads))
            payloads.append(data)
            if name.startswith("output:"):
                outputs[name[7:]] = entry
            else:
                result[name] = entry
        if outputs:
            result["outputs"] = outputs
        r = Reply(outcome.id, True, result, None, payloads, outcome.timing.to_dict())
    try:
        head = pack_header(r.header())
    except (TypeError, ValueError, OverflowError) as e:
        err = ApiError("internal", f"result is not encodable: {short(str(e), 120)}")
        return [pack_header(Reply.failure(outcome.id, err, outcome.timing).header())]
    return [head, *r.payloads]


class ApiServer:
    """The ROUTER server: an I/O thread plus the service's workers.

    Parameters
    ----------
    service : Service
        Operations, registry and worker pool (may be shared with the HTTP gateway).
    addr : str
        Bind address (default ``tcp://127.0.0.1:5557``; ``tcp://127.0.0.1:*`` picks a port,
        see :attr:`endpoint`).
    context : zmq.Context, optional
        Defaults to the process-wide instance; with ``server_secret`` the server makes its
        own (a ZAP handler is per context, so it cannot clash with an engine's).
    server_secret, allow_dir : path, optional
        **The security switch**: the server's ``.key_secret`` file and the client allow-list
        folder managed by ``telediag keys allow/revoke/list`` (the same files as the
        engine's ``[security]`` section). CurveZMQ then encrypts every byte and a ZAP handler
        admits only clients whose public key is in the folder, re-reading it on every
        handshake; every request is also re-checked against it (by the ``User-Id`` the ZAP
        handler stamps on the connection), so a revoke cuts off open connections as well.
        Requests refused that way get no reply and are counted in :attr:`unauthorized`.
    curve_secret_key, curve_public_key : bytes, optional
        Z85 server keys for CurveZMQ encryption **without** client authentication (kept for
        compatibility; prefer ``server_secret`` + ``allow_dir``).
    """

    _ids = itertools.count()

    def __init__(self, service: Service, addr: str = DEFAULT_ADDR, *, context: zmq.Context | None = None,
                 curve_secret_key: bytes | None = None, curve_public_key: bytes | None = None,
                 server_secret: str | Path | None = None, allow_dir: str | Path | None = None) -> None:
        self.service = service
        self.addr = addr
        if (server_secret is None) != (allow_dir is None):
            raise ConfigError("CurveZMQ for the API needs both server_secret (the server's .key_secret file) "
                              f"and allow_dir (the client allow-list folder), got server_secret={server_secret!r} "
                              f"and allow_dir={allow_dir!r}")
        self._own_ctx = server_secret is not None and context is None
        self._ctx = zmq.Context() if self._own_ctx else (context or zmq.Context.instance())
        self.curve: CurveServer | None = None
        if server_secret is not None and allow_dir is not None:
            from telediag.transports.security import CurveServer

            try:
                self.curve = CurveServer(self._ctx, server_secret, allow_dir)
            except BaseException:
                if self._own_ctx:
                    self._ctx.term()
                raise
        self._acl = self.curve.allow_list if self.curve is not None else None
        self.unauthorized = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._wake_addr = f"inproc://telediag-api-replies-{id(self)}-{next(self._ids)}"
        self._push: zmq.Socket | None = None
        self._push_lock = threading.Lock()
        self._curve = (curve_secret_key, curve_public_key)
        self.endpoint = ""
        self.dropped_replies = 0
        self.rejected = 0

    def start(self) -> ApiServer:
        """Bind and start the I/O thread; returns self once it is serving."""
        self._thread = threading.Thread(target=self._run, name="telediag-api-router", daemon=True)
        self._thread.start()
        self._ready.wait(10)
        if self._error is not None:
            raise self._error
        return self

    def _send_reply(self, envelope: list[Any], outcome: Outcome) -> None:
        frames = [*envelope, *reply_frames(outcome)]
        with self._push_lock:
            if self._push is None or self._stop.is_set():
                return
            try:
                self._push.send_multipart(frames, copy=False)
            except zmq.ZMQError:
                self.dropped_replies += 1

    def _run(self) -> None:
        ctx = self._ctx
        router = ctx.socket(zmq.ROUTER)
        pull = ctx.socket(zmq.PULL)
        try:
            router.setsockopt(zmq.LINGER, 0)
            router.setsockopt(zmq.SNDHWM, 10_000)
            router.setsockopt(zmq.RCVHWM, 10_000)
            router.setsockopt(zmq.MAXMSGSIZE, 2 * self.service.limits.max_payload_bytes + (1 << 20))
            sk, pk = self._curve
            if self.curve is not None:
                self.curve.secure(router)
            elif sk is not None:
                router.curve_server = True
                router.curve_secretkey = sk
                router.curve_publickey = pk
            router.bind(self.addr)
            self.endpoint = router.getsockopt_string(zmq.LAST_ENDPOINT)
            pull.setsockopt(zmq.LINGER, 0)
            pull.bind(self._wake_addr)
            push = ctx.socket(zmq.PUSH)
            push.setsockopt(zmq.LINGER, 0)
            push.setsockopt(zmq.SNDHWM, 0)
            push.connect(self._wake_addr)
            with self._push_lock:
                self._push = push
        except BaseException as e:  # noqa: BLE001 - reported to start()
            self._error = e
            router.close(0)
            pull.close(0)
            self._release_security()
            self._ready.set()
            return
        self._ready.set()
        poller = zmq.Poller()
        poller.register(router, zmq.POLLIN)
        poller.register(pull, zmq.POLLIN)
        try:
            while not self._stop.is_set():
                events = dict(poller.poll(100))
                if pull in events:
                    for _ in range(1000):
                        try:
                            out = pull.recv_multipart(zmq.NOBLOCK, copy=False)
                        except zmq.Again:
                            break
                        try:
                            router.send_multipart(out, zmq.NOBLOCK, copy=False)
                        except zmq.ZMQError:
                            self.dropped_replies += 1
                if router in events:
                    for _ in range(1000):
                        try:
                            frames = router.recv_multipart(zmq.NOBLOCK, copy=False)
                        except zmq.Again:
                            break
                        self._handle(router, frames)
        finally:
            with self._push_lock:
                if self._push is not None:
                    self._push.close(0)
                    self._push = None
            router.close(0)
            pull.close(0)

    def _handle(self, router: zmq.Socket, frames: list[Any]) -> None:
        if self.curve is not None and not self.curve.sender_allowed(frames[-1]):
            self.unauthorized += 1  # key revoked since the handshake: no reply, like ZAP
            return
        envelope = frames[:1]
        rest = frames[1:]
        if rest and len(_buf(rest[0])) == 0:
            envelope = frames[:2]
            rest = frames[2:]
        try:
            call, _ = parse_request(rest, self.service)
        except ApiError as e:
            self.rejected += 1
            self.service._count("?", e)
            self._reply_now(router, envelope, Outcome(getattr(e, "req_id", None), None, e, Timing()))
            return
        self.service.submit(call, lambda o, env=envelope: self._send_reply(env, o))

    def _reply_now(self, router: zmq.Socket, envelope: list[Any], outcome: Outcome) -> None:
        try:
            router.send_multipart([*envelope, *reply_frames(outcome)], zmq.NOBLOCK, copy=False)
        except zmq.ZMQError:
            self.dropped_replies += 1

    def stop(self, close_service: bool = False) -> None:
        """Stop the I/O thread (replies still in flight are dropped); optionally the service."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
            if self._thread.is_alive():  # wedged: leave its context alone (term would block)
                self._own_ctx = False
            self._thread = None
        self._release_security()
        if close_service:
            self.service.close()

    def _release_security(self) -> None:
        if self.curve is not None:
            self.curve.stop()
            self.curve = None
        if self._own_ctx:
            self._own_ctx = False
            self._ctx.term()

    def security_stats(self) -> dict[str, Any]:
        """Handshakes admitted/refused by the allow-list and requests refused after a revoke."""
        acl = self._acl
        return {"curve": acl is not None, "allowed_keys": len(acl) if acl is not None else 0,
                "handshakes_admitted": acl.admitted if acl is not None else 0,
                "handshakes_refused": acl.refused if acl is not None else 0,
                "unauthorized_requests": self.unauthorized}

    def __enter__(self) -> ApiServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
