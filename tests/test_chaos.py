"""The chaos soak (scripts/chaos.py): a short run passes with every fault, and its judge
catches each kind of loss it is there to catch."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.failover import metric
from tests.support import HOST, RedisServer, Server, apost, wait_until

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))  # the soak's modules are scripts, not a package

from chaos import KINDS, Soak, parse, plan  # noqa: E402
from chaos_record import Accepted, FeedEnd, Ledger, Record, verdict  # noqa: E402
from chaos_traffic import SILENT_AFTER, ChunkedBody, Follower, unread_bytes  # noqa: E402
from chaoskit import Node, until  # noqa: E402

FEED = "chaos"


# --------------------------------------------------------------- the whole soak


@pytest.mark.timeout(240)
def test_a_short_soak_with_every_fault_kind_loses_nothing(tmp_path: Path) -> None:
    report_path = tmp_path / "chaos.json"
    command = [sys.executable, str(ROOT / "scripts" / "chaos.py"), "--duration", "70"]
    command += ["--nodes", "2", "--clients", "100", "--publishers", "3", "--rate", "10"]
    command += ["--seed", "11", "--json", str(report_path)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=200, check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith("chaos: ")]
    assert lines, done.stderr[-3000:]
    assert lines[-1].startswith("chaos: PASS "), done.stderr[-5000:] + lines[-1]
    assert done.returncode == 0
    report = json.loads(report_path.read_text())
    assert report["published"] > 0
    assert report["delivered"] > 0
    assert report["ws"] > 0
    assert report["sse"] > 0
    assert all(report["fault_kinds"][kind] > 0 for kind in KINDS), report["fault_kinds"]
    assert report["missing"] == report["duplicated"] == report["out_of_order"] == 0


def test_the_fault_schedule_holds_every_kind_first_and_is_the_same_for_a_seed() -> None:
    tracks = plan(seed=5, window=40, count=16)
    firsts = [fault.kind for track in tracks for fault in track if fault.first]
    assert sorted(firsts) == sorted(KINDS)
    for track in tracks:
        kinds = {fault.kind for fault in track}
        assert [fault.first for fault in track[: len(kinds)]] == [True] * len(kinds)
        assert [fault.at for fault in track] == sorted(fault.at for fault in track)
        assert all(0 <= fault.at < 40 for fault in track)
    assert tracks == plan(seed=5, window=40, count=16)
    assert tracks != plan(seed=6, window=40, count=16)


async def test_a_feed_no_node_answers_at_the_quiesce_is_a_failure_with_what_they_said(
    redis_server: RedisServer, start_server: Callable[..., Server], tmp_path: Path
) -> None:
    """The soak's end reads each feed's head from any node. When none answers before
    the deadline, that is a FAIL naming what each node said, with the counts: not an
    exception that ends the soak with no verdict."""
    server = start_server(redis_server.url)
    redis_server.stop()  # the node answers, but cannot read the feed
    run = Soak(parse(["--duration", "30", "--nodes", "1"]), tmp_path)
    node = Node(tmp_path, 0, redis_server.url, 1000)
    node.port = server.port
    run.nodes = [node]
    run.deadline = time.monotonic() + 2
    try:
        assert await run.read_feed(FEED) is None
    finally:
        await run.http.aclose()
    [failure] = run.failures
    assert failure.startswith(f"no node answered {FEED}'s head at the quiesce (node-0: 503 ")


@pytest.mark.parametrize("transport", ["ws", "sse"])
async def test_a_follower_on_a_real_node_with_nothing_unread_tells_a_silence_from_progress(
    server: Server, tmp_path: Path, transport: str
) -> None:
    """check_silence() on real connections of both kinds (the unread bytes read from the
    socket and from websockets' or asyncio's buffer): a follower at the head is not
    silent; one that lacks an entry another follower saw SILENT_AFTER ago is."""
    async with httpx.AsyncClient(timeout=10) as http:
        assert (await apost(http, server, FEED, {"body": "one"})).status_code == 201
        now = [time.monotonic()]
        ledger = Ledger(lambda: now[0])
        record = Record(f"{transport}-0", FEED, transport, ledger, 1000)
        node = Node(tmp_path, 0, "redis://unused", 1000)
        node.port = server.port
        follower = Follower(record, [node], random.Random(1), lambda: now[0], 5.0, False)
        stop = asyncio.Event()
        task = asyncio.create_task(follower.run(stop))
        try:
            assert await until(
                lambda: follower.opened_at is not None and record.cursor.seq == 1, 10
            )
            assert (await apost(http, server, FEED, {"body": "two"})).status_code == 201
            assert await until(lambda: record.cursor.seq == 2, 10)
            epoch = record.cursor.epoch
            assert epoch is not None
            ledger.see(FEED, epoch, 2, "seen")
            now[0] += SILENT_AFTER + 5
            follower.check_silence()
            assert follower.silences == []  # nobody has seq 3: no wait
            ledger.see(FEED, epoch, 3, "elsewhere")  # as another node's reader
            follower.check_silence()
            assert follower.silences == []  # first seen just now
            now[0] += SILENT_AFTER + 1
            follower.check_silence()
        finally:
            stop.set()
            follower.cut()
            await asyncio.wait_for(task, 10)
        [line] = follower.silences
        assert f"{transport}-0: {transport} to node 0 open since" in line
        assert line.endswith("nothing unread, 31 s after another follower got 3")
        assert follower.lag == 0.0


# --------------------------------------------------------------- what the soak found


async def open_stream(
    server: Server, query: str
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A raw event stream, its status line read."""
    reader, writer = await asyncio.open_connection(HOST, server.port)
    writer.write(
        f"GET /v1/feeds/{FEED}/events{query} HTTP/1.1\r\nHost: {HOST}\r\n"
        "Accept: text/event-stream\r\n\r\n".encode()
    )
    assert (await asyncio.wait_for(reader.readline(), 10)).startswith(b"HTTP/1.1 200")
    return reader, writer


async def read_until(reader: asyncio.StreamReader, needle: bytes, within: float) -> bytes:
    """What the stream sent until `needle` appeared (TimeoutError after `within` s)."""
    data = b""
    async with asyncio.timeout(within):
        while needle not in data:
            chunk = await reader.read(65536)
            assert chunk, f"the stream ended before {needle!r}: {data[-500:]!r}"
            data += chunk
    return data


async def test_an_event_stream_that_ends_while_its_join_waits_does_not_silence_the_others(
    redis_server: RedisServer, start_server: Callable[..., Server]
) -> None:
    """A reader cut while Redis is stopped, then a reader that stays: it gets every event.

    Found by the soak: the first stream's join completed after the stream ended, its
    write to the closed transport raised (uvloop), the subscription stayed in the hub,
    and each later fan-out raised at it, so the readers after it never heard of an event.
    The hub now drops a subscription whose transport closed under it.
    """
    server = start_server(redis_server.url)
    assert redis_server.proc is not None
    async with httpx.AsyncClient(timeout=10) as http:
        for i in range(3):
            assert (await apost(http, server, FEED, {"body": f"before {i}"})).status_code == 201
        os.kill(redis_server.proc.pid, signal.SIGSTOP)
        try:
            # The node does not watch the feed yet: this join waits for Redis.
            _, cut = await open_stream(server, "?since=1")
            cut.transport.abort()
        finally:
            os.kill(redis_server.proc.pid, signal.SIGCONT)
        reader, writer = await open_stream(server, "")
        await read_until(reader, b"event: subscribed", 20)
        assert (await apost(http, server, FEED, {"body": "after"})).status_code == 201
        try:
            await read_until(reader, b'"after"', 10)
            assert metric(server, "livepush_subscriptions") == 1
        finally:
            with contextlib.suppress(OSError):
                writer.transport.abort()


async def test_an_event_stream_that_ends_while_its_join_fails_leaves_no_traceback(
    redis_server: RedisServer, start_server: Callable[..., Server]
) -> None:
    """A reader cut while its join waits on a stopped Redis, then Redis killed: the join
    fails (BrokerUnavailable) and the stream, already gone, is not written to.

    Found by the long soak: the stream's error path wrote its comment to the closed
    transport, and uvloop's RuntimeError went to the log as a traceback.
    """
    server = start_server(redis_server.url)
    assert redis_server.proc is not None
    pid = redis_server.proc.pid
    os.kill(pid, signal.SIGSTOP)
    try:
        # The node does not watch the feed yet: this join waits for Redis.
        _, cut = await open_stream(server, "?since=1")
        wait_until(lambda: metric(server, "livepush_feeds_watched") == 1, 10, what="the join")
        cut.transport.abort()
        await asyncio.sleep(0)  # asyncio closes an aborted transport's socket in its next turn
        sse = '{transport="sse"}'
        wait_until(lambda: metric(server, "livepush_connections", sse) == 0, 10, what="reader gone")
    finally:
        os.kill(pid, signal.SIGKILL)  # a stopped process dies of SIGKILL too
        redis_server.proc.wait(10)
    wait_until(lambda: metric(server, "livepush_feeds_watched") == 0, 30, what="the join fails")
    metric(server, "livepush_feeds_watched")  # more turns of the node's loop: the stream's end ran
    log = server.log.read_text()
    assert "Traceback" not in log, log[-3000:]
    assert "RuntimeError" not in log, log[-3000:]


# --------------------------------------------------------------- the judge


def event(seq: int, entry_id: str | None = None) -> dict[str, Any]:
    entry = {"id": entry_id or f"id{seq}", "seq": seq, "body": "b"}
    return {"type": "entry.created", "feed": FEED, "seq": seq, "entry": entry}


def subscribed(head: int, epoch: str = "e1") -> dict[str, Any]:
    return {"type": "subscribed", "feed": FEED, "epoch": epoch, "head_seq": head}


def follower(ledger: Ledger, *messages: dict[str, Any], name: str = "ws-0") -> Record:
    record = Record(name, FEED, "ws", ledger, history_size=100)
    record.connecting(8001, 0.0)
    for message in messages:
        record.receive(message, 0.0)
    return record


def accepted(*seqs: int) -> list[Accepted]:
    return [Accepted(FEED, f"k{seq}", f"id{seq}", seq) for seq in seqs]


def end(head: int, epoch: str = "e1", first: str = "e1") -> dict[str, FeedEnd]:
    return {FEED: FeedEnd(FEED, first, epoch, head)}


def test_a_follower_that_saw_every_accepted_entry_once_in_order_passes() -> None:
    ledger = Ledger()
    records = [
        follower(ledger, subscribed(0), event(1), event(2), event(3)),
        follower(ledger, subscribed(1), event(2), event(3), name="ws-1"),
    ]
    result = verdict(records, accepted(1, 2, 3), end(3), persistent=True)
    assert result.passed, result.failures
    assert (result.published, result.delivered) == (3, 5)


def test_an_entry_sent_twice_across_a_reconnect_is_a_duplicate() -> None:
    ledger = Ledger()
    record = follower(ledger, subscribed(0), event(1), event(2), subscribed(2), event(2), event(3))
    result = verdict([record], accepted(1, 2, 3), end(3), persistent=True)
    assert result.duplicated == 1
    assert not result.passed


def test_a_hole_is_out_of_order_and_the_follower_resumes_from_before_it() -> None:
    ledger = Ledger()
    record = follower(ledger, subscribed(0), event(1), event(3))
    assert record.cursor.seq == 1  # not handed on: the shell resumes from seq 1
    record.receive(subscribed(3), 0.0)
    record.receive(event(2), 0.0)
    record.receive(event(3), 0.0)
    result = verdict([record], accepted(1, 2, 3), end(3), persistent=True)
    assert result.out_of_order == 1
    assert result.missing == 0
    assert not result.passed


def test_a_follower_short_of_the_head_at_the_end_is_missing_entries() -> None:
    record = follower(Ledger(), subscribed(0), event(1))
    result = verdict([record], accepted(1, 2, 3), end(3), persistent=True)
    assert result.missing == 2
    assert not result.passed


def test_another_entry_under_a_seen_seq_is_mismatched() -> None:
    ledger = Ledger()
    records = [
        follower(ledger, subscribed(0), event(1), event(2)),
        follower(ledger, subscribed(0), event(1), event(2, "other"), name="ws-1"),
    ]
    result = verdict(records, accepted(1, 2), end(2), persistent=True)
    assert result.mismatched >= 1
    assert not result.passed


def test_a_reset_within_history_of_the_same_epoch_is_unexplained() -> None:
    ledger = Ledger()
    record = follower(ledger, subscribed(0), event(1))
    record.receive({"type": "reset", "feed": FEED, "epoch": "e1", "head_seq": 5}, 0.0)
    record.reloaded({"feed": FEED, "epoch": "e1", "head_seq": 5, "entries": []})
    result = verdict([record], accepted(1, 2, 3, 4, 5), end(5), persistent=True)
    assert result.unexplained_resets == 1
    assert result.missing == 4
    assert not result.passed


def test_a_reset_behind_history_is_allowed() -> None:
    record = follower(Ledger(), subscribed(0), event(1))
    record.receive({"type": "reset", "feed": FEED, "epoch": "e1", "head_seq": 150}, 0.0)
    record.reloaded({"feed": FEED, "epoch": "e1", "head_seq": 150, "entries": []})
    result = verdict([record], accepted(*range(1, 151)), end(150), persistent=True)
    assert result.passed, result.failures
    assert (result.resets, result.behind_history_resets, result.skipped) == (1, 1, 149)


def test_a_new_epoch_fails_a_persistent_run_and_passes_one_without_persistence() -> None:
    def run(persistent: bool) -> bool:
        record = follower(Ledger(), subscribed(0), event(1))
        record.receive({"type": "reset", "feed": FEED, "epoch": "e2", "head_seq": 0}, 0.0)
        record.reloaded({"feed": FEED, "epoch": "e2", "head_seq": 0, "entries": []})
        record.receive(subscribed(0, "e2"), 0.0)
        record.receive(event(1, "new1"), 0.0)
        entries = [Accepted(FEED, "k1", "id1", 1), Accepted(FEED, "k2", "new1", 1)]
        result = verdict([record], entries, end(1, "e2", first="e1"), persistent=persistent)
        assert result.lost_history_resets == 1
        return result.passed

    assert not run(persistent=True)
    assert run(persistent=False)


def test_a_seq_answered_to_two_keys_or_to_none_fails() -> None:
    record = follower(Ledger(), subscribed(0), event(1), event(2), event(3))
    twice = [*accepted(1, 2, 3), Accepted(FEED, "again", "id2", 2)]
    assert not verdict([record], twice, end(3), persistent=True).passed
    unanswered = verdict([record], accepted(1, 3), end(3), persistent=True)
    assert unanswered.unacknowledged == 1
    assert not unanswered.passed


def test_an_sse_id_that_disagrees_with_its_event_is_mismatched() -> None:
    record = Record("sse-0", FEED, "sse", Ledger(), history_size=100)
    record.connecting(8001, 0.0)
    record.receive(subscribed(0), 0.0)
    record.receive(event(1), 0.0, sse_id="e1:1")
    record.receive(event(2), 0.0, sse_id="e9:2")
    assert record.counts["mismatched"] == 1


def test_the_ledger_tells_when_the_entry_after_a_position_first_reached_a_follower() -> None:
    # What the soak's event-stream readers compare their silence with (SILENT_AFTER).
    now = [10.0]
    ledger = Ledger(lambda: now[0])
    assert ledger.see("f", "E", 5, "a") is None
    now[0] = 50.0
    assert ledger.see("f", "E", 5, "a") is None  # seen again: still first seen at 10
    assert ledger.see("f", "E", 5, "b") == "a"
    assert ledger.out_since("f", "E", 4) == 10.0
    assert ledger.out_since("f", "E", 5) is None  # nobody has seq 6 yet
    assert ledger.out_since("f", "other", 4) is None
    assert ledger.out_since("f", None, 4) is None


def follower_at_4(name: str, transport: str, now: list[float]) -> tuple[Ledger, Follower]:
    """A follower of feed `f` at E:4, its ledger and itself on the clock `now[0]`."""
    ledger = Ledger(lambda: now[0])
    record = Record(name, "f", transport, ledger, 1000)
    record.cursor.epoch, record.cursor.seq = "E", 4
    return ledger, Follower(record, [], random.Random(1), lambda: now[0], 5.0, False)


def test_an_open_stream_with_nothing_unread_waiting_past_silent_after_is_silent_once() -> None:
    now = [0.0]
    ledger, follower = follower_at_4("sse-1", "sse", now)
    follower._opened(lambda: 0)  # nothing unread
    follower.check_silence()  # nobody has seq 5
    now[0] = 10.0
    ledger.see("f", "E", 5, "a")  # another follower gets it at 10 s
    now[0] = 10.0 + SILENT_AFTER - 1
    follower.check_silence()
    assert follower.silences == []
    now[0] = 10.0 + SILENT_AFTER + 1
    follower.check_silence()
    follower.check_silence()
    [line] = follower.silences  # once per connection
    assert line.startswith("sse-1: sse to node -1 open since 0.0 s, at E:4, nothing unread, 31 s")
    assert follower.lag == 0.0
    follower._opened(lambda: 0)  # a new connection, opened 5 s before...
    now[0] += 5
    follower.check_silence()
    assert len(follower.silences) == 1  # ...has not waited SILENT_AFTER itself
    follower.opened_at = None  # closed: nothing to check
    now[0] += 100
    follower.check_silence()
    assert len(follower.silences) == 1


def test_a_reader_waiting_with_bytes_unread_is_lagging_not_silent() -> None:
    # The soak's own process fell behind: the node sent the entry, the reader has not
    # read it yet. Issue 11's long run took 200 such streams for silent ones.
    now = [0.0]
    ledger, follower = follower_at_4("ws-2", "ws", now)
    follower._opened(lambda: 4096)
    ledger.see("f", "E", 5, "a")
    now[0] = SILENT_AFTER + 12
    follower.check_silence()
    assert follower.silences == []
    assert follower.lag == SILENT_AFTER + 12


def test_a_chunked_body_is_decoded_across_any_split_and_ends_at_the_last_chunk() -> None:
    wire = b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\n\r\n"
    for cut in range(len(wire) + 1):
        body = ChunkedBody()
        assert body.feed(wire[:cut]) + body.feed(wire[cut:]) == b"hello world"
        assert body.ended
    bytewise = ChunkedBody()
    assert b"".join(bytewise.feed(wire[i : i + 1]) for i in range(len(wire))) == b"hello world"
    with pytest.raises(ValueError, match="invalid literal for int"):
        ChunkedBody().feed(b"zz\r\n")
    with pytest.raises(ValueError, match="not followed by CRLF"):
        ChunkedBody().feed(b"2\r\nabXY")


def test_unread_bytes_is_what_the_kernel_holds_for_the_reader() -> None:
    left, right = socket.socketpair()
    with left, right:
        assert unread_bytes(right) == 0
        left.sendall(b"x" * 1000)
        assert unread_bytes(right) == 1000
        right.recv(400)
        assert unread_bytes(right) == 600
