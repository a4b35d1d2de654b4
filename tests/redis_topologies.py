"""Redis as production runs it, as real processes for tests: a cluster, Sentinel, TLS.

Every server listens on a free loopback port, keeps no data on disk (no RDB, no AOF:
a restarted node comes back empty, as after losing its disk), and lives in a temp
directory that close() removes with the processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator, Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.exceptions
import uvloop
from redis.asyncio.connection import Connection
from redis.crc import key_slot

from livepush.brokers import redis_nodes
from livepush.brokers.redis_url import parse_redis_url
from tests.support import HOST, free_port, wait_until


def _binary(name: str) -> str:
    path = shutil.which(name)
    assert path, f"{name} is not installed (./dev test installs it)"
    return path


class RedisNode:
    """One redis-server process; kill() and start() again keep its port and directory."""

    def __init__(self, root: Path, *args: str) -> None:
        self.port = free_port()
        self.dir = root / str(self.port)
        self.dir.mkdir()
        self.args = list(args)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"

    def start(self, *extra: str) -> RedisNode:
        """Start (again), with `extra` arguments for this run only."""
        argv = [_binary("redis-server"), "--port", str(self.port), "--bind", HOST]
        argv += ["--dir", str(self.dir), "--save", "", "--appendonly", "no", *self.args, *extra]
        log = (self.dir / "log").open("ab")
        self.proc = subprocess.Popen(argv, stdout=log, stderr=log)
        log.close()
        wait_until(self.answers, what=f"redis-server on {self.port}")
        return self

    def client(self) -> redis.Redis:
        return redis.Redis(HOST, self.port, socket_timeout=5)

    def answers(self) -> bool:
        try:
            with self.client() as client:
                return bool(client.ping())
        except redis.RedisError:
            return False

    def call(self, *args: Any) -> Any:
        with self.client() as client:
            return client.execute_command(*args)

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)
            self.proc = None


def replicas_online(primary: RedisNode) -> int:
    """How many replicas the primary streams to and that have caught up."""
    info = primary.client().info("replication")
    return sum(
        1
        for name, value in info.items()
        if name.startswith("slave") and value.get("state") == "online"
    )


class Cluster:
    """`redis-server --cluster-enabled yes` for each primary and replica, joined by
    `redis-cli --cluster create`; failovers start after one second without a primary."""

    def __init__(self, primaries: int = 3, replicas: int = 1) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="livepush-cluster-"))
        self.primaries, self.replicas = primaries, replicas
        self.nodes: list[RedisNode] = []

    def start(self) -> Cluster:
        for _ in range(self.primaries * (1 + self.replicas)):
            # An explicit bus port: port + 10000 may be taken, or past 65535.
            args = ["--cluster-enabled", "yes", "--cluster-node-timeout", "1000"]
            args += ["--cluster-port", str(free_port()), "--cluster-config-file", "nodes.conf"]
            self.nodes.append(RedisNode(self.root, *args).start())
        create = [_binary("redis-cli"), "--cluster", "create"]
        create += [node.address for node in self.nodes]
        create += ["--cluster-replicas", str(self.replicas), "--cluster-yes"]
        subprocess.run(create, check=True, capture_output=True, timeout=60)
        self.wait_healthy()
        return self

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(node.address for node in self.nodes[:3])

    def node(self, port: int) -> RedisNode:
        return next(node for node in self.nodes if node.port == port)

    def live(self) -> list[RedisNode]:
        return [node for node in self.nodes if node.proc is not None]

    def slots(self) -> list[tuple[int, int, int, list[int]]]:
        """(first slot, last slot, primary port, replica ports), as a live node sees it
        (replicas it has not heard of yet are missing: ask the primary for those)."""
        for node in self.live():
            try:
                reply = node.call("CLUSTER", "SLOTS")
            except redis.RedisError:
                continue
            return sorted(
                (start, end, primary[1], [replica[1] for replica in replicas])
                for start, end, primary, *replicas in reply
            )
        raise AssertionError("no cluster node answers")

    def primary_of(self, feed: str) -> RedisNode:
        slot = key_slot(feed.encode())
        port = next(port for start, end, port, _ in self.slots() if start <= slot <= end)
        return self.node(port)

    def primary_ports(self) -> set[int]:
        return {port for _, _, port, _ in self.slots()}

    def healthy(self) -> bool:
        """Every slot covered, every live node agreeing, every primary with its replicas
        online and caught up."""
        try:
            for node in self.live():
                if b"cluster_state:ok" not in node.call("CLUSTER", "INFO"):
                    return False
            slots = self.slots()
            if sum(end - start + 1 for start, end, _, _ in slots) != 16384:
                return False
            for port in {port for _, _, port, _ in slots}:
                info = self.node(port).client().info("replication")
                online = [
                    value
                    for name, value in info.items()
                    if name.startswith("slave") and value.get("state") == "online"
                ]
                if len(online) < self.replicas:
                    return False
        except redis.RedisError:
            return False
        return True

    def wait_healthy(self, timeout: float = 30.0) -> None:
        wait_until(self.healthy, timeout, "the cluster to be healthy")

    def wait_failover(self, feed: str, old: RedisNode, timeout: float = 30.0) -> RedisNode:
        """Wait until a replica took over the slot of `feed` from `old`; the new primary."""

        def promoted() -> bool:
            try:
                return self.primary_of(feed) is not old
            except (AssertionError, StopIteration):
                return False

        wait_until(promoted, timeout, f"a replica to take over {feed}'s slot")
        return self.primary_of(feed)

    def feeds_per_primary(self, prefix: str, per_primary: int) -> Iterator[str]:
        """Feed names spread so that each primary owns `per_primary` of them."""
        wanted = dict.fromkeys(self.primary_ports(), per_primary)
        number = 0
        while any(wanted.values()):
            name = f"{prefix}{number}"
            number += 1
            port = self.primary_of(name).port
            if wanted[port]:
                wanted[port] -= 1
                yield name

    def reshard_first_slot(self, source: RedisNode, target: RedisNode) -> None:
        """`redis-cli --cluster reshard`: move the lowest slot of `source` to `target`."""
        ids = {node.port: node.call("CLUSTER", "MYID").decode() for node in (source, target)}
        command = [_binary("redis-cli"), "--cluster", "reshard", source.address]
        command += ["--cluster-from", ids[source.port], "--cluster-to", ids[target.port]]
        command += ["--cluster-slots", "1", "--cluster-yes"]
        subprocess.run(command, check=True, capture_output=True, timeout=60)

    def first_slot(self, node: RedisNode) -> int:
        return min(start for start, _, port, _ in self.slots() if port == node.port)

    def close(self) -> None:
        for node in self.nodes:
            node.kill()
        shutil.rmtree(self.root, ignore_errors=True)


def feed_in_slot(slot: int, prefix: str = "moving-") -> str:
    """A feed name whose keys hash to `slot` (about 16,384 names tried)."""
    number = 0
    while key_slot(f"{prefix}{number}".encode()) != slot:
        number += 1
    return f"{prefix}{number}"


class SentinelGroup:
    """A primary, its replica, and three `redis-sentinel` processes watching them under
    the name `lp`; the primary counts as down after one second without an answer."""

    NAME = "lp"

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="livepush-sentinel-"))
        self.servers: list[RedisNode] = []
        self.sentinels: list[subprocess.Popen[bytes]] = []
        self.sentinel_ports: list[int] = []

    def start(self) -> SentinelGroup:
        primary = RedisNode(self.root).start()
        replica = RedisNode(self.root, "--replicaof", HOST, str(primary.port)).start()
        self.servers = [primary, replica]
        for _ in range(3):
            port = free_port()
            conf = self.root / f"sentinel-{port}.conf"
            conf.write_text(
                f"port {port}\nbind {HOST}\ndir {self.root}\n"
                f"sentinel monitor {self.NAME} {HOST} {primary.port} 2\n"
                f"sentinel down-after-milliseconds {self.NAME} 1000\n"
                f"sentinel failover-timeout {self.NAME} 4000\n"
                f"sentinel parallel-syncs {self.NAME} 1\n"
            )
            log = (self.root / f"sentinel-{port}.log").open("ab")
            sentinel = [_binary("redis-sentinel"), str(conf)]
            self.sentinels.append(subprocess.Popen(sentinel, stdout=log, stderr=log))
            log.close()
            self.sentinel_ports.append(port)
        self.wait_healthy()
        return self

    @property
    def url(self) -> str:
        hosts = ",".join(f"{HOST}:{port}" for port in self.sentinel_ports)
        return f"redis+sentinel://{hosts}/{self.NAME}"

    def _ask(self, port: int, *args: Any) -> Any:
        with redis.Redis(HOST, port, socket_timeout=2) as client:
            return client.execute_command(*args)

    def primary(self) -> RedisNode:
        """The primary every sentinel names now."""
        reply = self._ask(self.sentinel_ports[0], "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.NAME)
        port = int(reply[1])
        return next(node for node in self.servers if node.port == port)

    def replica(self) -> RedisNode:
        primary = self.primary()
        return next(node for node in self.servers if node is not primary)

    def healthy(self) -> bool:
        """Every sentinel names the same live primary, knows the other two sentinels and
        one replica; the replica is online and caught up, and follows that primary."""
        try:
            named = set()
            for port in self.sentinel_ports:
                with redis.Redis(HOST, port, socket_timeout=2) as client:
                    master = client.sentinel_master(self.NAME)
                if not master["is_master"] or master["is_sdown"] or master["is_odown"]:
                    return False
                if master["num-other-sentinels"] < 2 or master["num-slaves"] < 1:
                    return False
                named.add(int(master["port"]))
            if len(named) != 1:
                return False
            primary = self.primary()
            if primary.proc is None:
                return False
            info = primary.client().info("replication")
            if info.get("connected_slaves") != 1 or info["slave0"]["state"] != "online":
                return False
            replica = next(node for node in self.servers if node is not primary)
            if replica.proc is None:
                return False
            mine = replica.client().info("replication")
            return bool(mine["master_port"] == primary.port and mine["master_link_status"] == "up")
        except (redis.RedisError, KeyError, StopIteration):
            return False

    def wait_healthy(self, timeout: float = 30.0) -> None:
        wait_until(self.healthy, timeout, "the sentinels to agree on a primary with a replica")

    def wait_failover(self, old: RedisNode, timeout: float = 30.0) -> RedisNode:
        def promoted() -> bool:
            try:
                return self.primary() is not old
            except (redis.RedisError, StopIteration):
                return False

        wait_until(promoted, timeout, "the sentinels to promote the replica")
        return self.primary()

    def restart_as_replica(self, node: RedisNode) -> None:
        """Start `node` again (empty) as a replica of the primary, as an operator would
        (the sentinels would make it one too, but only after ten seconds or more)."""
        node.start("--replicaof", HOST, str(self.primary().port))
        self.wait_healthy()

    def repair(self) -> None:
        """Put back what a test that failed midway left broken (a killed server, a
        replica pointed elsewhere), so that its failure is not every next test's too."""
        if all(node.proc is not None for node in self.servers) and self.healthy():
            return

        def named_live() -> bool:
            try:
                return self.primary().proc is not None
            except (redis.RedisError, StopIteration):
                return False

        wait_until(named_live, 30, "the sentinels to name a live primary")
        primary = self.primary()
        for node in self.servers:
            if node is primary:
                continue
            if node.proc is None:
                node.start("--replicaof", HOST, str(primary.port))
            else:
                node.call("REPLICAOF", HOST, str(primary.port))
        self.wait_healthy()

    def close(self) -> None:
        for sentinel in self.sentinels:
            sentinel.kill()
            sentinel.wait(10)
        for server in self.servers:
            server.kill()
        shutil.rmtree(self.root, ignore_errors=True)


class TlsRedis:
    """A redis-server that speaks only TLS and wants a client certificate, with a CA,
    a server and a client certificate made by `openssl`, and a second CA that signed
    none of them (a wrong CA)."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="livepush-tls-"))
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def _openssl(self, *args: str) -> None:
        subprocess.run([_binary("openssl"), *args], check=True, capture_output=True, timeout=60)

    def _new_key(self, name: str) -> list[str]:
        """openssl req options for a new P-256 key in `name`.key."""
        return [
            "-nodes",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-keyout",
            str(self.root / f"{name}.key"),
        ]

    def _ca(self, name: str) -> None:
        pem = str(self.root / f"{name}.pem")
        subject = f"/CN=livepush test {name}"
        self._openssl(
            "req", "-x509", *self._new_key(name), "-out", pem, "-days", "2", "-subj", subject
        )

    def _signed(self, name: str, subject: str, extensions: str) -> None:
        root = self.root
        csr, ext = str(root / f"{name}.csr"), root / f"{name}.ext"
        self._openssl("req", "-new", *self._new_key(name), "-out", csr, "-subj", subject)
        ext.write_text(extensions)
        ca = ["-CA", str(root / "ca.pem"), "-CAkey", str(root / "ca.key"), "-CAcreateserial"]
        out = ["-out", str(root / f"{name}.pem"), "-days", "2", "-extfile", str(ext)]
        self._openssl("x509", "-req", "-in", csr, *ca, *out)

    def start(self) -> TlsRedis:
        root = self.root
        self._ca("ca")
        self._ca("wrong-ca")
        self._signed("server", f"/CN={HOST}", f"subjectAltName=IP:{HOST},DNS:localhost\n")
        self._signed("client", "/CN=livepush", "extendedKeyUsage=clientAuth\n")
        argv = [_binary("redis-server"), "--port", "0", "--tls-port", str(self.port)]
        argv += ["--bind", HOST, "--dir", str(root), "--save", "", "--appendonly", "no"]
        argv += ["--tls-cert-file", str(root / "server.pem")]
        argv += ["--tls-key-file", str(root / "server.key")]
        argv += ["--tls-ca-cert-file", str(root / "ca.pem"), "--tls-auth-clients", "yes"]
        log = (root / "log").open("ab")
        self.proc = subprocess.Popen(argv, stdout=log, stderr=log)
        log.close()
        wait_until(self.answers, what="redis-server on TLS")
        return self

    def answers(self) -> bool:
        client = redis.Redis(
            HOST,
            self.port,
            ssl=True,
            ssl_ca_certs=str(self.root / "ca.pem"),
            ssl_certfile=str(self.root / "client.pem"),
            ssl_keyfile=str(self.root / "client.key"),
            socket_timeout=2,
        )
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False
        finally:
            client.close()

    def url(self, ca: str = "ca") -> str:
        """A rediss:// URL with the client certificate and `ca` (or "wrong-ca")."""
        root = self.root
        return (
            f"rediss://{HOST}:{self.port}/0?ssl_ca_certs={root / f'{ca}.pem'}"
            f"&ssl_certfile={root / 'client.pem'}&ssl_keyfile={root / 'client.key'}"
            "&ssl_cert_reqs=required"
        )

    def close(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)
        shutil.rmtree(self.root, ignore_errors=True)


def run_on_uvloop(scenario: Coroutine[Any, Any, None]) -> None:
    """Run `scenario` on uvloop, as `livepush serve` runs."""
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(scenario)


async def one_server(url: str) -> redis_nodes.OneServer:
    """livepush's broker connections to the one Redis (or Sentinel-managed primary) of `url`."""
    nodes = await redis_nodes.connect(parse_redis_url(url), redis_nodes.Scripts())
    assert isinstance(nodes, redis_nodes.OneServer)
    return nodes


@contextlib.asynccontextmanager
async def broker_connection(url: str) -> AsyncIterator[tuple[Connection, asyncio.StreamWriter]]:
    """A new connection of the class livepush's broker uses for `url` (plain, TLS or
    Sentinel-managed), connected, with its writer; disconnected afterwards."""
    nodes = await one_server(url)
    connection = nodes._server.redis.connection_pool.make_connection()  # type: ignore[no-untyped-call]
    try:
        await connection.connect()
        writer = connection._writer
        assert writer is not None
        yield connection, writer
    finally:
        await connection.disconnect()
        await nodes.aclose()


def assert_a_dropped_connection_is_lost(url: str) -> None:
    """A command on a connection whose transport the loop has closed (the server reset
    it) raises redis-py's ConnectionError, not uvloop's RuntimeError; the next command
    connects again. On uvloop, as `livepush serve` runs; through the connection class
    livepush's broker uses for `url` (plain, TLS or Sentinel-managed)."""

    async def scenario() -> None:
        async with broker_connection(url) as (connection, writer):
            writer.transport.abort()  # as the loop does when the server resets it
            await asyncio.sleep(0.05)  # the loop closes the socket's handle
            with pytest.raises(redis.exceptions.ConnectionError):
                await connection.send_command("PING")
            await connection.send_command("PING")
            assert await connection.read_response() in (b"PONG", "PONG")

    run_on_uvloop(scenario())
