"""HTTP/JSON gateway: parity with ZeroMQ, status codes, and property-based tests against its
own OpenAPI document (schemathesis generates valid and invalid requests; no 5xx allowed except
a documented ``deadline_exceeded`` 504)."""

from __future__ import annotations

import http.client
import json
import urllib.request
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from telediag.api import ApiError, HttpInferenceClient, Limits, ModelRegistry, Service
from telediag.api.http import HttpGateway, openapi_document

FS = 360.0


def _ecg(seconds: float = 6.0, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * FS)) / FS
    r = np.exp(-(((t % 0.8) - 0.4) ** 2) / (2 * 0.012**2))
    return np.stack([r, 0.4 * r], axis=1) + 0.01 * rng.standard_normal((t.size, 2))


@pytest.fixture(scope="module")
def gateway() -> Iterator[HttpGateway]:
    svc = Service(ModelRegistry(roots=[]), workers=2, limits=Limits(max_payload_bytes=1 << 20,
                                                                    max_http_body_bytes=4 << 20))
    gw = HttpGateway(svc, "127.0.0.1", 0).start()
    yield gw
    gw.stop()
    svc.close()


def _post(gw: HttpGateway, path: str, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    conn = http.client.HTTPConnection(gw.url.split("//")[1], timeout=60)
    try:
        conn.request("POST", path, body=body, headers={"Content-Type": "application/json", **(headers or {})})
        r = conn.getresponse()
        return r.status, json.loads(r.read())
    finally:
        conn.close()


def test_ecg_http_equals_local_nested_lists_and_base64(gateway: HttpGateway) -> None:
    from telediag.evaluation.ecg_analyze import analyze_recording
    from telediag.sources.readers import Recording

    x = _ecg()
    local = analyze_recording(Recording(x, FS, ("ch0", "ch1"), ("mV", "mV"), "request"))
    c = HttpInferenceClient(gateway.url, timeout_s=60)
    via_b64 = c.analyze_ecg(x, FS)
    status, doc = _post(gateway, "/v1/ecg/analyze", json.dumps(
        {"id": "n1", "params": {"fs": FS}, "signal": x.tolist()}).encode())
    assert status == 200 and doc["ok"] and doc["id"] == "n1"
    dump = lambda d: json.dumps(d, sort_keys=True)  # noqa: E731
    assert dump(via_b64) == dump(local) == dump(doc["result"])


def test_pcg_http(gateway: HttpGateway) -> None:
    c = HttpInferenceClient(gateway.url)
    r = c.analyze_pcg(np.zeros(4000, np.int16), 2000, classify=False, source="zeros")
    assert r["segments"] == [] and r["source"] == "zeros"


@pytest.mark.parametrize(
    ("path", "body", "status", "code", "needle"),
    [
        ("/v1/ecg/analyze", b"{", 400, "bad_request", "not valid JSON"),
        ("/v1/ecg/analyze", b"[1]", 400, "bad_request", "must be a JSON object"),
        ("/v1/ecg/analyze", b'{"params": {"fs": NaN}, "signal": [1]}', 400, "bad_request", "NaN"),
        ("/v1/ecg/analyze", b'{"params": {"fs": 50}, "signal": [[1, 2]]}', 400, "bad_request", "params.fs must be in"),
        ("/v1/ecg/analyze", b'{"params": {"fs": 360}, "signal": [[1, 2], [3]]}', 400, "bad_request", "same length"),
        ("/v1/ecg/analyze", b'{"params": {"fs": 360}, "signal": [1, "a"]}', 400, "bad_request", "signal[1] must be a number"),
        ("/v1/ecg/analyze", b'{"params": {"fs": 360}, "signal": {"b64": "@@", "dtype": "<f4", "shape": [1]}}',
         400, "bad_request", "base64"),
        ("/v1/ecg/analyze", b'{"params": {"fs": 360}, "signal": [1, 2], "x": 1}', 400, "bad_request", "unknown body key"),
        ("/v1/ecg/analyze", b'{"params": {"fs": 360}, "signal": [1, 2]}', 422, "invalid_input", "at least 1 s"),
        ("/v1/ecg/analyze", b'{"v": 9, "params": {"fs": 360}, "signal": [1]}', 400, "unsupported_version", "v must be 1"),
        ("/v1/nope", b"{}", 404, "unknown_op", "no POST route"),
        ("/v1/model/infer", b'{"params": {"model": "zz"}, "inputs": {"x": [1]}}', 404, "unknown_model", "zz"),
    ],
)
def test_http_errors(gateway: HttpGateway, path: str, body: bytes, status: int, code: str, needle: str) -> None:
    got, doc = _post(gateway, path, body)
    assert (got, doc["error"]["code"]) == (status, code), doc
    assert needle in doc["error"]["message"]
    assert doc["ok"] is False


def test_http_body_too_large(gateway: HttpGateway) -> None:
    # refused from the Content-Length alone, before the body is read
    conn = http.client.HTTPConnection(gateway.url.split("//")[1], timeout=30)
    try:
        conn.putrequest("POST", "/v1/ecg/analyze")
        conn.putheader("Content-Type", "application/json")
        conn.putheader("Content-Length", str(5 << 20))
        conn.endheaders()
        r = conn.getresponse()
        doc = json.loads(r.read())
    finally:
        conn.close()
    assert r.status == 413 and doc["error"]["code"] == "payload_too_large" and "limit" in doc["error"]["message"]


def test_http_get_routes(gateway: HttpGateway) -> None:
    doc = json.loads(urllib.request.urlopen(gateway.url + "/openapi.json").read())
    assert doc["openapi"].startswith("3.") and "/v1/ecg/analyze" in doc["paths"]
    assert ("/v1/image/segment" in doc["paths"]) == (gateway.service.available()["image.segment"] is None)
    c = HttpInferenceClient(gateway.url)
    assert c.health()["status"] == "ok" and c.models() == []
    with pytest.raises(ApiError) as ei:
        c.request("GET", "/v1/nothing")
    assert ei.value.code == "unknown_op"


def test_openapi_document_is_valid() -> None:
    schemathesis = pytest.importorskip("schemathesis")  # dev dependency; CI installs it
    doc = openapi_document(Service(ModelRegistry(roots=[]), workers=1))
    schemathesis.openapi.from_dict(doc).validate()  # raises on an invalid document


# --------------------------------------------------------------------------- property-based


def _operations() -> list[tuple[str, str, str]]:
    """(path, method, mode); GET routes take no input, so they have no negative cases."""
    doc = openapi_document(Service(ModelRegistry(roots=[]), workers=1))
    return [(p, m.upper(), mode) for p, item in doc["paths"].items() for m in item
            for mode in ("positive", "negative") if mode == "positive" or m == "post"]


@pytest.mark.slow
@pytest.mark.parametrize(("path", "method", "mode"), _operations())
def test_openapi_fuzz_no_server_errors(gateway: HttpGateway, path: str, method: str, mode: str) -> None:
    schemathesis = pytest.importorskip("schemathesis")
    from hypothesis import HealthCheck, given, settings
    from schemathesis.checks import (
        content_type_conformance,
        negative_data_rejection,
        response_schema_conformance,
        status_code_conformance,
    )
    from schemathesis.generation import GenerationMode

    schema = schemathesis.openapi.from_dict(gateway.openapi)
    op = schema[path][method]
    strategy = op.as_strategy(GenerationMode(mode))

    @settings(max_examples=40, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(case=strategy)
    def run(case: Any) -> None:
        resp = case.call(base_url=gateway.url, timeout=60)
        body = resp.json()
        if resp.status_code >= 500:
            assert resp.status_code == 504 and body["error"]["code"] == "deadline_exceeded", (
                resp.status_code, body, case.body)
        checks = [status_code_conformance, content_type_conformance, response_schema_conformance]
        if mode == "negative":
            checks.append(negative_data_rejection)  # schema-invalid input must get a 4xx
        case.validate_response(resp, checks=checks)

    run()
