"""Where a feed's keys live: one Redis, a Sentinel's primary, or the owner of the cluster slot."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import ssl
from collections.abc import Iterable, Sequence
from typing import Any, Protocol

from redis.asyncio import Redis
from redis.asyncio.connection import Connection, ConnectionPool, SSLConnection
from redis.asyncio.sentinel import (
    Sentinel,
    SentinelManagedConnection,
    SentinelManagedSSLConnection,
)
from redis.backoff import NoBackoff
from redis.crc import key_slot
from redis.exceptions import (
    AskError,
    ClusterDownError,
    ConnectionError,
    MovedError,
    NoScriptError,
    RedisError,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

from livepush.brokers.redis_url import RedisTarget, Topology
from livepush.errors import BrokerUnavailable

log = logging.getLogger("livepush.redis")

Command = tuple[Any, ...]
SLOTS = 16384
# Commands in flight per server: beyond this a command waits for a free connection
# (at most CONNECTION_WAIT) instead of opening ever more under a burst of publishes.
MAX_CONNECTIONS = 64
CONNECTION_WAIT = 5.0
# Redirections followed for one command before giving up (a slot moving twice).
MAX_REDIRECTS = 16
# How long a command refused while a slot migrates (TRYAGAIN) or while the cluster
# has an uncovered slot (CLUSTERDOWN, a failover) is retried before it is a 503.
SETTLE_SECONDS = 5.0

DEFAULTS: dict[str, Any] = {
    "socket_connect_timeout": 2.0,
    "socket_timeout": 5.0,
    "socket_keepalive": True,
    # No automatic retries: a publish retried after a lost reply could run twice.
    # The publisher gets 503 and retries with its Idempotency-Key instead.
    "retry": Retry(NoBackoff(), 0),
}
# A pub/sub connection waits for messages as long as it takes; it pings when idle.
PUBSUB = {"socket_timeout": None}


def describe(error: BaseException) -> str:
    """A connection error in one line, naming a TLS cause plainly when there is one."""
    cause: BaseException | None = error
    while cause is not None:
        if isinstance(cause, ssl.SSLCertVerificationError):
            return (
                f"TLS: the server's certificate is not trusted ({cause.verify_message}); "
                f"check ssl_ca_certs: {error}"
            )
        cause = cause.__cause__ or cause.__context__
    return str(error) or type(error).__name__


class Trouble:
    """Logs each connection problem once per distinct cause, and its end once.

    A Redis that stays unreachable (a wrong CA, a firewall) gives one line that names
    the cause, not one per reconnect attempt every few seconds.
    """

    def __init__(self) -> None:
        self._current: dict[str, str] = {}  # what -> the cause last logged
        self.failures = 0

    def failed(self, what: str, error: BaseException) -> None:
        self.failures += 1
        text = describe(error)
        if self._current.get(what) != text:
            self._current[what] = text
            log.error("Redis %s: %s", what, text)

    def recovered(self, what: str) -> None:
        if self._current.pop(what, None) is not None:
            log.warning("Redis %s: connected again", what)


class _ClosedIsLost(Connection):
    """redis-py's connection, whose commands are written in the turn of the loop that
    sends them, and for which a write to a connection the server already dropped is a
    lost connection.

    redis-py runs a write with a socket timeout as `asyncio.wait_for(...)`, which on
    Python 3.11 makes it a task of its own: the command left two turns of the loop
    after it was sent, and the reply's wait began only then. In a reconnect storm a
    turn is milliseconds of handshakes, and every publish waited for those turns on its
    way to Redis. Here the bytes go to the transport at once; only a drain (the
    transport's buffer over its high-water mark) waits, within the same socket timeout.

    When Redis goes away between the connect and the first command (a primary killed
    while a node reconnects to it), the loop may have closed the transport before
    redis-py writes its HELLO. uvloop then raises RuntimeError ("the handler is
    closed") where redis-py expects an OSError, and it reached a publisher as a 500
    with a traceback instead of the 503 a lost Redis gives. Here it is redis-py's
    ConnectionError, which every caller already handles.
    """

    async def send_packed_command(
        self, command: bytes | str | Iterable[bytes], check_health: bool = True
    ) -> None:
        if not self.is_connected:
            await self.connect_check_health(check_health=False)
        if check_health:
            await self.check_health()  # type: ignore[no-untyped-call]
        if isinstance(command, str):
            command = command.encode()
        writer = self._writer
        assert writer is not None  # connected
        try:
            writer.writelines([command] if isinstance(command, bytes) else command)
            async with asyncio.timeout(self.socket_timeout):
                await writer.drain()  # at once, unless the transport's buffer is full
        except BaseException as error:
            # A write that failed, timed out or was cancelled halfway leaves the
            # connection unusable (as redis-py). Whether the loop had closed the
            # transport is asked first: the disconnect closes it.
            closed = writer.transport.is_closing()
            await self.disconnect(nowait=True)
            if isinstance(error, TimeoutError):
                raise RedisTimeoutError("Timeout writing to socket") from None
            if isinstance(error, RuntimeError) and closed:
                raise ConnectionError(f"Connection closed by server ({error})") from error
            if isinstance(error, OSError):
                raise ConnectionError(f"Error while writing to socket: {error}") from error
            raise


class _ClosedIsLostTls(_ClosedIsLost, SSLConnection):
    pass


class _SentinelClosedIsLost(_ClosedIsLost, SentinelManagedConnection):
    pass


class _SentinelClosedIsLostTls(_ClosedIsLost, SentinelManagedSSLConnection):
    pass


def make_redis(host: str, port: int, target: RedisTarget, **extra: Any) -> Redis:
    """A client of one server, with the URL's credentials and TLS options."""
    options = {**DEFAULTS, **target.connection_options(), **extra}
    tls = options.pop("ssl", False)
    pool = ConnectionPool(
        connection_class=_ClosedIsLostTls if tls else _ClosedIsLost, host=host, port=port, **options
    )
    return Redis.from_pool(pool)


class Server:
    """One Redis server's command connections; MAX_CONNECTIONS commands at a time."""

    def __init__(self, name: str, redis: Redis) -> None:
        self.name = name
        self.redis = redis
        self._free = asyncio.Semaphore(MAX_CONNECTIONS)

    async def run(self, commands: Sequence[Command], *, asking: bool = False) -> list[Any]:
        """Send `commands` on one connection; a refused command's error is its result.

        Raises RedisError or OSError when the connection fails: the outcome of a write
        is then unknown, so nothing is retried here.
        """
        try:
            # Not asyncio.wait_for: on 3.11 it runs the acquire as a task of its own,
            # three turns of the loop before the command is even written, and in a
            # reconnect storm a turn is milliseconds of handshakes. A free connection
            # is taken here without yielding to the loop at all.
            async with asyncio.timeout(CONNECTION_WAIT):
                await self._free.acquire()
        except TimeoutError:
            raise BrokerUnavailable(f"no free connection to Redis {self.name}") from None
        try:
            if len(commands) == 1 and not asking:
                try:
                    # redis-py leaves execute_command unannotated.
                    reply = await self.redis.execute_command(*commands[0])  # type: ignore[no-untyped-call]
                    return [reply]
                except ResponseError as error:
                    return [error]
            async with self.redis.pipeline(transaction=False) as pipe:
                if asking:  # ASKING lets the next command on this connection in
                    pipe.execute_command("ASKING")
                for command in commands:
                    pipe.execute_command(*command)
                results = await pipe.execute(raise_on_error=False)
            return results[1:] if asking else results
        finally:
            self._free.release()

    async def aclose(self) -> None:
        await self.redis.aclose()
        await self.redis.connection_pool.disconnect()


class Scripts:
    """The Lua scripts by SHA1, loaded into a server when it answers NOSCRIPT."""

    def __init__(self) -> None:
        self.sources: dict[str, str] = {}

    def register(self, source: str) -> str:
        sha = hashlib.sha1(source.encode()).hexdigest()
        self.sources[sha] = source
        return sha

    async def load(self, server: Server, commands: Sequence[Command]) -> None:
        shas = {str(command[1]) for command in commands if command[0] == "EVALSHA"}
        await server.run([("SCRIPT", "LOAD", self.sources[sha]) for sha in shas])


class Nodes(Protocol):
    """Runs commands where a key lives; the broker's only way to reach Redis."""

    name: str
    publish_command: str  # PUBLISH on one server, SPUBLISH on a cluster
    sharded: bool

    async def execute(self, key: str, commands: Sequence[Command]) -> list[Any]:
        """Run `commands` on one connection to the server holding `key`, following
        redirections; each result is a value or the ResponseError it got.
        Raises BrokerUnavailable when the server cannot be reached."""

    async def owner(self, key: str) -> str:
        """The name of the server whose pub/sub carries `key`'s slot."""

    def pubsub_client(self, name: str) -> Redis:
        """A client for a pub/sub connection to the server `name`."""

    async def refresh(self) -> None:
        """Learn the topology again (after a failover or a slot migration)."""

    async def ping(self) -> bool:
        """Whether every server a command may need answers."""

    async def aclose(self) -> None: ...


class OneServer:
    """One Redis: a plain server, or the primary a Sentinel names at each connection."""

    publish_command = "PUBLISH"
    sharded = False

    def __init__(
        self, name: str, server: Server, pubsub: Redis, scripts: Scripts, *closers: Any
    ) -> None:
        self.name = name
        self._server = server
        self._pubsub = pubsub
        self._scripts = scripts
        self._closers = closers

    async def execute(self, key: str, commands: Sequence[Command]) -> list[Any]:
        for _ in range(2):
            try:
                results = await self._server.run(commands)
                if not isinstance(results[0], NoScriptError):
                    return results
                await self._scripts.load(self._server, commands)
            except (RedisError, OSError) as error:
                raise BrokerUnavailable(f"Redis is unavailable: {error}") from None
        return results

    async def owner(self, key: str) -> str:
        return self.name

    def pubsub_client(self, name: str) -> Redis:
        return self._pubsub

    async def refresh(self) -> None:
        pass

    async def ping(self) -> bool:
        try:
            return bool(await self._server.redis.ping())
        except (RedisError, OSError):
            return False

    async def aclose(self) -> None:
        await self._server.aclose()
        await self._pubsub.aclose()
        await self._pubsub.connection_pool.disconnect()
        for closer in self._closers:
            with contextlib.suppress(RedisError, OSError):
                await closer.aclose()


class Cluster:
    """Redis Cluster: each key on the primary owning its slot, learnt from CLUSTER SLOTS
    and corrected by every MOVED; ASK and TRYAGAIN (a slot migrating) are followed.

    A feed's keys share the `{feed}` hash tag, so every script runs on one slot.
    """

    publish_command = "SPUBLISH"
    sharded = True

    def __init__(self, seeds: Sequence[tuple[str, int]], target: RedisTarget, scripts: Scripts):
        self.name = "cluster"
        self._target = target
        self._seeds = [f"{host}:{port}" for host, port in seeds]
        self._scripts = scripts
        self._owners: list[str | None] = [None] * SLOTS
        self._servers: dict[str, Server] = {}
        self._pubsubs: dict[str, Redis] = {}
        self._refreshing: asyncio.Task[None] | None = None

    def server(self, name: str) -> Server:
        server = self._servers.get(name)
        if server is None:
            host, _, port = name.rpartition(":")
            server = self._servers[name] = Server(name, make_redis(host, int(port), self._target))
        return server

    def primaries(self) -> list[str]:
        return sorted({name for name in self._owners if name is not None})

    async def owner(self, key: str) -> str:
        slot = key_slot(key.encode())
        if self._owners[slot] is None:
            await self.refresh()
        name = self._owners[slot]
        if name is None:
            raise BrokerUnavailable(f"no Redis Cluster node serves slot {slot}")
        return name

    def pubsub_client(self, name: str) -> Redis:
        client = self._pubsubs.get(name)
        if client is None:
            host, _, port = name.rpartition(":")
            client = self._pubsubs[name] = make_redis(host, int(port), self._target, **PUBSUB)
        return client

    async def execute(self, key: str, commands: Sequence[Command]) -> list[Any]:
        slot = key_slot(key.encode())
        loop = asyncio.get_running_loop()
        settle_by = loop.time() + SETTLE_SECONDS
        delay = 0.01
        asking: str | None = None
        for _ in range(MAX_REDIRECTS):
            name = asking or self._owners[slot]
            if name is None:
                await self.refresh()
                name = self._owners[slot]
                if name is None:
                    raise BrokerUnavailable(f"no Redis Cluster node serves slot {slot}")
            server = self.server(name)
            try:
                results = await server.run(commands, asking=asking is not None)
            except (RedisError, OSError) as error:
                # The node may be gone (a failover): learn the map again for the next
                # command, but never resend this one: a write's outcome is unknown.
                raise self._lost(name, error) from None
            asking = None
            refused = next((r for r in results if isinstance(r, ResponseError)), None)
            if isinstance(refused, MovedError):
                self._owners[slot] = f"{refused.host}:{refused.port}"
                self._refresh_soon()  # a failover or a migration moves more than this slot
            elif isinstance(refused, AskError):
                asking = f"{refused.host}:{refused.port}"
            elif isinstance(refused, TryAgainError | ClusterDownError):
                if loop.time() > settle_by:
                    raise BrokerUnavailable(f"Redis Cluster slot {slot}: {refused}")
                await asyncio.sleep(delay)
                delay = min(delay * 2, 0.25)
                if isinstance(refused, ClusterDownError):
                    self._refresh_soon()
            elif isinstance(refused, NoScriptError):
                try:
                    await self._scripts.load(server, commands)
                except (RedisError, OSError) as error:
                    raise self._lost(name, error) from None
            else:
                return results
        raise BrokerUnavailable(f"Redis Cluster slot {slot}: too many redirections")

    def _lost(self, name: str, error: Exception) -> BrokerUnavailable:
        """A command's connection to `name` failed: the map is learnt again soon."""
        self._refresh_soon()
        return BrokerUnavailable(f"Redis Cluster node {name}: {error}")

    def _refresh_soon(self) -> None:
        if self._refreshing is None or self._refreshing.done():
            self._refreshing = asyncio.get_running_loop().create_task(self._refresh())
            self._refreshing.add_done_callback(_retrieve)

    async def refresh(self) -> None:
        if self._refreshing is None or self._refreshing.done():
            self._refreshing = asyncio.get_running_loop().create_task(self._refresh())
        await asyncio.shield(self._refreshing)

    async def _refresh(self) -> None:
        """Ask the known primaries, then the URL's nodes, which primary owns each slot."""
        errors = []
        for name in dict.fromkeys([*self.primaries(), *self._seeds]):
            try:
                (reply,) = await self.server(name).run([("CLUSTER", "SLOTS")])
            except (RedisError, OSError, BrokerUnavailable) as error:
                errors.append(f"{name}: {describe(error)}")
                continue
            if isinstance(reply, ResponseError):
                errors.append(f"{name}: {reply}")
                continue
            owners: list[str | None] = [None] * SLOTS
            for start, end, primary, *_replicas in reply:
                host = primary[0].decode() or name.rpartition(":")[0]  # "": the one asked
                owners[start : end + 1] = [f"{host}:{primary[1]}"] * (end - start + 1)
            self._owners = owners
            return
        raise BrokerUnavailable("no Redis Cluster node answered: " + "; ".join(errors))

    async def ping(self) -> bool:
        """Every slot has a primary and every primary answers."""
        try:
            if None in self._owners:
                await self.refresh()
            if None in self._owners:
                return False
            answers = await asyncio.gather(
                *(self.server(name).redis.ping() for name in self.primaries())
            )
        except (RedisError, OSError, BrokerUnavailable):
            return False
        return all(answers)

    async def aclose(self) -> None:
        if self._refreshing is not None:
            self._refreshing.cancel()
            with contextlib.suppress(asyncio.CancelledError, BrokerUnavailable):
                await self._refreshing
        for server in self._servers.values():
            await server.aclose()
        for client in self._pubsubs.values():
            await client.aclose()
            await client.connection_pool.disconnect()


def _retrieve(task: asyncio.Task[None]) -> None:
    if not task.cancelled():
        task.exception()  # a failed background refresh: the next command tries again


async def connect(target: RedisTarget, scripts: Scripts) -> Nodes:
    """The servers of `target`; a `redis://` URL that names a cluster node is a cluster.

    Raises BrokerUnavailable when a plain URL's server cannot be asked which it is.
    """
    if target.topology is Topology.CLUSTER:
        return Cluster(target.nodes, target, scripts)
    if target.topology is Topology.SENTINEL:
        assert target.master is not None
        options = {**DEFAULTS, **target.connection_options()}
        sentinel_options = {**DEFAULTS, **target.node_options()}
        sentinel = Sentinel(  # type: ignore[no-untyped-call]
            list(target.nodes), sentinel_kwargs=sentinel_options, **options
        )
        managed = _SentinelClosedIsLostTls if options.get("ssl") else _SentinelClosedIsLost
        commands = sentinel.master_for(target.master, connection_class=managed)
        pubsub = sentinel.master_for(target.master, connection_class=managed, socket_timeout=None)
        return OneServer(target.master, Server(target.master, commands), pubsub, scripts, sentinel)
    host, port = target.nodes[0]
    name = f"{host}:{port}"
    server = Server(name, make_redis(host, port, target))
    try:
        info = await server.redis.info("cluster")
    except (RedisError, OSError) as error:
        await server.aclose()
        raise BrokerUnavailable(describe(error)) from error
    if info.get("cluster_enabled"):
        await server.aclose()
        log.info("Redis at %s is a cluster node: using Redis Cluster", name)
        return Cluster(target.nodes, target, scripts)
    return OneServer(name, server, make_redis(host, port, target, **PUBSUB), scripts)
