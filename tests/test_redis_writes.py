"""A command leaves for Redis in the turn of the loop that sends it, and a write Redis
does not read still times out (livepush's redis-py connection class, on uvloop)."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Iterable

import pytest

from livepush.brokers import redis_nodes
from livepush.errors import BrokerUnavailable
from tests.redis_topologies import broker_connection, one_server, run_on_uvloop
from tests.support import RedisServer


def test_a_command_is_written_in_the_turn_it_is_sent(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On Python 3.11 `asyncio.wait_for` runs what it waits for as a task of its own.
    The connection semaphore's wait_for and redis-py's own around each write put a
    command on the wire four turns of the loop after it was sent, and in a reconnect
    storm each turn is milliseconds of handshakes: the calm readers' entries waited
    9 to 20 ms for Redis (MONITOR's timestamps) before their publish even reached it."""
    written_at: list[int] = []
    writelines = asyncio.StreamWriter.writelines

    async def scenario() -> None:
        nodes = await one_server(redis_server.url)
        server = nodes._server
        try:
            assert await server.run([("PING",)]) == [True]  # connected
            turns = 0

            def tick() -> None:
                nonlocal turns
                turns += 1
                if turns < 1000:
                    asyncio.get_running_loop().call_soon(tick)

            def recording(self: asyncio.StreamWriter, data: Iterable[bytes]) -> None:
                written_at.append(turns)
                writelines(self, data)

            monkeypatch.setattr(asyncio.StreamWriter, "writelines", recording)
            asyncio.get_running_loop().call_soon(tick)
            reply = await server.run([("SET", "turns", "1")])
            assert reply == [True]
            assert written_at == [0]  # before the loop turned even once
            assert turns > 0  # the reply itself took a turn: the counter counts
        finally:
            await nodes.aclose()

    run_on_uvloop(scenario())


def test_a_write_redis_does_not_read_times_out_and_the_next_command_reconnects(
    redis_server: RedisServer,
) -> None:
    """The write is no longer redis-py's, so its socket timeout is ours to keep: a
    command too big for the socket buffers of a Redis that reads nothing (stopped)
    gives up after `socket_timeout`, a 503 for the caller, and loses the connection
    (half a command is on it); the next command, Redis back, connects again."""
    assert redis_server.proc is not None
    pid = redis_server.proc.pid

    async def scenario() -> None:
        nodes = await one_server(redis_server.url + "?socket_timeout=0.5")
        try:
            assert await nodes.execute("k", [("PING",)]) == [True]
            os.kill(pid, signal.SIGSTOP)
            try:
                started = asyncio.get_running_loop().time()
                with pytest.raises(BrokerUnavailable, match="Timeout writing"):
                    await nodes.execute("k", [("SET", "k", b"x" * (64 << 20))])
                # It waited for the timeout (uvloop's timers keep whole milliseconds and
                # a cached clock: not a bound to the microsecond), not for nothing.
                assert asyncio.get_running_loop().time() - started >= 0.4
            finally:
                os.kill(pid, signal.SIGCONT)
            assert await nodes.execute("k", [("SET", "k", "v")]) == [True]
            # The dropped connection still flushes its half command to Redis, and the
            # loop may close only once that transport has.
            for _ in range(200):
                (stats,) = await nodes.execute("k", [("INFO", "stats")])
                if stats["total_net_input_bytes"] >= 64 << 20:
                    break
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.05)
        finally:
            await nodes.aclose()

    run_on_uvloop(scenario())


def test_a_write_refused_on_an_open_connection_is_not_taken_for_a_lost_one(
    redis_server: RedisServer,
) -> None:
    """Only a write to a transport the loop has closed is a lost connection (a 503 the
    publisher retries). Any other RuntimeError, here a write after the connection's own
    write_eof(), is a bug, and it stays one rather than pass for a Redis outage."""

    async def scenario() -> None:
        async with broker_connection(redis_server.url) as (connection, writer):
            writer.transport.write_eof()
            assert not writer.transport.is_closing()
            with pytest.raises(RuntimeError, match="write_eof"):
                await connection.send_command("PING")

    run_on_uvloop(scenario())


def test_a_command_waits_for_a_free_connection_and_gives_up_after_connection_wait(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """MAX_CONNECTIONS commands in flight: the next one waits for a connection to come
    free, and goes when one does; no connection free within CONNECTION_WAIT is a 503."""
    monkeypatch.setattr(redis_nodes, "CONNECTION_WAIT", 0.3)

    async def scenario() -> None:
        nodes = await one_server(redis_server.url)
        server = nodes._server
        try:
            for _ in range(redis_nodes.MAX_CONNECTIONS):  # every connection busy
                await server._free.acquire()
            with pytest.raises(BrokerUnavailable, match="no free connection"):
                await server.run([("PING",)])
            waiting = asyncio.create_task(server.run([("PING",)]))
            await asyncio.sleep(0.05)
            assert not waiting.done()
            server._free.release()  # one command finished
            assert await waiting == [True]
        finally:
            await nodes.aclose()

    run_on_uvloop(scenario())
