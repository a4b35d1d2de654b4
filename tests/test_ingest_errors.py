"""The ingest API over HTTP: every error of the SPEC's table publishes nothing; success shapes."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from livepush.entries import now_rfc3339
from tests.support import Server, wait_until

RFC3339_MS_UTC = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z")
MAX_BODY = 64 * 1024


@pytest.fixture
def feed() -> str:
    return f"ingest-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def http(live: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=live.base_url, headers=live.headers(), timeout=10) as client:
        yield client


def head_seq(http: httpx.Client, feed: str) -> int:
    response = http.get(f"/v1/feeds/{feed}")
    assert response.status_code == 200
    seq: int = response.json()["head_seq"]
    return seq


def publish(http: httpx.Client, feed: str, entry: dict[str, Any]) -> dict[str, Any]:
    response = http.post(f"/v1/feeds/{feed}/entries", json=entry)
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """The SPEC's error: the status, and JSON `{"error": {"code", "message", ...}}`."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error: dict[str, Any] = response.json()["error"]
    assert error["code"] == code
    assert isinstance(error["message"], str)
    assert error["message"]
    assert set(error) <= {"code", "message", "fields"}
    return error


def unchanged(http: httpx.Client, feed: str) -> Callable[[], None]:
    """Note the feed's head now; the returned check asserts it has not moved."""
    before = head_seq(http, feed)

    def check() -> None:
        assert head_seq(http, feed) == before

    return check


WRITES = [
    pytest.param("POST", "", id="post"),
    pytest.param("PATCH", "/abcdefghjkmnpqrs", id="patch"),
    pytest.param("DELETE", "/abcdefghjkmnpqrs", id="delete"),
]


# 400


def test_bad_json_is_400(http: httpx.Client, feed: str) -> None:
    publish(http, feed, {"body": "first"})
    check = unchanged(http, feed)
    response = http.post(
        f"/v1/feeds/{feed}/entries",
        content=b'{"body": "unterminated',
        headers={"Content-Type": "application/json"},
    )
    assert_error(response, 400, "bad_json")
    check()


def test_bad_json_in_a_correction_is_400(http: httpx.Client, feed: str) -> None:
    entry = publish(http, feed, {"body": "first"})
    check = unchanged(http, feed)
    response = http.patch(
        f"/v1/feeds/{feed}/entries/{entry['id']}",
        content=b"{title: 1}",
        headers={"Content-Type": "application/json"},
    )
    assert_error(response, 400, "bad_json")
    check()


# 401 / 403


@pytest.mark.parametrize(("method", "path"), WRITES)
def test_write_without_a_token_is_401(
    live: Server, http: httpx.Client, feed: str, method: str, path: str
) -> None:
    check = unchanged(http, feed)
    response = httpx.request(
        method, f"{live.base_url}/v1/feeds/{feed}/entries{path}", json={"body": "x"}
    )
    assert_error(response, 401, "unauthorized")
    check()


@pytest.mark.parametrize(
    "authorization",
    ["Basic dGVzdDp0ZXN0", "Bearer", "test-token", "Token test-token"],
)
def test_malformed_authorization_is_401(http: httpx.Client, feed: str, authorization: str) -> None:
    check = unchanged(http, feed)
    response = http.post(
        f"/v1/feeds/{feed}/entries", json={"body": "x"}, headers={"Authorization": authorization}
    )
    assert_error(response, 401, "unauthorized")
    check()


@pytest.mark.parametrize(("method", "path"), WRITES)
def test_wrong_token_is_403(http: httpx.Client, feed: str, method: str, path: str) -> None:
    check = unchanged(http, feed)
    response = http.request(
        method,
        f"/v1/feeds/{feed}/entries{path}",
        json={"body": "x"},
        headers={"Authorization": "Bearer not-the-token"},
    )
    assert_error(response, 403, "forbidden")
    check()


# 404


def test_patch_of_an_unknown_entry_is_404(http: httpx.Client, feed: str) -> None:
    publish(http, feed, {"body": "first"})
    check = unchanged(http, feed)
    response = http.patch(f"/v1/feeds/{feed}/entries/nosuchentry00000", json={"title": "x"})
    assert_error(response, 404, "not_found")
    check()


def test_delete_of_an_unknown_entry_is_404(http: httpx.Client, feed: str) -> None:
    publish(http, feed, {"body": "first"})
    check = unchanged(http, feed)
    response = http.delete(f"/v1/feeds/{feed}/entries/nosuchentry00000")
    assert_error(response, 404, "not_found")
    check()


def test_entry_of_another_feed_is_404(http: httpx.Client, feed: str) -> None:
    entry = publish(http, feed + "-other", {"body": "elsewhere"})
    publish(http, feed, {"body": "first"})
    check = unchanged(http, feed)
    response = http.patch(f"/v1/feeds/{feed}/entries/{entry['id']}", json={"title": "x"})
    assert_error(response, 404, "not_found")
    check()


def test_patch_of_a_retracted_entry_is_404(http: httpx.Client, feed: str) -> None:
    entry = publish(http, feed, {"body": "retract me"})
    assert http.delete(f"/v1/feeds/{feed}/entries/{entry['id']}").status_code == 204
    check = unchanged(http, feed)
    response = http.patch(f"/v1/feeds/{feed}/entries/{entry['id']}", json={"title": "x"})
    assert_error(response, 404, "not_found")
    check()


def test_delete_of_a_retracted_entry_is_404(http: httpx.Client, feed: str) -> None:
    entry = publish(http, feed, {"body": "retract me"})
    assert http.delete(f"/v1/feeds/{feed}/entries/{entry['id']}").status_code == 204
    check = unchanged(http, feed)
    assert_error(http.delete(f"/v1/feeds/{feed}/entries/{entry['id']}"), 404, "not_found")
    check()


# 413


def _oversized_entry() -> bytes:
    return b'{"body": "' + b"x" * (MAX_BODY + 10) + b'"}'


def test_body_over_64_kib_with_content_length_is_413(http: httpx.Client, feed: str) -> None:
    check = unchanged(http, feed)
    response = http.post(
        f"/v1/feeds/{feed}/entries",
        content=_oversized_entry(),
        headers={"Content-Type": "application/json"},
    )
    assert "content-length" in response.request.headers
    assert_error(response, 413, "too_large")
    check()


def test_chunked_body_over_64_kib_is_413(http: httpx.Client, feed: str) -> None:
    data = _oversized_entry()

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(data), 8192):
            yield data[start : start + 8192]

    check = unchanged(http, feed)
    response = http.post(
        f"/v1/feeds/{feed}/entries", content=chunks(), headers={"Content-Type": "application/json"}
    )
    assert response.request.headers["transfer-encoding"] == "chunked"
    assert "content-length" not in response.request.headers
    assert_error(response, 413, "too_large")
    check()


def test_body_of_exactly_64_kib_is_accepted(http: httpx.Client, feed: str) -> None:
    envelope = b'{"body":""}'
    data = b'{"body":"' + b"x" * (MAX_BODY - len(envelope)) + b'"}'
    assert len(data) == MAX_BODY
    response = http.post(
        f"/v1/feeds/{feed}/entries", content=data, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 201, response.text
    assert head_seq(http, feed) == 1


# 415


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", None])
def test_body_that_is_not_json_is_415(
    http: httpx.Client, feed: str, content_type: str | None
) -> None:
    check = unchanged(http, feed)
    headers = {"Content-Type": content_type} if content_type else {}
    response = http.post(f"/v1/feeds/{feed}/entries", content=b'{"body": "x"}', headers=headers)
    assert_error(response, 415, "unsupported_media_type")
    check()


def test_json_with_a_charset_parameter_is_accepted(http: httpx.Client, feed: str) -> None:
    response = http.post(
        f"/v1/feeds/{feed}/entries",
        content=b'{"body": "x"}',
        headers={"Content-Type": "application/json; charset=utf-8"},
    )
    assert response.status_code == 201, response.text


# 422


def test_schema_error_names_each_bad_field(http: httpx.Client, feed: str) -> None:
    check = unchanged(http, feed)
    response = http.post(
        f"/v1/feeds/{feed}/entries",
        json={"body": "", "title": "t" * 301, "tags": ["ok"] * 21},
    )
    error = assert_error(response, 422, "invalid")
    assert {name.split(".")[0] for name in error["fields"]} == {"body", "title", "tags"}
    check()


def test_unknown_field_is_422(http: httpx.Client, feed: str) -> None:
    check = unchanged(http, feed)
    response = http.post(f"/v1/feeds/{feed}/entries", json={"body": "x", "headline": "y"})
    error = assert_error(response, 422, "invalid")
    assert list(error["fields"]) == ["headline"]
    check()


def test_correction_with_a_bad_field_is_422_and_changes_nothing(
    http: httpx.Client, feed: str
) -> None:
    entry = publish(http, feed, {"body": "first"})
    check = unchanged(http, feed)
    response = http.patch(f"/v1/feeds/{feed}/entries/{entry['id']}", json={"body": None})
    error = assert_error(response, 422, "invalid")
    assert list(error["fields"]) == ["body"]
    check()
    snapshot = http.get(f"/v1/feeds/{feed}/snapshot").json()
    assert snapshot["entries"] == [entry]


@pytest.mark.parametrize("name", ["Trial", "-trial", "tr!al", "a" * 129])
def test_bad_feed_name_is_422(http: httpx.Client, name: str) -> None:
    response = http.post(f"/v1/feeds/{name}/entries", json={"body": "x"})
    error = assert_error(response, 422, "invalid")
    assert list(error["fields"]) == ["feed"]


# 429


def test_publishing_past_the_rate_is_429_with_retry_after(
    start_server: Callable[..., Server], feed: str
) -> None:
    server = start_server(LIVEPUSH_PUBLISH_RATE="1")  # a burst of 2, then 1 per second
    with httpx.Client(base_url=server.base_url, headers=server.headers(), timeout=10) as http:
        statuses: list[int] = []
        limited: httpx.Response | None = None
        while limited is None and len(statuses) < 20:
            response = http.post(f"/v1/feeds/{feed}/entries", json={"body": "x"})
            statuses.append(response.status_code)
            if response.status_code == 429:
                limited = response
        assert limited is not None, statuses
        assert statuses[:2] == [201, 201]
        assert_error(limited, 429, "rate_limited")
        assert int(limited.headers["Retry-After"]) >= 1
        assert head_seq(http, feed) == statuses.count(201)


# Idempotency


def test_idempotency_key_retry_returns_the_first_result_and_publishes_nothing(
    http: httpx.Client, feed: str
) -> None:
    key = {"Idempotency-Key": f"retry-{uuid.uuid4()}"}
    first = http.post(f"/v1/feeds/{feed}/entries", json={"body": "once"}, headers=key)
    assert first.status_code == 201
    check = unchanged(http, feed)
    retry = http.post(f"/v1/feeds/{feed}/entries", json={"body": "once"}, headers=key)
    assert retry.status_code == 201
    assert retry.json()["id"] == first.json()["id"]
    assert retry.json()["seq"] == first.json()["seq"]
    assert retry.json() == first.json()
    check()


# Success shapes


def test_published_entry_is_201_with_id_seq_times_and_the_fields_as_sent(
    http: httpx.Client, feed: str
) -> None:
    sent = {
        "title": "CONVICTION",
        "body": "<p>Guilty on all counts.</p>",
        "author": "Court reporter",
        "tags": ["court", "verdict"],
        "pinned": True,
        "meta": {"source": "wire", "rank": 1},
    }
    response = http.post(f"/v1/feeds/{feed}/entries", json=sent)
    assert response.status_code == 201
    entry = response.json()
    assert isinstance(entry["id"], str)
    assert entry["id"]
    assert entry["seq"] == 1
    assert RFC3339_MS_UTC.fullmatch(entry["published_at"])
    assert entry["updated_at"] == entry["published_at"]
    assert {name: entry[name] for name in sent} == sent


def test_published_entry_ids_are_unique_in_the_feed(http: httpx.Client, feed: str) -> None:
    ids = {publish(http, feed, {"body": str(i)})["id"] for i in range(5)}
    assert len(ids) == 5


def test_patch_is_200_changing_fields_and_updated_at_keeping_id_seq_published_at(
    http: httpx.Client, feed: str
) -> None:
    entry = publish(http, feed, {"body": "Jury out.", "title": "VERDICT", "author": "Desk"})
    publish(http, feed, {"body": "later"})
    # updated_at has millisecond precision: let the clock pass published_at first.
    wait_until(lambda: now_rfc3339() > entry["published_at"], what="the clock to move")
    response = http.patch(
        f"/v1/feeds/{feed}/entries/{entry['id']}", json={"title": "CONVICTION", "author": None}
    )
    assert response.status_code == 200
    corrected = response.json()
    assert corrected["title"] == "CONVICTION"
    assert corrected["author"] is None
    assert corrected["body"] == "Jury out."
    assert (corrected["id"], corrected["seq"]) == (entry["id"], entry["seq"])
    assert corrected["published_at"] == entry["published_at"]
    assert RFC3339_MS_UTC.fullmatch(corrected["updated_at"])
    assert corrected["updated_at"] > entry["updated_at"]
    assert head_seq(http, feed) == 3


def test_delete_is_204_and_removes_the_entry_from_the_snapshot(
    http: httpx.Client, feed: str
) -> None:
    kept = publish(http, feed, {"body": "kept"})
    retracted = publish(http, feed, {"body": "retracted"})
    response = http.delete(f"/v1/feeds/{feed}/entries/{retracted['id']}")
    assert response.status_code == 204
    assert response.content == b""
    snapshot = http.get(f"/v1/feeds/{feed}/snapshot").json()
    assert snapshot["entries"] == [kept]
    assert snapshot["head_seq"] == 3


def test_history_is_epoch_head_and_the_events_after_since(http: httpx.Client, feed: str) -> None:
    first = publish(http, feed, {"body": "one"})
    publish(http, feed, {"body": "two"})
    http.patch(f"/v1/feeds/{feed}/entries/{first['id']}", json={"body": "one, corrected"})
    http.delete(f"/v1/feeds/{feed}/entries/{first['id']}")
    response = http.get(f"/v1/feeds/{feed}/entries", params={"since": 1})
    assert response.status_code == 200
    history = response.json()
    assert {"epoch", "head_seq", "events"} <= set(history)
    assert history["epoch"] == http.get(f"/v1/feeds/{feed}").json()["epoch"]
    assert history["head_seq"] == 4
    assert [(e["type"], e["seq"], e["feed"]) for e in history["events"]] == [
        ("entry.created", 2, feed),
        ("entry.updated", 3, feed),
        ("entry.deleted", 4, feed),
    ]
    assert history["events"][1]["entry"]["body"] == "one, corrected"
    assert history["events"][2]["id"] == first["id"]


def test_history_limit_returns_the_oldest_events_after_since(http: httpx.Client, feed: str) -> None:
    for i in range(5):
        publish(http, feed, {"body": str(i)})
    history = http.get(f"/v1/feeds/{feed}/entries", params={"since": 1, "limit": 2}).json()
    assert [event["seq"] for event in history["events"]] == [2, 3]
    assert history["head_seq"] == 5


def test_never_used_feed_is_200_with_head_zero_and_keeps_its_epoch(
    http: httpx.Client, feed: str
) -> None:
    response = http.get(f"/v1/feeds/{feed}")
    assert response.status_code == 200
    info = response.json()
    assert info["feed"] == feed
    assert info["head_seq"] == 0
    assert isinstance(info["epoch"], str)
    assert info["epoch"]
    assert info["subscribers"] == 0
    publish(http, feed, {"body": "first"})
    after = http.get(f"/v1/feeds/{feed}").json()
    assert after["epoch"] == info["epoch"]
    assert after["head_seq"] == 1
