"""The broker seam: the interface every broker implements, and the guarantees it owes."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from livepush.model import (
    About,
    Change,
    Due,
    Event,
    History,
    Published,
    Revisions,
    Scheduled,
    Snapshot,
    StoredEntry,
)
from livepush.timing import Histogram

IDEMPOTENCY_TTL = 24 * 3600


def new_epoch() -> str:
    """A fresh epoch: 8 URL-safe characters, never containing ':' (SSE ids are epoch:seq)."""
    return secrets.token_urlsafe(6)


@dataclass(frozen=True, slots=True)
class Receipt:
    """How far one event got: subscribers reached and fan-out time, summed over nodes."""

    feed: str
    seq: int
    delivered: int
    nodes: int
    fanout_ms: float


@dataclass(frozen=True, slots=True)
class ShardState:
    """One of the broker's pub/sub connections: the server it reaches, whether it is
    subscribed to all it should be, and how many watched feeds it carries."""

    name: str
    connected: bool
    feeds: int


@dataclass(frozen=True, slots=True)
class BrokerStats:
    """What a broker counts for /metrics, read at scrape time (nothing per delivery)."""

    reconnects: int = 0  # live stream connections re-established after a loss
    resyncs: int = 0  # times every watched feed had to catch up from history
    holes: int = 0  # gaps in a feed's live stream, filled from history
    renewals: int = 0  # new epochs started because history lost writes
    connect_errors: int = 0  # failed attempts to reach the broker
    publish_errors: int = 0  # publishes answered 503
    publish_seconds: Histogram | None = None  # how long each accepted publish took
    shards: tuple[ShardState, ...] = ()


class Listener(Protocol):
    """What a broker calls as events arrive; the hub implements it. Never awaits."""

    def deliver(self, event: Event) -> None:
        """An event arrived on the live stream (at most once, maybe out of order)."""

    def flush(self) -> None:
        """The live stream has read all it had for now: what it delivered since may go
        out at once. A broker need not call it; the hub then sends by its next turn."""

    def resync(self) -> None:
        """The live stream was interrupted: every watched feed must catch up from history."""

    def receipt(self, receipt: Receipt) -> None:
        """New delivery totals for an event, for the editors watching propagation."""


class Broker(Protocol):
    """Publishes feed events with gap-free seqs and keeps each feed's recent history.

    publish() assigns the next seq, appends the event to history and updates the
    feed's entries in one atomic step; a 2xx answered after it returned is never lost.
    The live stream may drop events (Redis pub/sub is at-most-once): listeners fill
    holes from history(), and resync() after any interruption.

    The stories (SPEC) ride the same step. A `feed.updated` change sets the feed's
    metadata (`change.expected`: the metadata it must still have). A new or corrected
    entry's `change.revision` joins its trail. A `change.claim` publishes a scheduled
    entry only if it is still scheduled as that record and due by the broker's clock,
    and unschedules it in the same step: however many nodes release it, it is
    published once. A `change.purge` (on a DELETED change) also rewrites the entry's
    events in history as `entry.purged`, drops its text from the entries and its
    revisions, keeps the audit record, and marks the `entry.deleted` it publishes as
    a purge (`"purged": true`) so that every node scrubs its own recent events.
    Scheduled entries are kept as long as the broker keeps feeds (in Redis: across
    restarts; in-process: for the life of the process).
    """

    history_size: int

    async def start(self, listener: Listener) -> None:
        """Start the live stream to `listener`; the broker owns its tasks until aclose()."""

    async def publish(
        self, feed: str, change: Change, *, idempotency_key: str | None = None
    ) -> Published:
        """Record `change` as the feed's next event and publish it; raise Conflict when
        `change.expected` no longer matches, NotFound for an unknown or retracted entry."""

    async def history(self, feed: str, since: int, limit: int) -> History:
        """The feed's epoch, head and first held seq, with up to `limit` events after `since`."""

    async def snapshot(self, feed: str, limit: int, before: int | None) -> Snapshot:
        """The newest `limit` live entries (created before seq `before`), plus, on the
        first page, every pinned one; read in one atomic step with the head."""

    async def entry(self, feed: str, entry_id: str) -> StoredEntry | None:
        """An entry's current revision, live or retracted; None if it never existed
        (or was purged)."""

    async def about(self, feed: str) -> About:
        """The feed's epoch, head and metadata, read in one atomic step."""

    async def revisions(self, feed: str, entry_id: str) -> Revisions | None:
        """An entry's revision trail and purge record; None if it has none."""

    async def schedule(
        self,
        feed: str,
        item: Scheduled,
        *,
        expected: bytes | None = None,
        idempotency_key: str | None = None,
    ) -> Scheduled:
        """Hold `item` until its time; with `expected`, replace the scheduled entry that is
        still that record (NotFound if it is gone, Conflict if it changed). A retry with
        an `idempotency_key` already used returns what the first stored. InvalidEntry
        when the feed holds MAX_SCHEDULED entries already."""

    async def scheduled(self, feed: str) -> tuple[Scheduled, ...]:
        """The feed's pending scheduled entries, soonest first."""

    async def unschedule(self, feed: str, entry_id: str) -> None:
        """Cancel a scheduled entry; NotFound if it is not pending (released, cancelled)."""

    async def due(self, ahead: float) -> Due:
        """Feeds with a scheduled entry due within `ahead` seconds, on every node's behalf:
        a hint (a feed listed may have nothing due by the time it is asked)."""

    async def release(self, feed: str, change_of: Callable[[Scheduled], Change]) -> int:
        """Publish the feed's due scheduled entries, each as `change_of(entry)` (a claim),
        soonest first; how many this call published (another node may take some)."""

    async def renew_epoch(self, feed: str, stale: str) -> str:
        """Start a new life of the feed if its epoch is still `stale`; the current epoch.

        Called when a node or a client proves that history lost writes under `stale`
        (a seq seen before is missing or different): the seqs that follow must not
        pass for the ones already seen."""

    async def watch(self, feed: str) -> None:
        """Receive the feed's live events from now on (returns once that holds)."""

    async def unwatch(self, feed: str) -> None:
        """Stop receiving the feed's live events."""

    async def report(self, feed: str, seq: int, delivered: int, fanout_ms: float) -> None:
        """Add this node's delivery figures for an event to the totals editors see."""

    async def publish_presence(self, node: str, counts: dict[str, int]) -> None:
        """Record this node's subscriber count per feed (0: none any more)."""

    async def subscribers(self, feed: str, node: str) -> int:
        """The subscribers of `feed` on every node but `node`, as last reported."""

    async def ready(self) -> bool:
        """Whether publishing would work now."""

    def stats(self) -> BrokerStats:
        """The broker's counters, for /metrics."""

    async def report_node(self, node: str, report: bytes) -> None:
        """Keep this node's figures (JSON) where `livepush stats` reads every node's."""

    async def aclose(self) -> None:
        """Stop every task and close every connection."""
