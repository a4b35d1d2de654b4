"""The API documents: `/v1/openapi.json` (HTTP) and `/v1/asyncapi.json` (subscriptions)."""

from __future__ import annotations

from functools import cache

import orjson
from starlette.requests import Request
from starlette.responses import Response

from livepush.asyncapi import asyncapi
from livepush.openapi import openapi


@cache
def _encoded(name: str) -> bytes:
    # Built once per process: the documents depend on nothing but the code.
    document = openapi() if name == "openapi" else asyncapi()
    return orjson.dumps(document, option=orjson.OPT_INDENT_2)


async def openapi_json(request: Request) -> Response:
    """OpenAPI 3.1 of the HTTP API."""
    return Response(_encoded("openapi"), media_type="application/json")


async def asyncapi_json(request: Request) -> Response:
    """AsyncAPI 3 of the WebSocket and SSE messages."""
    return Response(_encoded("asyncapi"), media_type="application/json")
