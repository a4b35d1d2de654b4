"""Settings: one frozen dataclass from flags and LIVEPUSH_* variables (the only env reader)."""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any, Literal

from livepush.brokers.redis_url import parse_redis_url
from livepush.errors import ConfigError


@dataclass(frozen=True, slots=True)
class Settings:
    """Every knob of a livepush node; flags override LIVEPUSH_* variables override defaults."""

    host: str = "127.0.0.1"
    port: int = 8000
    redis_url: str | None = None
    redis_min_replicas: int = 0  # replicas that hold each write before it is answered
    workers: int = 1
    publish_tokens: tuple[str, ...] = ()
    tokens_file: str | None = None  # named, scoped publisher tokens (JSON), reloaded
    private_feeds: tuple[str, ...] = ()  # feed patterns only token holders may read
    jwt_secret: str | None = None  # HS256 reader tokens
    jwt_public_key: str | None = None  # path of a PEM public key: RS256 or ES256 reader tokens
    jwt_audience: str | None = None
    jwt_issuer: str | None = None
    allowed_origins: tuple[str, ...] = ()  # empty: any origin
    history_size: int = 1000
    max_buffer: int = 1 << 20  # unsent bytes per subscriber before it is cut off (1013)
    max_feeds_per_connection: int = 100
    max_body: int = 64 * 1024
    ping_interval: float = 20.0
    sse_keepalive: float = 15.0
    publish_rate: float = 0.0  # writes/s per LIVEPUSH_PUBLISH_TOKENS token; 0: no limit
    drain_seconds: float = 10.0
    # Connections one client address may hold; 0: no limit (a mobile carrier's NAT puts
    # thousands of phones behind one address).
    max_connections_per_address: int = 0
    subscribe_timeout: float = 30.0  # a WebSocket with no subscription is closed after it
    # A connection that has not sent a whole first request head is closed after it.
    first_request_timeout: float = 10.0
    # "shared": permessage-deflate without context takeover, each event compressed once
    # for every socket that accepted it; "off": decline it.
    ws_compression: str = "shared"
    demo: bool = True  # seed the `demo` feed on the in-process broker
    log_level: str = "info"
    generated_token: bool = field(default=False, compare=False)

    def validate(self) -> Settings:
        if not 0 < self.port < 65536:
            raise ConfigError("port must be 1..65535")
        if self.workers < 1:
            raise ConfigError("workers must be at least 1")
        if self.redis_url is not None:
            parse_redis_url(self.redis_url)  # ConfigError names what is wrong
        if self.redis_min_replicas < 0:
            raise ConfigError("Redis min replicas must be 0 or more")
        if self.redis_min_replicas and self.redis_url is None:
            raise ConfigError("LIVEPUSH_REDIS_MIN_REPLICAS needs Redis (--redis-url)")
        if self.workers > 1 and self.redis_url is None:
            raise ConfigError(
                "--workers needs Redis (--redis-url): the in-process broker lives in one process"
            )
        if not 0 <= self.history_size <= 1_000_000:
            raise ConfigError("history size must be 0..1000000")
        if self.max_buffer < 1024:
            raise ConfigError("max buffer must be at least 1024 bytes")
        if self.ws_compression not in WS_COMPRESSION:
            raise ConfigError("ws compression must be off or shared")
        if not self.publish_tokens and not self.tokens_file and not is_loopback(self.host):
            raise ConfigError(
                "no publisher token: set LIVEPUSH_PUBLISH_TOKENS (or --publish-token) "
                "or LIVEPUSH_TOKENS_FILE to serve on a non-loopback address"
            )
        if self.publish_rate < 0:
            raise ConfigError("publish rate must be 0 (no limit) or more")
        if self.max_connections_per_address < 0:
            raise ConfigError("max connections per address must be 0 (no limit) or more")
        if self.subscribe_timeout <= 0:
            raise ConfigError("subscribe timeout must be more than 0 seconds")
        if self.first_request_timeout <= 0:
            raise ConfigError("first request timeout must be more than 0 seconds")
        return self

    def warnings(self) -> list[str]:
        """What is allowed but probably not meant (printed once at start-up)."""
        found = []
        if not is_loopback(self.host) and not self.allowed_origins:
            found.append(
                f"bound to {self.host} with no Origin allow-list: any web site may open "
                "subscriptions from its visitors' browsers (set LIVEPUSH_ALLOWED_ORIGINS)"
            )
        if self.private_feeds and not (self.jwt_secret or self.jwt_public_key):
            found.append(
                "private feeds but no LIVEPUSH_JWT_SECRET or LIVEPUSH_JWT_PUBLIC_KEY: "
                "only publisher tokens can read them"
            )
        return found


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _split(value: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in value.split(",") if item.strip())


def _url(value: str) -> str | None:
    return value or None


def _optional(value: str) -> str | None:
    return value or None


def _yes(value: str) -> bool:
    return value.lower() not in ("0", "false", "no", "")


WS_COMPRESSION = ("off", "shared")
LOG_LEVELS = ("debug", "info", "warning", "error")


@dataclass(frozen=True, slots=True)
class Setting:
    """One knob of Settings as the outside sets it: its LIVEPUSH_* variable and its flag.

    `parse` reads the variable's text (and a `store` flag's). A `flag` of None means
    the variable alone sets it. `action` is the flag's: `store` takes a value,
    `append` is repeatable (its variable is comma-separated), `store_false` is a
    switch that turns the setting off.
    """

    attr: str
    variable: str
    parse: Callable[[str], Any]
    flag: str | None
    help: str = ""
    choices: tuple[str, ...] = ()
    action: Literal["store", "append", "store_false"] = "store"


# The one table `livepush serve`'s flags, the variables and the worker processes'
# environment are made from (README "Running" lists the same).
SETTINGS: tuple[Setting, ...] = (
    Setting("host", "LIVEPUSH_HOST", str, "--host", "address to bind (default 127.0.0.1)"),
    Setting("port", "LIVEPUSH_PORT", int, "--port", "port (default 8000)"),
    Setting(
        "redis_url",
        "LIVEPUSH_REDIS_URL",
        _url,
        "--redis-url",
        "Redis URL; none: the in-process broker",
    ),
    Setting(
        "redis_min_replicas",
        "LIVEPUSH_REDIS_MIN_REPLICAS",
        int,
        "--redis-min-replicas",
        "Redis replicas that must hold each write before it is answered (default 0)",
    ),
    Setting(
        "workers", "LIVEPUSH_WORKERS", int, "--workers", "worker processes (Redis only; default 1)"
    ),
    Setting(
        "publish_tokens",
        "LIVEPUSH_PUBLISH_TOKENS",
        _split,
        "--publish-token",
        "a publisher token (repeatable); overrides LIVEPUSH_PUBLISH_TOKENS",
        action="append",
    ),
    Setting(
        "tokens_file",
        "LIVEPUSH_TOKENS_FILE",
        _optional,
        "--tokens-file",
        "JSON file of named, scoped publisher tokens (read again on SIGHUP and on change)",
    ),
    Setting(
        "private_feeds",
        "LIVEPUSH_PRIVATE_FEEDS",
        _split,
        "--private-feed",
        "a feed pattern (`*` for any run) only token holders may read (repeatable)",
        action="append",
    ),
    Setting(
        "jwt_secret",
        "LIVEPUSH_JWT_SECRET",
        _optional,
        None,
        "HS256 secret of reader tokens (a variable only: flags show in `ps`)",
    ),
    Setting(
        "jwt_public_key",
        "LIVEPUSH_JWT_PUBLIC_KEY",
        _optional,
        "--jwt-public-key",
        "PEM file of the RS256 or ES256 public key of reader tokens",
    ),
    Setting(
        "jwt_audience",
        "LIVEPUSH_JWT_AUDIENCE",
        _optional,
        "--jwt-audience",
        "the `aud` reader tokens must carry (unset: not checked)",
    ),
    Setting(
        "jwt_issuer",
        "LIVEPUSH_JWT_ISSUER",
        _optional,
        "--jwt-issuer",
        "the `iss` reader tokens must carry (unset: not checked)",
    ),
    Setting(
        "allowed_origins",
        "LIVEPUSH_ALLOWED_ORIGINS",
        _split,
        "--allowed-origin",
        "an Origin allowed to subscribe (repeatable); default: any",
        action="append",
    ),
    Setting(
        "history_size",
        "LIVEPUSH_HISTORY_SIZE",
        int,
        "--history-size",
        "events kept per feed (default 1000)",
    ),
    Setting(
        "max_buffer",
        "LIVEPUSH_MAX_BUFFER",
        int,
        "--max-buffer",
        "unsent bytes before 1013 (default 1 MiB)",
    ),
    Setting(
        "max_feeds_per_connection",
        "LIVEPUSH_MAX_FEEDS_PER_CONNECTION",
        int,
        None,
        "feeds one WebSocket may hold (default 100)",
    ),
    Setting(
        "ping_interval",
        "LIVEPUSH_PING_INTERVAL",
        float,
        "--ping-interval",
        "server ping seconds (default 20)",
    ),
    Setting(
        "sse_keepalive",
        "LIVEPUSH_SSE_KEEPALIVE",
        float,
        None,
        "seconds between SSE keep-alive comments (default 15)",
    ),
    Setting(
        "publish_rate",
        "LIVEPUSH_PUBLISH_RATE",
        float,
        "--publish-rate",
        "writes/s per --publish-token token (default 0: no limit)",
    ),
    Setting(
        "drain_seconds",
        "LIVEPUSH_DRAIN_SECONDS",
        float,
        "--drain-seconds",
        "SIGTERM grace period (default 10)",
    ),
    Setting(
        "max_connections_per_address",
        "LIVEPUSH_MAX_CONNECTIONS_PER_ADDRESS",
        int,
        "--max-connections-per-address",
        "connections one client address may hold (default 0: no limit)",
    ),
    Setting(
        "subscribe_timeout",
        "LIVEPUSH_SUBSCRIBE_TIMEOUT",
        float,
        None,
        "seconds a WebSocket may stay open with no subscription (default 30)",
    ),
    Setting(
        "first_request_timeout",
        "LIVEPUSH_FIRST_REQUEST_TIMEOUT",
        float,
        None,
        "seconds a connection may take to send its first request head (default 10)",
    ),
    Setting(
        "ws_compression",
        "LIVEPUSH_WS_COMPRESSION",
        str,
        "--ws-compression",
        "permessage-deflate: shared (default: compressed once per event) or off",
        choices=WS_COMPRESSION,
    ),
    Setting(
        "demo",
        "LIVEPUSH_DEMO",
        _yes,
        "--no-demo",
        "do not seed the demo feed",
        action="store_false",
    ),
    Setting(
        "log_level",
        "LIVEPUSH_LOG_LEVEL",
        str,
        "--log-level",
        "debug adds access logs (default info)",
        choices=LOG_LEVELS,
    ),
)


def client_token(environ: Mapping[str, str] | None = None) -> str | None:
    """LIVEPUSH_TOKEN: the token `livepush publish` and `tail` send unless --token is given."""
    return (os.environ if environ is None else environ).get("LIVEPUSH_TOKEN") or None


def environment(flags: Mapping[str, Any]) -> dict[str, str]:
    """The LIVEPUSH_* variables saying what the set `flags` say (for worker processes)."""
    variables = {}
    for setting in SETTINGS:
        value = flags.get(setting.attr)
        if value is not None:
            text = ",".join(value) if isinstance(value, tuple) else str(value)
            variables[setting.variable] = text
    return variables


def load(
    flags: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None
) -> Settings:
    """Build validated Settings: defaults, then LIVEPUSH_* variables, then flags that are set."""
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for setting in SETTINGS:
        if setting.variable in environ:
            try:
                values[setting.attr] = setting.parse(environ[setting.variable])
            except ValueError as error:
                raise ConfigError(f"{setting.variable}: {error}") from None
    known = {f.name for f in fields(Settings)}
    values.update(
        {
            attr: value
            for attr, value in (flags or {}).items()
            if value is not None and attr in known
        }
    )
    return replace(Settings(), **values).validate()
