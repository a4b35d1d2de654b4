"""The SPEC's Redis URL forms, read into where livepush connects (as redis-py reads a URL)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import Enum
from typing import Any
from urllib.parse import unquote, urlsplit

from redis.asyncio.connection import parse_url

from livepush.errors import ConfigError

REDIS_PORT, SENTINEL_PORT = 6379, 26379

# Options a URL may carry in its query string, read the way redis-py reads them
# (`redis.asyncio.connection.parse_url`): TLS files and checks, timeouts. Anything else
# is refused when the settings load, rather than failing at the first connection.
OPTIONS = frozenset(
    {
        "db",
        "socket_timeout",
        "socket_connect_timeout",
        "socket_keepalive",
        "health_check_interval",
        "client_name",
        "ssl_ca_certs",
        "ssl_ca_path",
        "ssl_ca_data",
        "ssl_certfile",
        "ssl_keyfile",
        "ssl_password",
        "ssl_cert_reqs",
        "ssl_check_hostname",
        "ssl_min_version",
        "ssl_ciphers",
    }
)
# Sentinels may have credentials of their own (Redis' `sentinel auth-user/auth-pass`
# are the primary's): these options are theirs, never sent to the data nodes.
SENTINEL_OPTIONS = frozenset({"sentinel_username", "sentinel_password"})


class Topology(Enum):
    """How the servers of a URL are arranged."""

    SINGLE = "single"  # one Redis (which may turn out to be a cluster node: see `recognise`)
    SENTINEL = "sentinel"  # a primary and its replicas, watched by Sentinels
    CLUSTER = "cluster"  # Redis Cluster: each feed's keys on the primary owning its slot


@dataclass(frozen=True, slots=True)
class RedisTarget:
    """Where livepush's Redis lives: the servers to ask first and how to connect to them.

    `options` are redis-py connection keywords (credentials, db, TLS files, timeouts);
    `tls` adds `ssl=True` to them. For Sentinel, `nodes` are the Sentinels and
    `master` the name they know the primary by.
    """

    topology: Topology
    nodes: tuple[tuple[str, int], ...]
    tls: bool = False
    master: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    sentinel_options: dict[str, Any] = field(default_factory=dict)

    def connection_options(self) -> dict[str, Any]:
        """Keywords for a redis-py connection to a data node (a primary or a replica)."""
        return {**self.options, "ssl": True} if self.tls else dict(self.options)

    def node_options(self) -> dict[str, Any]:
        """Keywords for a connection to a Sentinel: its own credentials, the same TLS."""
        shared = {
            name: value
            for name, value in self.connection_options().items()
            if name.startswith(("ssl", "socket_"))
        }
        return {**shared, **self.sentinel_options}


SCHEMES = {
    "redis": (Topology.SINGLE, False),
    "rediss": (Topology.SINGLE, True),
    "redis+sentinel": (Topology.SENTINEL, False),
    "rediss+sentinel": (Topology.SENTINEL, True),
    "redis+cluster": (Topology.CLUSTER, False),
    "rediss+cluster": (Topology.CLUSTER, True),
}


def parse_redis_url(url: str) -> RedisTarget:
    """Read a `LIVEPUSH_REDIS_URL`; ConfigError names what is wrong with it.

    - `redis://` or `rediss://[user:pass@]host[:port][/db][?options]`: one Redis;
    - `redis+sentinel://[user:pass@]host:port[,host:port...]/MASTER[/db]`;
    - `redis+cluster://[user:pass@]host:port[,host:port...]`;
    - `rediss+...`: the same over TLS.
    The query string carries redis-py's connection options (`ssl_ca_certs`,
    `ssl_certfile`, `ssl_keyfile`, `ssl_cert_reqs`, ...), for every server reached.
    """
    scheme, _, rest = url.partition("://")
    if scheme.lower() in SCHEMES and not rest.split("/")[0].split("?")[0]:
        raise ConfigError("Redis URL names no host")
    if scheme.lower() not in SCHEMES:
        raise ConfigError(
            "Redis URL must start with one of " + ", ".join(f"{s}://" for s in SCHEMES)
        )
    topology, tls = SCHEMES[scheme.lower()]
    parts = urlsplit("redis://" + rest)
    userinfo, _, hosts = parts.netloc.rpartition("@")
    nodes = tuple(_host_port(host, topology) for host in hosts.split(","))
    path = [unquote(segment) for segment in parts.path.split("/") if segment]
    master = None
    if topology is Topology.SENTINEL:
        if not path:
            raise ConfigError("a redis+sentinel:// URL names the primary: .../MASTER[/db]")
        master, path = path[0], path[1:]
    elif topology is Topology.CLUSTER and path not in ([], ["0"]):
        raise ConfigError("Redis Cluster has only database 0: no /db in a cluster URL")
    elif len(nodes) > 1 and topology is Topology.SINGLE:
        raise ConfigError(
            "several hosts: use redis+sentinel:// or redis+cluster:// (redis:// is one server)"
        )
    if len(path) > 1:
        raise ConfigError(f"unexpected path in Redis URL: /{'/'.join(path)}")
    query = parts.query
    sentinel_options: dict[str, Any] = {}
    if query:
        kept = []
        for pair in query.split("&"):
            name, _, value = pair.partition("=")
            if name in SENTINEL_OPTIONS and topology is Topology.SENTINEL:
                sentinel_options[name.removeprefix("sentinel_")] = unquote(value)
            elif name not in OPTIONS:
                raise ConfigError(f"unknown Redis URL option {name!r}")
            else:
                kept.append(pair)
        query = "&".join(kept)
    # redis-py reads credentials, db and options exactly as it would for one server.
    single = f"redis://{userinfo + '@' if userinfo else ''}h/{'/'.join(path)}"
    try:
        options = dict(parse_url(single + (f"?{query}" if query else "")))
    except ValueError as error:
        raise ConfigError(f"Redis URL: {error}") from None
    options.pop("host", None)
    options.pop("connection_class", None)
    return RedisTarget(topology, nodes, tls, master, options, sentinel_options)


def _host_port(text: str, topology: Topology) -> tuple[str, int]:
    default = SENTINEL_PORT if topology is Topology.SENTINEL else REDIS_PORT
    if not text:
        raise ConfigError("Redis URL names no host")
    try:
        split = urlsplit(f"//{text}")
        host, port = split.hostname, split.port
    except ValueError:
        raise ConfigError(f"bad host:port in Redis URL: {text!r}") from None
    if not host:
        raise ConfigError(f"bad host:port in Redis URL: {text!r}")
    return host, port or default


def redact(url: str) -> str:
    """The URL with its passwords hidden (in the user info and in options), for logs."""
    url = re.sub(r"(password=)[^&]*", r"\1***", url)
    return re.sub(r"^([^:/]+://[^:@/]*):[^@/]*@", r"\1:***@", url)
