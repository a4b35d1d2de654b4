"""The ingest API: publish (now or at a time), correct and retract entries."""

from __future__ import annotations

import logging
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from livepush.auth import audit, audit_log
from livepush.entries import entry_fields, new_entry_id, now_rfc3339, rfc3339_ms
from livepush.errors import (
    BadJSON,
    Conflict,
    InvalidEntry,
    NotFound,
    TooLarge,
    UnsupportedMediaType,
)
from livepush.model import Change, EventType, Scheduled, is_feed_name
from livepush.revisions import changed_fields, revision_record
from livepush.runtime import Runtime, runtime_of
from livepush.scheduled import accepted_body, scheduled_record
from livepush.schema import parse_patch, parse_submission
from livepush.tokens import Action, PublisherToken
from livepush.wire import entry_template

# A correction retried this many times against concurrent ones gives up with 503.
MAX_CAS_ATTEMPTS = 8
MAX_IDEMPOTENCY_KEY = 200


def entry_id_of(request: Request) -> str:
    entry_id: str = request.path_params["entry_id"]
    if not (0 < len(entry_id) <= 64 and entry_id.isascii() and entry_id.isalnum()):
        raise NotFound(f"no entry {entry_id!r}")
    return entry_id


def feed_of(request: Request) -> str:
    feed: str = request.path_params["feed"]
    if not is_feed_name(feed):
        raise InvalidEntry(
            "bad feed name", fields={"feed": "must match ^[a-z0-9][a-z0-9._-]{0,127}$"}
        )
    return feed


async def read_json(request: Request, limit: int) -> object:
    """The request's JSON body: 415 if not JSON, 413 past `limit` bytes, 400 if malformed."""
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type != "application/json":
        raise UnsupportedMediaType("send the entry as Content-Type: application/json")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise TooLarge(f"the body is over {limit} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise TooLarge(f"the body is over {limit} bytes")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as error:
        raise BadJSON(f"the body is not valid JSON: {error}") from None


def _json(body: bytes, status: int, headers: dict[str, str] | None = None) -> Response:
    return Response(body, status, headers=headers, media_type="application/json")


async def create_entry(request: Request) -> Response:
    """`POST /v1/feeds/{feed}/entries`: 201 with the stored entry; with `publish_at`,
    202 and the entry is held until then (api/stories.py)."""
    runtime = runtime_of(request)
    feed = feed_of(request)
    token = runtime.access.writer(request.headers.get("authorization"), Action.PUBLISH, feed)
    key = request.headers.get("idempotency-key")
    if key is not None and not (0 < len(key) <= MAX_IDEMPOTENCY_KEY and key.isprintable()):
        raise InvalidEntry(
            "bad Idempotency-Key",
            fields={"Idempotency-Key": f"1..{MAX_IDEMPOTENCY_KEY} printable characters"},
        )
    fields, publish_at = parse_submission(await read_json(request, runtime.settings.max_body))
    runtime.publishers.spend(token)
    if publish_at is not None:
        return await schedule_entry(runtime, feed, token, fields, publish_at, key)
    now = now_rfc3339()
    entry_id = new_entry_id()
    change = Change(
        EventType.CREATED,
        entry_id,
        entry_template(entry_id, None, entry_fields(fields, now, now)),
        pinned=fields["pinned"],
        revision=revision_record(now, token.name, changed_fields(None, fields)),
    )
    published = await runtime.broker.publish(feed, change, idempotency_key=key)
    if not published.duplicate:
        runtime.published += 1
        audit(token, Action.PUBLISH, feed, entry_id, published.position.seq)
    if published.duplicate and published.entry is None:
        raise NotFound("the entry this Idempotency-Key published has been purged")
    headers = {"Idempotency-Replayed": "true"} if published.duplicate else None
    return _json(published.entry or b"{}", 201, headers)


async def schedule_entry(
    runtime: Runtime,
    feed: str,
    token: PublisherToken,
    fields: dict[str, Any],
    publish_at: int,
    key: str | None,
) -> Response:
    """A new entry with `publish_at`: 202 `{"id", "publish_at", "status": "scheduled"}`,
    and nothing is published until the broker releases it (releaser.py)."""
    entry_id, now = new_entry_id(), now_rfc3339()
    at = rfc3339_ms(publish_at)
    record = scheduled_record(entry_id, at, fields, token.name, now)
    item = Scheduled(entry_id, publish_at, record)
    stored = await runtime.broker.schedule(feed, item, idempotency_key=key)
    duplicate = stored.entry_id != entry_id
    if not duplicate:
        audit_story(token, "schedule", feed, entry_id, publish_at=at)
    headers = {"Idempotency-Replayed": "true"} if duplicate else None
    return _json(accepted_body(stored), 202, headers)


def audit_story(
    token: PublisherToken, action: str, feed: str, entry_id: str | None, **more: object
) -> None:
    """Log an accepted story write (auth.audit's line, with actions of its own:
    feed, schedule, reschedule, unschedule, purge)."""
    if audit_log.isEnabledFor(logging.INFO):
        line = {"token": token.name, "action": action, "feed": feed, "entry": entry_id, **more}
        audit_log.info("%s", orjson.dumps(line).decode())


async def update_entry(request: Request) -> Response:
    """`PATCH /v1/feeds/{feed}/entries/{id}`: 200 with the corrected entry."""
    runtime = runtime_of(request)
    feed = feed_of(request)
    token = runtime.access.writer(request.headers.get("authorization"), Action.CORRECT, feed)
    entry_id = entry_id_of(request)
    patch = parse_patch(await read_json(request, runtime.settings.max_body))
    runtime.publishers.spend(token)
    for _ in range(MAX_CAS_ATTEMPTS):
        stored = await runtime.broker.entry(feed, entry_id)
        if stored is None or not stored.live:
            raise NotFound(f"no live entry {entry_id!r} in feed {feed!r}")
        before = orjson.loads(stored.json)
        entry = {**before, **patch}
        now = now_rfc3339()
        fields = entry_fields(entry, entry["published_at"], now)
        change = Change(
            EventType.UPDATED,
            entry_id,
            entry_template(entry_id, entry["seq"], fields),
            pinned=bool(fields["pinned"]),
            expected=stored.json,
            revision=revision_record(now, token.name, changed_fields(before, entry)),
        )
        try:
            published = await runtime.broker.publish(feed, change)
        except Conflict:
            continue  # another correction landed first: apply ours on top of it
        runtime.published += 1
        audit(token, Action.CORRECT, feed, entry_id, published.position.seq)
        return _json(published.entry or b"{}", 200)
    raise Conflict(entry_id)


async def delete_entry(request: Request) -> Response:
    """`DELETE /v1/feeds/{feed}/entries/{id}`: 204; the entry leaves the snapshot."""
    runtime = runtime_of(request)
    feed = feed_of(request)
    token = runtime.access.writer(request.headers.get("authorization"), Action.RETRACT, feed)
    entry_id = entry_id_of(request)
    runtime.publishers.spend(token)
    published = await runtime.broker.publish(feed, Change(EventType.DELETED, entry_id))
    runtime.published += 1
    audit(token, Action.RETRACT, feed, entry_id, published.position.seq)
    return Response(status_code=204)
