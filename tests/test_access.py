"""Who may publish and who may read, over HTTP on a real server (SPEC "Access").

Every refusal is crossed: the same request with the right token succeeds.
"""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from tests.jwts import SECRET, KeyPair, hmac_with_public_key, mint, tampered, unsigned
from tests.support import TOKEN, Server, wait_until

SPORTS = "sports-desk-token-value"
FIXER = "fixer-token-value"
SLOW = "slow-token-value"
MEMBERS = "members-desk-token-value"

TOKENS: list[dict[str, Any]] = [
    {"name": "sports-desk", "token": SPORTS, "feeds": ["sports-*", "results"]},
    {"name": "fixer", "token": FIXER, "actions": ["correct"]},
    {"name": "slow", "token": SLOW, "feeds": ["slow-*"], "rate": 1},
    {"name": "members-desk", "token": MEMBERS, "feeds": ["members-*"]},
]


def write_tokens(path: Path, tokens: list[dict[str, Any]]) -> None:
    path.write_bytes(orjson.dumps({"tokens": tokens}))


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="module")
def rsa_key() -> KeyPair:
    return KeyPair.rsa()


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory, rsa_key: KeyPair) -> Iterator[Server]:
    """A server with scoped tokens, private feeds and both kinds of reader keys."""
    directory = tmp_path_factory.mktemp("access")
    write_tokens(directory / "tokens.json", TOKENS)
    server = Server(
        LIVEPUSH_TOKENS_FILE=str(directory / "tokens.json"),
        LIVEPUSH_PRIVATE_FEEDS="members-*,vip",
        LIVEPUSH_JWT_SECRET=SECRET,
        LIVEPUSH_JWT_PUBLIC_KEY=str(rsa_key.write_public(directory)),
    )
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture
def http(guarded: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=guarded.base_url, timeout=10) as client:
        yield client


def post(http: httpx.Client, feed: str, token: str, body: str = "x") -> httpx.Response:
    return http.post(f"/v1/feeds/{feed}/entries", json={"body": body}, headers=bearer(token))


def head_seq(http: httpx.Client, feed: str) -> int:
    response = http.get(f"/v1/feeds/{feed}", headers=bearer(TOKEN))
    assert response.status_code == 200, response.text
    seq: int = response.json()["head_seq"]
    return seq


def error_code(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    code: str = response.json()["error"]["code"]
    return code


# Scoped publishers


def test_a_token_scoped_to_sports_cannot_publish_to_politics(http: httpx.Client) -> None:
    politics = unique("politics-")
    assert error_code(post(http, politics, SPORTS), 403) == "forbidden"
    assert head_seq(http, politics) == 0
    assert post(http, unique("sports-"), SPORTS).status_code == 201
    assert post(http, "results", SPORTS).status_code == 201
    assert post(http, politics, TOKEN).status_code == 201  # an environment token: every feed


def test_a_correct_only_token_cannot_delete(http: httpx.Client) -> None:
    feed = unique("desk-")
    entry = post(http, feed, TOKEN).json()
    path = f"/v1/feeds/{feed}/entries/{entry['id']}"
    assert error_code(post(http, feed, FIXER), 403) == "forbidden"
    assert error_code(http.delete(path, headers=bearer(FIXER)), 403) == "forbidden"
    corrected = http.patch(path, json={"title": "fixed"}, headers=bearer(FIXER))
    assert corrected.status_code == 200, corrected.text
    snapshot = http.get(f"/v1/feeds/{feed}/snapshot").json()
    assert [e["title"] for e in snapshot["entries"]] == ["fixed"]  # still there
    assert http.delete(path, headers=bearer(TOKEN)).status_code == 204


def test_a_token_with_a_rate_gets_429_with_retry_after(http: httpx.Client) -> None:
    feed = unique("slow-")
    statuses = [post(http, feed, SLOW).status_code for _ in range(2)]
    assert statuses == [201, 201]  # its burst: two seconds' worth
    limited = post(http, feed, SLOW)
    while limited.status_code == 201:  # the bucket refilled meanwhile: spend it again
        limited = post(http, feed, SLOW)
    assert error_code(limited, 429) == "rate_limited"
    assert int(limited.headers["Retry-After"]) >= 1
    assert post(http, feed, TOKEN).status_code == 201  # other tokens are not limited


async def test_four_publishers_of_a_hundred_entries_through_one_token_are_never_throttled(
    guarded: Server,
) -> None:
    feed = unique("backlog-")

    async def publisher(client: httpx.AsyncClient, number: int) -> list[int]:
        statuses = []
        for index in range(100):
            response = await client.post(
                f"/v1/feeds/{feed}/entries",
                json={"body": f"publisher {number} entry {index}"},
                headers=bearer(TOKEN),
            )
            statuses.append(response.status_code)
        return statuses

    async with httpx.AsyncClient(base_url=guarded.base_url, timeout=30) as client:
        results = await asyncio.gather(*(publisher(client, n) for n in range(4)))
        assert [set(statuses) for statuses in results] == [{201}] * 4
        info = (await client.get(f"/v1/feeds/{feed}")).json()
    assert info["head_seq"] == 400


def test_every_write_leaves_an_audit_line_naming_the_token_never_its_value(
    guarded: Server, http: httpx.Client
) -> None:
    feed = unique("sports-audit-")
    entry = post(http, feed, SPORTS).json()
    path = f"/v1/feeds/{feed}/entries/{entry['id']}"
    assert http.patch(path, json={"body": "y"}, headers=bearer(SPORTS)).status_code == 200
    assert http.delete(path, headers=bearer(SPORTS)).status_code == 204

    def audit() -> list[dict[str, Any]]:
        lines = guarded.log.read_text().splitlines()
        found = [orjson.loads(line[line.index("{") :]) for line in lines if f'"{feed}"' in line]
        return found

    wait_until(lambda: len(audit()) == 3, what="three audit lines")
    assert audit() == [
        {"token": "sports-desk", "action": action, "feed": feed, "entry": entry["id"], "seq": seq}
        for action, seq in (("publish", 1), ("correct", 2), ("retract", 3))
    ]
    log = guarded.log.read_text()
    for value in (SPORTS, FIXER, SLOW, MEMBERS, TOKEN, SECRET):
        assert value not in log


# Private feeds

READS = [
    pytest.param("/v1/feeds/{feed}", id="feed-info"),
    pytest.param("/v1/feeds/{feed}/entries", id="history"),
    pytest.param("/v1/feeds/{feed}/snapshot", id="snapshot"),
    pytest.param("/feeds/{feed}", id="page"),
]


@pytest.mark.parametrize("read", READS)
def test_a_private_feed_refuses_anonymous_reads_and_serves_its_readers(
    http: httpx.Client, read: str
) -> None:
    path = read.format(feed="members-politics")
    refused = http.get(path)
    assert error_code(refused, 401) == "unauthorized"
    assert refused.headers["www-authenticate"].startswith("Bearer")
    token = mint(["members-*"])
    by_header = http.get(path, headers=bearer(token))
    assert by_header.status_code == 200, by_header.text
    assert by_header.headers["cache-control"] == "private, no-store"
    assert http.get(path, params={"token": token}).status_code == 200


@pytest.mark.parametrize("read", READS)
def test_a_reader_token_for_feed_a_cannot_read_feed_b(http: httpx.Client, read: str) -> None:
    token = mint(["vip"])
    assert http.get(read.format(feed="vip"), headers=bearer(token)).status_code == 200
    refused = http.get(read.format(feed="members-sport"), headers=bearer(token))
    assert error_code(refused, 403) == "forbidden"


@pytest.mark.parametrize("read", READS)
def test_a_publisher_token_covering_a_private_feed_may_read_it(
    http: httpx.Client, read: str
) -> None:
    path = read.format(feed="members-arts")
    assert http.get(path, headers=bearer(MEMBERS)).status_code == 200
    assert http.get(path, headers=bearer(TOKEN)).status_code == 200  # every feed
    assert error_code(http.get(path, headers=bearer(SPORTS)), 403) == "forbidden"


@pytest.mark.parametrize(
    ("method", "path"),
    [
        pytest.param("POST", "", id="publish"),
        pytest.param("PATCH", "/{entry}", id="correct"),
        pytest.param("DELETE", "/{entry}", id="retract"),
    ],
)
def test_a_reader_token_can_never_write(http: httpx.Client, method: str, path: str) -> None:
    entry = post(http, "vip", TOKEN).json()
    before = head_seq(http, "vip")
    url = f"/v1/feeds/vip/entries{path.format(entry=entry['id'])}"
    for token in (mint(["vip"]), mint(["*"])):
        refused = http.request(method, url, json={"body": "reader"}, headers=bearer(token))
        assert error_code(refused, 403) == "forbidden"
    assert head_seq(http, "vip") == before


def test_a_public_feed_ignores_any_token(http: httpx.Client) -> None:
    for headers in ({}, bearer("garbage"), bearer(mint(["vip"], -60))):
        assert http.get("/v1/feeds/open-feed/snapshot", headers=headers).status_code == 200


def test_an_rs256_reader_token_reads_a_private_feed(http: httpx.Client, rsa_key: KeyPair) -> None:
    token = rsa_key.mint(["vip"])
    assert http.get("/v1/feeds/vip/snapshot", headers=bearer(token)).status_code == 200


@pytest.mark.parametrize(
    "attack", ["alg-none", "hs256-with-rsa-public-key", "expired", "not-yet-valid", "tampered"]
)
def test_a_hostile_reader_token_is_401(http: httpx.Client, rsa_key: KeyPair, attack: str) -> None:
    token = {
        "alg-none": lambda: unsigned(["vip"]),
        "hs256-with-rsa-public-key": lambda: hmac_with_public_key(["vip"], rsa_key.public_pem()),
        "expired": lambda: mint(["vip"], -5),
        "not-yet-valid": lambda: mint(["vip"], nbf=int(time.time()) + 120),
        "tampered": lambda: tampered(mint(["members-x"]), feeds=["vip"]),
    }[attack]()
    refused = http.get("/v1/feeds/vip/snapshot", headers=bearer(token))
    assert error_code(refused, 401) == "unauthorized"


def test_the_page_of_a_private_feed_hands_its_token_to_the_client(http: httpx.Client) -> None:
    token = mint(["vip"])
    page = http.get("/feeds/vip", params={"token": token})
    assert page.status_code == 200
    assert f'data-token="{token}"' in page.text
    assert "data-token" not in http.get("/feeds/open-feed").text


# Reloading the tokens file


@pytest.fixture
def reloadable(tmp_path: Path) -> Iterator[tuple[Server, Path]]:
    path = tmp_path / "tokens.json"
    write_tokens(path, [{"name": "first", "token": "first-token-value"}])
    server = Server(LIVEPUSH_TOKENS_FILE=str(path))
    try:
        yield server.start(), path
    finally:
        server.stop()


def test_a_reload_adds_and_removes_tokens_and_a_broken_file_keeps_the_old_ones(
    reloadable: tuple[Server, Path],
) -> None:
    server, path = reloadable
    assert server.proc is not None
    with httpx.Client(base_url=server.base_url, timeout=10) as http:
        feed = unique("reload-")
        assert post(http, feed, "first-token-value").status_code == 201

        # SIGHUP: the new file is in force at once.
        write_tokens(path, [{"name": "second", "token": "second-token-value"}])
        server.proc.send_signal(signal.SIGHUP)
        wait_until(
            lambda: post(http, feed, "second-token-value").status_code == 201,
            what="the added token to publish",
        )
        assert error_code(post(http, feed, "first-token-value"), 403) == "forbidden"

        # A file that does not parse: the tokens in force stay, and the log says why.
        path.write_text('{"tokens": [{"name": "third", "token": ')
        server.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: "kept the 2 tokens in force" in server.log.read_text(), what="log")
        assert post(http, feed, "second-token-value").status_code == 201
        assert "not JSON" in server.log.read_text()

        # No signal at all: the change check reads the file within seconds.
        write_tokens(path, [{"name": "third", "token": "third-token-value"}])
        wait_until(
            lambda: post(http, feed, "third-token-value").status_code == 201,
            what="the changed file to be read",
        )
        assert error_code(post(http, feed, "second-token-value"), 403) == "forbidden"
        assert post(http, feed, TOKEN).status_code == 201  # the environment's stay
    for value in ("first-token-value", "second-token-value", "third-token-value"):
        assert value not in server.log.read_text()
