"""Fixtures that start real redis-server and livepush processes, and always stop them."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from tests.support import RedisServer, Server


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer().start()
    yield server
    server.close()


@pytest.fixture
def persistent_redis() -> Iterator[RedisServer]:
    server = RedisServer(persist=True).start()
    yield server
    server.close()


@pytest.fixture
def start_server() -> Iterator[Callable[..., Server]]:
    """Start livepush processes (stopped after the test): start_server(redis_url=..., **env)."""
    servers: list[Server] = []

    def start(redis_url: str | None = None, **env: str) -> Server:
        server = Server(redis_url, port=None, **env).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def server(start_server: Callable[..., Server]) -> Server:
    """An embedded livepush (in-process broker) on a free port."""
    return start_server()


@pytest.fixture(params=["memory", "redis"])
def any_server(
    request: pytest.FixtureRequest, start_server: Callable[..., Server]
) -> Iterator[Server]:
    """A livepush server on each broker: embedded, then on a real redis-server."""
    if request.param == "memory":
        yield start_server()
        return
    redis = RedisServer().start()
    try:
        yield start_server(redis.url)
    finally:
        redis.close()


@pytest.fixture(scope="module", params=["memory", "redis"])
def live(request: pytest.FixtureRequest) -> Iterator[Server]:
    """One livepush per broker for a whole test module; each test uses its own feeds."""
    redis = RedisServer().start() if request.param == "redis" else None
    server = Server(redis.url if redis else None)
    try:
        yield server.start()
    finally:
        server.stop()
        if redis is not None:
            redis.close()
