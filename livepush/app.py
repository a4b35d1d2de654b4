"""create_app(settings): routes, the lifespan that owns every task, and the wiring."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import secrets
import signal
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from importlib import resources
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from livepush import __version__, config
from livepush.api import docs, feeds, ingest, ops, stories
from livepush.brokers.base import Broker
from livepush.brokers.memory import MemoryBroker
from livepush.config import Settings
from livepush.descriptors import CHECK_SECONDS, DescriptorWatch, reserve_table
from livepush.errors import Conflict, LivepushError, RateLimited, Unauthorized
from livepush.gc_policy import GcPolicy
from livepush.metrics import REPORT_SECONDS, start_report
from livepush.model import CloseCode, is_feed_name
from livepush.pages import page_headers, render_editor, render_reader
from livepush.releaser import LOOK_SECONDS, Releaser
from livepush.runtime import Runtime, runtime_of
from livepush.seed import DEMO_FEED, seed_demo
from livepush.transports.base import Drain
from livepush.transports.fastws import FastPath
from livepush.transports.sse import feed_events
from livepush.transports.uvicorn import FirstRequest, LivepushHttpProtocol
from livepush.transports.ws import FastHandshake, websocket_endpoint

log = logging.getLogger("livepush")


def make_broker(settings: Settings) -> Broker:
    if settings.redis_url is None:
        return MemoryBroker(settings.history_size)
    from livepush.brokers.redis import RedisBroker

    return RedisBroker(
        settings.redis_url, settings.history_size, min_replicas=settings.redis_min_replicas
    )


def _error_response(error: LivepushError) -> Response:
    body: dict[str, Any] = {"code": error.code, "message": error.message}
    if error.fields:
        body["fields"] = error.fields
    headers = {"Retry-After": str(error.retry_after)} if isinstance(error, RateLimited) else None
    if isinstance(error, Unauthorized):
        headers = {"WWW-Authenticate": 'Bearer realm="livepush"'}  # RFC 6750
    return JSONResponse({"error": body}, status_code=error.status, headers=headers)


async def _livepush_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, LivepushError)
    return _error_response(exc)


async def _conflict(request: Request, exc: Exception) -> Response:
    return JSONResponse(
        {"error": {"code": "conflict", "message": "concurrent corrections; retry"}}, 409
    )


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    return JSONResponse(
        {"error": {"code": code, "message": str(exc.detail)}},
        status_code=exc.status_code,
        headers=exc.headers,
    )


def _static(name: str) -> bytes:
    return resources.files("livepush.static").joinpath(name).read_bytes()


# Scripts and styles only: the pages are served by their routes, with their security
# headers (the editor's template, framed from /static, would be a console without them).
STATIC_TYPES = {".js": "text/javascript", ".css": "text/css"}


async def static_file(request: Request) -> Response:
    name = request.path_params["name"]
    suffix = "." + name.rpartition(".")[2]
    if "/" in name or name.startswith(".") or suffix not in STATIC_TYPES:
        raise HTTPException(404, "no such file")
    try:
        body = _static(name)
    except FileNotFoundError:
        raise HTTPException(404, "no such file") from None
    return Response(body, media_type=STATIC_TYPES[suffix], headers={"Cache-Control": "no-cache"})


async def client_js(request: Request) -> Response:
    return Response(
        _static("livepush.js"),
        media_type="text/javascript",
        headers={"Cache-Control": "no-cache", "Access-Control-Allow-Origin": "*"},
    )


async def reader_page(request: Request) -> Response:
    """`/`, `/feeds/{feed}`: the live blog; a private feed's needs a reader token
    (Bearer or `?token=`), which the page then uses for its own subscription."""
    runtime = runtime_of(request)
    feed = request.path_params.get("feed", DEMO_FEED)
    if not is_feed_name(feed):
        raise HTTPException(404, "no such feed")
    runtime.access.read_request(request, feed)
    private = runtime.access.is_private(feed)
    token = None
    if private:
        header = request.headers.get("authorization")
        token = header.partition(" ")[2].strip() if header else request.query_params["token"]
    snapshot = await runtime.broker.snapshot(feed, 50, None)
    nonce = secrets.token_urlsafe(16)
    page = render_reader(
        feed,
        orjson.loads(feeds.snapshot_body(snapshot)),
        asset_version=__version__,
        nonce=nonce,
        token=token,
    )
    # Any site may frame a reader page unless an Origin allow-list says which may.
    origins = runtime.settings.allowed_origins
    ancestors = " ".join(("'self'", *origins)) if origins else "*"
    headers = page_headers(nonce, frame_ancestors=ancestors, host=request.headers.get("host"))
    if private:
        headers["Cache-Control"] = "private, no-store"
    return HTMLResponse(page, headers=headers)


async def editor_page(request: Request) -> Response:
    """`/editor`: the console holds a publisher token, so no site may frame it."""
    nonce = secrets.token_urlsafe(16)
    headers = page_headers(nonce, frame_ancestors="'none'", host=request.headers.get("host"))
    return HTMLResponse(render_editor(asset_version=__version__, nonce=nonce), headers=headers)


Endpoint = Callable[[Request], Awaitable[Response]]


def by_method(**endpoints: Endpoint) -> Endpoint:
    """One endpoint for a path whose methods have their own handlers (HEAD: GET's)."""

    async def endpoint(request: Request) -> Response:
        method = "GET" if request.method == "HEAD" else request.method
        return await endpoints[method](request)

    return endpoint


class NoSniff:
    """ASGI middleware: `X-Content-Type-Options: nosniff` on every HTTP response, so a
    browser never runs a JSON body or an entry's text as a script or a page."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_nosniff(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = message.setdefault("headers", [])
                if not any(name.lower() == b"x-content-type-options" for name, _ in headers):
                    message["headers"] = [*headers, (b"x-content-type-options", b"nosniff")]
            await send(message)

        await self.app(scope, receive, send_nosniff)


def create_app(settings: Settings, broker: Broker | None = None) -> Starlette:
    """The livepush ASGI app for `settings`; the broker is made from them unless given."""
    runtime = Runtime(settings, broker or make_broker(settings))
    # uvicorn builds the protocol per connection from a class: the setting lives on it.
    fast_path = LivepushHttpProtocol.fast_path = FastPath(
        FastHandshake(runtime), settings.ws_compression
    )
    FirstRequest.seconds = settings.first_request_timeout
    Drain.configure(settings.drain_seconds)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        reserve_table()  # no stall when a connect storm crosses 2,048, 4,096, ... sockets
        await runtime.broker.start(runtime.hub)
        if settings.demo and isinstance(runtime.broker, MemoryBroker):
            await seed_demo(runtime.broker)
        loop = fast_path.loop = asyncio.get_running_loop()
        runtime.loop_lag.start(loop)
        # Scheduled entries, released by whichever node comes first (each once).
        releaser = Releaser(runtime.broker)
        releaser.look()
        releases = _Repeat(loop, LOOK_SECONDS, releaser.look)
        keepalive = _Repeat(loop, settings.sse_keepalive, runtime.keepalive)
        freezer = _Repeat(loop, GcPolicy.FREEZE_SECONDS, runtime.gc.tick)
        presence = _Repeat(loop, PRESENCE_SECONDS, runtime.report_presence)
        tokens = _Repeat(loop, TOKENS_CHECK_SECONDS, runtime.access.reload_if_changed)
        watch = DescriptorWatch()
        descriptors = _Repeat(loop, CHECK_SECONDS, lambda: watch.check(loop.time()))
        # This node's figures, left in the broker for `livepush stats` (off every path).
        reports = _Repeat(loop, REPORT_SECONDS, functools.partial(start_report, runtime))
        # SIGHUP reads the tokens file again (uvicorn leaves SIGHUP alone in a worker;
        # its default would end the process). Only a main thread can take signals.
        hangup = threading.current_thread() is threading.main_thread()
        if hangup:
            loop.add_signal_handler(signal.SIGHUP, runtime.access.reload, "SIGHUP")
        try:
            yield
        finally:
            if hangup:
                loop.remove_signal_handler(signal.SIGHUP)
            runtime.draining = True
            keepalive.cancel()
            runtime.loop_lag.stop()
            descriptors.cancel()
            freezer.cancel()
            presence.cancel()
            tokens.cancel()
            reports.cancel()
            releases.cancel()
            await releaser.aclose()
            runtime.hub.close_all(CloseCode.SERVICE_RESTART)
            await runtime.hub.aclose()
            await runtime.broker.aclose()
            fast_path.loop = None  # a later app (a test's) may run on another loop

    routes = [
        Route("/", reader_page),
        Route("/feeds/{feed}", reader_page),
        Route("/editor", editor_page),
        Route("/v1/livepush.js", client_js),
        Route("/static/{name}", static_file),
        Route("/healthz", ops.healthz),
        Route("/readyz", ops.readyz),
        Route("/metrics", ops.metrics),
        Route("/v1/openapi.json", docs.openapi_json),
        Route("/v1/asyncapi.json", docs.asyncapi_json),
        Route(
            "/v1/feeds/{feed}",
            by_method(GET=feeds.feed_info, PATCH=stories.update_feed),
            methods=["GET", "PATCH"],
        ),
        # One route per path, so a 405 lists every method of the path in `Allow`.
        Route(
            "/v1/feeds/{feed}/entries",
            by_method(GET=feeds.feed_history, POST=ingest.create_entry),
            methods=["GET", "POST"],
        ),
        Route(
            "/v1/feeds/{feed}/entries/{entry_id}",
            by_method(PATCH=ingest.update_entry, DELETE=ingest.delete_entry),
            methods=["PATCH", "DELETE"],
        ),
        Route("/v1/feeds/{feed}/entries/{entry_id}/revisions", stories.entry_revisions),
        Route("/v1/feeds/{feed}/entries/{entry_id}/purge", stories.purge_entry, methods=["POST"]),
        Route("/v1/feeds/{feed}/scheduled", stories.list_scheduled),
        Route(
            "/v1/feeds/{feed}/scheduled/{entry_id}",
            by_method(PATCH=stories.update_scheduled, DELETE=stories.cancel_scheduled),
            methods=["PATCH", "DELETE"],
        ),
        Route("/v1/feeds/{feed}/snapshot", feeds.feed_snapshot),
        Route("/v1/feeds/{feed}/events", feed_events),
        WebSocketRoute("/v1/ws", websocket_endpoint),
    ]
    # Reads and event streams may be used from any page the Origin allow-list admits
    # (livepush.js on a newsroom's own site); writes stay same-origin (no preflight).
    origins = list(settings.allowed_origins) or ["*"]
    middleware = [
        Middleware(
            CORSMiddleware,
            allow_origins=origins,
            allow_methods=["GET"],
            # Authorization: a private feed's reads from a page of another origin.
            allow_headers=["Last-Event-ID", "Cache-Control", "Authorization"],
        ),
        Middleware(NoSniff),
    ]
    app = Starlette(
        routes=routes,
        middleware=middleware,
        lifespan=lifespan,
        exception_handlers={
            LivepushError: _livepush_error,
            Conflict: _conflict,
            HTTPException: _http_error,
        },
    )
    app.state.runtime = runtime
    return app


# How often each node reports its subscriber counts per feed to the broker.
PRESENCE_SECONDS = 2.0
# How often the tokens file's stat is checked for a change (one os.stat).
TOKENS_CHECK_SECONDS = 2.0


class _Repeat:
    """Call `callback` every `interval` seconds on loop timers (no task)."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, interval: float, callback: Callable[[], None]
    ) -> None:
        self._loop, self._interval, self._callback = loop, interval, callback
        self._handle = loop.call_later(interval, self._run)

    def _run(self) -> None:
        self._handle = self._loop.call_later(self._interval, self._run)
        self._callback()

    def cancel(self) -> None:
        self._handle.cancel()


def app_from_environment() -> Starlette:
    """The app factory uvicorn's workers call: settings from LIVEPUSH_* variables."""
    return create_app(config.load())
