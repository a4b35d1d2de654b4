"""Scheduled entries: the record each is held as until its time, and the change releasing it.

The record is the entry's JSON as `GET /v1/feeds/{feed}/scheduled` lists it: `{"id",
"publish_at", "status": "scheduled", "scheduled_at", "updated_at", "token", "entry":
{title, body, author, tags, pinned, meta}}`. The release publishes it as any new entry,
with `published_at` = `publish_at` (whichever node releases it, and however late, the
entry says when its embargo lifted), the record as the claim the broker checks in the
same atomic step that assigns its seq, and its first revision in the scheduler's name.
"""

from __future__ import annotations

from typing import Any

import orjson

from livepush.entries import entry_fields
from livepush.model import Change, EventType, Scheduled
from livepush.revisions import changed_fields, revision_record
from livepush.schema import EDITABLE
from livepush.wire import entry_template

# Pending entries per feed, at most (each is kept until its time or its cancellation).
MAX_SCHEDULED = 1000


def scheduled_record(
    entry_id: str, publish_at: str, fields: dict[str, Any], token: str, scheduled_at: str
) -> bytes:
    """A new scheduled entry's record (`fields`: every editable field, as validated)."""
    return orjson.dumps(
        {
            "id": entry_id,
            "publish_at": publish_at,
            "status": "scheduled",
            "scheduled_at": scheduled_at,
            "updated_at": scheduled_at,
            "token": token,
            "entry": {name: fields.get(name) for name in EDITABLE},
        }
    )


def changed_record(
    record: bytes, patch: dict[str, Any], publish_at: str | None, updated_at: str
) -> bytes:
    """The record after a change of its fields (null removes an optional one) or time."""
    data = orjson.loads(record)
    data["entry"].update(patch)
    if publish_at is not None:
        data["publish_at"] = publish_at
    data["updated_at"] = updated_at
    return orjson.dumps(data)


def accepted_body(item: Scheduled) -> bytes:
    """The 202 answer to a scheduled entry: `{"id", "publish_at", "status": "scheduled"}`."""
    data = orjson.loads(item.record)
    return orjson.dumps({"id": data["id"], "publish_at": data["publish_at"], "status": "scheduled"})


def release_change(item: Scheduled) -> Change:
    """The change that publishes a scheduled entry, valid only while it is still `item`."""
    data = orjson.loads(item.record)
    fields, at = data["entry"], data["publish_at"]
    return Change(
        EventType.CREATED,
        item.entry_id,
        entry_template(item.entry_id, None, entry_fields(fields, at, at)),
        pinned=bool(fields["pinned"]),
        revision=revision_record(at, data["token"], changed_fields(None, fields)),
        claim=item.record,
    )


def scheduled_body(feed: str, items: tuple[Scheduled, ...]) -> bytes:
    """`GET /v1/feeds/{feed}/scheduled`: the pending entries, soonest first."""
    records = [orjson.Fragment(item.record) for item in items]
    return orjson.dumps({"feed": feed, "scheduled": records})
