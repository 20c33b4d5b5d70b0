"""HTTP/JSON gateway of the inference API, with its OpenAPI 3 document at ``/openapi.json``.

The gateway is a stdlib :class:`http.server.ThreadingHTTPServer` (no extra dependency) in
front of the same :class:`~telediag.api.service.Service` as the ZeroMQ server: the same
operations, limits, deadlines, worker pool and error codes (each code has one HTTP status,
:data:`telediag.api.schema.ERROR_CODES`).  Routes::

    GET  /openapi.json        the OpenAPI 3.0 document (only the operations available here)
    GET  /v1/health           health
    GET  /v1/models           models.list
    POST /v1/ecg/analyze      {"params": {"fs": 360, ...}, "signal": <array>}
    POST /v1/pcg/analyze      {"params": {"fs": 2000}, "audio": <array>}
    POST /v1/image/segment    {"params": {"mask": "png"}, "image": {"format": "png", "b64": ...}}
    POST /v1/model/infer      {"params": {"model": "ecg_beats"}, "inputs": {"morph": <array>, ...}}

Security (:mod:`telediag.transports.webauth`, shared with the viewer): with ``tls_cert``/
``tls_key`` the gateway speaks HTTPS only; with ``access`` every request needs
``Authorization: Bearer <token>`` or ``Basic <user:password>`` (401 otherwise) and each call is
written to the ``audit`` log (who, what, when); a non-loopback ``host`` needs both.

``<array>`` is nested JSON lists of numbers or ``{"b64", "dtype", "shape"}`` (little-endian
raw bytes).  Every reply is ``{"v", "id", "ok", "result" | "error", "timing"}``; binary outputs
are ``{"format"/"dtype", "shape", "b64"}`` objects.

Examples
--------
>>> gw = HttpGateway(Service(workers=1), "127.0.0.1", 0).start()
>>> import urllib.request, json
>>> json.loads(urllib.request.urlopen(gw.url + "/v1/health").read())["result"]["status"]
'ok'
>>> gw.stop()
"""

from __future__ import annotations

import base64
import json
import ssl
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from telediag.api.ops import Inputs, OpSpec
from telediag.api.schema import (
    API_VERSION,
    ERROR_CODES,
    ApiError,
    Timing,
    array_from_json,
    b64decode,
    check_shape,
    decode_array,
    short,
)
from telediag.api.service import Call, Outcome, Service

__all__ = ["DEFAULT_HTTP_PORT", "HttpGateway", "openapi_document"]

DEFAULT_HTTP_PORT = 8557
_INPUT_KEYS = {"signal": "signal", "audio": "audio", "image": "image", "inputs": "inputs"}
_GET_ROUTES = {"/v1/health": "health", "/v1/models": "models.list"}
_POST_OPS = ("ecg.analyze", "pcg.analyze", "image.segment", "model.infer")


def _path_of(op: str) -> str:
    return "/v1/" + op.replace(".", "/")


# --------------------------------------------------------------------------- OpenAPI


def _array_schema(desc: str) -> dict[str, Any]:
    num = {"type": "number"}
    return {"description": desc, "anyOf": [
        {"type": "array", "items": num, "minItems": 1},
        {"type": "array", "minItems": 1, "items": {"type": "array", "items": num, "minItems": 1, "maxItems": 16}},
        {"$ref": "#/components/schemas/B64Array"},
    ]}


def _body_schema(spec: OpSpec) -> dict[str, Any]:
    params = {"type": "object", "additionalProperties": False,
              "properties": {p.name: p.json_schema() for p in spec.params},
              "required": [p.name for p in spec.params if p.required]}
    if not params["required"]:
        del params["required"]
    props: dict[str, Any] = {
        "v": {"type": "integer", "enum": [API_VERSION]},
        "id": {"$ref": "#/components/schemas/RequestId"},
        "deadline_ms": {"type": "number", "minimum": 1, "maximum": 600000,
                        "description": "budget from receipt; refused with deadline_exceeded when it cannot be met"},
        "params": params,
    }
    required = ["params"] if spec.params and any(p.required for p in spec.params) else []
    if spec.input in ("signal", "audio"):
        props[spec.input] = _array_schema(
            "(n_samples, n_channels) rows or a 1-D list" if spec.input == "signal" else "mono samples")
        required.append(spec.input)
    elif spec.input == "image":
        props["image"] = {"$ref": "#/components/schemas/Image"}
        required.append("image")
    elif spec.input == "inputs":
        props["inputs"] = {"type": "object", "additionalProperties": _array_schema("model input"),
                           "maxProperties": 16}
        required.append("inputs")
    s: dict[str, Any] = {"type": "object", "additionalProperties": False, "properties": props}
    if required:
        s["required"] = required
    return s


def _responses(spec: OpSpec) -> dict[str, Any]:
    ok = {"description": "success", "content": {"application/json": {"schema": {
        "type": "object", "required": ["v", "id", "ok", "result"],
        "properties": {"v": {"type": "integer"}, "id": {"$ref": "#/components/schemas/RequestIdOut"},
                       "ok": {"type": "boolean", "enum": [True]}, "result": spec.result_schema,
                       "error": {"nullable": True}, "timing": {"$ref": "#/components/schemas/Timing"}}}}}}
    out: dict[str, Any] = {"200": ok}
    by_status: dict[int, list[str]] = {}
    for code, (status, _) in ERROR_CODES.items():
        by_status.setdefault(status, []).append(code)
    for status, codes in sorted(by_status.items()):
        out[str(status)] = {"description": "error: " + ", ".join(codes), "content": {"application/json": {
            "schema": {"$ref": "#/components/schemas/ErrorReply"}}}}
    return out


def openapi_document(service: Service) -> dict[str, Any]:
    """The OpenAPI 3.0.3 document of the operations ``service`` can run.

    Examples
    --------
    >>> doc = openapi_document(Service(workers=1))
    >>> "/v1/health" in doc["paths"]
    True
    """
    from telediag import __version__

    avail = service.available()
    paths: dict[str, Any] = {}
    for route, op in _GET_ROUTES.items():
        spec = service.ops[op]
        paths[route] = {"get": {"operationId": op.replace(".", "_"), "summary": spec.summary,
                                "responses": _responses(spec)}}
    for op in _POST_OPS:
        spec = service.ops.get(op)
        if spec is None or avail.get(op) is not None:
            continue
        paths[_path_of(op)] = {"post": {
            "operationId": op.replace(".", "_"), "summary": spec.summary,
            "requestBody": {"required": True, "content": {"application/json": {"schema": _body_schema(spec)}}},
            "responses": _responses(spec)}}
    error_codes = sorted(ERROR_CODES) + ["timeout"]
    return {
        "openapi": "3.0.3",
        "info": {"title": "telediag inference API", "version": f"{API_VERSION}.0 (telediag {__version__})",
                 "description": "ECG, heart-sound and endoscopy analyses. Same operations over ZeroMQ; "
                                "see api/API.md."},
        "paths": paths,
        "components": {"schemas": {
            "RequestId": {"anyOf": [{"type": "string", "maxLength": 128},
                                    {"type": "integer", "minimum": -(2**63), "maximum": 2**63 - 1}]},
            "RequestIdOut": {"nullable": True, "anyOf": [{"type": "string"}, {"type": "integer"}]},
            "B64Array": {"type": "object", "additionalProperties": False, "required": ["b64", "dtype", "shape"],
                         "properties": {"b64": {"type": "string", "description": "standard base64 of the raw bytes"},
                                        "dtype": {"type": "string", "enum": ["<f4", "<f8", "<i2", "<i4", "<i8",
                                                                             "|u1", "<u2", "|i1"]},
                                        "shape": {"type": "array", "minItems": 1, "maxItems": 4,
                                                  "items": {"type": "integer", "minimum": 0}}}},
            "Image": {"type": "object", "additionalProperties": False, "required": ["format", "b64"],
                      "properties": {"format": {"type": "string", "enum": ["png", "jpeg", "raw"]},
                                     "b64": {"type": "string"},
                                     "shape": {"type": "array", "minItems": 3, "maxItems": 3,
                                               "items": {"type": "integer", "minimum": 0},
                                               "description": "[height, width, 3] for format raw"}}},
            "Binary": {"type": "object", "properties": {"format": {"type": "string"}, "dtype": {"type": "string"},
                                                         "shape": {"type": "array", "items": {"type": "integer"}},
                                                         "b64": {"type": "string"}}},
            "Timing": {"type": "object", "properties": {"queue_ms": {"type": "number"}, "run_ms": {"type": "number"}}},
            "ErrorReply": {"type": "object", "required": ["v", "ok", "error"], "properties": {
                "v": {"type": "integer"}, "id": {"$ref": "#/components/schemas/RequestIdOut"},
                "ok": {"type": "boolean", "enum": [False]},
                "result": {"nullable": True},
                "timing": {"$ref": "#/components/schemas/Timing"},
                "error": {"type": "object", "required": ["code", "message"], "properties": {
                    "code": {"type": "string", "enum": error_codes}, "message": {"type": "string"}}}}},
        }},
    }


# --------------------------------------------------------------------------- request parsing


def _http_inputs(spec: OpSpec, body: dict[str, Any], max_bytes: int) -> Inputs:
    kind = spec.input
    if kind is None:
        return Inputs()
    if kind not in body:
        raise ApiError("bad_request", f"body.{kind} is required for {spec.name}")
    val = body[kind]
    if kind in ("signal", "audio"):
        return Inputs(arrays={kind: array_from_json(val, kind, max_bytes=max_bytes)})
    if kind == "image":
        if not isinstance(val, dict):
            raise ApiError("bad_request", f"image must be an object {{format, b64, shape?}}, got {short(val)}")
        extra = set(val) - {"format", "b64", "shape"}
        if extra:
            raise ApiError("bad_request", f"image: unknown keys {sorted(extra)} (expected format, b64, shape)")
        fmt = val.get("format")
        if fmt not in ("png", "jpeg", "raw"):
            raise ApiError("bad_request", f"image.format must be 'png', 'jpeg' or 'raw', got {short(fmt)}")
        raw = b64decode(val.get("b64"), "image.b64")
        if len(raw) > max_bytes:
            raise ApiError("payload_too_large", f"image is {len(raw)} bytes, the limit is {max_bytes}")
        if fmt == "raw":
            shape = check_shape(val.get("shape"), "image.shape")
            if len(shape) != 3 or shape[2] != 3:
                raise ApiError("bad_request", f"image.shape of a raw image must be [height, width, 3], got {list(shape)}")
            return Inputs(image=decode_array(raw, "|u1", list(shape), "image", max_bytes=max_bytes), image_format="raw")
        if "shape" in val:
            raise ApiError("bad_request", "image.shape is only for format 'raw'")
        return Inputs(image=raw, image_format=fmt)
    if not isinstance(val, dict) or len(val) > 16:
        raise ApiError("bad_request", f"inputs must be an object of at most 16 named arrays, got {short(val)}")
    return Inputs(arrays={k: array_from_json(v, f"inputs.{k}", max_bytes=max_bytes) for k, v in val.items()})


def _reply_doc(outcome: Outcome) -> tuple[int, dict[str, Any]]:
    doc: dict[str, Any] = {"v": API_VERSION, "id": outcome.id, "timing": outcome.timing.to_dict()}
    if outcome.error is not None:
        doc.update(ok=False, error=outcome.error.to_dict(), result=None)
        return outcome.error.http_status, doc
    assert outcome.output is not None
    result = dict(outcome.output.result)
    outputs: dict[str, Any] = {}
    for name, (data, desc) in outcome.output.binary.items():
        entry = dict(desc, b64=base64.b64encode(bytes(data)).decode("ascii"))
        if name.startswith("output:"):
            outputs[name[7:]] = entry
        else:
            result[name] = entry
    if outputs:
        result["outputs"] = outputs
    doc.update(ok=True, result=result, error=None)
    return 200, doc


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256  # listen backlog: many clients connect at once
    gateway: HttpGateway


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server
    server_version = "telediag-api"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        return  # quiet: counters are in /v1/health

    def setup(self) -> None:
        self._tls_failed = False
        if isinstance(self.request, ssl.SSLSocket):  # TLS handshake in this thread, not the accept loop
            self.request.settimeout(10.0)
            try:
                self.request.do_handshake()
            except (OSError, ssl.SSLError):
                self._tls_failed = True  # e.g. plain HTTP to the HTTPS port: drop the connection
        super().setup()

    def handle(self) -> None:
        if not self._tls_failed:
            super().handle()

    def _authorized(self) -> bool:
        """With an access file: a valid Bearer/Basic header (else 401), and an audit line."""
        gw = self.server.gateway
        if gw.auth is None:
            return True
        user = gw.auth.check_header(self.headers.get("Authorization"))
        peer = f"{self.client_address[0]}:{self.client_address[1]}"
        path = self.path.split("?", 1)[0]
        gw.audit.write(user.name if user else None, "api" if user else "refused", what=f"{self.command} {path[:80]}",
                       peer=peer, ok=user is not None, **({} if user else {"reason": "no login"}))
        if user is None:
            self.close_connection = True
            self._send(401, {"v": API_VERSION, "id": None, "ok": False, "result": None,
                             "error": {"code": "unauthorized", "message": "login required: Authorization: Bearer "
                                                                         "<token> or Basic <user:password>"}})
        return user is not None

    def _send(self, status: int, doc: dict[str, Any]) -> None:
        try:
            body = json.dumps(doc, allow_nan=False, separators=(",", ":")).encode()
        except (TypeError, ValueError) as e:
            status = 500
            body = json.dumps({"v": API_VERSION, "id": doc.get("id"), "ok": False, "result": None,
                               "error": {"code": "internal", "message": f"result not JSON-encodable: {e}"}}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def _error(self, err: ApiError, req_id: Any = None) -> None:
        self._send(err.http_status, {"v": API_VERSION, "id": req_id, "ok": False, "result": None,
                                     "error": err.to_dict(), "timing": Timing().to_dict()})

    def _run(self, call: Call) -> None:
        gw = self.server.gateway
        budget = call.deadline_ms if isinstance(call.deadline_ms, int | float) else gw.service.default_deadline_ms
        outcome = gw.service.call(call, timeout_s=float(budget) / 1000.0 + 5.0)
        status, doc = _reply_doc(outcome)
        self._send(status, doc)

    def do_GET(self) -> None:  # noqa: N802 - stdlib name
        if not self._authorized():
            return
        path = self.path.split("?", 1)[0]
        if path == "/openapi.json":
            self._send(200, self.server.gateway.openapi)
            return
        op = _GET_ROUTES.get(path)
        if op is None:
            self._error(ApiError("unknown_op", f"no GET route {short(path, 80)}; GET routes are "
                                               f"{sorted(_GET_ROUTES) + ['/openapi.json']}"))
            return
        self._run(Call(op, str(uuid.uuid4()), None, None))

    def do_POST(self) -> None:  # noqa: N802 - stdlib name
        if not self._authorized():
            return
        gw = self.server.gateway
        path = self.path.split("?", 1)[0]
        length_s = self.headers.get("Content-Length")
        if self.headers.get("Transfer-Encoding"):
            self.close_connection = True
            self._error(ApiError("bad_request", "chunked transfer encoding is not supported; send Content-Length"))
            return
        try:
            length = int(length_s) if length_s is not None else 0
            if length < 0:
                raise ValueError
        except ValueError:
            self.close_connection = True
            self._error(ApiError("bad_request", f"Content-Length must be a non-negative integer, got {length_s!r}"))
            return
        if length > gw.service.limits.max_http_body_bytes:
            self.close_connection = True
            self._error(ApiError("payload_too_large", f"body is {length} bytes, the limit is "
                                                      f"{gw.service.limits.max_http_body_bytes}"))
            return
        raw = self.rfile.read(length) if length else b""
        op = gw.routes.get(path)
        if op is None:
            self._error(ApiError("unknown_op", f"no POST route {short(path, 80)}; routes are {sorted(gw.routes)}"))
            return
        req_id: Any = None
        try:
            try:
                body = json.loads(raw, parse_constant=_reject_constant) if raw else None
            except ApiError:
                raise
            except (ValueError, RecursionError) as e:
                raise ApiError("bad_request", f"body is not valid JSON ({short(str(e), 80)})") from e
            if not isinstance(body, dict):
                raise ApiError("bad_request", f"body must be a JSON object, got {short(body)}")
            req_id = body.get("id", str(uuid.uuid4()))
            if isinstance(req_id, bool) or not ((isinstance(req_id, str) and len(req_id) <= 128)
                                                or (isinstance(req_id, int) and -(2**63) <= req_id < 2**63)):
                bad, req_id = req_id, None
                raise ApiError("bad_request", f"id must be a string (<= 128 characters) or an int64, got {short(bad)}")
            spec = gw.service.resolve(op)
            allowed = {"v", "id", "deadline_ms", "params"} | ({spec.input} if spec.input else set())
            extra = sorted(set(body) - allowed)
            if extra:
                raise ApiError("bad_request", f"unknown body key(s) {extra}; expected some of {sorted(allowed)}")
            if body.get("v", API_VERSION) != API_VERSION:
                raise ApiError("unsupported_version", f"v must be {API_VERSION}, got {short(body.get('v'))}")
            inputs = _http_inputs(spec, body, gw.service.limits.max_payload_bytes)
            call = Call(op, req_id, body.get("params"), inputs, body.get("deadline_ms"))
        except ApiError as e:
            gw.service._count(op, e)
            self._error(e, req_id)
            return
        self._run(call)

    def _method_not_allowed(self) -> None:
        self._error(ApiError("bad_request", f"method {self.command} is not supported (GET or POST)"))

    do_PUT = do_DELETE = do_PATCH = _method_not_allowed  # noqa: N815


def _reject_constant(name: str) -> Any:
    raise ApiError("bad_request", f"body contains {name}; JSON numbers must be finite")


class HttpGateway:
    """The HTTP/JSON server in a thread.

    Parameters
    ----------
    service : Service
        Shared with the ZeroMQ server when both run in one process.
    host, port : str, int
        Bind address (port 0 picks one; see :attr:`url`).
    """

    def __init__(self, service: Service, host: str = "127.0.0.1", port: int = DEFAULT_HTTP_PORT, *,
                 tls_cert: str | None = None, tls_key: str | None = None, access: str | None = None,
                 audit: str | None = None) -> None:
        from telediag.transports.webauth import (
            AccessConfig,
            AuditLog,
            Authenticator,
            check_bind,
            server_ssl_context,
        )

        check_bind(host, tls=bool(tls_cert and tls_key), auth=access is not None)
        self.auth = Authenticator(AccessConfig.load(access)) if access is not None else None
        self.audit = AuditLog(audit)
        self.service = service
        self.routes = {_path_of(op): op for op in _POST_OPS if op in service.ops}
        self.openapi = openapi_document(service)
        self._httpd = _Server((host, port), _Handler)
        self._httpd.gateway = self
        if tls_cert and tls_key:
            self._httpd.socket = server_ssl_context(tls_cert, tls_key).wrap_socket(
                self._httpd.socket, server_side=True, do_handshake_on_connect=False)
        self._thread: threading.Thread | None = None
        h, p = self._httpd.server_address[:2]
        self.url = f"{'https' if tls_cert else 'http'}://{h if isinstance(h, str) else h.decode()}:{p}"
        self.started = time.monotonic()

    def start(self) -> HttpGateway:
        """Serve in a daemon thread; returns self."""
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.1},
                                        name="telediag-api-http", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the listening socket."""
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    def __enter__(self) -> HttpGateway:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
