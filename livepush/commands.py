"""`livepush publish` and `livepush tail`: the client's answers as terminal lines or JSON lines.

Exit codes: 0 done (tail: ended by Ctrl-C or SIGTERM), 1 an error (its message on
stderr names the SPEC error code), 2 a usage error.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import shutil
import signal
import sys
import unicodedata
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import TextIO

import orjson

from livepush.client import (
    CREATED,
    DELETED,
    UPDATED,
    Client,
    ClientError,
    Entry,
    Event,
    Refused,
    Reset,
    State,
    Status,
)

OK, ERROR, USAGE = 0, 1, 2
SHORT_TYPES = {CREATED: "created", UPDATED: "updated", DELETED: "deleted"}


def publish(
    url: str,
    token: str | None,
    feed: str,
    body: str | None,
    *,
    title: str | None = None,
    pinned: bool = False,
    idempotency_key: str | None = None,
    as_json: bool = False,
) -> int:
    """Publish one entry; print its id and seq (or the stored entry as JSON)."""
    # Chosen here rather than by the client, so that an interrupted publish can be
    # retried by hand without publishing twice.
    key = idempotency_key or secrets.token_urlsafe(18)

    async def main(client: Client) -> int:
        text = body
        if text is None or text == "-":
            if sys.stdin.isatty():
                print("livepush: the body from stdin, ended by Ctrl-D:", file=sys.stderr)
            # From a pipe or a file: the newline that ends the last line is not content.
            text = sys.stdin.read().rstrip("\n")
        entry = await client.publish(feed, text, title=title, pinned=pinned, idempotency_key=key)
        if as_json:
            _out(orjson.dumps(entry.data).decode())
        else:
            _out(f"id={entry.id} seq={entry.seq}")
        return OK

    interrupted = f"interrupted: perhaps published; to retry, --idempotency-key {key}"
    return _run(url, token, main, interrupted=(ERROR, interrupted))


def tail(
    url: str,
    token: str | None,
    feed: str,
    *,
    since: int | None = None,
    epoch: str | None = None,
    as_json: bool = False,
) -> int:
    """Follow a feed until Ctrl-C: one line per event, or one JSON object per line."""

    async def main(client: Client) -> int:
        # SIGTERM ends tail as Ctrl-C does: the socket is closed with a close frame.
        task = asyncio.current_task()
        assert task is not None
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
        try:
            async for item in client.follow(feed, since=since, epoch=epoch, on_status=_status):
                if as_json:
                    _out(_json_line(item))
                else:
                    _show(item)
        except asyncio.CancelledError:
            return OK
        return OK  # pragma: no cover (follow never ends by itself)

    return _run(url, token, main, interrupted=(OK, ""))


def _run(
    url: str,
    token: str | None,
    main: Callable[[Client], Awaitable[int]],
    *,
    interrupted: tuple[int, str],
) -> int:
    """Run `main` with a client: its exit code, or the error's (told on stderr)."""
    # The client's warnings (a publish retried) go to stderr as livepush's own lines.
    logging.basicConfig(format="livepush: %(message)s", level=logging.WARNING)
    try:
        client = Client(url, token=token)
    except ValueError as error:
        print(f"livepush: {error}", file=sys.stderr)
        return USAGE

    async def session() -> int:
        async with client:
            return await main(client)

    try:
        return asyncio.run(session())
    except KeyboardInterrupt:
        code, message = interrupted
        if message:
            print(f"livepush: {message}", file=sys.stderr)
        return code
    except Refused as error:
        print(f"livepush: {_refusal(error)}", file=sys.stderr)
        return ERROR
    except ClientError as error:
        print(f"livepush: {error}", file=sys.stderr)
        return ERROR
    except BrokenPipeError:
        # The reader went away (`| head`): quietly, and without Python's complaint at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return OK


def _refusal(error: Refused) -> str:
    status = f" ({error.status})" if error.status else ""
    fields = "".join(f"; {name}: {why}" for name, why in error.fields.items())
    return f"{error.code}{status}" + (f": {error.message}" if error.message else "") + fields


def _out(line: str, stream: TextIO | None = None) -> None:
    print(line, file=stream or sys.stdout, flush=True)


def _status(status: Status) -> None:
    where = f"seq {status.seq}" + (f" of epoch {status.epoch}" if status.epoch else "")
    if status.state is State.LIVE:
        line = f"following {status.feed} from {where}"
    elif status.state is State.RELOADING:
        line = f"{status.reason}: reloading the snapshot of {status.feed} in {status.delay:.1f} s"
    else:
        line = (
            f"{status.reason}; reconnecting in {status.delay:.1f} s "
            f"(attempt {status.attempt}, from {where})"
        )
    _out(f"livepush: {line}", sys.stderr)


def _json_line(item: Event | Reset) -> str:
    """The event as received plus its epoch; a reset as the snapshot it reloaded."""
    if isinstance(item, Reset):
        return orjson.dumps({"type": "reset", **item.snapshot}).decode()
    return orjson.dumps({**item.message, "epoch": item.epoch}).decode()


def _show(item: Event | Reset) -> None:
    width = shutil.get_terminal_size().columns if sys.stdout.isatty() else None
    if isinstance(item, Reset):
        _out(
            f"livepush: {item.feed} reloaded: {len(item.entries)} entries up to seq "
            f"{item.head_seq} of epoch {item.epoch}",
            sys.stderr,
        )
        for kept in sorted(item.entries, key=lambda entry: entry.seq):
            _out(line(kept.updated_at, kept.seq, "snapshot", _summary(kept), width))
        return
    entry = item.entry
    kind = SHORT_TYPES.get(item.type, item.type)
    if entry is not None:
        _out(line(entry.updated_at, item.seq, kind, _summary(entry), width))
    elif item.type == DELETED:
        _out(line(None, item.seq, kind, f"id {item.id}", width))
    else:  # a type this client does not know (feed.updated, ...): its other fields
        rest = {k: v for k, v in item.message.items() if k not in ("type", "feed", "seq")}
        _out(line(None, item.seq, kind, orjson.dumps(rest).decode(), width))


def _summary(entry: Entry) -> str:
    """The title and the body's first line."""
    lines = entry.body.strip().splitlines()
    return " ".join(part for part in (entry.title, lines[0] if lines else "") if part)


def line(time: str | None, seq: int, kind: str, text: str, width: int | None = None) -> str:
    """time, seq, type, then `text` (untrusted: made printable), cut to `width` if given.

    Cost: the width counts characters, not terminal columns, so a line of wide
    characters (CJK, emoji) may still wrap.
    """
    shown = f"{_clock(time)}  {seq:>6}  {kind:<8}  {printable(text)}"
    if width is not None and len(shown) > width:
        shown = shown[: width - 1] + "…"
    return shown


def _clock(rfc3339: str | None) -> str:
    """An entry's time in local time; the time it arrived for other events."""
    moment = datetime.now().astimezone()
    # Not RFC 3339: the arrival time is still worth showing.
    with contextlib.suppress(ValueError):
        moment = datetime.fromisoformat(rfc3339 or "").astimezone()
    return moment.strftime("%b %d %H:%M:%S")


# Direction overrides and isolates reorder what a terminal shows ("Trojan Source").
_BIDI = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def printable(text: str) -> str:
    """Untrusted text made safe for a terminal: an entry's ESC sequences could retitle
    the window, move the cursor or hide lines, so control characters are shown escaped."""
    return "".join(
        ch if ch not in _BIDI and unicodedata.category(ch) != "Cc" else ascii(ch)[1:-1]
        for ch in text
    )
