"""`livepush serve`: argument parsing, then uvicorn with livepush's protocol classes."""

from __future__ import annotations

import argparse
import os
import secrets
import sys
from collections.abc import Sequence

from livepush import __version__, config

WS_PROTOCOL = "livepush.transports.uvicorn:LivepushWebSocketProtocol"
HTTP_PROTOCOL = "livepush.transports.uvicorn:LivepushHttpProtocol"

# Flag name -> the LIVEPUSH_* variable it overrides, so worker processes (which
# build their settings from the environment) see exactly what the flags said.
FLAG_ENV = {
    "host": "LIVEPUSH_HOST",
    "port": "LIVEPUSH_PORT",
    "redis_url": "LIVEPUSH_REDIS_URL",
    "workers": "LIVEPUSH_WORKERS",
    "publish_tokens": "LIVEPUSH_PUBLISH_TOKENS",
    "allowed_origins": "LIVEPUSH_ALLOWED_ORIGINS",
    "history_size": "LIVEPUSH_HISTORY_SIZE",
    "max_buffer": "LIVEPUSH_MAX_BUFFER",
    "ping_interval": "LIVEPUSH_PING_INTERVAL",
    "publish_rate": "LIVEPUSH_PUBLISH_RATE",
    "drain_seconds": "LIVEPUSH_DRAIN_SECONDS",
    "ws_compression": "LIVEPUSH_WS_COMPRESSION",
    "demo": "LIVEPUSH_DEMO",
    "log_level": "LIVEPUSH_LOG_LEVEL",
}


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="livepush", description="A real-time push server.")
    root.add_argument("--version", action="version", version=f"livepush {__version__}")
    commands = root.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the server")
    serve.add_argument("--host", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default 8000)")
    serve.add_argument("--redis-url", help="Redis URL; none: the in-process broker")
    serve.add_argument("--workers", type=int, help="worker processes (Redis only; default 1)")
    serve.add_argument(
        "--publish-token",
        dest="publish_tokens",
        action="append",
        help="a publisher token (repeatable); overrides LIVEPUSH_PUBLISH_TOKENS",
    )
    serve.add_argument(
        "--allowed-origin",
        dest="allowed_origins",
        action="append",
        help="an Origin allowed to subscribe (repeatable); default: any",
    )
    serve.add_argument("--history-size", type=int, help="events kept per feed (default 1000)")
    serve.add_argument("--max-buffer", type=int, help="unsent bytes before 1013 (default 1 MiB)")
    serve.add_argument("--ping-interval", type=float, help="server ping seconds (default 20)")
    serve.add_argument("--publish-rate", type=float, help="publishes/s per token; 0: no limit")
    serve.add_argument("--drain-seconds", type=float, help="SIGTERM grace period (default 10)")
    serve.add_argument(
        "--ws-compression",
        choices=["off", "shared"],
        help="permessage-deflate: shared (default: compressed once per event) or off",
    )
    serve.add_argument(
        "--no-demo",
        dest="demo",
        action="store_false",
        default=None,
        help="do not seed the demo feed",
    )
    serve.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    return root


def _flags(args: argparse.Namespace) -> dict[str, object]:
    flags = {name: getattr(args, name, None) for name in FLAG_ENV}
    for name in ("publish_tokens", "allowed_origins"):
        if flags[name] is not None:
            flags[name] = tuple(str(value) for value in flags[name])  # type: ignore[union-attr]
    return flags


def serve(args: argparse.Namespace) -> int:
    import uvicorn

    flags = _flags(args)
    try:
        settings = config.load(flags)
    except config.ConfigError as error:
        print(f"livepush: {error}", file=sys.stderr)
        return 2
    if not settings.publish_tokens:
        token = secrets.token_urlsafe(24)
        flags["publish_tokens"] = (token,)
        print(f"livepush: no publisher token configured; generated one: {token}", flush=True)
    for name, variable in FLAG_ENV.items():
        value = flags[name]
        if value is not None:
            os.environ[variable] = ",".join(value) if isinstance(value, tuple) else str(value)
    uvicorn.run(
        "livepush.app:app_from_environment",
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        loop="uvloop",
        http=HTTP_PROTOCOL,
        ws=WS_PROTOCOL,
        ws_max_size=64 * 1024,
        ws_ping_interval=settings.ping_interval,
        ws_ping_timeout=settings.ping_interval,
        # uvicorn's own permessage-deflate keeps a context per socket (tens of KiB) and
        # compresses once per subscriber per event: never. livepush negotiates its own
        # (--ws-compression shared), compressed once per event; see README "Compression".
        ws_per_message_deflate=False,
        # A connect storm overflows a small listen backlog: dropped SYNs retry after 1 s.
        backlog=8192,
        timeout_graceful_shutdown=int(settings.drain_seconds),
        log_level=settings.log_level,
        access_log=settings.log_level == "debug",
        server_header=False,
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.command == "serve":
        return serve(args)
    return 2  # pragma: no cover (argparse requires a command)


if __name__ == "__main__":
    sys.exit(main())
