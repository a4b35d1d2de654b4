"""`livepush serve|publish|tail|stats`: argument parsing, then uvicorn or a command."""

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
DEFAULT_URL = "http://127.0.0.1:8000"  # where `publish` and `tail` find the server


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
    _add_client_commands(commands)
    stats = commands.add_parser(
        "stats", help="a node's figures (from its /metrics), or every node's (through Redis)"
    )
    stats.add_argument(
        "--url", default=DEFAULT_URL, help=f"the node's base URL (default {DEFAULT_URL})"
    )
    stats.add_argument("--redis-url", help="read every node's last report from this Redis")
    stats.add_argument("--json", action="store_true", help="the samples as JSON")
    return root


def _add_client_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`publish` and `tail`, against a running server (livepush/commands.py runs them)."""
    publish = commands.add_parser("publish", help="publish an entry to a feed")
    tail = commands.add_parser("tail", help="follow a feed's events live")
    for command, json_help in (
        (publish, "print the stored entry as JSON"),
        (tail, "one JSON object per line: the event as received, plus its epoch"),
    ):
        command.add_argument("feed", metavar="FEED", help="the feed's name")
        command.add_argument(
            "--url", default=DEFAULT_URL, help=f"the server's base URL (default {DEFAULT_URL})"
        )
        command.add_argument(
            "--token", metavar="TOKEN", help="a publisher or reader token; default: LIVEPUSH_TOKEN"
        )
        command.add_argument("--json", action="store_true", help=json_help)
    publish.add_argument(
        "body", metavar="BODY", nargs="?", help="the entry's body; - or none: stdin"
    )
    publish.add_argument("--title", metavar="T", help="the entry's title")
    publish.add_argument("--pinned", action="store_true", help="pin the entry on top")
    publish.add_argument(
        "--idempotency-key",
        metavar="KEY",
        help="the same key again never publishes twice (default: a new one, kept for retries)",
    )
    tail.add_argument(
        "--since", metavar="N", type=_seq, help="resume after seq N (default: from now)"
    )
    tail.add_argument(
        "--epoch", metavar="E", help="the epoch N belongs to (another one than the feed's: a reset)"
    )


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
    from livepush.transports import listeners

    uvicorn_config = listeners.Config(
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
    listeners.run(uvicorn_config)
    return 0


def _seq(text: str) -> int:
    if not (text.isascii() and text.isdigit()):
        raise argparse.ArgumentTypeError(f"not a seq: {text!r}")
    return int(text)


def main(argv: Sequence[str] | None = None) -> int:
    root = parser()
    args, extra = root.parse_known_args(argv)
    # argparse in Python 3.11 fills an optional positional (publish's BODY) at the first
    # run of positionals, so in `publish FEED --title T BODY` it is left over (bpo-15112).
    # (A left-over "--word" is an unknown option, not BODY.)
    body = extra == ["-"] or (len(extra) == 1 and not extra[0].startswith("-"))
    if args.command == "publish" and args.body is None and body:
        args.body = extra.pop()
    if extra:
        root.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.command == "serve":
        return serve(args)
    if args.command == "stats":
        from livepush.stats import stats

        return stats(args.url, args.redis_url, as_json=args.json)
    if args.command in ("publish", "tail"):
        from livepush import commands

        token = args.token or config.client_token()
        if args.command == "publish":
            return commands.publish(
                args.url,
                token,
                args.feed,
                args.body,
                title=args.title,
                pinned=args.pinned,
                idempotency_key=args.idempotency_key,
                as_json=args.json,
            )
        return commands.tail(
            args.url, token, args.feed, since=args.since, epoch=args.epoch, as_json=args.json
        )
    return 2  # pragma: no cover (argparse requires a command)


if __name__ == "__main__":
    sys.exit(main())
