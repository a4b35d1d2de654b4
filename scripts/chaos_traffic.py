"""The chaos soak's traffic: readers that follow a feed as livepush.js does, and
publishers that retry each entry with its Idempotency-Key until a 2xx.

Both run in the soak's own process (scripts/chaos.py); what the readers saw is judged
by scripts/chaos_record.py.
"""

from __future__ import annotations

import asyncio
import fcntl
import random
import ssl
import sys
import termios
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import httpx
import orjson
from chaos_record import Accepted, Record
from chaoskit import HOST, HTTP_ERRORS, TOKEN, Node, backoff, sleep_unless
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from livepush.cursor import Action, Event, Refused, Step

HTTP_TIMEOUT = 5.0  # seconds for a publish or a snapshot
# The trust store, loaded once, as a browser loads it once for all its tabs. httpx
# otherwise builds an SSL context (certifi's bundle, about 60 ms of CPU: see
# scripts/httpx_client_cost.py) for every client it makes, even one that only speaks
# plain HTTP: a Redis kill without persistence resets all 600 readers, whose 600
# snapshot loads then held the soak's one thread for about 35 s (progress lines
# 12-26 s apart, no reader connected, a node's readiness check timed out unanswered).
TRUST = ssl.create_default_context()
OPEN_TIMEOUT = 10.0  # seconds for a WebSocket handshake or an event stream's head
SSE_KEEPALIVE = 5  # seconds between the nodes' SSE comments (chaoskit.Node sets it)
SSE_SILENCE = 3 * SSE_KEEPALIVE  # a stream silent this long is dead: reconnect
# An open connection that holds nothing unread and still lacks an entry another
# follower got this long ago is silent: the node sent it nothing (keepalives aside).
# A FAIL (`silent_streams`). A reader that lacks such an entry while bytes wait unread
# is behind on its own: the soak's process did not keep up, and that is reported
# (`reader_lag`), not blamed on livepush. Follower.check_silence, every second.
SILENT_AFTER = 30.0
READ_SIZE = 1 << 20  # an event stream's read takes everything buffered


# ---------------------------------------------------------------- followers


class SseEnded(Exception):
    """The event stream ended or could not start."""


def sse_blocks(buffer: bytearray) -> Iterator[tuple[str, bytes, str | None]]:
    """Take every complete SSE block out of `buffer`: (event, data, id); comments skipped."""
    while (end := buffer.find(b"\n\n")) >= 0:
        block = bytes(buffer[:end])
        del buffer[: end + 2]
        event, data, last_id = "message", [], None
        for line in block.split(b"\n"):
            if not line or line.startswith(b":"):
                continue
            name, _, value = line.partition(b":")
            value = value.removeprefix(b" ")
            if name == b"event":
                event = value.decode()
            elif name == b"data":
                data.append(value)
            elif name == b"id":
                last_id = value.decode()
        if data:
            yield event, b"\n".join(data), last_id


class ChunkedBody:
    """An HTTP/1.1 chunked body, decoded as its bytes arrive; trailers are ignored."""

    def __init__(self) -> None:
        self._raw = bytearray()
        self.ended = False  # the last (zero-size) chunk came

    def feed(self, data: bytes) -> bytes:
        """The payload of every chunk `data` completes; ValueError on a malformed one."""
        raw, payload = self._raw, bytearray()
        raw += data
        while not self.ended and (eol := raw.find(b"\r\n")) >= 0:
            size = int(raw[:eol].split(b";")[0].strip(), 16)
            if size == 0:
                self.ended = True
                raw.clear()
                break
            end = eol + 2 + size
            if len(raw) < end + 2:
                break
            if raw[end : end + 2] != b"\r\n":
                raise ValueError("a chunk not followed by CRLF")
            payload += raw[eol + 2 : end]
            del raw[: end + 2]
        return bytes(payload)


def unread_bytes(sock: Any) -> int:
    """What the kernel holds for this socket that its reader has not read yet."""
    buffer = bytearray(4)
    fcntl.ioctl(sock.fileno(), termios.FIONREAD, buffer)
    return int.from_bytes(buffer, sys.byteorder, signed=True)


class Follower:
    """One reader, following one feed the way livepush.js does, on a random node each time.

    It keeps its last seq and epoch (the Record's cursor), reconnects after any end
    with full-jitter backoff (capped at `backoff_cap`), answers a reset by reloading
    the snapshot and subscribing from its head, and a hole by resubscribing from its
    last seq. `cut()` aborts its socket, as a lost network would.
    """

    def __init__(
        self,
        record: Record,
        nodes: list[Node],
        rng: random.Random,
        clock: Callable[[], float],
        backoff_cap: float,
        from_snapshot: bool,
    ) -> None:
        self.record, self.nodes, self.rng = record, nodes, rng
        self.clock, self.backoff_cap = clock, backoff_cap
        self.from_snapshot = from_snapshot
        self.attempt = 0
        self.reloads = 0
        self.abort: Callable[[], None] | None = None
        self.ends: Counter[str] = Counter()  # why connections ended, by kind
        # Where it stands, for the report of a reader that never caught up.
        self.state, self.state_at, self.node = "starting", 0.0, -1
        self.messages = 0  # on the current connection
        self.heard_at = 0.0  # anything from the current connection, comments included
        self.silences: list[str] = []  # see SILENT_AFTER
        self.lag = 0.0  # the longest it lacked an entry others had, with bytes unread
        # The open connection, for check_silence(): since when, and what it holds unread.
        self.opened_at: float | None = None
        self._unread: Callable[[], int] = lambda: 0
        self._told = False  # its silence is noted: once per connection

    @property
    def transport(self) -> str:
        return self.record.transport

    def cut(self) -> bool:
        """Abort the current connection (no close frame, no FIN): True if there was one."""
        abort, self.abort = self.abort, None
        if abort is None:
            return False
        abort()
        return True

    async def run(self, stop: asyncio.Event) -> None:
        """Follow until `stop`; every wait is bounded and ends with it."""
        cursor = self.record.cursor
        cursor.needs_snapshot = self.from_snapshot
        first = True
        while not stop.is_set():
            try:
                if cursor.needs_snapshot:
                    self._now("snapshot")
                    self.record.reloaded(await self._snapshot(), "snapshot" if first else "reset")
                    first = False
                node = self.rng.choice(self.nodes)
                self.record.connecting(node.port, self.clock())
                self.node, self.messages = node.index, 0
                self._now("connecting")
                if self.transport == "ws":
                    why = await self._websocket(node)
                else:
                    why = await self._event_stream(node)
            except (ConnectionClosed, OSError, TimeoutError, EOFError) as error:
                why = f"lost: {type(error).__name__}"
            except InvalidHandshake as error:
                why = f"handshake: {type(error).__name__}"
            except (SseEnded, *HTTP_ERRORS, orjson.JSONDecodeError, ValueError) as error:
                why = f"failed: {type(error).__name__}"
            except Refused as error:
                self.record.counts["refused"] += 1
                why = f"refused: {error.code}"
            self.abort = None
            self.opened_at = None
            first = False
            self.ends[why.split(":")[0]] += 1
            if stop.is_set():
                return
            # livepush.js: a reset reloads at once; a second one before a subscription,
            # and every other end, waits a full-jitter backoff.
            if cursor.needs_snapshot:
                self.reloads += 1
            if cursor.needs_snapshot and self.reloads == 1:
                delay = 0.0
            else:
                delay = backoff(self.attempt, self.backoff_cap, self.rng)
                self.attempt += 1
            self._now(f"backoff after {why}")
            await sleep_unless(stop, delay)

    def _opened(self, unread: Callable[[], int]) -> None:
        """The connection is open; `unread` tells the bytes it holds not yet read."""
        self._now("open")
        self.opened_at, self._unread, self._told = self.clock(), unread, False

    def check_silence(self) -> None:
        """Whether the open connection is silent (see SILENT_AFTER), noted once in
        `self.silences`; a wait with bytes still unread is the reader's own lag
        (`self.lag`). The soak calls it every second for every follower."""
        if self.opened_at is None or self._told:
            return
        record, cursor = self.record, self.record.cursor
        out = record.ledger.out_since(record.feed, cursor.epoch, cursor.seq)
        if out is None:
            return
        waited = self.clock() - max(out, self.opened_at)
        if waited < SILENT_AFTER:
            return
        if self._unread():
            self.lag = max(self.lag, waited)
            return
        self._told = True
        self.silences.append(
            f"{record.name}: {self.transport} to node {self.node} open since "
            f"{self.opened_at:.1f} s, at {cursor.epoch}:{cursor.seq}, nothing unread, "
            f"{waited:.0f} s after another follower got "
            f"{cursor.seq + 1 if cursor.seq is not None else '?'}"
        )

    def _now(self, state: str) -> None:
        self.state, self.state_at = state, self.clock()

    def where(self) -> str:
        """Its state now, for a report."""
        now, cursor = self.clock(), self.record.cursor
        return (
            f"{self.state} for {now - self.state_at:.1f} s on node-{self.node}, "
            f"{self.messages} messages on this connection, last heard "
            f"{now - self.heard_at:.1f} s ago, at {cursor.epoch}:{cursor.seq}"
        )

    def _heard(self, message: Mapping[str, Any]) -> None:
        self.messages += 1
        self.heard_at = self.clock()
        if message.get("type") == "subscribed":
            self._now("subscribed")

    def _act(self, step: Event | Step | Refused | None) -> str | None:
        """What a message does to the connection: None goes on, else why it ends."""
        if step is None or isinstance(step, Event):
            return None
        if isinstance(step, Refused):
            raise step
        if step.action is Action.LIVE:
            self.attempt = self.reloads = 0
            return None
        return "reset: reload" if step.action is Action.RELOAD else f"resume: {step.reason}"

    async def _snapshot(self) -> Mapping[str, Any]:
        node = self.rng.choice(self.nodes)
        # A client of its own for each load, as each browser tab has: with one pool
        # shared by every reader, a soak without persistence (each Redis kill resets
        # all 600 readers at once) ran the pool dry: in its last minute every request
        # was a PoolTimeout, and readers no longer resumed, for a reason no browser has.
        async with httpx.AsyncClient(timeout=HTTP_TIMEOUT, verify=TRUST) as http:
            response = await http.get(
                f"{node.url}/v1/feeds/{self.record.feed}/snapshot", params={"limit": 50}
            )
        response.raise_for_status()
        body: Mapping[str, Any] = orjson.loads(response.content)
        return body

    async def _websocket(self, node: Node) -> str:
        url = f"ws://{HOST}:{node.port}/v1/ws?" + urlencode(self.record.cursor.position())
        async with connect(
            url,
            open_timeout=OPEN_TIMEOUT,
            ping_interval=10,
            ping_timeout=10,
            close_timeout=2,
            max_size=2**20,
        ) as ws:
            self.abort = ws.transport.abort
            sock, frames = ws.transport.get_extra_info("socket"), ws.recv_messages.frames
            self._opened(lambda: len(frames) + unread_bytes(sock))  # websockets' queue too
            async for data in ws:
                message = orjson.loads(data)
                self._heard(message)
                why = self._act(self.record.receive(message, self.clock()))
                if why is not None:
                    return why
            return f"closed: {ws.close_code}"

    async def _event_stream(self, node: Node) -> str:
        position = self.record.cursor.position()
        query = urlencode({name: value for name, value in position.items() if name != "feed"})
        path = f"/v1/feeds/{self.record.feed}/events" + (f"?{query}" if query else "")
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(HOST, node.port), OPEN_TIMEOUT
        )
        self.abort = writer.transport.abort
        try:
            request = (
                f"GET {path} HTTP/1.1\r\nHost: {HOST}:{node.port}\r\n"
                "Accept: text/event-stream\r\n\r\n"
            )
            try:
                writer.write(request.encode())
            except RuntimeError as error:
                # uvloop: the node reset the connection before the request went out
                # (killed or stopping), and the transport is already closed.
                raise ConnectionResetError(str(error)) from error
            status = await asyncio.wait_for(reader.readline(), OPEN_TIMEOUT)
            if not status.startswith(b"HTTP/1.1 200"):
                raise SseEnded(status.decode(errors="replace").strip() or "no answer")
            while (await asyncio.wait_for(reader.readline(), OPEN_TIMEOUT)).strip():
                pass  # the headers: chunked, as sse.py writes them
            sock = writer.get_extra_info("socket")
            buffered: bytearray = vars(reader)["_buffer"]  # asyncio's (not in its stubs)
            self._opened(lambda: len(buffered) + unread_bytes(sock))
            body, buffer = ChunkedBody(), bytearray()
            while True:
                # All that is buffered at once, under one timer: a read per chunk, each
                # under its own wait_for (a task), took a few turns of the loop per event,
                # and once the soak's process was busy its 200 streams fell minutes
                # behind with megabytes unread in their sockets (issue 11's long run).
                async with asyncio.timeout(SSE_SILENCE):
                    data = await reader.read(READ_SIZE)
                self.heard_at = self.clock()
                if not data:
                    return "lost: the stream's connection closed"
                buffer += body.feed(data)
                for _event, payload, last_id in sse_blocks(buffer):
                    message = orjson.loads(payload)
                    self._heard(message)
                    step = self.record.receive(message, self.clock(), last_id)
                    why = self._act(step)
                    if why is not None:
                        return why
                if body.ended:
                    return "closed: the stream ended"
        finally:
            writer.transport.abort()  # the stream never ends by itself: nothing to flush


# ---------------------------------------------------------------- publishers


@dataclass
class PublisherTally:
    attempts: int = 0
    retries: int = 0
    replayed: int = 0  # 2xx answers marked Idempotency-Replayed (a retry of a write that was done)
    replays_checked: int = 0  # accepted keys sent again on purpose: the same answer
    refused: int = 0  # 4xx other than 429: a bug in the soak or the server
    abandoned: int = 0  # keys never answered 2xx before the soak's end


class Publisher:
    """Publishes to its feeds all the time, each entry with its own Idempotency-Key,
    retried with the SAME key on any node after an error or a timeout until a 2xx."""

    def __init__(
        self,
        index: int,
        run: str,
        feeds: list[str],
        nodes: list[Node],
        rng: random.Random,
        accepted: list[Accepted],
        failures: list[str],
    ) -> None:
        self.index, self.run_id, self.feeds, self.nodes, self.rng = index, run, feeds, nodes, rng
        self.accepted, self.failures = accepted, failures
        self.tally = PublisherTally()
        self.http = httpx.AsyncClient(
            timeout=HTTP_TIMEOUT,
            headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
        )

    async def run(self, interval: float, creating: asyncio.Event, give_up: float) -> None:
        """A new entry every `interval` s while `creating` is set; each one retried
        until accepted, or until the monotonic time `give_up` (then it is abandoned,
        which fails the soak)."""
        number = 0
        due = time.monotonic()
        while creating.is_set() and time.monotonic() < give_up:
            feed = self.feeds[(number + self.index) % len(self.feeds)]
            await self.publish(feed, number, give_up)
            number += 1
            due = max(due + interval, time.monotonic() - interval)  # no burst to catch up
            await asyncio.sleep(max(0.0, due - time.monotonic()))

    async def publish(self, feed: str, number: int, give_up: float) -> None:
        key = f"{self.run_id}-p{self.index}-{number}"
        body = orjson.dumps(
            {
                "title": f"P{self.index}",
                "body": f"entry {number} of publisher {self.index}",
                "meta": {"key": key},
            }
        )
        attempt = 0
        while time.monotonic() < give_up:
            answer = await self._post(feed, key, body)
            if answer is not None and answer.status_code == 201:
                entry = orjson.loads(answer.content)
                done = Accepted(feed, key, entry["id"], entry["seq"])
                self.accepted.append(done)
                if answer.headers.get("idempotency-replayed") == "true":
                    self.tally.replayed += 1
                if self.rng.random() < 0.05:
                    await self._check_replay(done, body)
                return
            if answer is not None and answer.status_code not in (429, 502, 503, 504):
                self.tally.refused += 1
                self.failures.append(
                    f"publisher {self.index}: {key} refused {answer.status_code}: "
                    f"{answer.text[:200]}"
                )
                return
            self.tally.retries += 1
            await asyncio.sleep(self.rng.uniform(0.0, min(2.0, 0.1 * 2.0 ** min(attempt, 8))))
            attempt += 1
        self.tally.abandoned += 1
        self.failures.append(
            f"publisher {self.index}: {key} got no 2xx in {attempt} attempts before the end"
        )

    async def _post(self, feed: str, key: str, body: bytes) -> httpx.Response | None:
        node = self.rng.choice(self.nodes)
        self.tally.attempts += 1
        try:
            return await self.http.post(
                f"{node.url}/v1/feeds/{feed}/entries",
                content=body,
                headers={"Idempotency-Key": key},
            )
        except HTTP_ERRORS:
            return None

    async def _check_replay(self, done: Accepted, body: bytes) -> None:
        """The same key again, on any node: the first answer, marked replayed."""
        answer = await self._post(done.feed, done.key, body)
        if answer is None or answer.status_code != 201:
            return  # a fault: this check is best effort, the retry loop above is not
        self.tally.replays_checked += 1
        entry = orjson.loads(answer.content)
        if (entry["id"], entry["seq"]) != (done.id, done.seq) or answer.headers.get(
            "idempotency-replayed"
        ) != "true":
            self.failures.append(
                f"publisher {self.index}: {done.key} was answered {done.id}/{done.seq}, "
                f"then {entry['id']}/{entry['seq']} "
                f"(replayed: {answer.headers.get('idempotency-replayed')})"
            )

    async def aclose(self) -> None:
        await self.http.aclose()
