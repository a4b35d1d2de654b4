"""An entry's revision trail and its purge's audit record, as stored and as the API shows them.

A revision is stored as `<seq>\\n<record>\\n<entry JSON>`: the seq of the event that made
it, the record (`updated_at`, the token's name, the fields it changed) and the entry as
it then stood. The broker appends it in the step that publishes the event (publish.lua
builds the same bytes), so the trail never misses a version. A purge cuts every
revision after its second line, and keeps `<seq>\\n<audit record>`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from livepush.model import Revisions
from livepush.schema import EDITABLE

# A new entry's fields that count as set by its first version (not left at the default).
_DEFAULTS: dict[str, Any] = {"pinned": False}


def revision_record(updated_at: str, token: str, changed: list[str]) -> bytes:
    """What a version records besides the entry: when, by which token, what changed."""
    return orjson.dumps({"updated_at": updated_at, "token": token, "changed": changed})


def changed_fields(before: Mapping[str, Any] | None, after: Mapping[str, Any]) -> list[str]:
    """The editable fields `after` has that `before` did not (None: a new entry, whose
    set fields are all "changed"), in the order entries list them."""
    if before is None:
        return [name for name in EDITABLE if after.get(name) not in (None, _DEFAULTS.get(name))]
    return [name for name in EDITABLE if before.get(name) != after.get(name)]


def stored_revision(seq: int, record: bytes, entry: bytes) -> bytes:
    """One revision as the brokers keep it (publish.lua builds the same bytes)."""
    return b"%d\n%s\n%s" % (seq, record, entry)


def scrubbed(stored: bytes) -> bytes:
    """A stored revision without its entry: what a purge leaves of it."""
    seq, record, _ = stored.split(b"\n", 2)
    return b"%s\n%s\n" % (seq, record)


def purge_record(at: str, token: str, reason: str) -> bytes:
    """A purge's audit record: when, by which token, and why."""
    return orjson.dumps({"at": at, "token": token, "reason": reason})


def stored_purge(seq: int, record: bytes) -> bytes:
    """A purge's audit record as the brokers keep it, with the seq of its `entry.deleted`."""
    return b"%d\n%s" % (seq, record)


def revisions_body(feed: str, entry_id: str, revisions: Revisions) -> bytes:
    """`GET .../revisions`: every version, oldest first, and the purge if there was one.

    `{"feed", "id", "revisions": [{"seq", "updated_at", "token", "changed", "entry"}],
    "purged": null | {"seq", "at", "token", "reason"}}`; a purged entry's versions keep
    everything but their `entry` (null).
    """
    versions = []
    for stored in revisions.records:
        seq, record, entry = stored.split(b"\n", 2)
        version = {"seq": int(seq), **orjson.loads(record)}
        version["entry"] = orjson.Fragment(entry) if entry else None
        versions.append(version)
    purged = None
    if revisions.purge is not None:
        seq, record = revisions.purge.split(b"\n", 1)
        purged = {"seq": int(seq), **orjson.loads(record)}
    return orjson.dumps({"feed": feed, "id": entry_id, "revisions": versions, "purged": purged})
