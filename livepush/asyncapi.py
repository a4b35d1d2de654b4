"""The AsyncAPI 3 document of the subscriptions: WebSocket and SSE messages, both ways.

Each message is a model here, its payload schema generated from it (entries share
`openapi.Entry`). The models document, they do not parse: `wire.parse_client_message`
reads client messages and the hub writes the server's. The suite holds the two
together by validating the messages a real server sends against this document
(tests/test_api_documents.py).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from livepush import __version__
from livepush.openapi import FEED_PATTERN, Entry, FeedMeta
from livepush.wire import MAX_CLIENT_MESSAGE, MAX_SEQ

Feed = str
Seq = int

WS_ERROR_CODES = (
    "bad_json",
    "bad_message",
    "bad_feed",
    "bad_since",
    "bad_epoch",
    "unknown_type",
    "too_big",
    "not_subscribed",
    "too_many_feeds",
    "rate_limited",
    "broker_unavailable",
    "unauthorized",
    "forbidden",
)


def _model(title: str) -> ConfigDict:
    return ConfigDict(title=title, extra="allow")


# Client -> server


class Subscribe(BaseModel):
    """Subscribe to a feed after `since` (absent: from now) in `epoch`."""

    model_config = _model("Subscribe")
    type: Literal["subscribe"]
    feed: Feed = Field(pattern=FEED_PATTERN)
    since: Seq | None = Field(default=None, ge=0, le=MAX_SEQ)
    epoch: str | None = None
    receipts: bool = Field(default=False, description="propagation receipts (publisher token)")
    token: str | None = Field(
        default=None, description="a private feed's reader JWT, or a publisher token"
    )


class Unsubscribe(BaseModel):
    model_config = _model("Unsubscribe")
    type: Literal["unsubscribe"]
    feed: Feed = Field(pattern=FEED_PATTERN)


class Ping(BaseModel):
    model_config = _model("Ping")
    type: Literal["ping"]


# Server -> client


class Subscribed(BaseModel):
    """Sent before any event of the feed."""

    model_config = _model("Subscribed")
    type: Literal["subscribed"]
    feed: Feed
    epoch: str
    head_seq: Seq = Field(ge=0)


class EntryCreated(BaseModel):
    model_config = _model("EntryCreated")
    type: Literal["entry.created"]
    feed: Feed
    seq: Seq = Field(ge=1)
    entry: Entry


class EntryUpdated(BaseModel):
    model_config = _model("EntryUpdated")
    type: Literal["entry.updated"]
    feed: Feed
    seq: Seq = Field(ge=1)
    entry: Entry


class EntryDeleted(BaseModel):
    model_config = _model("EntryDeleted")
    type: Literal["entry.deleted"]
    feed: Feed
    seq: Seq = Field(ge=1)
    id: str
    purged: bool = Field(default=False, description="true: a purge took its text everywhere")


class FeedUpdated(BaseModel):
    """The feed's title, description or status changed; `meta` is all of its metadata."""

    model_config = _model("FeedUpdated")
    type: Literal["feed.updated"]
    feed: Feed
    seq: Seq = Field(ge=1)
    meta: FeedMeta


class EntryPurged(BaseModel):
    """What a purged entry's events became in history (replays carry it, never live)."""

    model_config = _model("EntryPurged")
    type: Literal["entry.purged"]
    feed: Feed
    seq: Seq = Field(ge=1)
    id: str


class Reset(BaseModel):
    """History cannot continue the subscription: reload the snapshot, subscribe again."""

    model_config = _model("Reset")
    type: Literal["reset"]
    feed: Feed
    epoch: str
    head_seq: Seq = Field(ge=0)


class Error(BaseModel):
    """A client message the server cannot act on; `feed` when it concerns one feed."""

    model_config = _model("Error")
    type: Literal["error"]
    code: Literal[WS_ERROR_CODES]  # type: ignore[valid-type]
    message: str
    feed: Feed | None = None


class Pong(BaseModel):
    model_config = _model("Pong")
    type: Literal["pong"]


class Receipt(BaseModel):
    """Running totals over every node for one event (subscriptions with receipts)."""

    model_config = _model("Receipt")
    type: Literal["receipt"]
    feed: Feed
    seq: Seq = Field(ge=1)
    delivered: int = Field(ge=0)
    nodes: int = Field(ge=0)
    fanout_ms: float = Field(ge=0)


class Unsubscribed(BaseModel):
    """The subscription ended: its reader token expired. Subscribe again with a fresh
    token and the last `since` and `epoch`; nothing is missed."""

    model_config = _model("Unsubscribed")
    type: Literal["unsubscribed"]
    feed: Feed
    reason: Literal["token_expired"]


CLIENT = (Subscribe, Unsubscribe, Ping)
EVENTS = (EntryCreated, EntryUpdated, EntryDeleted, FeedUpdated, EntryPurged)
WS_SERVER = (Subscribed, *EVENTS, Reset, Error, Pong, Receipt, Unsubscribed)
SSE_SERVER = (Subscribed, *EVENTS, Reset, Receipt, Unsubscribed)


def _name(model: type[BaseModel]) -> str:
    return str(model.model_config.get("title"))


def _messages(models: tuple[type[BaseModel], ...]) -> dict[str, Any]:
    return {_name(model): {"$ref": f"#/components/messages/{_name(model)}"} for model in models}


def _operation(
    action: str, channel: str, models: tuple[type[BaseModel], ...], summary: str
) -> dict[str, Any]:
    return {
        "action": action,
        "channel": {"$ref": f"#/channels/{channel}"},
        "summary": summary,
        "messages": [{"$ref": f"#/channels/{channel}/messages/{_name(m)}"} for m in models],
    }


def asyncapi() -> dict[str, Any]:
    """The AsyncAPI 3.0 document of livepush's WebSocket and SSE subscriptions."""
    schemas: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    for model in (*CLIENT, *WS_SERVER):
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(schema.pop("$defs", {}))
        schemas[_name(model)] = schema
        messages[_name(model)] = {
            "name": _name(model),
            "title": _name(model),
            "summary": (model.__doc__ or _name(model)).strip().splitlines()[0],
            "payload": {"$ref": f"#/components/schemas/{_name(model)}"},
        }
    seq_query = {"type": "string", "pattern": "^[0-9]{1,16}$"}
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "livepush subscriptions",
            "version": __version__,
            "description": "Live events of feeds over WebSocket and Server-Sent Events; "
            "the HTTP API is in /v1/openapi.json.",
        },
        "defaultContentType": "application/json",
        "channels": {
            "ws": {
                "address": "/v1/ws",
                "title": "WebSocket",
                "description": "Text frames, one JSON object each (client messages at "
                f"most {MAX_CLIENT_MESSAGE} bytes). One socket holds many feeds. "
                "`?feed=&since=&epoch=&token=` subscribes at once.",
                "messages": _messages((*CLIENT, *WS_SERVER)),
                "bindings": {
                    "ws": {
                        "method": "GET",
                        "query": {
                            "type": "object",
                            "properties": {
                                "feed": {"type": "string", "pattern": FEED_PATTERN},
                                "since": seq_query,
                                "epoch": {"type": "string"},
                                "token": {"type": "string"},
                            },
                        },
                    }
                },
            },
            "events": {
                "address": "/v1/feeds/{feed}/events",
                "title": "Server-Sent Events",
                "description": "`event: <type>` and `data: <the message's JSON>`; events "
                "carry `id: <epoch>:<seq>`, control messages none. Resume with `?since=N"
                "&epoch=E` or Last-Event-ID; a private feed's token in Authorization or "
                "`?token=`. `unsubscribed` ends the stream.",
                "parameters": {"feed": {"description": f"a feed name: {FEED_PATTERN}"}},
                "messages": _messages(SSE_SERVER),
            },
        },
        "operations": {
            "receiveClientMessages": _operation(
                "receive", "ws", CLIENT, "subscribe, unsubscribe, ping"
            ),
            "sendWebSocketMessages": _operation(
                "send", "ws", WS_SERVER, "events in seq order, and control messages"
            ),
            "sendEventStream": _operation(
                "send", "events", SSE_SERVER, "events in seq order, and control messages"
            ),
        },
        "components": {"schemas": schemas, "messages": messages},
    }
