"""The inference API client, re-exported as ``telediag.client.InferenceClient``.

See :mod:`telediag.api.client` (and ``api/API.md``) for the protocol.

Examples
--------
>>> from telediag.client import InferenceClient
>>> InferenceClient.__module__
'telediag.api.client'
"""

from telediag.api.client import HttpInferenceClient, InferenceClient
from telediag.api.schema import ApiError

__all__ = ["ApiError", "HttpInferenceClient", "InferenceClient"]
