"""The stories API on real servers (SPEC "Stories"): feed metadata, scheduled entries,
revisions and purges, with their refusals, on the in-process broker and on Redis."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from tests.support import Client, RedisServer, Server

NIGHT, COPY, SPORTS = "night-desk-value", "copy-desk-value", "sports-desk-value"
TOKENS = [
    {"name": "night-desk", "token": NIGHT},
    {"name": "copy-desk", "token": COPY, "actions": ["correct"]},
    {"name": "sports-desk", "token": SPORTS, "feeds": ["sports-*"]},
]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def in_(delta: timedelta) -> str:
    return (datetime.now(UTC) + delta).isoformat()


@pytest.fixture(scope="module", params=["memory", "redis"])
def desk(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """One livepush per broker with named, scoped tokens; each test uses its own feeds."""
    directory: Path = tmp_path_factory.mktemp("stories")
    (directory / "tokens.json").write_bytes(orjson.dumps({"tokens": TOKENS}))
    redis = RedisServer().start() if request.param == "redis" else None
    server = Server(
        redis.url if redis else None, LIVEPUSH_TOKENS_FILE=str(directory / "tokens.json")
    )
    try:
        yield server.start()
    finally:
        server.stop()
        if redis is not None:
            redis.close()


class Desk:
    """HTTP calls to one server with one token (None: no Authorization header)."""

    def __init__(self, server: Server, token: str | None = NIGHT) -> None:
        self.server = server
        self.headers = bearer(token) if token else {}

    def call(self, method: str, path: str, body: Any = None, **headers: str) -> httpx.Response:
        return httpx.request(
            method,
            f"{self.server.base_url}{path}",
            json=body,
            headers={**self.headers, **headers},
            timeout=10,
        )

    def ok(self, method: str, path: str, body: Any = None, status: int = 200) -> Any:
        response = self.call(method, path, body)
        assert response.status_code == status, response.text
        return response.json() if response.content else None


def refused(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error: dict[str, Any] = response.json()["error"]
    assert error["code"] == code
    return error


def history(server: Server, feed: str, since: int = 0) -> dict[str, Any]:
    found: dict[str, Any] = httpx.get(
        f"{server.base_url}/v1/feeds/{feed}/entries?since={since}"
    ).json()
    return found


# Feed metadata


def test_a_new_feed_is_live_without_title_and_says_when_it_began(desk: Server) -> None:
    feed = unique("new")
    info = Desk(desk, None).ok("GET", f"/v1/feeds/{feed}")
    assert info["head_seq"] == 0
    assert (info["title"], info["description"], info["status"]) == (None, None, "live")
    assert info["ended_at"] is None
    assert datetime.fromisoformat(info["created_at"]) <= datetime.now(UTC)
    snapshot = Desk(desk, None).ok("GET", f"/v1/feeds/{feed}/snapshot")
    assert {k: snapshot[k] for k in ("title", "status", "created_at")} == {
        "title": None,
        "status": "live",
        "created_at": info["created_at"],
    }


async def test_a_feed_change_is_an_event_with_the_next_seq(desk: Server) -> None:
    feed = unique("meta")
    office = Desk(desk)
    office.ok("POST", f"/v1/feeds/{feed}/entries", {"body": "first"}, status=201)
    client = await Client.connect(f"{desk.ws_url}?feed={feed}&since=0")
    try:
        await client.recv_type("entry.created")
        changed = office.ok(
            "PATCH",
            f"/v1/feeds/{feed}",
            {"title": "Kupiansk", "description": "Follow the latest.", "status": "paused"},
        )
        assert changed["head_seq"] == 2
        assert (changed["title"], changed["status"]) == ("Kupiansk", "paused")
        event = await client.recv_type("feed.updated")
        assert event == {
            "type": "feed.updated",
            "feed": feed,
            "seq": 2,
            "meta": {
                "title": "Kupiansk",
                "description": "Follow the latest.",
                "status": "paused",
                "created_at": changed["created_at"],
                "ended_at": None,
            },
        }
    finally:
        await client.close()
    # Replayed and resumed like every other event.
    assert [e["type"] for e in history(desk, feed)["events"]] == ["entry.created", "feed.updated"]
    resumed = await Client.connect(f"{desk.ws_url}?feed={feed}&since=1")
    try:
        assert (await resumed.recv_type("feed.updated"))["seq"] == 2
    finally:
        await resumed.close()
    info = Desk(desk, None).ok("GET", f"/v1/feeds/{feed}")
    assert (info["title"], info["description"], info["status"]) == (
        "Kupiansk",
        "Follow the latest.",
        "paused",
    )


async def test_an_ended_feed_still_serves_everything(desk: Server) -> None:
    feed = unique("ended")
    office = Desk(desk)
    entry = office.ok("POST", f"/v1/feeds/{feed}/entries", {"body": "last words"}, status=201)
    ended = office.ok("PATCH", f"/v1/feeds/{feed}", {"status": "ended"})
    assert ended["status"] == "ended"
    assert datetime.fromisoformat(ended["ended_at"]) <= datetime.now(UTC)
    anyone = Desk(desk, None)
    assert anyone.call("GET", f"/feeds/{feed}").status_code == 200
    assert "Coverage has ended" in anyone.call("GET", f"/feeds/{feed}").text
    assert anyone.ok("GET", f"/v1/feeds/{feed}/snapshot")["entries"][0]["id"] == entry["id"]
    assert len(history(desk, feed)["events"]) == 2
    client = await Client.connect(f"{desk.ws_url}?feed={feed}&since=0")
    try:
        assert (await client.recv_type("feed.updated"))["meta"]["status"] == "ended"
    finally:
        await client.close()
    # Still ended after another change; reopened, it has no end.
    again = office.ok("PATCH", f"/v1/feeds/{feed}", {"title": "Over"})
    assert again["ended_at"] == ended["ended_at"]
    assert office.ok("PATCH", f"/v1/feeds/{feed}", {"status": "live"})["ended_at"] is None


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"status": "closed"}, "status"),
        ({"status": None}, "status"),
        ({"title": "t" * 301}, "title"),
        ({"description": "d" * 2001}, "description"),
        ({"headline": "x"}, "headline"),
        ({}, "(body)"),
    ],
)
def test_a_bad_feed_change_is_refused_naming_its_field(
    desk: Server, body: dict[str, Any], field: str
) -> None:
    feed = unique("bad-meta")
    error = refused(Desk(desk).call("PATCH", f"/v1/feeds/{feed}", body), 422, "invalid")
    assert field in error["fields"]
    assert Desk(desk, None).ok("GET", f"/v1/feeds/{feed}")["head_seq"] == 0


# Scheduled entries


def test_a_scheduled_entry_is_accepted_and_nothing_is_published_yet(desk: Server) -> None:
    feed = unique("sched")
    office = Desk(desk)
    at = in_(timedelta(hours=1))
    response = office.call(
        "POST",
        f"/v1/feeds/{feed}/entries",
        {"body": "later", "publish_at": at},
        **{"Idempotency-Key": "sched-1"},
    )
    assert response.status_code == 202, response.text
    accepted = response.json()
    assert set(accepted) == {"id", "publish_at", "status"}
    assert accepted["status"] == "scheduled"
    # In UTC, to the millisecond, rounded up: never before the time asked for.
    late = datetime.fromisoformat(accepted["publish_at"]) - datetime.fromisoformat(at)
    assert timedelta(0) <= late < timedelta(milliseconds=1)
    assert history(desk, feed)["head_seq"] == 0
    retry = office.call(
        "POST",
        f"/v1/feeds/{feed}/entries",
        {"body": "later", "publish_at": at},
        **{"Idempotency-Key": "sched-1"},
    )
    assert retry.status_code == 202
    assert retry.json() == accepted
    assert retry.headers["Idempotency-Replayed"] == "true"
    listed = office.ok("GET", f"/v1/feeds/{feed}/scheduled")
    assert [item["id"] for item in listed["scheduled"]] == [accepted["id"]]
    item = listed["scheduled"][0]
    assert item["token"] == "night-desk"
    assert item["entry"]["body"] == "later"
    assert item["publish_at"] == accepted["publish_at"]


@pytest.mark.parametrize(
    "publish_at",
    [
        "2020-01-01T00:00:00Z",  # past
        # more than 30 days ahead (named: a time in the id differs between collections)
        pytest.param(in_(timedelta(days=31)), id="31-days-ahead"),
        "tomorrow",
        "2099-01-01",  # no time
        "2099-01-01T10:00:00",  # no offset
        "2099-13-01T10:00:00Z",  # no such month
        1893456000,
        None,
    ],
)
def test_a_bad_publish_at_is_refused(desk: Server, publish_at: Any) -> None:
    feed = unique("bad-at")
    body = {"body": "never", "publish_at": publish_at}
    error = refused(Desk(desk).call("POST", f"/v1/feeds/{feed}/entries", body), 422, "invalid")
    assert set(error["fields"]) == {"publish_at"}
    assert Desk(desk).ok("GET", f"/v1/feeds/{feed}/scheduled")["scheduled"] == []
    assert history(desk, feed)["head_seq"] == 0


def test_a_scheduled_entry_is_changed_and_cancelled(desk: Server) -> None:
    feed = unique("edit")
    office = Desk(desk)
    first = office.ok(
        "POST",
        f"/v1/feeds/{feed}/entries",
        {"title": "DRAFT", "body": "draft", "publish_at": in_(timedelta(hours=2))},
        status=202,
    )
    second = office.ok(
        "POST",
        f"/v1/feeds/{feed}/entries",
        {"body": "other", "publish_at": in_(timedelta(hours=3))},
        status=202,
    )
    path = f"/v1/feeds/{feed}/scheduled/{first['id']}"
    sooner = in_(timedelta(minutes=30))
    changed = office.ok("PATCH", path, {"body": "final", "title": None, "publish_at": sooner})
    assert changed["entry"]["body"] == "final"
    assert changed["entry"]["title"] is None
    assert datetime.fromisoformat(changed["publish_at"]) < datetime.fromisoformat(
        second["publish_at"]
    )
    listed = office.ok("GET", f"/v1/feeds/{feed}/scheduled")["scheduled"]
    assert [item["id"] for item in listed] == [first["id"], second["id"]]
    assert listed[0] == changed

    for body, field in [
        ({"publish_at": "2020-01-01T00:00:00Z"}, "publish_at"),
        ({"publish_at": None}, "publish_at"),
        ({"body": None}, "body"),
        ({"seq": 3}, "seq"),
        ({}, "(body)"),
    ]:
        error = refused(office.call("PATCH", path, body), 422, "invalid")
        assert field in error["fields"]

    assert office.call("DELETE", path).status_code == 204
    refused(office.call("DELETE", path), 404, "not_found")
    refused(office.call("PATCH", path, {"body": "too late"}), 404, "not_found")
    listed = office.ok("GET", f"/v1/feeds/{feed}/scheduled")["scheduled"]
    assert [item["id"] for item in listed] == [second["id"]]
    unknown = f"/v1/feeds/{feed}/scheduled/nosuchentry00000"
    refused(office.call("PATCH", unknown, {"body": "x"}), 404, "not_found")
    refused(office.call("DELETE", unknown), 404, "not_found")
    assert history(desk, feed)["head_seq"] == 0


async def test_a_scheduled_entry_is_published_when_due(desk: Server) -> None:
    feed = unique("due")
    office = Desk(desk)
    office.ok("POST", f"/v1/feeds/{feed}/entries", {"body": "before"}, status=201)
    client = await Client.connect(f"{desk.ws_url}?feed={feed}&since=1")
    try:
        accepted = office.ok(
            "POST",
            f"/v1/feeds/{feed}/entries",
            {"title": "EMBARGO", "body": "lifted", "publish_at": in_(timedelta(seconds=2))},
            status=202,
        )
        event = await client.recv_type("entry.created")
    finally:
        await client.close()
    assert event["seq"] == 2
    assert event["entry"]["id"] == accepted["id"]
    assert event["entry"]["published_at"] == accepted["publish_at"]
    assert office.ok("GET", f"/v1/feeds/{feed}/scheduled")["scheduled"] == []
    trail = office.ok("GET", f"/v1/feeds/{feed}/entries/{accepted['id']}/revisions")
    assert [(r["token"], r["changed"]) for r in trail["revisions"]] == [
        ("night-desk", ["body", "title"])
    ]


# Revisions and purges


def test_revisions_list_every_version_oldest_first_with_names_and_changes(desk: Server) -> None:
    feed = unique("rev")
    entry = Desk(desk).ok(
        "POST", f"/v1/feeds/{feed}/entries", {"title": "CONVICTION", "body": "one"}, status=201
    )
    path = f"/v1/feeds/{feed}/entries/{entry['id']}"
    Desk(desk, COPY).ok("PATCH", path, {"body": "two"})
    Desk(desk, COPY).ok("PATCH", path, {"pinned": True, "title": "VERDICT"})
    trail = Desk(desk).ok("GET", f"{path}/revisions")
    assert trail["id"] == entry["id"]
    assert trail["purged"] is None
    versions = trail["revisions"]
    assert [(v["seq"], v["token"], v["changed"]) for v in versions] == [
        (1, "night-desk", ["body", "title"]),
        (2, "copy-desk", ["body"]),
        (3, "copy-desk", ["title", "pinned"]),
    ]
    assert [v["entry"]["body"] for v in versions] == ["one", "two", "two"]
    assert [v["updated_at"] for v in versions] == [v["entry"]["updated_at"] for v in versions]
    # Any publisher token covering the feed may read them, whatever its actions.
    assert Desk(desk, COPY).ok("GET", f"{path}/revisions") == trail


def test_purge_takes_the_text_out_of_history_snapshot_and_revisions(desk: Server) -> None:
    feed = unique("purge")
    office = Desk(desk)
    secret = office.ok("POST", f"/v1/feeds/{feed}/entries", {"body": "SECRET-TEXT"}, status=201)
    kept = office.ok("POST", f"/v1/feeds/{feed}/entries", {"body": "kept"}, status=201)
    path = f"/v1/feeds/{feed}/entries/{secret['id']}"
    office.ok("PATCH", path, {"body": "SECRET-TEXT, corrected"})
    purge = office.ok("POST", f"{path}/purge", {"reason": "court order 41/2024"})
    assert purge == {
        "feed": feed,
        "id": secret["id"],
        "seq": 4,
        "at": purge["at"],
        "token": "night-desk",
        "reason": "court order 41/2024",
    }
    events = history(desk, feed)["events"]
    assert events == [
        {"type": "entry.purged", "feed": feed, "seq": 1, "id": secret["id"]},
        {"type": "entry.created", "feed": feed, "seq": 2, "entry": kept},
        {"type": "entry.purged", "feed": feed, "seq": 3, "id": secret["id"]},
        {"type": "entry.deleted", "feed": feed, "seq": 4, "id": secret["id"], "purged": True},
    ]
    snapshot = Desk(desk, None).call("GET", f"/v1/feeds/{feed}/snapshot")
    assert b"SECRET" not in snapshot.content
    assert b"SECRET" not in Desk(desk, None).call("GET", f"/feeds/{feed}").content
    trail = office.call("GET", f"{path}/revisions")
    assert b"SECRET" not in trail.content
    versions = trail.json()["revisions"]
    assert [(v["token"], v["changed"], v["entry"]) for v in versions] == [
        ("night-desk", ["body"], None),
        ("night-desk", ["body"], None),
    ]
    assert trail.json()["purged"] == {
        "seq": 4,
        "at": purge["at"],
        "token": "night-desk",
        "reason": "court order 41/2024",
    }
    # Gone: no correction, retraction or second purge finds it.
    refused(office.call("PATCH", path, {"body": "back"}), 404, "not_found")
    refused(office.call("DELETE", path), 404, "not_found")
    refused(office.call("POST", f"{path}/purge", {"reason": "again"}), 404, "not_found")
    assert history(desk, feed)["head_seq"] == 4


def test_a_retracted_entry_can_be_purged(desk: Server) -> None:
    feed = unique("purge-retracted")
    office = Desk(desk)
    entry = office.ok("POST", f"/v1/feeds/{feed}/entries", {"body": "RETRACTED"}, status=201)
    path = f"/v1/feeds/{feed}/entries/{entry['id']}"
    assert office.call("DELETE", path).status_code == 204
    assert b"RETRACTED" in httpx.get(f"{desk.base_url}/v1/feeds/{feed}/entries").content
    office.ok("POST", f"{path}/purge", {"reason": "libel"})
    assert b"RETRACTED" not in httpx.get(f"{desk.base_url}/v1/feeds/{feed}/entries").content


# Refusals: non-publishers, scopes, unknown ids, bad bodies


def test_story_endpoints_refuse_without_a_publisher_token(desk: Server) -> None:
    feed = unique("refuse")
    entry = Desk(desk).ok("POST", f"/v1/feeds/{feed}/entries", {"body": "x"}, status=201)
    later = {"body": "x", "publish_at": in_(timedelta(hours=1))}
    scheduled = Desk(desk).ok("POST", f"/v1/feeds/{feed}/entries", later, status=202)
    calls: list[tuple[str, str, Any]] = [
        ("PATCH", f"/v1/feeds/{feed}", {"title": "x"}),
        ("POST", f"/v1/feeds/{feed}/entries", later),
        ("GET", f"/v1/feeds/{feed}/scheduled", None),
        ("PATCH", f"/v1/feeds/{feed}/scheduled/{scheduled['id']}", {"body": "y"}),
        ("DELETE", f"/v1/feeds/{feed}/scheduled/{scheduled['id']}", None),
        ("GET", f"/v1/feeds/{feed}/entries/{entry['id']}/revisions", None),
        ("POST", f"/v1/feeds/{feed}/entries/{entry['id']}/purge", {"reason": "x"}),
    ]
    for method, path, body in calls:
        refused(Desk(desk, None).call(method, path, body), 401, "unauthorized")
        refused(Desk(desk, "not-a-token").call(method, path, body), 403, "forbidden")
        refused(Desk(desk, SPORTS).call(method, path, body), 403, "forbidden")  # out of scope
    # A token without the action: copy-desk only corrects.
    for method, path, body in [calls[0], calls[1], calls[3], calls[4], calls[6]]:
        refused(Desk(desk, COPY).call(method, path, body), 403, "forbidden")
    # Nothing happened.
    assert history(desk, feed)["head_seq"] == 1
    assert len(Desk(desk).ok("GET", f"/v1/feeds/{feed}/scheduled")["scheduled"]) == 1


def test_unknown_entries_have_no_revisions_and_cannot_be_purged(desk: Server) -> None:
    feed = unique("unknown")
    office = Desk(desk)
    path = f"/v1/feeds/{feed}/entries/nosuchentry00000"
    refused(office.call("GET", f"{path}/revisions"), 404, "not_found")
    refused(office.call("POST", f"{path}/purge", {"reason": "x"}), 404, "not_found")
    for body, field in [({}, "reason"), ({"reason": ""}, "reason"), ({"why": "x"}, "why")]:
        error = refused(office.call("POST", f"{path}/purge", body), 422, "invalid")
        assert field in error["fields"]
    assert history(desk, feed)["head_seq"] == 0


def test_a_retry_of_a_purged_entrys_publish_returns_no_text(desk: Server) -> None:
    feed = unique("purge-retry")
    office = Desk(desk)
    body = {"body": "SECRET-TEXT"}
    first = office.call("POST", f"/v1/feeds/{feed}/entries", body, **{"Idempotency-Key": "k1"})
    assert first.status_code == 201
    office.ok("POST", f"/v1/feeds/{feed}/entries/{first.json()['id']}/purge", {"reason": "x"})
    retry = office.call("POST", f"/v1/feeds/{feed}/entries", body, **{"Idempotency-Key": "k1"})
    refused(retry, 404, "not_found")
    assert b"SECRET" not in retry.content
    assert history(desk, feed)["head_seq"] == 2  # nothing published again


def test_the_demo_feed_is_a_live_blog_with_an_entry_due_a_minute_after_start_up(
    start_server: Callable[..., Server],
) -> None:
    started = datetime.now(UTC)
    demo = start_server(LIVEPUSH_DEMO="1")
    snapshot = Desk(demo, None).ok("GET", "/v1/feeds/demo/snapshot")
    assert snapshot["title"]
    assert snapshot["description"]
    assert snapshot["status"] == "live"
    days = {entry["published_at"][:10] for entry in snapshot["entries"]}
    assert len(days) == 2
    (scheduled,) = Desk(demo, demo.token).ok("GET", "/v1/feeds/demo/scheduled")["scheduled"]
    due = datetime.fromisoformat(scheduled["publish_at"]) - started
    assert timedelta(seconds=55) < due <= timedelta(seconds=60) + (datetime.now(UTC) - started)
