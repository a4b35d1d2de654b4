"""Settings: one frozen dataclass from flags and LIVEPUSH_* variables (the only env reader)."""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any, Literal

from livepush.errors import ConfigError


@dataclass(frozen=True, slots=True)
class Settings:
    """Every knob of a livepush node; flags override LIVEPUSH_* variables override defaults."""

    host: str = "127.0.0.1"
    port: int = 8000
    redis_url: str | None = None
    workers: int = 1
    publish_tokens: tuple[str, ...] = ()
    allowed_origins: tuple[str, ...] = ()  # empty: any origin
    history_size: int = 1000
    max_buffer: int = 1 << 20  # unsent bytes per subscriber before it is cut off (1013)
    max_feeds_per_connection: int = 100
    max_body: int = 64 * 1024
    ping_interval: float = 20.0
    sse_keepalive: float = 15.0
    publish_rate: float = 50.0  # publishes per second per token (burst: twice that)
    drain_seconds: float = 10.0
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
        if not self.publish_tokens and not is_loopback(self.host):
            raise ConfigError(
                "no publisher token: set LIVEPUSH_PUBLISH_TOKENS (or --publish-token) "
                "to serve on a non-loopback address"
            )
        return self


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
        "publishes/s per token; 0: no limit",
    ),
    Setting(
        "drain_seconds",
        "LIVEPUSH_DRAIN_SECONDS",
        float,
        "--drain-seconds",
        "SIGTERM grace period (default 10)",
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
