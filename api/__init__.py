"""Inference API for other services: ZeroMQ ROUTER server, HTTP/JSON gateway, client, registry.

* :class:`~telediag.api.service.Service` — operations, worker pool, deadlines, limits.
* :class:`~telediag.api.server.ApiServer` — the ZeroMQ ROUTER server (default ``tcp://127.0.0.1:5557``).
* :class:`~telediag.api.http.HttpGateway` — HTTP/JSON with ``/openapi.json`` (default port 8557).
* :class:`~telediag.api.client.InferenceClient` / :class:`~telediag.api.client.HttpInferenceClient`.
* :class:`~telediag.api.registry.ModelRegistry` — model cards, sha256 checks, hot reload.

The message schema is documented in ``api/API.md``.

Examples
--------
>>> from telediag.api import ApiServer, InferenceClient, Service
>>> srv = ApiServer(Service(workers=1), "tcp://127.0.0.1:*").start()
>>> with InferenceClient(srv.endpoint, timeout_s=5) as c:
...     sorted(c.health())[:2]
['api_version', 'counters']
>>> srv.stop(close_service=True)
"""

from telediag.api.client import HttpInferenceClient, InferenceClient
from telediag.api.registry import ModelRegistry
from telediag.api.schema import API_VERSION, ERROR_CODES, ApiError, Limits
from telediag.api.server import DEFAULT_ADDR, ApiServer
from telediag.api.service import Service

__all__ = [
    "API_VERSION",
    "DEFAULT_ADDR",
    "ERROR_CODES",
    "ApiError",
    "ApiServer",
    "HttpInferenceClient",
    "InferenceClient",
    "Limits",
    "ModelRegistry",
    "Service",
]
