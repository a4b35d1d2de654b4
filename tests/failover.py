"""What failover tests share: publishers that retry until answered 2xx, and the checks
that every subscriber got every answered entry exactly once, in order."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterable
from typing import Any

import httpx

from tests.support import Client, Server

# A publisher retries one entry at most this long (a failover, a replica catching up).
RETRY_SECONDS = 60.0


class Accepted:
    """Entries answered 2xx, per feed: seq -> entry id."""

    def __init__(self) -> None:
        self.feeds: dict[str, dict[int, str]] = {}

    def add(self, feed: str, entry: dict[str, Any]) -> None:
        seqs = self.feeds.setdefault(feed, {})
        # The same Idempotency-Key answered twice names the same entry, never another.
        assert seqs.get(entry["seq"], entry["id"]) == entry["id"], (feed, entry)
        seqs[entry["seq"]] = entry["id"]

    def count(self, feed: str) -> int:
        return len(self.feeds.get(feed, {}))


async def publish_until_accepted(
    http: httpx.AsyncClient, node: Server, feed: str, body: str, key: str
) -> dict[str, Any]:
    """POST one entry with an Idempotency-Key, again and again until it is answered 2xx:
    a 503 or a lost answer means "outcome unknown, retry with the same key"."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + RETRY_SECONDS
    delay = 0.02
    while True:
        try:
            response = await http.post(
                f"{node.base_url}/v1/feeds/{feed}/entries",
                json={"body": body},
                headers={**node.headers(), "Idempotency-Key": key},
            )
            if response.status_code == 201:
                entry: dict[str, Any] = response.json()
                return entry
            assert response.status_code == 503, response.text
            assert response.json()["error"]["code"] == "broker_unavailable"
        except httpx.HTTPError:
            pass
        assert loop.time() < deadline, f"{feed} {key}: not accepted in {RETRY_SECONDS} s"
        await asyncio.sleep(delay)  # pacing between retries, not a wait for a condition
        delay = min(delay * 2, 0.5)


async def publisher(
    name: str, node: Server, feeds: list[str], count: int, accepted: Accepted
) -> None:
    """Publish `count` entries, one feed after the other, each until accepted."""
    async with httpx.AsyncClient(timeout=15) as http:
        for i in range(count):
            feed = feeds[i % len(feeds)]
            entry = await publish_until_accepted(http, node, feed, f"{name} {i}", f"{name}-{i}")
            accepted.add(feed, entry)


async def subscribe_all(client: Client, feeds: Iterable[str]) -> None:
    """Subscribe to each feed in turn, at the pace the server allows one client."""
    for feed in feeds:
        for _attempt in range(100):
            await client.send({"type": "subscribe", "feed": feed})
            answer = await client.recv()
            if answer["type"] == "subscribed":
                break
            assert answer.get("code") == "rate_limited", answer
            await asyncio.sleep(0.05)  # pacing: 20 client messages a second
        else:
            raise AssertionError(f"could not subscribe to {feed}")


async def collect(client: Client, heads: dict[str, int], timeout: float = 60.0) -> None:
    """Receive until every feed's event `heads[feed]` arrived (or a reset came)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    seen = {feed: max(client.seqs(feed), default=0) for feed in heads}
    while behind := [feed for feed, head in heads.items() if seen[feed] < head]:
        left = deadline - loop.time()
        assert left > 0, f"timed out: behind on {behind}"
        message = await client.recv(left)
        feed = message.get("feed")
        if feed in seen and "seq" in message:
            seen[feed] = max(seen[feed], message["seq"])


def assert_every_entry_once_in_order(client: Client, accepted: Accepted) -> None:
    """The client got each accepted entry once, in seq order, 1..N, and no reset."""
    assert not [m for m in client.messages if m["type"] == "reset"]
    for feed, seqs in accepted.feeds.items():
        events = [m for m in client.messages if m.get("feed") == feed and "seq" in m]
        assert [m["seq"] for m in events] == list(range(1, len(seqs) + 1)), feed
        assert [m["entry"]["id"] for m in events] == [seqs[s] for s in sorted(seqs)], feed


def metric(node: Server, name: str, labels: str = "") -> float:
    """One sample of the node's /metrics (0 when absent)."""
    text = httpx.get(node.base_url + "/metrics").text
    found = re.search(rf"^{re.escape(name + labels)} (\S+)$", text, re.M)
    return float(found.group(1)) if found else 0.0
