"""Settings: one frozen dataclass from flags and LIVEPUSH_* variables (the only env reader)."""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any


class ConfigError(ValueError):
    """A setting has a value livepush cannot run with."""


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
        if self.ws_compression not in ("off", "shared"):
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


ENV: dict[str, tuple[str, Any]] = {
    "LIVEPUSH_HOST": ("host", str),
    "LIVEPUSH_PORT": ("port", int),
    "LIVEPUSH_REDIS_URL": ("redis_url", lambda v: v or None),
    "LIVEPUSH_WORKERS": ("workers", int),
    "LIVEPUSH_PUBLISH_TOKENS": ("publish_tokens", _split),
    "LIVEPUSH_ALLOWED_ORIGINS": ("allowed_origins", _split),
    "LIVEPUSH_HISTORY_SIZE": ("history_size", int),
    "LIVEPUSH_MAX_BUFFER": ("max_buffer", int),
    "LIVEPUSH_MAX_FEEDS_PER_CONNECTION": ("max_feeds_per_connection", int),
    "LIVEPUSH_PING_INTERVAL": ("ping_interval", float),
    "LIVEPUSH_SSE_KEEPALIVE": ("sse_keepalive", float),
    "LIVEPUSH_PUBLISH_RATE": ("publish_rate", float),
    "LIVEPUSH_DRAIN_SECONDS": ("drain_seconds", float),
    "LIVEPUSH_WS_COMPRESSION": ("ws_compression", str),
    "LIVEPUSH_DEMO": ("demo", lambda v: v.lower() not in ("0", "false", "no", "")),
    "LIVEPUSH_LOG_LEVEL": ("log_level", str),
}


def load(
    flags: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None
) -> Settings:
    """Build validated Settings: defaults, then LIVEPUSH_* variables, then flags that are set."""
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for name, (attr, convert) in ENV.items():
        if name in environ:
            try:
                values[attr] = convert(environ[name])
            except ValueError as error:
                raise ConfigError(f"{name}: {error}") from None
    known = {f.name for f in fields(Settings)}
    values.update(
        {
            attr: value
            for attr, value in (flags or {}).items()
            if value is not None and attr in known
        }
    )
    return replace(Settings(), **values).validate()
