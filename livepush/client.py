"""A Python client for livepush: follow a feed's events, in seq order and each once.

    async with Client("http://127.0.0.1:8000", token=token) as client:
        entry = await client.publish("demo", "The jury is back.", title="VERDICT")
        async for item in client.follow("demo", since=entry.seq - 1):
            print(item)

`follow()` behaves like livepush.js: it subscribes in the socket's URL (or by message
when it holds a token, which stays out of URLs), resumes with `since` and `epoch`
after any break, drops a duplicate, resubscribes from its last seq after a hole,
answers `reset` by reloading the snapshot (yielding a `Reset`) and subscribing from
its `head_seq` and `epoch`, and reconnects with exponential backoff and full jitter.
The seq arithmetic is livepush/cursor.py's `Cursor`, which does no I/O; `Client` is
its shell.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import secrets
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any
from urllib.parse import quote, urlencode, urlsplit, urlunsplit

import httpx
import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from livepush.cursor import (
    CREATED,
    DELETED,
    UPDATED,
    Action,
    ClientError,
    Cursor,
    Entry,
    Event,
    Refused,
    Reset,
)

__all__ = [
    "CREATED",
    "DELETED",
    "UPDATED",
    "Client",
    "ClientError",
    "Entry",
    "Event",
    "Refused",
    "Reset",
    "State",
    "Status",
    "Unreachable",
    "backoff",
]

log = logging.getLogger("livepush.client")

BACKOFF_BASE = 0.5  # seconds: the first retry waits up to this (livepush.js: 500 ms)
BACKOFF_CAP = 30.0  # seconds: no retry waits longer (livepush.js: 30 s)
PUBLISH_ATTEMPTS = 5  # a publish gives up after this many 503s or network errors
SNAPSHOT_LIMIT = 50  # entries a reset reloads (the server's default; at most 500)
HTTP_TIMEOUT = 10.0  # seconds for each HTTP request, and for a WebSocket handshake
# Answers worth the same request again: the broker is down (503), or a proxy in front
# of livepush lost its node (502, 504). A publish retried carries the same
# Idempotency-Key, so the server recognises it and never publishes twice.
RETRY_STATUSES = frozenset({502, 503, 504})


class Unreachable(ClientError):
    """No answer from the server (refused, reset, timed out) after every attempt."""


class State(StrEnum):
    LIVE = "live"  # subscribed (again): events flow
    RECONNECTING = "reconnecting"  # the connection ended; the next attempt is due in `delay`
    RELOADING = "reloading"  # reset: the snapshot is reloaded in `delay`, then a Reset


@dataclass(frozen=True, slots=True)
class Status:
    """What a follower's connection is doing, for `on_status` (a terminal's status line)."""

    state: State
    feed: str
    seq: int | None
    epoch: str | None
    reason: str = ""  # why the previous connection ended
    delay: float = 0.0  # seconds until the next attempt
    attempt: int = 0  # failed attempts since the last subscription


def backoff(attempt: int, base: float = BACKOFF_BASE, cap: float = BACKOFF_CAP) -> float:
    """Full jitter: a random delay in [0, min(cap, base * 2**attempt)].

    Random over the whole range, so thousands of clients cut off by one restart do
    not come back in the same instant. The exponent stops growing long before a float
    would overflow (2.0**1024), so any attempt count is safe.
    """
    return random.uniform(0.0, min(cap, base * 2.0 ** min(attempt, 64)))


class Client:
    """A livepush server as a Python program sees it: publish entries, follow feeds.

    `url` is the server's base (http or https); `token` is a publisher token (or a
    reader token, for private feeds): sent as `Authorization: Bearer`, and in the
    subscribe message, never in a URL. Close it with `async with` or `aclose()`.
    """

    def __init__(
        self,
        url: str = "http://127.0.0.1:8000",
        *,
        token: str | None = None,
        backoff_base: float = BACKOFF_BASE,
        backoff_cap: float = BACKOFF_CAP,
        publish_attempts: int = PUBLISH_ATTEMPTS,
        snapshot_limit: int = SNAPSHOT_LIMIT,
        timeout: float = HTTP_TIMEOUT,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"url must be http:// or https://, not {url!r}")
        if not 0 < backoff_base <= backoff_cap:
            raise ValueError("backoff needs 0 < backoff_base <= backoff_cap")
        if publish_attempts < 1:
            raise ValueError("publish_attempts must be at least 1")
        self.url = urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/") + "/", "", ""))
        self.ws_url = urlunsplit(
            (
                "wss" if parts.scheme == "https" else "ws",
                parts.netloc,
                parts.path.rstrip("/"),
                "",
                "",
            )
        )
        self.token = token
        self.backoff_base, self.backoff_cap = backoff_base, backoff_cap
        self.publish_attempts = publish_attempts
        self.snapshot_limit = snapshot_limit
        self.timeout = timeout
        headers = {"Accept": "application/json"}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        self.http = httpx.AsyncClient(base_url=self.url, headers=headers, timeout=timeout)
        # Every open follow() socket, so that closing the client closes them at once
        # (a follow() left by `break` is otherwise closed only when it is collected).
        self.sockets: set[ClientConnection] = set()
        self.closed = asyncio.Event()  # set by aclose(): every follow() ends

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close every follow()'s socket (code 1000) and the HTTP connections; follow() ends."""
        self.closed.set()
        for socket in list(self.sockets):
            await socket.close()
        await self.http.aclose()

    def backoff(self, attempt: int) -> float:
        return backoff(attempt, self.backoff_base, self.backoff_cap)

    async def publish(
        self,
        feed: str,
        body: str,
        *,
        title: str | None = None,
        pinned: bool = False,
        author: str | None = None,
        tags: list[str] | None = None,
        meta: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> Entry:
        """Publish a new entry and return it as stored (with its `id` and `seq`).

        A 503 (or a proxy's 502/504) or a network error is retried, up to
        `publish_attempts` in all, with backoff and the same Idempotency-Key
        (generated when not given): a retry of a publish that was accepted but whose
        answer was lost gets the first answer, and nothing is published twice.
        Raises Refused (with the SPEC code) on any other error answer, or on the last
        503; Unreachable when the last attempt got no answer.
        """
        entry: dict[str, Any] = {"body": body}
        optional = {"title": title, "author": author, "tags": tags, "meta": meta}
        entry.update({name: value for name, value in optional.items() if value is not None})
        if pinned:
            entry["pinned"] = True
        key = idempotency_key or secrets.token_urlsafe(18)
        path = f"v1/feeds/{quote(feed, safe='')}/entries"
        failure: ClientError = Unreachable("no attempt made")
        for attempt in range(self.publish_attempts):
            if attempt:
                delay = self.backoff(attempt - 1)
                log.warning(
                    "publish to %s: %s; retry %d in %.2f s with the same Idempotency-Key",
                    feed,
                    failure,
                    attempt,
                    delay,
                )
                await asyncio.sleep(delay)
            try:
                response = await self.http.post(
                    path, content=orjson.dumps(entry), headers=_json_with_key(key)
                )
            except httpx.TransportError as error:
                failure = Unreachable(f"cannot reach {self.url}: {_describe(error)}")
                continue
            if response.is_success:
                return Entry.from_json(_body(response))
            failure = _refusal(response)
            if response.status_code not in RETRY_STATUSES:
                raise failure
        raise failure

    async def snapshot(self, feed: str, *, limit: int | None = None) -> Mapping[str, Any]:
        """The feed as a reader sees it (`GET /v1/feeds/{feed}/snapshot`), as JSON."""
        try:
            response = await self.http.get(
                f"v1/feeds/{quote(feed, safe='')}/snapshot",
                params={"limit": limit or self.snapshot_limit},
            )
        except httpx.TransportError as error:
            raise Unreachable(f"cannot reach {self.url}: {_describe(error)}") from None
        if not response.is_success:
            raise _refusal(response)
        return _body(response)

    async def follow(
        self,
        feed: str,
        *,
        since: int | None = None,
        epoch: str | None = None,
        on_status: Callable[[Status], None] | None = None,
    ) -> AsyncIterator[Event | Reset]:
        """Yield the feed's events after `since` (absent: from now), then live ones, forever.

        Each event once and in seq order, across reconnects and server restarts; a
        `Reset` when the server cannot continue from our position. Raises Refused when
        the server refuses the subscription itself (bad_feed, unauthorized, forbidden,
        ...): trying again would not help. Leaving the client closes the socket (a loop
        left by `break` closes it when the generator is collected, or at once inside
        `contextlib.aclosing`).
        """
        cursor = Cursor(feed, since, epoch)
        attempt = 0  # failed attempts since the last `subscribed`
        reloads = 0  # snapshot reloads since the last `subscribed`

        def report(state: State, reason: str = "", delay: float = 0.0) -> None:
            if on_status is not None:
                on_status(Status(state, feed, cursor.seq, cursor.epoch, reason, delay, attempt))

        while not self.closed.is_set():
            reason = "connection closed"
            try:
                if cursor.needs_snapshot:
                    yield cursor.reloaded(await self.snapshot(feed))
                async with self._subscribed(cursor) as socket:
                    async for data in socket:
                        step = cursor.receive(_message(data))
                        if step is None:
                            continue
                        if isinstance(step, Event):
                            yield step
                        elif isinstance(step, Refused):
                            raise step
                        elif step.action is Action.LIVE:
                            attempt = reloads = 0
                            report(State.LIVE)
                        else:
                            reason = step.reason
                            break
                    else:
                        reason = _closed(socket)
                if self.closed.is_set():
                    return
            except Refused as error:
                if error.status not in RETRY_STATUSES:
                    raise  # the server said no to this subscription: it would again
                reason = str(error)
            except (ConnectionClosed, Unreachable, OSError, TimeoutError) as error:
                reason = _describe(error)
            except InvalidHandshake as error:
                # A 4xx to the upgrade (an Origin not allowed, a proxy's 401/403/404)
                # would recur; a 5xx is a node restarting behind a proxy.
                status = error.response.status_code if isinstance(error, InvalidStatus) else 0
                if 400 <= status < 500 and status not in (408, 429):
                    raise Refused(f"http_{status}", f"WebSocket upgrade refused: {error}") from None
                reason = _describe(error)
            # A reset reloads at once, as livepush.js does: the server answered, so the
            # failures before it are over. Another one before a subscription waits like
            # any failure, so two nodes that disagree about the feed cannot make us spin.
            if cursor.needs_snapshot:
                reloads += 1
                attempt = 0 if reloads == 1 else attempt
            delay = 0.0 if cursor.needs_snapshot and reloads == 1 else self.backoff(attempt)
            attempt += 1
            report(State.RELOADING if cursor.needs_snapshot else State.RECONNECTING, reason, delay)
            log.info("follow %s: %s; reconnecting in %.2f s", feed, reason, delay)
            with contextlib.suppress(TimeoutError):  # the wait, unless aclose() ends it
                await asyncio.wait_for(self.closed.wait(), delay)

    @contextlib.asynccontextmanager
    async def _subscribed(self, cursor: Cursor) -> AsyncIterator[ClientConnection]:
        """One WebSocket holding one feed: subscribed in its URL, or by message with a token.

        A reader's subscription rides in the URL (the SPEC's ?feed=&since=&epoch=): the
        server answers the upgrade and `subscribed` in one write, a round trip sooner.
        websockets answers the server's pings, and pings the server itself (every 20 s;
        no pong within 20 s closes the socket), so a dead connection is noticed.
        """
        position = cursor.position()
        in_url = self.token is None
        url = self.ws_url + "/v1/ws" + ("?" + urlencode(position) if in_url else "")
        # websockets' 1 MiB message limit holds any event: an entry arrives as at most
        # 64 KiB of JSON, and its event is that and a few fields more.
        socket = await connect(url, open_timeout=self.timeout)
        self.sockets.add(socket)
        try:
            if not in_url:
                message = {"type": "subscribe", **position, "token": self.token}
                await socket.send(orjson.dumps(message).decode())
            yield socket
        finally:
            self.sockets.discard(socket)
            await socket.close()


def _json_with_key(key: str) -> dict[str, str]:
    return {"Content-Type": "application/json", "Idempotency-Key": key}


def _message(data: str | bytes) -> Mapping[str, Any]:
    try:
        message = orjson.loads(data)
    except orjson.JSONDecodeError:
        return {}  # not JSON: nothing this client can act on
    return message if isinstance(message, dict) else {}


def _body(response: httpx.Response) -> dict[str, Any]:
    try:
        body = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        body = None
    if not isinstance(body, dict):
        raise Refused("bad_response", f"{response.status_code}: not a JSON object")
    return body


def _refusal(response: httpx.Response) -> Refused:
    """The SPEC's error answer as a Refused: `{"error": {"code", "message", "fields"}}`."""
    try:
        error = orjson.loads(response.content).get("error")
    except (orjson.JSONDecodeError, AttributeError):
        error = None
    if not isinstance(error, dict):  # not livepush's answer (a proxy's error page)
        error = {"code": f"http_{response.status_code}", "message": response.reason_phrase}
    fields = error.get("fields")
    retry_after = response.headers.get("retry-after")
    return Refused(
        str(error.get("code")),
        str(error.get("message", "")),
        status=response.status_code,
        fields={str(k): str(v) for k, v in fields.items()} if isinstance(fields, dict) else None,
        retry_after=float(retry_after) if retry_after and retry_after.isdigit() else None,
    )


def _closed(socket: ClientConnection) -> str:
    code, reason = socket.close_code, socket.close_reason
    return f"connection closed ({code}{' ' + reason if reason else ''})"


def _describe(error: BaseException) -> str:
    return str(error) or type(error).__name__
