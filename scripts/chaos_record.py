"""What each chaos follower saw, judged as it arrives, and the soak's verdict; no I/O.

A `Record` wraps the Python client's `Cursor` (livepush/cursor.py, the seq arithmetic
livepush.js and `livepush.client` share) and looks at every server message before the
cursor does: an event the follower already had is a duplicate the server sent, an
event past `last + 1` is a hole it sent (the follower resubscribes from `last`, as
livepush.js does), an entry id that differs from what another follower saw at that
seq is another life's entry under a seen seq. `verdict()` then holds every record
against the publishers' accepted entries and the feeds' final positions.

Cost: a record keeps counters, its segments (one per subscription point: the first
`subscribed` or snapshot, then one per reset) and the first few anomalies, not the
events: 600 followers x 12,000 events would be gigabytes of Python ints. What the
events were is checked against the `Ledger`, one id per (feed, epoch, seq) for all
followers, which is then checked against the accepted entries.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from livepush.cursor import Cursor, Event, Refused, Reset, Step

ANOMALIES_KEPT = 10  # per record: enough to reproduce one, bounded however bad the run


@dataclass(frozen=True, slots=True)
class Anomaly:
    """One thing a follower saw that the SPEC forbids, with what it needs to be found again."""

    client: str
    kind: str  # duplicated, out_of_order, mismatched, reset
    detail: str
    at: float  # seconds since the run started
    node: int  # the port of the node that sent it


@dataclass(slots=True)
class Segment:
    """A stretch of events handed on without a reset: (start, last] in one epoch."""

    epoch: str
    start: int
    last: int
    cause: str  # "subscribed" (from now), "snapshot" (a reader page's start), "reset"


@dataclass(frozen=True, slots=True)
class ResetSeen:
    """A reset and why it was allowed, or not."""

    client: str
    old_epoch: str | None
    old_seq: int | None
    epoch: str
    head_seq: int
    kind: str  # lost-history (a new epoch), behind-history (since older than history), unexplained
    at: float
    node: int


class Ledger:
    """The entry id each (feed, epoch, seq) carried, as the first follower saw it."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.ids: dict[tuple[str, str, int], str] = {}
        self.first_seen: dict[tuple[str, str, int], float] = {}  # by any follower, when
        self.clock = clock

    def see(self, feed: str, epoch: str, seq: int, entry_id: str) -> str | None:
        """Remember the id; return the id seen before when it differs."""
        key = (feed, epoch, seq)
        known = self.ids.get(key)
        if known is None:
            self.ids[key] = entry_id
            self.first_seen[key] = self.clock()
            return None
        return None if known == entry_id else known

    def out_since(self, feed: str, epoch: str | None, seq: int | None) -> float | None:
        """When a follower first saw the entry after `seq` (None: nobody has yet)."""
        if epoch is None or seq is None:
            return None
        return self.first_seen.get((feed, epoch, seq + 1))


def reset_kind(
    old_epoch: str | None, old_seq: int | None, epoch: str, head_seq: int, history_size: int
) -> str:
    """Why a reset is allowed: the history was lost (another epoch), or the follower's
    position is older than the last `history_size` events (SPEC "Guarantees")."""
    if old_epoch is not None and epoch != old_epoch:
        return "lost-history"
    if old_seq is not None and old_seq < head_seq - history_size:
        return "behind-history"
    return "unexplained"


class Record:
    """One follower's view of one feed: its cursor, and everything wrong it was sent."""

    def __init__(
        self, name: str, feed: str, transport: str, ledger: Ledger, history_size: int
    ) -> None:
        self.name, self.feed, self.transport = name, feed, transport
        self.ledger, self.history_size = ledger, history_size
        self.cursor = Cursor(feed)
        self.segments: list[Segment] = []
        self.resets: list[ResetSeen] = []
        self.anomalies: list[Anomaly] = []
        self.counts: Counter[str] = Counter()  # delivered, duplicated, out_of_order, ...
        self.connections = 0
        self.node = 0  # the port of the node of the current connection
        self.now = 0.0  # the time the shell last told

    # ----------------------------------------------------------- what the shell tells

    def connecting(self, node: int, now: float) -> None:
        self.connections += 1
        self.node, self.now = node, now

    def receive(
        self, message: Mapping[str, Any], now: float, sse_id: str | None = None
    ) -> Event | Step | Refused | None:
        """One server message: judged, then handed to the cursor; returns what it returns.

        `sse_id` is an SSE event's `id:` line (`<epoch>:<seq>`), checked against the
        data and the cursor's epoch.
        """
        self.now = now
        cursor = self.cursor
        kind, seq = message.get("type"), message.get("seq")
        is_event = isinstance(seq, int) and kind not in ("subscribed", "reset", "error")
        if is_event and cursor.seq is not None and isinstance(seq, int):
            if seq <= cursor.seq:
                self._anomaly("duplicated", f"seq {seq} after {cursor.seq} ({kind})")
            elif seq > cursor.seq + 1:
                self._anomaly("out_of_order", f"seq {seq} after {cursor.seq}: a hole ({kind})")
        if kind == "reset":
            self._reset(message)
        elif kind == "subscribed" and cursor.epoch not in (None, message.get("epoch")):
            # A resume into another epoch must be a reset, never a quiet `subscribed`.
            self._anomaly("mismatched", f"subscribed in {message.get('epoch')} from {cursor.epoch}")
        before = cursor.seq
        step = cursor.receive(message)
        if isinstance(step, Event):
            self._handed_on(step, before, sse_id)
        elif kind == "subscribed" and not self.segments and cursor.seq is not None:
            self.segments.append(Segment(cursor.epoch or "", cursor.seq, cursor.seq, "subscribed"))
        return step

    def reloaded(self, snapshot: Mapping[str, Any], cause: str = "reset") -> Reset:
        """A snapshot was reloaded (after a reset, or as a reader page starts): a new segment."""
        reset = self.cursor.reloaded(snapshot)
        if self.segments:
            self.counts["skipped"] += max(0, reset.head_seq - self.segments[-1].last)
        self.segments.append(Segment(reset.epoch, reset.head_seq, reset.head_seq, cause))
        return reset

    # ---------------------------------------------------------------- the judging

    def _handed_on(self, event: Event, before: int | None, sse_id: str | None) -> None:
        self.counts["delivered"] += 1
        segment = self.segments[-1] if self.segments else None
        if segment is None or before is None or event.seq != before + 1:
            # The cursor never hands on past a hole; this checks livepush/cursor.py too.
            self._anomaly("out_of_order", f"handed on seq {event.seq} after {before}")
        if segment is not None:
            segment.last = event.seq
        entry_id = event.entry.id if event.entry is not None else (event.id or "")
        other = self.ledger.see(self.feed, event.epoch, event.seq, entry_id)
        if other is not None:
            self._anomaly(
                "mismatched", f"seq {event.seq} of {event.epoch} is {entry_id}, others saw {other}"
            )
        if sse_id is not None and sse_id != f"{event.epoch}:{event.seq}":
            self._anomaly("mismatched", f"SSE id {sse_id} on seq {event.seq} of {event.epoch}")

    def _reset(self, message: Mapping[str, Any]) -> None:
        epoch, head = message.get("epoch"), message.get("head_seq")
        epoch = epoch if isinstance(epoch, str) else ""
        head = head if isinstance(head, int) else 0
        kind = reset_kind(self.cursor.epoch, self.cursor.seq, epoch, head, self.history_size)
        seen = ResetSeen(
            self.name, self.cursor.epoch, self.cursor.seq, epoch, head, kind, self.now, self.node
        )
        self.resets.append(seen)
        if kind == "unexplained":
            self._anomaly("reset", f"reset at seq {self.cursor.seq} to {epoch} head {head}")

    def _anomaly(self, kind: str, detail: str) -> None:
        self.counts[kind] += 1
        if len(self.anomalies) < ANOMALIES_KEPT:
            self.anomalies.append(Anomaly(self.name, kind, detail, round(self.now, 3), self.node))


# ------------------------------------------------------------------- the verdict


@dataclass(frozen=True, slots=True)
class Accepted:
    """An entry a publisher got a 2xx for."""

    feed: str
    key: str  # its Idempotency-Key
    id: str
    seq: int


@dataclass(frozen=True, slots=True)
class FeedEnd:
    """A feed's position when the soak ended, and its epoch when it began."""

    feed: str
    first_epoch: str
    epoch: str
    head_seq: int


@dataclass
class Verdict:
    """The counts of the one-line verdict, and the reasons of a FAIL."""

    published: int = 0
    delivered: int = 0
    missing: int = 0
    duplicated: int = 0
    out_of_order: int = 0
    mismatched: int = 0
    unacknowledged: int = 0  # seqs of the feed no publisher was answered 2xx for
    resets: int = 0
    lost_history_resets: int = 0
    behind_history_resets: int = 0
    unexplained_resets: int = 0
    skipped: int = 0  # events a reset's snapshot stood in for
    failures: list[str] = field(default_factory=list)
    anomalies: list[Anomaly] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures


def verdict(
    records: Iterable[Record],
    accepted: Iterable[Accepted],
    ends: Mapping[str, FeedEnd],
    *,
    persistent: bool,
) -> Verdict:
    """Every record against the accepted entries and the feeds' final positions.

    Passes when, for every follower: each accepted seq after its first subscription
    point (of the feed's final epoch) was handed on, with the accepted entry's id,
    once and in order; the server never sent a duplicate or a hole; and every reset
    had a reason: history lost (allowed only when Redis keeps no data: `persistent`
    False) or a position older than history. Also, with persistence, the feed kept its
    epoch and each seq up to the head was answered 2xx to exactly one Idempotency-Key
    (a retry never published twice); without it, every entry seen in the final epoch
    was answered 2xx to some publisher.
    """
    result = Verdict()
    accepted = list(accepted)
    result.published = len(accepted)
    ledger_ids: dict[tuple[str, str, int], str] = {}
    for record in records:
        ledger_ids.update(record.ledger.ids)
        _judge(record, ends.get(record.feed), result)
    # The entries the followers saw in each feed's final epoch, by seq.
    final_ids = {
        (feed, seq): entry_id
        for (feed, epoch, seq), entry_id in ledger_ids.items()
        if feed in ends and epoch == ends[feed].epoch
    }
    if persistent:
        _against_seqs(accepted, ends, final_ids, result)
    else:
        # Seqs start again in each life of a feed, so only ids tell entries apart:
        # every entry seen in the final life must be one a publisher was answered for.
        ids = {entry.id for entry in accepted}
        for (feed, seq), entry_id in final_ids.items():
            if entry_id not in ids:
                result.mismatched += 1
                result.failures.append(f"{feed} seq {seq}: entry {entry_id} was never accepted")
    counts = {
        "missing": result.missing,
        "duplicated": result.duplicated,
        "out_of_order": result.out_of_order,
        "mismatched": result.mismatched,
        "unacknowledged": result.unacknowledged,
        "unexplained resets": result.unexplained_resets,
    }
    if persistent:
        counts["lost-history resets"] = result.lost_history_resets
    result.failures[:0] = [f"{name}={count}" for name, count in counts.items() if count]
    if result.published == 0:
        result.failures.append("nothing was published")
    return result


def _against_seqs(
    accepted: list[Accepted],
    ends: Mapping[str, FeedEnd],
    final_ids: Mapping[tuple[str, int], str],
    result: Verdict,
) -> None:
    """One life per feed: each seq up to the head answered to exactly one key, and
    carrying that key's entry wherever a follower saw it."""
    by_seq: dict[tuple[str, int], Accepted] = {}
    for entry in accepted:
        first = by_seq.setdefault((entry.feed, entry.seq), entry)
        if first is not entry:
            result.failures.append(
                f"{entry.feed} seq {entry.seq} was answered to two keys: {first.key}, {entry.key}"
            )
    for end in ends.values():
        if end.epoch != end.first_epoch:
            result.failures.append(
                f"{end.feed}: epoch {end.first_epoch} became {end.epoch} with persistence on"
            )
        result.unacknowledged += sum(
            1 for seq in range(1, end.head_seq + 1) if (end.feed, seq) not in by_seq
        )
    beyond = [f"{feed} {seq}" for feed, seq in by_seq if feed in ends and seq > ends[feed].head_seq]
    if beyond:
        result.failures.append(f"accepted seqs past the head: {beyond[:5]}")
    for (feed, seq), entry_id in final_ids.items():
        taken = by_seq.get((feed, seq))
        if taken is not None and taken.id != entry_id:
            result.mismatched += 1
            if result.mismatched <= ANOMALIES_KEPT:
                result.failures.append(
                    f"{feed} seq {seq}: followers saw entry {entry_id}, its publisher was "
                    f"answered {taken.id} (key {taken.key})"
                )


def _judge(record: Record, end: FeedEnd | None, result: Verdict) -> None:
    counts = record.counts
    result.delivered += counts["delivered"]
    result.duplicated += counts["duplicated"]
    result.out_of_order += counts["out_of_order"]
    result.mismatched += counts["mismatched"]
    result.skipped += counts["skipped"]
    result.resets += len(record.resets)
    for reset in record.resets:
        if reset.kind == "lost-history":
            result.lost_history_resets += 1
        elif reset.kind == "behind-history":
            result.behind_history_resets += 1
        else:
            result.unexplained_resets += 1
            # What the reset skipped was silently lost to this follower.
            result.missing += max(0, reset.head_seq - (reset.old_seq or 0))
    result.anomalies.extend(record.anomalies)
    if end is None:
        result.failures.append(f"{record.name}: no final position for {record.feed}")
        return
    if not record.segments:
        result.missing += end.head_seq
        result.failures.append(f"{record.name} ({record.transport}) never subscribed")
        return
    last = record.segments[-1]
    if last.epoch != end.epoch:
        result.missing += end.head_seq
        result.failures.append(
            f"{record.name} ended in epoch {last.epoch}, the feed is in {end.epoch}"
        )
    elif last.last < end.head_seq:
        result.missing += end.head_seq - last.last
        result.anomalies.append(
            Anomaly(
                record.name,
                "missing",
                f"ended at seq {last.last} of {end.head_seq} (started at "
                f"{record.segments[0].start}, {record.connections} connections)",
                round(record.now, 3),
                record.node,
            )
        )
    elif last.last > end.head_seq:
        result.failures.append(f"{record.name} saw seq {last.last} past the head {end.head_seq}")
