"""The OpenAPI 3.1 document of the HTTP API, built from the models that validate requests.

Request bodies are `schema.NewEntry` and `schema.EntryPatch` themselves, so the
document cannot drift from what the server accepts. Responses are described by the
models below; the suite checks real answers against them (tests/test_api_documents.py
and the schemathesis run in tests/test_api_fuzz.py). Each error status names the one
`code` it carries, so a client (and schemathesis) can rely on the pair.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from livepush import __version__
from livepush.schema import EntryPatch, FeedPatch, NewEntry, Purge, ScheduledPatch
from livepush.wire import MAX_SEQ

FEED_PATTERN = "^[a-z0-9][a-z0-9._-]{0,127}$"
ENTRY_ID_PATTERN = "^[0-9A-Za-z]{1,64}$"
# Printable ASCII without spaces at either end (an HTTP header's value is trimmed).
LAST_EVENT_ID_PATTERN = "^(([!-~]*:)?[0-9]{1,15})?$"
IDEMPOTENCY_KEY_PATTERN = "^[!-~]([ -~]{0,198}[!-~])?$"


class Entry(BaseModel):
    """An entry as stored and delivered: every field present, absent ones null."""

    model_config = ConfigDict(extra="allow", title="Entry")

    id: str
    seq: int = Field(ge=1)
    published_at: str
    updated_at: str
    title: str | None
    body: str
    author: str | None
    tags: list[str] | None
    pinned: bool
    meta: dict[str, Any] | None


class FeedMeta(BaseModel):
    """A feed's metadata (the `meta` of `feed.updated`)."""

    model_config = ConfigDict(extra="allow", title="FeedMeta")

    title: str | None
    description: str | None
    status: Literal["live", "paused", "ended"]
    created_at: str
    ended_at: str | None


class Event(BaseModel):
    """One event of a feed: `entry` for created and updated, `id` for deleted and purged,
    `meta` for feed.updated."""

    model_config = ConfigDict(extra="allow", title="Event")

    type: Literal["entry.created", "entry.updated", "entry.deleted", "entry.purged", "feed.updated"]
    feed: str
    seq: int = Field(ge=1)
    entry: Entry | None = None
    id: str | None = None
    meta: FeedMeta | None = None


class History(BaseModel):
    model_config = ConfigDict(extra="allow", title="History")

    feed: str
    epoch: str
    head_seq: int = Field(ge=0)
    first_seq: int = Field(ge=0, description="the oldest seq history still holds")
    events: list[Event]


class Snapshot(FeedMeta):
    model_config = ConfigDict(extra="allow", title="Snapshot")

    feed: str
    epoch: str
    head_seq: int = Field(ge=0)
    entries: list[Entry]


class FeedInfo(FeedMeta):
    model_config = ConfigDict(extra="allow", title="FeedInfo")

    feed: str
    epoch: str
    head_seq: int = Field(ge=0)
    subscribers: int = Field(ge=0, description="over every node")


class FeedChanged(FeedMeta):
    """The feed after a change of its metadata; `head_seq` is its `feed.updated` event's."""

    model_config = ConfigDict(extra="allow", title="FeedChanged")

    feed: str
    epoch: str
    head_seq: int = Field(ge=1)


class ScheduledAccepted(BaseModel):
    model_config = ConfigDict(extra="allow", title="ScheduledAccepted")

    id: str
    publish_at: str
    status: Literal["scheduled"]


class ScheduledEntry(ScheduledAccepted):
    """A pending scheduled entry: its fields, its time, who scheduled it and when."""

    model_config = ConfigDict(extra="allow", title="ScheduledEntry")

    scheduled_at: str
    updated_at: str
    token: str = Field(description="the name of the token that scheduled it")
    entry: dict[str, Any] = Field(description="title, body, author, tags, pinned, meta")


class ScheduledList(BaseModel):
    model_config = ConfigDict(extra="allow", title="ScheduledList")

    feed: str
    scheduled: list[ScheduledEntry]


class PurgeRecord(BaseModel):
    """A purge's audit record; `seq` is its `entry.deleted` event's."""

    model_config = ConfigDict(extra="allow", title="PurgeRecord")

    seq: int = Field(ge=1)
    at: str
    token: str
    reason: str


class Purged(PurgeRecord):
    model_config = ConfigDict(extra="allow", title="Purged")

    feed: str
    id: str


class Revision(BaseModel):
    """One version of an entry; a purged entry's keep everything but `entry` (null)."""

    model_config = ConfigDict(extra="allow", title="Revision")

    seq: int = Field(ge=1, description="the seq of the event that made this version")
    updated_at: str
    token: str = Field(description="the name of the token that wrote it")
    changed: list[str] = Field(description="the fields this version changed")
    entry: Entry | None


class Revisions(BaseModel):
    model_config = ConfigDict(extra="allow", title="Revisions")

    feed: str
    id: str
    revisions: list[Revision]
    purged: PurgeRecord | None


class Status(BaseModel):
    model_config = ConfigDict(title="Status")

    status: str


# Every error status livepush answers, with the one code it carries.
ERROR_CODES: dict[int, tuple[str, str]] = {
    400: ("bad_json", "the body (or, for events, `since`/Last-Event-ID) is malformed"),
    401: ("unauthorized", "no token, or one that is unknown, expired or badly signed"),
    403: ("forbidden", "a valid token that may not do this"),
    404: ("not_found", "no such entry, page or path"),
    405: ("method_not_allowed", "the path has no such method"),
    409: ("conflict", "corrections kept colliding; retry"),
    413: ("too_large", "the body is over 64 KiB"),
    415: ("unsupported_media_type", "the body is not application/json"),
    422: ("invalid", "a field, parameter or feed name is not valid; `fields` names each"),
    429: ("rate_limited", "the token's rate is spent; see Retry-After"),
    503: ("broker_unavailable", "the broker cannot be reached; retry shortly"),
}
# The one status whose code differs by endpoint: an event stream's bad position.
BAD_SINCE = ("bad_since", "`since` or Last-Event-ID is not [<epoch>:]<seq>")


def _error_schema(codes: tuple[str, ...]) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["code", "message"],
                "properties": {
                    "code": {"enum": list(codes)},
                    "message": {"type": "string"},
                    "fields": {"type": "object", "additionalProperties": {"type": "string"}},
                },
            }
        },
    }


def _error(status: int, *codes: str) -> dict[str, Any]:
    code, description = ERROR_CODES[status]
    response: dict[str, Any] = {
        "description": description,
        "content": {"application/json": {"schema": _error_schema(codes or (code,))}},
    }
    if status == 429:
        response["headers"] = {
            "Retry-After": {"schema": {"type": "integer", "minimum": 1}, "required": True}
        }
    if status == 401:
        response["headers"] = {"WWW-Authenticate": {"schema": {"type": "string"}}}
    return response


def _errors(*statuses: int) -> dict[str, Any]:
    return {str(status): _error(status) for status in statuses}


def _json(schema: str, description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}},
    }


def _content(media_type: str, description: str) -> dict[str, Any]:
    return {"description": description, "content": {media_type: {"schema": {"type": "string"}}}}


def _document(kind: str) -> dict[str, Any]:
    return {
        "description": kind,
        "content": {"application/json": {"schema": {"type": "object"}}},
    }


# One Server-Sent Event (OpenAPI 3.1: the schema of an event stream describes each
# event); its `data` is the message's JSON, as in /v1/asyncapi.json.
SSE_EVENT = {
    "type": "object",
    "required": ["data"],
    "properties": {
        "event": {
            "enum": [
                "subscribed",
                "entry.created",
                "entry.updated",
                "entry.deleted",
                "entry.purged",
                "feed.updated",
                "reset",
                "receipt",
                "unsubscribed",
            ]
        },
        "data": {"type": "string", "contentMediaType": "application/json"},
        "id": {"type": "string", "pattern": "^[^:]*:[0-9]+$"},
    },
}


REPLAYED = {
    "Idempotency-Replayed": {
        "description": "`true`: the first answer to this key",
        "schema": {"type": "string", "enum": ["true"]},
    }
}


def _query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "schema": schema, "description": description}


FEED = {
    "name": "feed",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": FEED_PATTERN},
}
ENTRY_ID = {
    "name": "entry_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": ENTRY_ID_PATTERN},
}
SEQ = {"type": "integer", "minimum": 0, "maximum": MAX_SEQ}
SINCE = _query("since", SEQ, "events after this seq")
EPOCH = _query("epoch", {"type": "string"}, "the epoch `since` belongs to")
# Reads of a private feed need a reader token (or a publisher token covering the feed):
# `{}` first, since every other feed is public and anonymous.
READ_SECURITY: list[dict[str, list[str]]] = [{}, {"bearer": []}, {"query_token": []}]
WRITE_SECURITY: list[dict[str, list[str]]] = [{"bearer": []}]
READ_ERRORS = (401, 403, 404, 422, 503)
WRITE_ERRORS = (400, 401, 403, 404, 413, 415, 422, 429, 503)


def _operation(
    operation_id: str,
    summary: str,
    responses: dict[str, Any],
    *,
    parameters: list[dict[str, Any]] | None = None,
    security: list[dict[str, list[str]]] | None = None,
    body: str | None = None,
) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "operationId": operation_id,
        "summary": summary,
        "responses": responses,
    }
    if parameters:
        operation["parameters"] = parameters
    operation["security"] = security if security is not None else []
    if body is not None:
        operation["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{body}"}}},
        }
    return operation


def _paths() -> dict[str, Any]:
    page = _content("text/html", "the page")
    return {
        "/v1/feeds/{feed}/entries": {
            "parameters": [FEED],
            "get": _operation(
                "history",
                "Events after `since`, oldest first",
                {"200": _json("History", "the events"), **_errors(*READ_ERRORS)},
                parameters=[
                    SINCE,
                    _query("limit", {"type": "integer", "minimum": 1, "maximum": 1000}, "at most"),
                ],
                security=READ_SECURITY,
            ),
            "post": _operation(
                "publish",
                "Publish a new entry (with `publish_at`: schedule it)",
                {
                    "201": {**_json("Entry", "the stored entry"), "headers": REPLAYED},
                    "202": {
                        **_json("ScheduledAccepted", "scheduled: published at `publish_at`"),
                        "headers": REPLAYED,
                    },
                    **_errors(*WRITE_ERRORS),
                },
                parameters=[
                    {
                        "name": "Idempotency-Key",
                        "in": "header",
                        "schema": {"type": "string", "pattern": IDEMPOTENCY_KEY_PATTERN},
                        "description": "a retry with the same key publishes nothing new",
                    }
                ],
                security=WRITE_SECURITY,
                body="NewEntry",
            ),
        },
        "/v1/feeds/{feed}/entries/{entry_id}": {
            "parameters": [FEED, ENTRY_ID],
            "patch": _operation(
                "correct",
                "Change fields of an entry (null removes an optional one)",
                {"200": _json("Entry", "the corrected entry"), **_errors(*WRITE_ERRORS, 409)},
                security=WRITE_SECURITY,
                body="EntryPatch",
            ),
            "delete": _operation(
                "retract",
                "Retract an entry",
                {"204": {"description": "retracted"}, **_errors(401, 403, 404, 422, 429, 503)},
                security=WRITE_SECURITY,
            ),
        },
        "/v1/feeds/{feed}": {
            "parameters": [FEED],
            "get": _operation(
                "feed_info",
                "The feed's position, metadata and subscribers on every node",
                {"200": _json("FeedInfo", "the feed"), **_errors(*READ_ERRORS)},
                security=READ_SECURITY,
            ),
            "patch": _operation(
                "update_feed",
                "Change the feed's title, description or status (a feed.updated event)",
                {"200": _json("FeedChanged", "the feed"), **_errors(*WRITE_ERRORS, 409)},
                security=WRITE_SECURITY,
                body="FeedPatch",
            ),
        },
        "/v1/feeds/{feed}/scheduled": {
            "parameters": [FEED],
            "get": _operation(
                "scheduled",
                "The pending scheduled entries, soonest first",
                {
                    "200": _json("ScheduledList", "the scheduled entries"),
                    **_errors(401, 403, 422, 503),
                },
                security=WRITE_SECURITY,
            ),
        },
        "/v1/feeds/{feed}/scheduled/{entry_id}": {
            "parameters": [FEED, ENTRY_ID],
            "patch": _operation(
                "reschedule",
                "Change a scheduled entry's fields or time",
                {
                    "200": _json("ScheduledEntry", "the scheduled entry"),
                    **_errors(*WRITE_ERRORS, 409),
                },
                security=WRITE_SECURITY,
                body="ScheduledPatch",
            ),
            "delete": _operation(
                "unschedule",
                "Cancel a scheduled entry",
                {"204": {"description": "cancelled"}, **_errors(401, 403, 404, 422, 429, 503)},
                security=WRITE_SECURITY,
            ),
        },
        "/v1/feeds/{feed}/entries/{entry_id}/revisions": {
            "parameters": [FEED, ENTRY_ID],
            "get": _operation(
                "revisions",
                "Every version of an entry, oldest first, and its purge",
                {"200": _json("Revisions", "the trail"), **_errors(401, 403, 404, 422, 503)},
                security=WRITE_SECURITY,
            ),
        },
        "/v1/feeds/{feed}/entries/{entry_id}/purge": {
            "parameters": [FEED, ENTRY_ID],
            "post": _operation(
                "purge",
                "Remove an entry's text from everywhere it was kept (legal takedown)",
                {"200": _json("Purged", "the audit record"), **_errors(*WRITE_ERRORS)},
                security=WRITE_SECURITY,
                body="Purge",
            ),
        },
        "/v1/feeds/{feed}/snapshot": {
            "parameters": [FEED],
            "get": _operation(
                "snapshot",
                "The feed as a reader sees it, newest first",
                {"200": _json("Snapshot", "the entries"), **_errors(*READ_ERRORS)},
                parameters=[
                    _query("limit", {"type": "integer", "minimum": 1, "maximum": 500}, "at most"),
                    _query(
                        "before",
                        {"type": "integer", "minimum": 1, "maximum": MAX_SEQ},
                        "entries created before this seq",
                    ),
                ],
                security=READ_SECURITY,
            ),
        },
        "/v1/feeds/{feed}/events": {
            "parameters": [FEED],
            "get": _operation(
                "events",
                "The feed as Server-Sent Events (messages: /v1/asyncapi.json)",
                {
                    "200": {
                        "description": "the stream, until the server ends it",
                        "content": {"text/event-stream": {"schema": SSE_EVENT}},
                    },
                    "400": {
                        "description": BAD_SINCE[1],
                        "content": {"application/json": {"schema": _error_schema((BAD_SINCE[0],))}},
                    },
                    **_errors(*READ_ERRORS),
                },
                parameters=[
                    SINCE,
                    EPOCH,
                    {
                        "name": "Last-Event-ID",
                        "in": "header",
                        "schema": {"type": "string", "pattern": LAST_EVENT_ID_PATTERN},
                        "description": "`<epoch>:<seq>` as the stream's ids (or a bare seq)",
                    },
                ],
                security=READ_SECURITY,
            ),
        },
        "/": {"get": _operation("reader_demo", "The reader page of `demo`", {"200": page})},
        "/feeds/{feed}": {
            "parameters": [{**FEED, "schema": {"type": "string"}}],
            "get": _operation(
                "reader",
                "The reader page of a feed",
                {"200": page, **_errors(401, 403, 404, 503)},
                security=READ_SECURITY,
            ),
        },
        "/editor": {"get": _operation("editor", "The editor console", {"200": page})},
        "/v1/livepush.js": {
            "get": _operation(
                "client", "The browser client", {"200": _content("text/javascript", "ES module")}
            )
        },
        "/static/{name}": {
            "parameters": [
                {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}
            ],
            "get": _operation(
                "static",
                "The pages' scripts and styles",
                {
                    "200": {
                        "description": "the file",
                        "content": {
                            "text/javascript": {"schema": {"type": "string"}},
                            "text/css": {"schema": {"type": "string"}},
                        },
                    },
                    **_errors(404),
                },
            ),
        },
        "/healthz": {
            "get": _operation("healthz", "The process is alive", {"200": _json("Status", "ok")})
        },
        "/readyz": {
            "get": _operation(
                "readyz",
                "The broker is reachable",
                {
                    "200": _json("Status", "ready"),
                    "503": _json("Status", "draining, or the broker is unavailable"),
                },
            )
        },
        "/metrics": {
            "get": _operation(
                "metrics", "Prometheus text format", {"200": _content("text/plain", "metrics")}
            )
        },
        "/v1/openapi.json": {
            "get": _operation("openapi", "This document", {"200": _document("OpenAPI 3.1")})
        },
        "/v1/asyncapi.json": {
            "get": _operation(
                "asyncapi", "The WebSocket and SSE messages", {"200": _document("AsyncAPI 3")}
            )
        },
    }


def _components() -> dict[str, Any]:
    schemas: dict[str, Any] = {}
    models: tuple[type[BaseModel], ...] = (NewEntry, EntryPatch, FeedPatch, ScheduledPatch, Purge)
    models += (Entry, Event, History)
    models += (Snapshot, FeedInfo, FeedChanged, ScheduledAccepted, ScheduledEntry)
    models += (ScheduledList, Purged, Revisions, Status)
    for model in models:
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(schema.pop("$defs", {}))
        schemas[model.model_config.get("title") or model.__name__] = schema
    return {
        "schemas": schemas,
        "securitySchemes": {
            "bearer": {
                "type": "http",
                "scheme": "bearer",
                "description": "a publisher token (writes; reads of the feeds in its scope), "
                "or a reader JWT (reads of the private feeds it names)",
            },
            "query_token": {
                "type": "apiKey",
                "in": "query",
                "name": "token",
                "description": "a reader token in the URL, where no header can be set "
                "(EventSource, a page); access logs redact it",
            },
        },
    }


def openapi() -> dict[str, Any]:
    """The OpenAPI 3.1 document of livepush's HTTP API."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "livepush",
            "version": __version__,
            "description": "Publish entries to live feeds; read their history and snapshot. "
            "Subscriptions (WebSocket and SSE messages) are in /v1/asyncapi.json.",
        },
        "paths": _paths(),
        "components": _components(),
    }
