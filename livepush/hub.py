"""In-process fan-out: the I/O shell around each watched feed's state machine (feed.py)."""

from __future__ import annotations

import asyncio
import logging
import time

from livepush.brokers.base import Broker, Receipt
from livepush.errors import BrokerUnavailable
from livepush.feed import (
    RECENT_EVENTS,
    Action,
    CatchUp,
    Connection,
    Cut,
    Drop,
    Fanout,
    Feed,
    Format,
    Idle,
    ReadHistory,
    RenewEpoch,
    Reset,
    Send,
    Subscription,
    control,
    sse_comment,
    sse_control,
)
from livepush.model import CloseCode, Event, History
from livepush.receipts import Receipts
from livepush.tasks import Tasks
from livepush.timing import FanoutTimings
from livepush.turnstile import Turnstile

__all__ = [
    "RECENT_EVENTS",
    "Connection",
    "Format",
    "Hub",
    "Subscription",
    "control",
    "sse_comment",
    "sse_control",
]

log = logging.getLogger("livepush.hub")

# A feed nobody subscribes to any more stays watched this long: a reconnecting
# reader (or a reconnect storm) finds it synced and resumes from memory.
RETIRE_AFTER = 10.0
# A paused subscription (its socket holds more than a quarter of --max-buffer) is
# checked this often for having drained; one stalled longer than STALL_SECONDS is cut.
PAUSE_POLL_SECONDS = 0.05
STALL_SECONDS = 10.0
# Joiners whose `since` falls in one block of this many positions share a history read.
READ_BLOCK = 64
# Seconds of joiners resumed per turn of the loop after a shared wait (a read, a feed's
# first position), each joining and writing its catch-up (`Turnstile`).
RESUME_BUDGET = 0.001
# Backoff between history reads that fail or make no progress.
FIRST_BACKOFF, MAX_BACKOFF = 0.05, 2.0


class _Watch:
    """The shell's own state for one watched feed: its tasks and timers."""

    __slots__ = ("driver", "retire", "synced")

    def __init__(self, synced: asyncio.Future[None]) -> None:
        self.synced = synced  # the broker watch is on and the first position read
        self.driver: asyncio.Task[None] | None = None  # asks the broker the feed's requests
        self.retire: asyncio.TimerHandle | None = None


class Hub:
    """Fans each feed's events out to this process's subscriptions, in seq order.

    deliver() never awaits: the feed decides who gets each event (feed.py), and the
    hub writes one pre-encoded frame per format to every one of them. A subscription
    whose socket holds more than a quarter of `max_buffer` unsent bytes is paused (no
    live frame is written to it) and caught up when it drains; it is closed with 1013
    (it resumes from its last seq) once its unsent bytes and what it missed pass
    `max_buffer`, or after STALL_SECONDS. There is no backpressure and no
    per-subscriber queue: the kernel's socket buffer plus `max_buffer` is all the
    memory a slow reader can cost.
    """

    def __init__(self, broker: Broker, *, max_buffer: int = 1 << 20) -> None:
        self.broker = broker
        self.max_buffer = max_buffer
        self.feeds: dict[str, Feed] = {}
        self._watches: dict[Feed, _Watch] = {}
        self.tasks = Tasks("hub")
        self.spawn = self.tasks.spawn
        self.receipts = Receipts(broker, self.tasks)
        self._inbox: dict[Feed, list[Event]] = {}  # live events of this loop turn
        self._reads: dict[tuple[str, int | None], asyncio.Task[History]] = {}  # joins' reads
        self._resume = Turnstile(RESUME_BUDGET)  # joiners after a shared wait
        self.pauses = _Pauses(self)
        # Counters read by /metrics at scrape time; nothing else on the hot path.
        self.events_received = 0
        self.deliveries = 0
        self.slow_closed = 0
        self.hole_closed = 0
        self.dead_closed = 0  # subscriptions whose transport closed under them
        self.resets = 0
        self.timings = FanoutTimings()  # histograms: one bump per fan-out (metrics.py)

    # Subscribing

    def try_join(
        self,
        conn: Connection,
        feed: str,
        since: int | None,
        epoch: str | None,
        *,
        receipts: bool = False,
    ) -> Subscription | None:
        """Join at once, without awaiting, when this node holds what the client needs:
        the feed is watched and synced, and its recent events reach back to `since`.

        None means "not from memory": call subscribe(). A reconnect storm after a
        node restart or a network blip mostly takes this path: no broker round trip.
        """
        state = self.feeds.get(feed)
        if state is None:
            return None
        sub = Subscription(conn, state.name, receipts)  # one string for all
        actions = state.join(sub, since, epoch)
        if actions is None:
            return None
        self._keep(state)
        # A join from memory is one Send and asks the broker for nothing: written here
        # rather than through `_perform` (a storm makes thousands of them).
        if len(actions) == 1 and isinstance(send := actions[0], Send):
            self._write(state, [send.sub], send.data)
        else:
            self._perform(state, actions)
        return sub

    async def subscribe(
        self,
        conn: Connection,
        feed: str,
        since: int | None,
        epoch: str | None,
        *,
        receipts: bool = False,
    ) -> Subscription | None:
        """Join `conn` to `feed` after seq `since`: history first, then live, no seam.

        Returns None when the client got a `reset` instead (WebSocket), or raises
        BrokerUnavailable. Shared state changes before the first await, so
        concurrent first subscribers all register (the broadcaster race).
        """
        state = self._watch(feed)
        watch = self._watches[state]
        sub = Subscription(conn, state.name, receipts)
        state.begin_join(sub)
        try:
            await asyncio.shield(watch.synced)
            await self._resume.wait()
            actions = state.join(sub, since, epoch)
            if actions is not None:
                self._perform(state, actions)
                return sub
            while True:
                history = await self._read_for_join(feed, since)
                if self.feeds.get(feed) is not state:
                    raise BrokerUnavailable("the feed was reset while subscribing")
                actions, request = state.join_history(sub, since, epoch, history)
                self._perform(state, actions)
                if isinstance(request, RenewEpoch):
                    await self.broker.renew_epoch(feed, request.stale)
                elif isinstance(request, CatchUp):
                    await self._caught_up(state)
                elif isinstance(request, ReadHistory):
                    since, epoch = request.after, state.epoch  # the node moved on
                else:
                    return sub if sub.live else None
        finally:
            self._perform(state, state.end_join(sub))

    async def _read_for_join(self, feed: str, since: int | None) -> History:
        """History for a join after `since`, read once for every joiner of its block.

        A reconnect storm brings thousands of clients a few entries behind at once:
        they share one read per (feed, block of READ_BLOCK positions), started by the
        first of them, and each takes from it what follows its own `since`. The cost:
        a joiner may be handed a read that began before it arrived; the ring (or a
        second read) covers what came meanwhile.
        """
        start = None if since is None else since - since % READ_BLOCK
        key = (feed, start)
        read = self._reads.get(key)
        if read is None:
            limit = 0 if start is None else self.broker.history_size
            read = self.spawn(self._read(feed, start or 0, limit))
            self._reads[key] = read
            read.add_done_callback(lambda _: self._reads.pop(key, None))
        history: History = await asyncio.shield(read)
        await self._resume.wait()
        return history

    async def _read(self, feed: str, after: int, limit: int) -> History:
        """One shared read. What it brings seeds the feed's ring as it ends, before its
        joiners resume: a client arriving in between (the read is no longer shared, its
        first joiner has not run yet; in a storm, a turn of hundreds of arrivals) joins
        from memory instead of reading again."""
        state = self.feeds.get(feed)
        history = await self.broker.history(feed, after, limit)
        if state is not None and self.feeds.get(feed) is state:
            state.seed(history)
        return history

    def unsubscribe(self, sub: Subscription) -> None:
        """Remove a subscription; safe to call twice."""
        state = self.feeds.get(sub.feed)
        if state is None:
            sub.live = False
            return
        self._perform(state, state.leave(sub))

    def subscribers(self, feed: str) -> int:
        """This node's live subscriptions to `feed`."""
        state = self.feeds.get(feed)
        return 0 if state is None else state.subscriptions()

    def subscriptions(self) -> int:
        return sum(state.subscriptions() for state in self.feeds.values())

    # Delivering (the Listener interface)

    def deliver(self, event: Event) -> None:
        """An event from the broker's live stream: deliver it, or hold it until in order.

        Events that arrive in one turn of the loop (one read of the broker's socket)
        are fanned out together, each socket getting all of them in one write: when
        events come faster than one fan-out writes them, they batch by themselves.
        Nothing waits for a batch: the fan-out runs as soon as the reading stops.
        """
        state = self.feeds.get(event.feed)
        if state is None:
            return
        self.events_received += 1
        if not self._inbox:
            asyncio.get_running_loop().call_soon(self._deliver_inbox)
        events = self._inbox.get(state)
        if events is None:
            self._inbox[state] = [event]
        else:
            events.append(event)

    def flush(self) -> None:
        """The broker read everything it had: fan out now, not a turn of the loop later
        (in a connect storm a turn is milliseconds of handshakes)."""
        if self._inbox:
            self._deliver_inbox()

    def _deliver_inbox(self) -> None:
        inbox, self._inbox = self._inbox, {}
        for state, events in inbox.items():
            if self.feeds.get(state.name) is state:
                self._perform(state, state.receive(*events))

    def resync(self) -> None:
        """The broker's live stream was interrupted: catch every feed up from history."""
        for state in list(self.feeds.values()):
            state.resync()
            self._drive(state)

    def receipt(self, receipt: Receipt) -> None:
        """Totals for an event reached us: tell the editors watching its feed."""
        state = self.feeds.get(receipt.feed)
        if state is None or not state.watchers:
            return
        message = {
            "type": "receipt",
            "feed": receipt.feed,
            "seq": receipt.seq,
            "delivered": receipt.delivered,
            "nodes": receipt.nodes,
            "fanout_ms": round(receipt.fanout_ms, 3),
        }
        for sub in list(state.watchers):
            sub.conn.send("receipt", message)

    # Performing a feed's actions

    def _perform(self, state: Feed, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, Fanout):
                self._fanout(state, action)
            elif isinstance(action, Send):
                self._write(state, [action.sub], action.data)
            elif isinstance(action, Reset):
                self.resets += 1
                message = {
                    "type": "reset",
                    "feed": state.name,
                    "epoch": action.epoch,
                    "head_seq": action.head_seq,
                }
                action.sub.conn.send("reset", message)
            elif isinstance(action, Drop):
                self._cut(action.sub, action.reason)
            elif isinstance(action, Idle):
                self._retire_later(state)
        if state.paused:
            self.pauses.watch(state)
        self._drive(state)

    def _fanout(self, state: Feed, fanout: Fanout) -> None:
        """Write events to their subscriptions: the hot loop, one write per socket."""
        started = time.perf_counter()
        delivered = 0
        for frame, subs in fanout.writes:
            self._write(state, subs, frame)
            delivered += len(subs)
        for send in fanout.partial:
            self._write(state, [send.sub], send.data)
        delivered += len(fanout.partial)
        for sub, reason in fanout.cut:
            self._cut(sub, reason)
        if fanout.cut and state.empty():
            self._retire_later(state)
        self.deliveries += delivered * (fanout.last - fanout.first + 1)
        if delivered:
            seconds = time.perf_counter() - started
            self.timings.observe(seconds, state.recent, fanout.first, fanout.last)
            # Editors' figures: a socket that had part of the run counts for each event.
            self.receipts.record(state.name, fanout.first, fanout.last, delivered, seconds)

    def _write(self, state: Feed, subs: list[Subscription], data: bytes) -> None:
        """Write `data` to every one of `subs`; a transport closed under its subscription
        (uvloop raises, where asyncio's would only log) loses that subscription, not the
        write to the others. The try costs nothing until something raises; after a
        raise the same iterator goes on with the next subscription, so any number of
        closed ones cost one pass (no recursion, no copy)."""
        remaining = iter(subs)
        dead = 0
        while True:
            try:
                for sub in remaining:
                    sub.write(data)
                break
            except RuntimeError:
                dead += 1
                self._perform(state, state.leave(sub))
        if dead:
            self.dead_closed += dead
            log.info("feed %s: %d subscriptions' connections closed under them", state.name, dead)

    def _cut(self, sub: Subscription, reason: Cut) -> None:
        if reason is Cut.SLOW:
            self.slow_closed += 1
        else:
            self.hole_closed += 1
        sub.conn.close(CloseCode.TRY_AGAIN_LATER)

    # Watching feeds

    def _watch(self, name: str) -> Feed:
        state = self.feeds.get(name)
        if state is None:
            state = self.feeds[name] = Feed(name, max_buffer=self.max_buffer)
            self._watches[state] = _Watch(asyncio.get_running_loop().create_future())
            self.spawn(self._start(state))
        else:
            self._keep(state)
        return state

    async def _start(self, state: Feed) -> None:
        synced = self._watches[state].synced
        try:
            await self.broker.watch(state.name)
            history = await self.broker.history(state.name, 0, 0)
        except BrokerUnavailable as error:
            self._forget(state)
            synced.set_exception(error)
            synced.exception()  # retrieved: joiners see it through shield()
            self.spawn(self.broker.unwatch(state.name))
            return
        synced.set_result(None)
        self._perform(state, state.start(history.epoch, history.head_seq))

    def _drive(self, state: Feed) -> None:
        """Start the task that asks the broker what the feed requests, unless it runs."""
        watch = self._watches.get(state)
        if watch is not None and watch.driver is None and state.request() is not None:
            watch.driver = self.spawn(self._requests(state, watch))

    async def _requests(self, state: Feed, watch: _Watch) -> None:
        """Read history, or renew the epoch, until the feed asks for nothing more."""
        delay = FIRST_BACKOFF
        try:
            while self.feeds.get(state.name) is state and (request := state.request()):
                try:
                    if isinstance(request, RenewEpoch):
                        await self.broker.renew_epoch(state.name, request.stale)
                        state.renewed()
                        continue
                    if request.backoff:
                        await asyncio.sleep(delay)  # a hole history cannot fill yet
                        delay = min(delay * 2, MAX_BACKOFF)
                    history = await self.broker.history(
                        state.name, request.after, self.broker.history_size
                    )
                except BrokerUnavailable:
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, MAX_BACKOFF)
                    continue
                watch.driver = None  # a request the actions raise goes on in this task
                self._perform(state, state.receive_history(history))
                watch.driver = asyncio.current_task()
                if not request.backoff:
                    delay = FIRST_BACKOFF
        finally:
            if watch.driver is asyncio.current_task():
                watch.driver = None

    async def _caught_up(self, state: Feed) -> None:
        """Wait until the feed's requests are answered (its history read and applied)."""
        watch = self._watches.get(state)
        driver = None if watch is None else watch.driver
        if driver is not None:
            await asyncio.wait([driver])
        else:
            await asyncio.sleep(FIRST_BACKOFF)  # broker unavailable, or the read raced

    def _keep(self, state: Feed) -> None:
        """Someone joins: the feed is no longer due to retire."""
        watch = self._watches.get(state)
        if watch is not None and watch.retire is not None:
            watch.retire.cancel()
            watch.retire = None

    def _retire_later(self, state: Feed) -> None:
        watch = self._watches.get(state)
        if watch is not None and watch.retire is None and state.empty():
            loop = asyncio.get_running_loop()
            watch.retire = loop.call_later(RETIRE_AFTER, self._retire, state)

    def _retire(self, state: Feed) -> None:
        watch = self._watches.get(state)
        if watch is None:
            return
        watch.retire = None
        if not state.empty():
            return
        self._forget(state)
        if watch.driver is not None:
            watch.driver.cancel()
        self.spawn(self.broker.unwatch(state.name))

    def _forget(self, state: Feed) -> None:
        if self.feeds.get(state.name) is state:
            del self.feeds[state.name]
        self._watches.pop(state, None)

    # Life cycle

    def close_all(self, code: CloseCode) -> None:
        """Close every subscribed connection with `code` (drain, restart)."""
        for state in list(self.feeds.values()):
            for sub in state.remove_all():
                sub.conn.close(code)

    async def aclose(self) -> None:
        self.receipts.cancel()
        self.pauses.cancel()
        for watch in self._watches.values():
            if watch.retire is not None:
                watch.retire.cancel()
        await self.tasks.aclose()


class _Pauses:
    """The hub's paused subscriptions: one timer, running only while any is paused,
    resumes those whose sockets drained and cuts those stalled past STALL_SECONDS."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        # Feeds with paused subscriptions, and when the timer first saw each paused.
        self._paused: dict[Feed, dict[Subscription, float]] = {}
        # Reading history to catch up, since when: a read that does not come back
        # within STALL_SECONDS cuts the subscription as a stall does (its client
        # resumes by reconnecting), or its stream would stay open with nothing sent.
        self._resuming: dict[Subscription, float] = {}
        self._timer: asyncio.TimerHandle | None = None

    def watch(self, state: Feed) -> None:
        if state not in self._paused:
            self._paused[state] = {}
            if self._timer is None:
                loop = asyncio.get_running_loop()
                self._timer = loop.call_later(PAUSE_POLL_SECONDS, self._check)

    def _check(self) -> None:
        self._timer = None
        hub = self.hub
        now = asyncio.get_running_loop().time()
        for state, since in list(self._paused.items()):
            if hub.feeds.get(state.name) is not state:
                del self._paused[state]
                continue
            for sub in [sub for sub in since if sub not in state.paused]:
                del since[sub]  # resumed or cut meanwhile
            for sub in list(state.paused):
                if sub in self._resuming:
                    if now - self._resuming[sub] > STALL_SECONDS:
                        hub._perform(state, state.drop(sub, Cut.SLOW))
                    continue
                started = since.setdefault(sub, now)
                if sub.buffered() <= state.resume_at:
                    del since[sub]
                    actions, request = state.resume(sub)
                    hub._perform(state, actions)
                    if request is not None:
                        self._resuming[sub] = now
                        hub.spawn(self._resume_from_history(state, sub, request.after))
                elif now - started > STALL_SECONDS:
                    del since[sub]
                    hub._perform(state, state.drop(sub, Cut.SLOW))
            if not state.paused:
                del self._paused[state]
        if self._paused:
            self._timer = asyncio.get_running_loop().call_later(PAUSE_POLL_SECONDS, self._check)

    async def _resume_from_history(self, state: Feed, sub: Subscription, after: int) -> None:
        hub = self.hub
        try:
            history = await hub._read_for_join(state.name, after)
        except BrokerUnavailable:
            hub._perform(state, state.drop(sub, Cut.SLOW))  # it resumes by reconnecting
            return
        finally:
            self._resuming.pop(sub, None)
        if hub.feeds.get(state.name) is state:
            hub._perform(state, state.resume_history(sub, history))

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
