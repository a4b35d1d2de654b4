"""The newsroom's story tools: a feed's metadata, its scheduled entries, revisions, purges.

Writes need a publisher token whose scope covers the feed: the `publish` action for
the feed's metadata and its scheduled entries (scheduling is publishing later), the
`retract` action for a purge. Reads of the scheduled entries and of revisions need any
publisher token covering the feed. A new scheduled entry is a POST of an entry with
`publish_at` (ingest.py).
"""

from __future__ import annotations

import orjson
from starlette.requests import Request
from starlette.responses import Response

from livepush.api.ingest import (
    MAX_CAS_ATTEMPTS,
    audit_story,
    entry_id_of,
    feed_of,
    read_json,
)
from livepush.entries import now_rfc3339, rfc3339_ms
from livepush.errors import Conflict, Forbidden, NotFound
from livepush.feedmeta import changed_meta, meta_members
from livepush.model import Change, EventType, Revisions, Scheduled
from livepush.revisions import purge_record, revisions_body
from livepush.runtime import Runtime, runtime_of
from livepush.scheduled import changed_record, scheduled_body
from livepush.schema import parse_feed_patch, parse_purge, parse_scheduled_patch
from livepush.tokens import Action, PublisherToken, bearer_token


def _json(body: bytes, status: int = 200) -> Response:
    # The newsroom's own view of a feed: never kept by a shared cache.
    return Response(
        body, status, headers={"Cache-Control": "no-store"}, media_type="application/json"
    )


def _desk(request: Request, feed: str) -> tuple[Runtime, PublisherToken]:
    """The publisher token of the request, whatever its actions, if it covers `feed`:
    401 without one, 403 for a token that is not a publisher's or not for this feed."""
    runtime = runtime_of(request)
    token = runtime.publishers.find(bearer_token(request.headers.get("authorization")))
    if token is None:
        raise Forbidden("this needs a publisher token")
    if not token.covers(feed):
        raise Forbidden(f"this token may not read feed {feed!r}'s newsroom data")
    return runtime, token


async def update_feed(request: Request) -> Response:
    """`PATCH /v1/feeds/{feed}`: title, description, status; a `feed.updated` event with
    the feed's next seq. 200 `{"feed", "epoch", "head_seq", <metadata>}`, `head_seq`
    being the event's seq."""
    runtime = runtime_of(request)
    feed = feed_of(request)
    token = runtime.access.writer(request.headers.get("authorization"), Action.PUBLISH, feed)
    patch = parse_feed_patch(await read_json(request, runtime.settings.max_body))
    runtime.publishers.spend(token)
    for _ in range(MAX_CAS_ATTEMPTS):
        about = await runtime.broker.about(feed)
        meta = changed_meta(about.meta, patch, now_rfc3339())
        change = Change(EventType.FEED_UPDATED, "", (meta,), expected=about.meta)
        try:
            published = await runtime.broker.publish(feed, change)
        except Conflict:
            continue  # another change landed first: apply this one on top of it
        runtime.published += 1
        position = published.position
        audit_story(token, "feed", feed, None, seq=position.seq, **patch)
        head = orjson.dumps({"feed": feed, "epoch": position.epoch, "head_seq": position.seq})
        return _json(head[:-1] + b"," + meta_members(published.entry or meta) + b"}")
    raise Conflict(feed)


async def list_scheduled(request: Request) -> Response:
    """`GET /v1/feeds/{feed}/scheduled`: the pending entries, soonest first."""
    feed = feed_of(request)
    runtime, _ = _desk(request, feed)
    return _json(scheduled_body(feed, await runtime.broker.scheduled(feed)))


async def _pending(runtime: Runtime, feed: str, entry_id: str) -> Scheduled:
    for item in await runtime.broker.scheduled(feed):
        if item.entry_id == entry_id:
            return item
    raise NotFound(f"no scheduled entry {entry_id!r} in feed {feed!r}")


async def update_scheduled(request: Request) -> Response:
    """`PATCH /v1/feeds/{feed}/scheduled/{id}`: change its fields (as a correction would)
    or its `publish_at`; 200 with its record. A change that loses the race to its
    release is a 404: the entry is published, correct it instead."""
    runtime = runtime_of(request)
    feed = feed_of(request)
    token = runtime.access.writer(request.headers.get("authorization"), Action.PUBLISH, feed)
    entry_id = entry_id_of(request)
    patch, publish_at = parse_scheduled_patch(await read_json(request, runtime.settings.max_body))
    runtime.publishers.spend(token)
    at = None if publish_at is None else rfc3339_ms(publish_at)
    for _ in range(MAX_CAS_ATTEMPTS):
        item = await _pending(runtime, feed, entry_id)
        record = changed_record(item.record, patch, at, now_rfc3339())
        changed = Scheduled(entry_id, publish_at or item.publish_at, record)
        try:
            await runtime.broker.schedule(feed, changed, expected=item.record)
        except Conflict:
            continue
        audit_story(token, "reschedule", feed, entry_id, publish_at=at)
        return _json(record)
    raise Conflict(entry_id)


async def cancel_scheduled(request: Request) -> Response:
    """`DELETE /v1/feeds/{feed}/scheduled/{id}`: 204; it will never be published."""
    runtime = runtime_of(request)
    feed = feed_of(request)
    token = runtime.access.writer(request.headers.get("authorization"), Action.PUBLISH, feed)
    entry_id = entry_id_of(request)
    runtime.publishers.spend(token)
    await runtime.broker.unschedule(feed, entry_id)
    audit_story(token, "unschedule", feed, entry_id)
    return Response(status_code=204)


async def entry_revisions(request: Request) -> Response:
    """`GET /v1/feeds/{feed}/entries/{id}/revisions`: every version, oldest first, each
    with `updated_at`, the token's name and the fields it changed; and the purge's
    audit record, if any. An entry published before revisions were kept has none."""
    feed = feed_of(request)
    runtime, _ = _desk(request, feed)
    entry_id = entry_id_of(request)
    revisions = await runtime.broker.revisions(feed, entry_id)
    if revisions is None:
        if await runtime.broker.entry(feed, entry_id) is None:
            raise NotFound(f"no entry {entry_id!r} in feed {feed!r}")
        revisions = Revisions(())
    return _json(revisions_body(feed, entry_id, revisions))


async def purge_entry(request: Request) -> Response:
    """`POST /v1/feeds/{feed}/entries/{id}/purge` with `{"reason"}`: the entry's text
    leaves the entries, its revisions and the history of every node; an `entry.deleted`
    is published. 200 `{"feed", "id", "seq", "at", "token", "reason"}`: the audit record."""
    runtime = runtime_of(request)
    feed = feed_of(request)
    token = runtime.access.writer(request.headers.get("authorization"), Action.RETRACT, feed)
    entry_id = entry_id_of(request)
    reason = parse_purge(await read_json(request, runtime.settings.max_body))
    runtime.publishers.spend(token)
    at = now_rfc3339()
    record = purge_record(at, token.name, reason)
    published = await runtime.broker.publish(
        feed, Change(EventType.DELETED, entry_id, purge=record)
    )
    runtime.published += 1
    seq = published.position.seq
    audit_story(token, "purge", feed, entry_id, seq=seq, reason=reason)
    body = {"feed": feed, "id": entry_id, "seq": seq, "at": at, "token": token.name}
    return _json(orjson.dumps({**body, "reason": reason}))
