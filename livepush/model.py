"""The nouns of the wire contract: feeds, entries, events and positions."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import IntEnum, StrEnum

FEED_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,127}")


def is_feed_name(name: str) -> bool:
    """Tell whether `name` is a valid feed name (SPEC: `^[a-z0-9][a-z0-9._-]{0,127}$`)."""
    return FEED_NAME.fullmatch(name) is not None


class EventType(StrEnum):
    CREATED = "entry.created"
    UPDATED = "entry.updated"
    DELETED = "entry.deleted"
    FEED_UPDATED = "feed.updated"  # title, description or status: `meta` instead of an entry
    PURGED = "entry.purged"  # what history holds at a purged entry's seqs; never live


class FeedStatus(StrEnum):
    """Where a feed's coverage stands (SPEC "Stories"); a new feed is live."""

    LIVE = "live"
    PAUSED = "paused"
    ENDED = "ended"


class CloseCode(IntEnum):
    NORMAL = 1000
    GOING_AWAY = 1001
    UNSUPPORTED_DATA = 1003  # a binary frame: the contract is text
    INVALID_DATA = 1007  # a text frame that is not UTF-8
    POLICY = 1008
    TOO_BIG = 1009
    INTERNAL_ERROR = 1011
    SERVICE_RESTART = 1012
    TRY_AGAIN_LATER = 1013


@dataclass(frozen=True, slots=True)
class Position:
    """Where a feed stands: one life of its history (`epoch`) and the last seq in it."""

    epoch: str
    seq: int


@dataclass(frozen=True, slots=True)
class Event:
    """One accepted change of a feed, as it travels from the broker to the hub.

    `payload` is the event's JSON exactly as every subscriber receives it: it is
    built once, where the seq is assigned, and never re-encoded on the way out.
    """

    feed: str
    epoch: str
    seq: int
    type: EventType
    payload: bytes
    # When the ingest node handed the change to its broker (Unix seconds, 0: unknown),
    # for the accept-to-socket-write histogram; not part of what the event is.
    accepted: float = field(default=0.0, compare=False)


@dataclass(frozen=True, slots=True)
class Change:
    """What a publisher asks the broker to record as the feed's next event.

    `entry_parts` is the entry's JSON split where its seq goes (two parts for a new
    entry, whose seq is the event's; one part, the whole JSON, when the seq is already
    known). `expected` is the JSON the stored entry must still have for an update or
    a retraction to apply: a compare-and-set that keeps concurrent corrections from
    overwriting each other.
    """

    type: EventType
    entry_id: str
    entry_parts: tuple[bytes, ...] = ()
    pinned: bool = False
    expected: bytes | None = None
    # Stories (SPEC): the revision record a new or corrected entry adds to its trail
    # (`revisions.revision_record`); for a scheduled entry's release, the scheduled
    # record it must still be (claimed in the same atomic step that assigns the seq);
    # for a purge (a DELETED change), its audit record.
    revision: bytes | None = None
    claim: bytes | None = None
    purge: bytes | None = None


@dataclass(frozen=True, slots=True)
class Published:
    """The broker's answer to a publish: the event's position and the stored entry."""

    position: Position
    entry: bytes | None
    duplicate: bool = False


@dataclass(frozen=True, slots=True)
class History:
    """A feed's recent events after some seq, with what a resume decision needs."""

    epoch: str
    head_seq: int
    first_seq: int
    events: tuple[Event, ...]


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The feed as a reader sees it, consistent with `head_seq`; entries are JSON."""

    feed: str
    epoch: str
    head_seq: int
    entries: tuple[bytes, ...]
    meta: bytes = b"{}"  # the feed's metadata JSON (title, description, status, times)


@dataclass(frozen=True, slots=True)
class About:
    """A feed's position and its metadata JSON (the `meta` of its `feed.updated` events)."""

    epoch: str
    head_seq: int
    meta: bytes


@dataclass(frozen=True, slots=True)
class Scheduled:
    """An entry held until `publish_at` (Unix ms); `record` is its JSON as the API lists it."""

    entry_id: str
    publish_at: int
    record: bytes


@dataclass(frozen=True, slots=True)
class Due:
    """Feeds whose earliest scheduled entry falls due by `now` plus a look-ahead: each with
    that time (Unix ms), as told by the broker's clock (`now`, Unix ms)."""

    now: int
    feeds: tuple[tuple[str, int], ...]


@dataclass(frozen=True, slots=True)
class Revisions:
    """An entry's trail: each revision record (oldest first) and its purge's audit record."""

    records: tuple[bytes, ...]
    purge: bytes | None = None


@dataclass(frozen=True, slots=True)
class StoredEntry:
    """An entry's current revision as stored, and whether it is still live."""

    json: bytes
    live: bool
