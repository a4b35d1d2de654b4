"""Feed reads: the feed's position, its event history and the reader's snapshot."""

from __future__ import annotations

import orjson
from starlette.requests import Request
from starlette.responses import Response

from livepush.api.ingest import feed_of
from livepush.errors import BadSince, InvalidEntry
from livepush.feedmeta import meta_members
from livepush.model import Snapshot
from livepush.runtime import runtime_of
from livepush.wire import MAX_SEQ, parse_since

HISTORY_LIMIT, HISTORY_MAX = 100, 1000
SNAPSHOT_LIMIT, SNAPSHOT_MAX = 50, 500


def int_param(request: Request, name: str, default: int | None, low: int, high: int) -> int | None:
    """A query parameter as an integer in low..high, or 422 naming it."""
    raw = request.query_params.get(name)
    if raw is None:
        return default
    # The length check first: int() refuses more than 4,300 digits with a ValueError.
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 20) or not low <= int(raw) <= high:
        raise InvalidEntry(f"bad {name}", fields={name: f"an integer in {low}..{high}"})
    return int(raw)


def _since(request: Request) -> int:
    """History's `?since=`: 0 when absent, else wire.parse_since's rule, or 422 naming it."""
    raw = request.query_params.get("since")
    if raw is None:
        return 0
    try:
        return parse_since(raw)
    except BadSince:
        raise InvalidEntry("bad since", fields={"since": f"an integer in 0..{MAX_SEQ}"}) from None


def _json(body: bytes, private: bool = False) -> Response:
    # A private feed's reads are for one reader: no shared cache may keep them.
    headers = {"Cache-Control": "private, no-store"} if private else None
    return Response(body, 200, headers=headers, media_type="application/json")


def readable_feed(request: Request) -> tuple[str, bool]:
    """The request's feed, if its token may read it (401/403 for a private feed),
    and whether the feed is private."""
    access = runtime_of(request).access
    feed = feed_of(request)
    access.read_request(request, feed)
    return feed, access.is_private(feed)


async def feed_info(request: Request) -> Response:
    """`GET /v1/feeds/{feed}`: epoch, head, the subscribers on every node, and the feed's
    metadata (title, description, status, created_at, ended_at).

    Other nodes' counts are their last report (every 2 s); this node's are live.
    """
    runtime = runtime_of(request)
    feed, private = readable_feed(request)
    about = await runtime.broker.about(feed)
    head = orjson.dumps(
        {
            "feed": feed,
            "epoch": about.epoch,
            "head_seq": about.head_seq,
            "subscribers": await runtime.total_subscribers(feed),
        }
    )
    return _json(head[:-1] + b"," + meta_members(about.meta) + b"}", private)


async def feed_history(request: Request) -> Response:
    """`GET /v1/feeds/{feed}/entries?since=N&limit=M`: events after N, oldest first.

    Extension: `first_seq`, the oldest seq history still holds; `since` older than
    `first_seq - 1` cannot be continued without a gap (the WebSocket answers `reset`).
    """
    runtime = runtime_of(request)
    feed, private = readable_feed(request)
    since = _since(request)
    limit = int_param(request, "limit", HISTORY_LIMIT, 1, HISTORY_MAX) or HISTORY_LIMIT
    history = await runtime.broker.history(feed, since, limit)
    head = orjson.dumps(
        {
            "feed": feed,
            "epoch": history.epoch,
            "head_seq": history.head_seq,
            "first_seq": history.first_seq,
        }
    )
    events = b",".join(event.payload for event in history.events)
    return _json(head[:-1] + b',"events":[' + events + b"]}", private)


def snapshot_body(snapshot: Snapshot) -> bytes:
    """`{"feed", "epoch", "head_seq", <the feed's metadata>, "entries"}`."""
    head = orjson.dumps(
        {"feed": snapshot.feed, "epoch": snapshot.epoch, "head_seq": snapshot.head_seq}
    )
    meta = b"," + meta_members(snapshot.meta) if len(snapshot.meta) > 2 else b""
    return head[:-1] + meta + b',"entries":[' + b",".join(snapshot.entries) + b"]}"


async def feed_snapshot(request: Request) -> Response:
    """`GET /v1/feeds/{feed}/snapshot?limit=M&before=S`: the feed as a reader sees it."""
    runtime = runtime_of(request)
    feed, private = readable_feed(request)
    limit = int_param(request, "limit", SNAPSHOT_LIMIT, 1, SNAPSHOT_MAX) or SNAPSHOT_LIMIT
    before = int_param(request, "before", None, 1, MAX_SEQ)
    snapshot = await runtime.broker.snapshot(feed, limit, before)
    return _json(snapshot_body(snapshot), private)
