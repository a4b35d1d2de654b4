"""A follower's position in a feed, and what each server message does to it; no I/O.

`Cursor.receive()` takes one message of the WebSocket protocol (SPEC "Subscribe:
WebSocket") and answers what to do: an Event to hand on, a Step for the shell
(livepush/client.py) to take, a Refused to raise, or nothing. Order is arithmetic, as
on the server: only `seq == last + 1` is handed on.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

# WebSocket `error` codes that end this connection's subscription but are worth a
# reconnect; every other one (bad_feed, unauthorized, forbidden, ...) would recur.
RETRY_CODES = frozenset({"broker_unavailable", "rate_limited"})

CREATED, UPDATED, DELETED = "entry.created", "entry.updated", "entry.deleted"
# Messages without a seq that are not events; anything else without one is ignored.
_CONTROL = frozenset({"subscribed", "reset", "error", "unsubscribed", "pong", "receipt"})


class ClientError(Exception):
    """Base of the errors this client raises."""


class Refused(ClientError):
    """The server refused a request: its SPEC error `code`, HTTP `status` (0 on a WebSocket)."""

    def __init__(
        self,
        code: str,
        message: str,
        *,
        status: int = 0,
        fields: Mapping[str, str] | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(f"{code}: {message}" if message else code)
        self.code = code
        self.message = message
        self.status = status
        self.fields: Mapping[str, str] = fields or {}
        self.retry_after = retry_after


@dataclass(frozen=True, slots=True)
class Entry:
    """One entry as the server stores it (SPEC "Entry"); absent optional fields are None."""

    id: str
    seq: int
    body: str
    title: str | None = None
    author: str | None = None
    tags: tuple[str, ...] | None = None
    pinned: bool = False
    published_at: str | None = None
    updated_at: str | None = None
    meta: Mapping[str, Any] | None = field(default=None, hash=False)  # free-form JSON
    # The entry's JSON as received, with any field newer than this client.
    data: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Entry:
        tags = data.get("tags")
        return cls(
            id=str(data.get("id", "")),
            seq=_int(data.get("seq")) or 0,
            body=str(data.get("body", "")),
            title=_str(data.get("title")),
            author=_str(data.get("author")),
            tags=tuple(str(tag) for tag in tags) if isinstance(tags, list) else None,
            pinned=data.get("pinned") is True,
            published_at=_str(data.get("published_at")),
            updated_at=_str(data.get("updated_at")),
            meta=data["meta"] if isinstance(data.get("meta"), dict) else None,
            data=data,
        )


@dataclass(frozen=True, slots=True)
class Event:
    """One event of a feed, delivered in seq order and once.

    `entry` is set for entry.created and entry.updated, `id` for entry.deleted (and
    entry.purged). A type this client does not know (feed.updated, ...) is an Event
    too: its fields are in `message`, the event's JSON object as received.
    """

    type: str
    feed: str
    seq: int
    epoch: str
    entry: Entry | None = None
    id: str | None = None
    # Not compared: within one epoch, the seq names the event.
    message: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class Reset:
    """The feed's history since the last seq is out of reach: replace the view.

    `entries` is the reloaded snapshot's (newest first, pinned ones included);
    events continue from `head_seq` in `epoch`. `snapshot` is its JSON as received.
    """

    feed: str
    epoch: str
    head_seq: int
    entries: tuple[Entry, ...]
    snapshot: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)


class Action(Enum):
    """What the shell does after a message."""

    LIVE = "live"  # subscribed: the backoff starts over
    RESUME = "resume"  # a hole, or the server let go: reconnect from the last seq
    RELOAD = "reload"  # reset: reload the snapshot, then subscribe from its head


@dataclass(frozen=True, slots=True)
class Step:
    """An Action, and why (for the status line)."""

    action: Action
    reason: str = ""


class Cursor:
    """One feed's position as a follower holds it: the last seq handed on, its epoch."""

    __slots__ = ("epoch", "feed", "needs_snapshot", "seq")

    def __init__(self, feed: str, since: int | None = None, epoch: str | None = None) -> None:
        self.feed = feed
        self.seq = since  # the last seq handed on; None: "from now", until subscribed
        self.epoch = epoch
        self.needs_snapshot = False

    def position(self) -> dict[str, Any]:
        """The subscription's fields: the feed, and where to resume when known."""
        fields: dict[str, Any] = {"feed": self.feed}
        if self.seq is not None:
            fields["since"] = self.seq
        if self.epoch is not None:
            fields["epoch"] = self.epoch
        return fields

    def receive(self, message: Mapping[str, Any]) -> Event | Step | Refused | None:
        feed = message.get("feed")
        if feed is not None and feed != self.feed:
            return None
        kind = message.get("type")
        if kind == "subscribed":
            if self.seq is None:
                self.seq = _int(message.get("head_seq"))
            self.epoch = _str(message.get("epoch")) or self.epoch
            return Step(Action.LIVE)
        if kind == "reset":
            self.needs_snapshot = True
            return Step(Action.RELOAD, f"reset to epoch {message.get('epoch')}")
        if kind == "error":
            code, text = str(message.get("code")), str(message.get("message", ""))
            if code in RETRY_CODES:
                return Step(Action.RESUME, f"{code}: {text}")
            return Refused(code, text)
        if kind == "unsubscribed":  # e.g. token_expired: subscribe again, missing nothing
            return Step(Action.RESUME, f"unsubscribed: {message.get('reason')}")
        seq = _int(message.get("seq"))
        if kind in _CONTROL or not isinstance(kind, str) or seq is None:
            return None  # pong, receipt, or a control message newer than this client
        if self.seq is not None and seq <= self.seq:
            return None  # replayed twice (a resume's seam): already handed on
        if self.seq is not None and seq > self.seq + 1:
            # Never hand on past a hole: the server replays it when we resume.
            return Step(Action.RESUME, f"hole: seq {seq} after {self.seq}")
        self.seq = seq
        entry = message.get("entry")
        return Event(
            type=kind,
            feed=self.feed,
            seq=seq,
            epoch=self.epoch or "",
            entry=Entry.from_json(entry) if isinstance(entry, dict) else None,
            id=_str(message.get("id")),
            message=message,
        )

    def reloaded(self, snapshot: Mapping[str, Any]) -> Reset:
        """Take the snapshot's position (its head_seq continues it exactly)."""
        head, epoch, entries = (
            _int(snapshot.get("head_seq")),
            snapshot.get("epoch"),
            snapshot.get("entries"),
        )
        if head is None or not isinstance(epoch, str) or not isinstance(entries, list):
            raise Refused("bad_snapshot", f"not a snapshot: {str(snapshot)[:200]}")
        self.seq, self.epoch, self.needs_snapshot = head, epoch, False
        return Reset(
            feed=self.feed,
            epoch=epoch,
            head_seq=head,
            entries=tuple(Entry.from_json(e) for e in entries if isinstance(e, dict)),
            snapshot=snapshot,
        )


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _str(value: object) -> str | None:
    return value if isinstance(value, str) else None
