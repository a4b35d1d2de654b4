"""/v1/openapi.json and /v1/asyncapi.json: valid documents, complete, and true to the wire."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import orjson
import pytest
from openapi_spec_validator import validate
from starlette.routing import Route

from livepush.app import create_app
from livepush.asyncapi import asyncapi
from livepush.config import Settings
from livepush.openapi import openapi
from livepush.schema import EntryPatch, NewEntry
from tests.support import Client, Server
from tests.test_sse import sse_blocks

ASYNCAPI_SCHEMA = Path(__file__).parent / "asyncapi" / "asyncapi-3.0.0.schema.json"


@pytest.fixture(scope="module")
def documented() -> Iterator[Server]:
    server = Server()
    try:
        yield server.start()
    finally:
        server.stop()


def served(server: Server, name: str) -> dict[str, Any]:
    response = httpx.get(f"{server.base_url}/v1/{name}.json")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    document: dict[str, Any] = response.json()
    return document


def test_the_openapi_document_is_valid_openapi_3_1(documented: Server) -> None:
    document = served(documented, "openapi")
    assert document["openapi"] == "3.1.0"
    validate(document)  # openapi-spec-validator: raises on the first violation
    assert document == openapi()  # the document schemathesis fuzzes (test_api_fuzz.py)


def test_the_asyncapi_document_is_valid_asyncapi_3(documented: Server) -> None:
    document = served(documented, "asyncapi")
    assert document["asyncapi"] == "3.0.0"
    schema = json.loads(ASYNCAPI_SCHEMA.read_text())
    jsonschema.Draft7Validator(schema).validate(document)
    assert document == asyncapi()


def test_an_invalid_asyncapi_document_would_be_caught() -> None:
    schema = json.loads(ASYNCAPI_SCHEMA.read_text())
    broken = asyncapi()
    broken["operations"]["receiveClientMessages"]["action"] = "listen"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft7Validator(schema).validate(broken)


def test_every_http_route_and_method_is_documented() -> None:
    app = create_app(Settings(demo=False))
    routes = {
        (route.path, method.lower())
        for route in app.routes
        if isinstance(route, Route)
        for method in route.methods or ()
        if method != "HEAD"
    }
    documented = {
        (path, method)
        for path, item in openapi()["paths"].items()
        for method in item
        if method != "parameters"
    }
    assert routes == documented


def test_request_bodies_are_the_models_that_validate_requests() -> None:
    schemas = openapi()["components"]["schemas"]
    assert schemas["NewEntry"] == NewEntry.model_json_schema()
    assert schemas["EntryPatch"] == EntryPatch.model_json_schema()


def message_validator(document: dict[str, Any], name: str) -> jsonschema.Draft7Validator:
    """Validates one message against its payload schema in `document` (refs resolved)."""
    root = {"$ref": f"#/components/schemas/{name}", "components": document["components"]}
    return jsonschema.Draft7Validator(root)


SCHEMA_OF = {
    "subscribed": "Subscribed",
    "entry.created": "EntryCreated",
    "entry.updated": "EntryUpdated",
    "entry.deleted": "EntryDeleted",
    "feed.updated": "FeedUpdated",
    "entry.purged": "EntryPurged",
    "reset": "Reset",
    "error": "Error",
    "pong": "Pong",
    "receipt": "Receipt",
    "unsubscribed": "Unsubscribed",
}


def check_messages(messages: list[dict[str, Any]]) -> None:
    document = asyncapi()
    for message in messages:
        message_validator(document, SCHEMA_OF[message["type"]]).validate(message)


async def test_websocket_messages_are_the_documented_ones(documented: Server) -> None:
    client = await Client.connect(documented.ws_url)
    try:
        subscribed = await client.subscribe("documents-ws")
        base, headers = documented.base_url, documented.headers()
        async with httpx.AsyncClient(base_url=base, headers=headers) as http:
            created = await http.post("/v1/feeds/documents-ws/entries", json={"body": "one"})
            path = f"/v1/feeds/documents-ws/entries/{created.json()['id']}"
            assert (await http.patch(path, json={"title": "two"})).status_code == 200
            assert (await http.delete(path)).status_code == 204
            feed = "/v1/feeds/documents-ws"
            assert (await http.patch(feed, json={"status": "ended"})).status_code == 200
            purge = {"reason": "a court order"}
            assert (await http.post(f"{path}/purge", json=purge)).status_code == 200
        for kind in ("entry.created", "entry.updated", "entry.deleted", "feed.updated"):
            await client.recv_type(kind)
        await client.recv_type("entry.deleted")  # the purge's
        # A purged entry's events are replayed as entry.purged.
        await client.send({"type": "unsubscribe", "feed": "documents-ws"})
        await client.subscribe("documents-ws", since=0)
        await client.recv_type("entry.purged")
        await client.send({"type": "ping"})
        await client.recv_type("pong")
        await client.send({"type": "nonsense"})
        await client.recv_type("error")
        await client.send({"type": "subscribe", "feed": "documents-ws", "since": 0, "epoch": "x"})
        await client.recv_type("reset")
        await client.send({"type": "subscribe", "feed": "documents-ws", "receipts": True})
        await client.recv_type("error")  # receipts without a publisher token
        assert subscribed["type"] == "subscribed"
        assert {m["type"] for m in client.messages} >= set(SCHEMA_OF) - {"receipt", "unsubscribed"}
        check_messages(client.messages)
    finally:
        await client.close()


async def test_event_stream_messages_are_the_documented_ones(documented: Server) -> None:
    documented.post("documents-sse", {"body": "one"})
    url = f"{documented.base_url}/v1/feeds/documents-sse/events?since=0"
    messages = []
    async with (
        httpx.AsyncClient(timeout=10) as http,
        http.stream("GET", url) as response,
        contextlib.aclosing(sse_blocks(response)) as blocks,
    ):
        async for block in blocks:
            if "data" in block:
                message = orjson.loads(block["data"])
                assert message["type"] == block["event"]
                messages.append(message)
            if len(messages) == 2:
                break
    assert [m["type"] for m in messages] == ["subscribed", "entry.created"]
    check_messages(messages)
