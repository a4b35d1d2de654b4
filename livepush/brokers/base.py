"""The broker seam: the interface every broker implements, and the guarantees it owes."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Protocol

from livepush.model import Change, Event, History, Published, Snapshot, StoredEntry
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
        """An entry's current revision, live or retracted; None if it never existed."""

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
