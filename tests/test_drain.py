"""A rolling restart: each node drains its readers over a window, and nobody loses an event.

Two nodes on one Redis, 2,000 WebSocket readers resuming the way livepush.js does
(since and epoch in the URL, to whichever node is up), a publisher retrying with its
Idempotency-Key. Both nodes are restarted in turn with SIGTERM. Every reader must end
with every accepted event exactly once, in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import time
import uuid
from dataclasses import dataclass, field

import httpx
import orjson
import pytest
import websockets

from tests.support import RedisServer, Server, wait_until

FEED = "drain"
READERS = int(os.environ.get("DRAIN_READERS", "2000"))


@dataclass
class Reader:
    """One reader's record: what it saw, and when its node told it to go (1012)."""

    index: int
    seqs: list[int] = field(default_factory=list)
    epoch: str | None = None
    resets: int = 0
    # (node port, when the last event from it arrived, when it said 1012)
    departures: list[tuple[int, float, float]] = field(default_factory=list)

    async def run(self, nodes: list[Server], stop: asyncio.Event) -> None:
        rng = random.Random(self.index)
        turn = self.index
        await asyncio.sleep(self.index * 0.002)  # 2,000 readers arrive over 4 s
        while not stop.is_set():
            node = nodes[turn % len(nodes)]
            turn += 1
            url = f"{node.ws_url}?feed={FEED}&since={self.seqs[-1] if self.seqs else 0}"
            if self.epoch is not None:
                url += f"&epoch={self.epoch}"
            last_event = 0.0
            try:
                async with websockets.connect(url, open_timeout=30, max_queue=None) as ws:
                    async for raw in ws:
                        message = orjson.loads(raw)
                        if message["type"] == "subscribed":
                            self.epoch = message["epoch"]
                        elif message["type"] == "reset":
                            self.resets += 1
                            return
                        elif message["type"] == "entry.created":
                            self.seqs.append(message["seq"])
                            last_event = time.monotonic()
            except websockets.ConnectionClosed as closed:
                if closed.rcvd is not None and closed.rcvd.code == 1012:
                    self.departures.append((node.port, last_event, time.monotonic()))
            except (OSError, TimeoutError, websockets.InvalidHandshake):
                pass  # that node is down: try the other one
            await asyncio.sleep(rng.uniform(0.05, 0.5))  # jittered, like livepush.js


async def publish(nodes: list[Server], stop: asyncio.Event, accepted: list[int]) -> None:
    """An entry every 200 ms to whichever node answers, each kept until a 2xx."""
    async with httpx.AsyncClient(timeout=10) as http:
        number = 0
        while not stop.is_set():
            number += 1
            key = uuid.uuid4().hex
            for attempt in range(200):  # bounded: a node is down for seconds at most
                node = nodes[(number + attempt) % len(nodes)]
                with contextlib.suppress(httpx.HTTPError):
                    response = await http.post(
                        f"{node.base_url}/v1/feeds/{FEED}/entries",
                        json={"body": f"entry {number}"},
                        headers={**node.headers(), "Idempotency-Key": key},
                    )
                    if response.status_code == 201:
                        accepted.append(response.json()["seq"])
                        break
                await asyncio.sleep(0.05)
            else:
                raise AssertionError(f"entry {number} was never accepted")
            await asyncio.sleep(0.2)


def restart(node: Server) -> None:
    code = node.stop(signal.SIGTERM, timeout=30)
    assert code in (0, -signal.SIGTERM)
    node.start()


@pytest.mark.timeout(300)
async def test_a_rolling_restart_of_both_nodes_loses_and_repeats_nothing(
    redis_server: RedisServer,
) -> None:
    nodes = [
        Server(redis_server.url, LIVEPUSH_DRAIN_SECONDS="10").start(),
        Server(redis_server.url, LIVEPUSH_DRAIN_SECONDS="10").start(),
    ]
    readers = [Reader(i) for i in range(READERS)]
    accepted: list[int] = []
    stop_reading, stop_publishing = asyncio.Event(), asyncio.Event()
    tasks = [asyncio.create_task(reader.run(nodes, stop_reading)) for reader in readers]
    publisher = asyncio.create_task(publish(nodes, stop_publishing, accepted))
    try:

        def everyone_at(seq: int) -> bool:
            return all(reader.seqs and reader.seqs[-1] >= seq for reader in readers)

        await asyncio.to_thread(wait_until, lambda: len(accepted) >= 5, 60, "publishing")
        await asyncio.to_thread(wait_until, lambda: everyone_at(accepted[4]), 120, "readers")
        for node in nodes:
            await asyncio.to_thread(restart, node)
            mark = len(accepted) + 3

            def published(mark: int = mark) -> bool:
                return len(accepted) >= mark

            def caught_up(mark: int = mark) -> bool:
                return everyone_at(accepted[mark - 1])

            await asyncio.to_thread(wait_until, published, 60, "entries")
            await asyncio.to_thread(wait_until, caught_up, 120, "readers back")
        stop_publishing.set()
        await publisher
        await asyncio.to_thread(wait_until, lambda: everyone_at(accepted[-1]), 120, "the last")
    finally:
        stop_reading.set()
        stop_publishing.set()
        for task in [*tasks, publisher]:
            task.cancel()
        await asyncio.gather(*tasks, publisher, return_exceptions=True)
        for node in nodes:
            node.stop()

    assert accepted == list(range(1, len(accepted) + 1))
    for reader in readers:
        assert reader.resets == 0
        assert reader.seqs == accepted, f"reader {reader.index}"
    # Both nodes drained their readers with 1012, and over a window: on each node some
    # reader still received events after another had been told to go.
    for node in nodes:
        departures = [d for reader in readers for d in reader.departures if d[0] == node.port]
        assert len(departures) > READERS // 4, f"few readers left {node.port} with 1012"
        first_told = min(told for _, _, told in departures)
        assert max(last for _, last, _ in departures) > first_told
