"""livepush.client: seq arithmetic, resume, reset, reconnects and publish retries.

The real server never sends a duplicate or a hole, so the follower's own arithmetic is
proved against a scripted WebSocket server (as tests/browser/test_client.py does for
livepush.js) that misbehaves on purpose; everything else runs against real servers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx
import orjson
import pytest
from websockets.asyncio.server import ServerConnection, serve
from websockets.http11 import Request, Response

from livepush.client import (
    BACKOFF_CAP,
    Client,
    Entry,
    Event,
    Refused,
    Reset,
    State,
    Status,
    Unreachable,
    backoff,
)
from livepush.cursor import Action, Cursor, Step
from tests.support import HOST, RedisServer, Server, free_port

FEED = "mock"


def created(seq: int, epoch_note: str = "") -> dict[str, Any]:
    entry = {"id": f"id{seq}", "seq": seq, "body": f"entry {seq}{epoch_note}", "title": None}
    return {"type": "entry.created", "feed": FEED, "seq": seq, "entry": entry}


class ScriptedServer:
    """A WebSocket server that answers each connection's subscription (in its URL, or a
    subscribe message) with `subscribed` and the next script; it keeps what clients
    asked for, serves `snapshot` over HTTP, and remembers how each socket closed."""

    def __init__(self, *scripts: list[dict[str, Any]], snapshot: dict[str, Any] | None = None):
        self.scripts = list(scripts)
        self.snapshot = snapshot
        self.subscribes: list[dict[str, Any]] = []
        self.paths: list[str] = []
        self.close_codes: list[int | None] = []
        self.connections: list[ServerConnection] = []
        self.port = free_port()
        self.url = f"http://{HOST}:{self.port}"

    def http(self, connection: ServerConnection, request: Request) -> Response | None:
        if not request.path.startswith("/v1/feeds/"):
            return None  # a WebSocket upgrade
        response = connection.respond(200, orjson.dumps(self.snapshot).decode())
        response.headers["Content-Type"] = "application/json"
        return response

    async def handler(self, ws: ServerConnection) -> None:
        self.connections.append(ws)
        assert ws.request is not None
        self.paths.append(ws.request.path)
        query = dict(parse_qsl(urlsplit(ws.request.path).query))
        if "feed" in query:
            subscribe: dict[str, Any] = {"via": "url", **query}
            if "since" in query:
                subscribe["since"] = int(query["since"])
            await self.answer(ws, subscribe)
        with contextlib.suppress(Exception):  # the client went away: nothing to answer
            async for message in ws:
                sent = orjson.loads(message)
                if sent.get("type") == "subscribe":
                    await self.answer(ws, {"via": "message", **sent})
        self.close_codes.append(ws.close_code)

    async def answer(self, ws: ServerConnection, subscribe: dict[str, Any]) -> None:
        self.subscribes.append(subscribe)
        script = self.scripts.pop(0) if self.scripts else []
        if not script or script[0].get("type") not in ("reset", "error"):
            epoch = subscribe.get("epoch", "e1")
            await ws.send(orjson.dumps({"type": "subscribed", "feed": FEED, "epoch": epoch}))
        for frame in script:
            if frame.get("type") == "close":
                await ws.close()
                return
            await ws.send(orjson.dumps(frame).decode())


@contextlib.asynccontextmanager
async def scripted(server: ScriptedServer, **options: Any) -> AsyncIterator[ScriptedServer]:
    async with serve(server.handler, HOST, server.port, process_request=server.http, **options):
        yield server


async def take(
    client: Client, count: int, timeout: float = 20.0, **follow: Any
) -> list[Event | Reset]:
    """The first `count` items client.follow(FEED, **follow) yields."""
    items: list[Event | Reset] = []

    async def collect() -> None:
        async for item in client.follow(follow.pop("feed", FEED), **follow):
            items.append(item)
            if len(items) == count:
                return

    await asyncio.wait_for(collect(), timeout)
    return items


async def follow_into(items: list[Event | Reset], client: Client, feed: str, **follow: Any) -> None:
    async for item in client.follow(feed, **follow):
        items.append(item)  # noqa: PERF401 (the test watches the list as it grows)


async def stop(task: asyncio.Task[Any]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def seqs(items: list[Event | Reset]) -> list[int]:
    return [item.seq if isinstance(item, Event) else item.head_seq for item in items]


# The cursor alone: no I/O


def test_cursor_drops_a_duplicate_and_hands_on_only_the_next_seq() -> None:
    cursor = Cursor(FEED, 0, "e1")
    assert isinstance(cursor.receive(created(1)), Event)
    assert cursor.receive(created(1)) is None
    assert cursor.receive(created(3)) == Step(Action.RESUME, "hole: seq 3 after 1")
    assert cursor.position() == {"feed": FEED, "since": 1, "epoch": "e1"}


def test_cursor_from_now_takes_the_head_of_subscribed() -> None:
    cursor = Cursor(FEED)
    assert cursor.position() == {"feed": FEED}
    cursor.receive({"type": "subscribed", "feed": FEED, "epoch": "e9", "head_seq": 41})
    assert cursor.position() == {"feed": FEED, "since": 41, "epoch": "e9"}


def test_cursor_ignores_other_feeds_and_control_messages_it_does_not_know() -> None:
    cursor = Cursor(FEED, 0, "e1")
    assert cursor.receive({**created(1), "feed": "other"}) is None
    assert cursor.receive({"type": "presence", "feed": FEED, "count": 3}) is None
    assert cursor.receive({"type": "pong"}) is None
    assert cursor.position()["since"] == 0


def test_backoff_never_exceeds_its_cap_however_many_attempts() -> None:
    assert all(backoff(attempt, 0.5, 4.0) <= 0.5 * 2**attempt for attempt in range(3))
    # Past 2.0**1024 a float overflows: the exponent stops growing long before.
    delays = [backoff(attempt, 0.5, 4.0) for attempt in (10, 64, 1100, 10**9)]
    assert all(0.0 <= delay <= 4.0 for delay in delays)
    assert 0.0 <= backoff(10**9) <= BACKOFF_CAP


def test_client_refuses_settings_it_cannot_keep() -> None:
    for url in ("ws://127.0.0.1:8000", "127.0.0.1:8000", "ftp://example.com"):
        with pytest.raises(ValueError, match="url must be"):
            Client(url)
    with pytest.raises(ValueError, match="backoff"):
        Client(backoff_base=2.0, backoff_cap=1.0)
    with pytest.raises(ValueError, match="publish_attempts"):
        Client(publish_attempts=0)


# Against a scripted server


async def test_duplicates_are_dropped() -> None:
    script = [created(1), created(2), created(1), created(2), created(3)]
    async with scripted(ScriptedServer(script)) as server, Client(server.url) as client:
        assert seqs(await take(client, 3, since=0, epoch="e1")) == [1, 2, 3]


async def test_a_hole_is_never_handed_on_the_client_resubscribes_from_its_last_seq() -> None:
    server = ScriptedServer([created(1), created(2), created(4)], [created(3), created(4)])
    async with scripted(server), Client(server.url, backoff_base=0.01) as client:
        assert seqs(await take(client, 4, since=0, epoch="e1")) == [1, 2, 3, 4]
    assert [(s["since"], s["epoch"], s["via"]) for s in server.subscribes] == [
        (0, "e1", "url"),
        (2, "e1", "url"),
    ]


async def test_after_a_break_the_client_resumes_with_since_and_epoch() -> None:
    server = ScriptedServer([created(1), {"type": "close"}], [created(2)])
    async with scripted(server), Client(server.url, backoff_base=0.01) as client:
        assert seqs(await take(client, 2, since=0, epoch="e1")) == [1, 2]
    assert [(s["since"], s["epoch"]) for s in server.subscribes] == [(0, "e1"), (1, "e1")]


async def test_with_a_token_the_subscription_is_a_message_and_the_url_holds_no_token() -> None:
    server = ScriptedServer([created(1)])
    async with scripted(server), Client(server.url, token="s3cret") as client:
        assert seqs(await take(client, 1, since=0)) == [1]
    assert server.subscribes == [
        {"via": "message", "type": "subscribe", "feed": FEED, "since": 0, "token": "s3cret"}
    ]
    assert server.paths == ["/v1/ws"]


async def test_unknown_event_types_are_handed_on_as_generic_events_in_seq_order() -> None:
    feed_updated = {"type": "feed.updated", "feed": FEED, "seq": 2, "meta": {"status": "ended"}}
    purged = {"type": "entry.purged", "feed": FEED, "seq": 3, "id": "id1"}
    script = [created(1), feed_updated, {"type": "presence", "feed": FEED}, purged, created(4)]
    async with scripted(ScriptedServer(script)) as server, Client(server.url) as client:
        items = await take(client, 4, since=0, epoch="e1")
    assert [(i.type, i.seq) for i in items if isinstance(i, Event)] == [
        ("entry.created", 1),
        ("feed.updated", 2),
        ("entry.purged", 3),
        ("entry.created", 4),
    ]
    updated, gone = items[1], items[2]
    assert isinstance(updated, Event)
    assert updated.entry is None
    assert updated.message["meta"] == {"status": "ended"}
    assert isinstance(gone, Event)
    assert gone.id == "id1"
    assert gone.epoch == "e1"


async def test_reset_reloads_the_snapshot_then_subscribes_from_its_head_and_epoch() -> None:
    snapshot = {"feed": FEED, "epoch": "e2", "head_seq": 7, "entries": [created(7)["entry"]]}
    reset = {"type": "reset", "feed": FEED, "epoch": "e2", "head_seq": 7}
    server = ScriptedServer([created(1), reset], [created(8)], snapshot=snapshot)
    async with scripted(server), Client(server.url) as client:
        items = await take(client, 3, since=0, epoch="e1")
    assert seqs(items) == [1, 7, 8]
    assert isinstance(items[1], Reset)
    assert [entry.id for entry in items[1].entries] == ["id7"]
    assert isinstance(items[2], Event)
    assert items[2].epoch == "e2"
    assert [(s["since"], s["epoch"]) for s in server.subscribes] == [(0, "e1"), (7, "e2")]


async def test_resets_one_after_another_back_off_instead_of_spinning() -> None:
    snapshot = {"feed": FEED, "epoch": "e2", "head_seq": 7, "entries": []}
    reset = {"type": "reset", "feed": FEED, "epoch": "e2", "head_seq": 7}
    server = ScriptedServer([reset], [reset], [reset], [created(8)], snapshot=snapshot)
    statuses: list[Status] = []
    async with scripted(server), Client(server.url, backoff_base=0.01) as client:
        items = await take(client, 4, since=0, epoch="e1", on_status=statuses.append)
    assert seqs(items) == [7, 7, 7, 8]
    reloads = [s for s in statuses if s.state is State.RELOADING]
    # The first reset reloads at once; the next ones, with no subscription between,
    # wait like any failure (attempt counts up, so the backoff grows).
    assert [(s.attempt, s.delay == 0.0) for s in reloads][:1] == [(1, True)]
    assert [s.attempt for s in reloads] == [1, 2, 3]


async def test_a_refused_subscription_raises_its_code_a_retryable_error_reconnects() -> None:
    busy = {"type": "error", "code": "broker_unavailable", "message": "retry shortly"}
    server = ScriptedServer([busy], [created(1)])
    async with scripted(server), Client(server.url, backoff_base=0.01) as client:
        assert seqs(await take(client, 1, since=0)) == [1]
    refusal = {"type": "error", "code": "forbidden", "message": "not for this token"}
    async with scripted(ScriptedServer([refusal])) as server, Client(server.url) as client:
        with pytest.raises(Refused) as refused:
            await take(client, 1, since=0)
    assert refused.value.code == "forbidden"


async def test_the_client_answers_server_pings_while_following() -> None:
    server = ScriptedServer([created(1)])
    async with scripted(server), Client(server.url) as client:
        following = asyncio.create_task(take(client, 2, since=0))
        await wait_for(lambda: bool(server.connections))
        for _ in range(3):  # each ping's waiter resolves when the client's pong arrives
            await asyncio.wait_for(await server.connections[0].ping(), 10)
        await stop(following)


async def test_leaving_the_client_closes_the_socket_with_1000() -> None:
    server = ScriptedServer([created(1), created(2)])
    async with scripted(server):
        async with Client(server.url) as client:
            async for item in client.follow(FEED, since=0):
                assert isinstance(item, Event)
                break  # the generator is still open: leaving the client closes it
        await wait_for(lambda: server.close_codes == [1000])


async def test_reconnects_back_off_up_to_the_cap_and_no_further() -> None:
    base, cap = 0.001, 0.008  # the cap binds from the fourth attempt on
    statuses: list[Status] = []
    url = f"http://{HOST}:{free_port()}"  # nobody listens there
    async with Client(url, backoff_base=base, backoff_cap=cap) as client:
        task = asyncio.create_task(follow_into([], client, FEED, on_status=statuses.append))
        await wait_for(lambda: len(statuses) >= 12, what="12 reconnect attempts")
        await stop(task)
    assert [s.attempt for s in statuses[:12]] == list(range(1, 13))
    assert all(s.state is State.RECONNECTING for s in statuses)
    assert all(0.0 <= s.delay <= min(cap, base * 2 ** (s.attempt - 1)) for s in statuses)


class SilentServer:
    """Accepts connections and never answers: a hung node, or a proxy holding the line."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://{HOST}:{self.port}"
        self.held: list[asyncio.StreamWriter] = []

    async def hold(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.held.append(writer)


async def test_a_server_that_never_answers_is_given_up_on_after_the_timeout() -> None:
    silent = SilentServer()
    statuses: list[Status] = []
    async with await asyncio.start_server(silent.hold, HOST, silent.port):
        options: dict[str, Any] = {"timeout": 0.2, "backoff_base": 0.01, "publish_attempts": 2}
        async with Client(silent.url, **options) as client:
            with pytest.raises(Unreachable, match="cannot reach"):
                await client.publish("hung", "never")
            task = asyncio.create_task(follow_into([], client, FEED, on_status=statuses.append))
            await wait_for(lambda: len(statuses) >= 2, what="two handshakes timed out")
            await stop(task)
        for writer in silent.held:
            writer.close()
    assert len(silent.held) >= 4  # two publishes, two handshakes
    assert all("timed out" in status.reason for status in statuses)


# Against a real server


async def test_a_foreign_epoch_gets_a_reset_with_the_snapshot_then_live_events(
    server: Server,
) -> None:
    async with Client(server.base_url, token=server.token) as client:
        first = await client.publish("reset-me", "one", title="ONE")
        await client.publish("reset-me", "two", pinned=True)
        items: list[Event | Reset] = []
        task = asyncio.create_task(
            follow_into(items, client, "reset-me", since=1, epoch="not-this-life")
        )
        await wait_for(lambda: len(items) == 1)
        third = await client.publish("reset-me", "three")
        await wait_for(lambda: len(items) == 2)
        await stop(task)
    reset, event = items
    assert isinstance(reset, Reset)
    assert (reset.head_seq, reset.feed) == (2, "reset-me")
    assert reset.epoch != "not-this-life"
    assert [(e.seq, e.body, e.title, e.pinned) for e in reset.entries] == [
        (2, "two", None, True),
        (1, "one", "ONE", False),
    ]
    assert reset.entries[1] == first
    assert isinstance(event, Event)
    assert (event.type, event.seq, event.epoch, event.entry) == (
        "entry.created",
        3,
        reset.epoch,
        third,
    )


async def test_a_reset_reloads_the_newest_entries_up_to_the_limit_and_every_pinned_one(
    server: Server,
) -> None:
    async with Client(server.base_url, token=server.token, snapshot_limit=2) as client:
        await client.publish("long", "the oldest, pinned", pinned=True)
        for body in ("second", "third", "fourth"):
            await client.publish("long", body)
        items = await take(client, 1, feed="long", since=4, epoch="another-life")
    (reset,) = items
    assert isinstance(reset, Reset)
    assert [entry.body for entry in reset.entries] == ["fourth", "third", "the oldest, pinned"]
    assert reset.head_seq == 4


async def test_redis_restart_without_persistence_resets_to_the_new_life(
    redis_server: RedisServer, start_server: Callable[..., Server]
) -> None:
    server = start_server(redis_server.url)
    statuses: list[Status] = []
    async with Client(server.base_url, token=server.token, backoff_base=0.05) as client:
        await client.publish("lost", "before")
        items: list[Event | Reset] = []
        task = asyncio.create_task(
            follow_into(items, client, "lost", since=0, on_status=statuses.append)
        )
        await wait_for(lambda: len(items) == 1)
        old_epoch = items[0].epoch
        redis_server.stop()
        redis_server.start()  # empty: history and entries are gone, a new epoch begins
        await wait_for(lambda: any(isinstance(i, Reset) for i in items), 30, "a reset")
        after = await publish_until_accepted(client, "lost", "after")
        await wait_for(lambda: isinstance(items[-1], Event) and items[-1].seq == after.seq, 30)
        await stop(task)
    reset = next(i for i in items if isinstance(i, Reset))
    assert reset.epoch != old_epoch
    assert [i.seq for i in items if isinstance(i, Event)] == [1, after.seq]
    assert items[-1].epoch == reset.epoch
    assert any(s.state is State.RELOADING for s in statuses)


async def publish_until_accepted(client: Client, feed: str, body: str) -> Entry:
    """Redis just came back: the node may still be reconnecting to it (503)."""
    for _ in range(100):
        try:
            return await client.publish(feed, body)
        except Refused as error:
            if error.code != "broker_unavailable":
                raise
    raise AssertionError("never accepted")


async def test_publish_retries_a_503_with_the_same_key_and_publishes_once(
    redis_server: RedisServer, start_server: Callable[..., Server], caplog: pytest.LogCaptureFixture
) -> None:
    server = start_server(redis_server.url)
    retried = asyncio.Event()

    class Retries(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "retry" in record.getMessage():
                retried.set()

    logger = logging.getLogger("livepush.client")
    handler = Retries()
    logger.addHandler(handler)
    try:
        async with Client(
            server.base_url,
            token=server.token,
            publish_attempts=1000,
            backoff_base=0.05,
            backoff_cap=0.2,
        ) as client:
            redis_server.stop()
            publishing = asyncio.create_task(client.publish("outage", "once", idempotency_key="k1"))
            await asyncio.wait_for(retried.wait(), 20)
            redis_server.start()
            entry = await asyncio.wait_for(publishing, 60)
    finally:
        logger.removeHandler(handler)
    events = await history(server, "outage")
    assert [event["entry"]["id"] for event in events] == [entry.id]
    assert "broker_unavailable" in caplog.text


async def test_publish_gives_up_after_its_attempts_naming_the_last_error(
    redis_server: RedisServer, start_server: Callable[..., Server], caplog: pytest.LogCaptureFixture
) -> None:
    server = start_server(redis_server.url)
    redis_server.stop()
    async with Client(
        server.base_url, token=server.token, publish_attempts=2, backoff_base=0.01
    ) as client:
        with pytest.raises(Refused) as refused:
            await client.publish("outage", "never")
    assert (refused.value.code, refused.value.status) == ("broker_unavailable", 503)
    assert len([r for r in caplog.records if "retry" in r.getMessage()]) == 1
    url = f"http://{HOST}:{free_port()}"
    async with Client(url, publish_attempts=2, backoff_base=0.01) as client:
        with pytest.raises(Unreachable, match="cannot reach"):
            await client.publish("nowhere", "never")


class AnswerLosingProxy:
    """A TCP proxy in front of a server that drops the server's first answer: the
    request reached the server (and was acted on), the client never hears back."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = free_port()
        self.connections = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        up_reader, up_writer = await asyncio.open_connection(HOST, self.upstream_port)
        upstream = asyncio.create_task(pipe(reader, up_writer))
        if self.connections == 1:
            await up_reader.read(1)  # the server answered: the publish happened
        else:
            await pipe(up_reader, writer)
        await stop(upstream)
        for side in (writer, up_writer):
            side.close()


async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    writer.close()  # one side ended: end the other, so the proxy's tasks finish


async def test_a_publish_whose_answer_was_lost_is_retried_and_publishes_once(
    server: Server,
) -> None:
    proxy = AnswerLosingProxy(server.port)
    async with await asyncio.start_server(proxy.handle, HOST, proxy.port):
        url = f"http://{HOST}:{proxy.port}"
        async with Client(url, token=server.token, backoff_base=0.01) as client:
            entry = await client.publish("lost-answer", "exactly once", title="ONCE")
    assert proxy.connections == 2
    events = await history(server, "lost-answer")
    assert [(e["seq"], e["entry"]["id"]) for e in events] == [(1, entry.id)]
    assert (entry.seq, entry.title, entry.body) == (1, "ONCE", "exactly once")


async def test_publish_refusals_carry_the_spec_code_status_and_fields(server: Server) -> None:
    async with Client(server.base_url, token="not-a-token") as client:
        with pytest.raises(Refused) as refused:
            await client.publish("demo", "x")
    assert refused.value.code in ("unauthorized", "forbidden")
    assert refused.value.status in (401, 403)
    async with Client(server.base_url, token=server.token) as client:
        with pytest.raises(Refused) as refused:
            await client.publish("demo", "")
    assert (refused.value.code, refused.value.status) == ("invalid", 422)
    assert "body" in refused.value.fields


async def test_a_bad_feed_name_is_refused_with_bad_feed(server: Server) -> None:
    async with Client(server.base_url) as client:
        with pytest.raises(Refused) as refused:
            await take(client, 1, feed="Not A Feed")
    assert refused.value.code == "bad_feed"


async def history(server: Server, feed: str) -> list[dict[str, Any]]:
    """Every event the feed's history holds, oldest first."""
    async with httpx.AsyncClient(timeout=10) as http:
        response = await http.get(f"{server.base_url}/v1/feeds/{feed}/entries")
    events: list[dict[str, Any]] = response.json()["events"]
    return events


async def wait_for(condition: Callable[[], bool], timeout: float = 10.0, what: str = "") -> None:
    """Wait until `condition()` holds, checking as the loop runs; bounded by `timeout`."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError(f"timed out waiting for {what or condition}")
        await asyncio.sleep(0.01)
