"""`livepush serve`: argument parsing, then uvicorn with livepush's protocol classes."""

from __future__ import annotations

import argparse
import os
import secrets
import sys
from collections.abc import Sequence

from livepush import __version__, config
from livepush.errors import ConfigError

# uvicorn's own sans-I/O WebSocket protocol: it only ever serves upgrades to paths other
# than /v1/ws (refused by the router); /v1/ws never reaches it (transports/uvicorn.py).
WS_PROTOCOL = "websockets-sansio"
HTTP_PROTOCOL = "livepush.transports.uvicorn:FirstRequest"


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="livepush", description="A real-time push server.")
    root.add_argument("--version", action="version", version=f"livepush {__version__}")
    commands = root.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the server")
    for setting in config.SETTINGS:  # one flag per setting that has one
        if setting.flag is None:
            continue
        if setting.action == "store":
            serve.add_argument(
                setting.flag,
                dest=setting.attr,
                type=setting.parse,
                choices=setting.choices or None,
                help=setting.help,
            )
        else:  # a repeatable flag, or a switch: None when not given, so variables apply
            serve.add_argument(
                setting.flag,
                dest=setting.attr,
                action=setting.action,
                default=None,
                help=setting.help,
            )
    return root


def _flags(args: argparse.Namespace) -> dict[str, object]:
    flags: dict[str, object] = {}
    for setting in config.SETTINGS:
        if setting.flag is not None:
            value = getattr(args, setting.attr, None)
            if setting.action == "append" and value is not None:
                value = tuple(str(item) for item in value)
            flags[setting.attr] = value
    return flags


def serve(args: argparse.Namespace) -> int:
    import uvicorn

    from livepush.auth import Access
    from livepush.logs import log_config

    flags = _flags(args)
    try:
        settings = config.load(flags)
    except ConfigError as error:
        print(f"livepush: {error}", file=sys.stderr)
        return 2
    if not settings.publish_tokens and not settings.tokens_file:
        token = secrets.token_urlsafe(24)
        flags["publish_tokens"] = (token,)
        settings = config.load(flags)
        print(f"livepush: no publisher token configured; generated one: {token}", flush=True)
    try:  # the tokens file and the JWT key, read once here to fail before serving
        Access.from_settings(settings)
    except ConfigError as error:
        print(f"livepush: {error}", file=sys.stderr)
        return 2
    for warning in settings.warnings():
        print(f"livepush: warning: {warning}", file=sys.stderr, flush=True)
    # Worker processes build their settings from the environment: tell them the flags.
    os.environ.update(config.environment(flags))
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
        log_config=log_config(settings.log_level),  # access logs redact `token=`
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
