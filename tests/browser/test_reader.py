"""The reader page in a real Chromium against a real livepush process."""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest
from playwright.sync_api import Page, WebSocketRoute, expect

from tests.browser.helpers import (
    article,
    correct,
    open_reader,
    publish,
    recorded,
    retract,
    shown_ids,
)
from tests.support import RedisServer, Server

# After a server was down, livepush.js's next attempt can be up to its backoff cap
# (BACKOFF_CAP_MS, 30 s) away: each failed attempt doubles the jitter's range, so a
# restart that takes a few seconds on a loaded machine can leave the page waiting 8 s
# or more, past expect()'s 5 s default (seen once in a suite run).
AFTER_RESTART_MS = 40_000


def test_reader_applies_created_updated_and_deleted_in_place(page: Page, server: Server) -> None:
    open_reader(page, server, "live")
    first = publish(server, "live", title="FIRST", body="One.")
    second = publish(server, "live", title="SECOND", body="Two.\n\nStill two.")
    expect(page.locator(article(second["id"]))).to_be_visible()
    assert shown_ids(page) == [second["id"], first["id"]]
    expect(page.locator(article(second["id"]) + " .lp-body p")).to_have_text(["Two.", "Still two."])

    correct(server, "live", first["id"], body="One, corrected.")
    expect(page.locator(article(first["id"]) + " .lp-body")).to_have_text("One, corrected.")
    expect(page.locator(article(first["id"]) + " .lp-updated")).to_have_text(
        re.compile(r"^Updated \d\d:\d\d$")
    )
    assert shown_ids(page) == [second["id"], first["id"]]  # corrected where it stood

    retract(server, "live", second["id"])
    expect(page.locator(article(second["id"]))).to_have_count(0)
    assert shown_ids(page) == [first["id"]]
    assert [e["type"] for e in recorded(page)] == [
        "entry.created",
        "entry.created",
        "entry.updated",
        "entry.deleted",
    ]


def test_pinned_entries_stay_on_top_with_a_marker(page: Page, server: Server) -> None:
    older = publish(server, "pins", body="older")
    open_reader(page, server, "pins")
    pinned = publish(server, "pins", body="pinned", pinned=True)
    newer = publish(server, "pins", body="newer")
    expect(page.locator(article(newer["id"]))).to_be_visible()
    assert shown_ids(page) == [pinned["id"], newer["id"], older["id"]]
    expect(page.locator(article(pinned["id"]) + " .lp-pin")).to_have_text("Pinned")

    correct(server, "pins", pinned["id"], pinned=False)
    expect(page.locator(article(pinned["id"]) + " .lp-pin")).to_have_count(0)
    assert shown_ids(page) == [newer["id"], pinned["id"], older["id"]]


def test_blocked_websocket_falls_back_to_sse(page: Page, server: Server) -> None:
    # Every WebSocket to /v1/ws is refused before it opens, as a proxy that strips
    # Upgrade would: the client must notice and switch to EventSource by itself.
    attempts: list[str] = []

    def refuse(ws: WebSocketRoute) -> None:
        attempts.append(ws.url)
        ws.close(code=4000, reason="blocked by the test")

    page.route_web_socket(re.compile(r".*/v1/ws.*"), refuse)
    open_reader(page, server, "fallback")
    expect(page.locator(".lp-status")).to_have_attribute("data-transport", "sse")
    expect(page.locator(".lp-status")).to_have_text("Live · SSE")
    assert len(attempts) >= 2

    entry = publish(server, "fallback", title="OVER SSE", body="delivered anyway")
    expect(page.locator(article(entry["id"]) + " .lp-title")).to_have_text("OVER SSE")
    correct(server, "fallback", entry["id"], body="corrected over SSE")
    expect(page.locator(article(entry["id"]) + " .lp-body")).to_have_text("corrected over SSE")


def test_transport_query_parameter_forces_sse(page: Page, server: Server) -> None:
    open_reader(page, server, "forced", "?transport=sse")
    expect(page.locator(".lp-status")).to_have_attribute("data-transport", "sse")
    entry = publish(server, "forced", body="hello over SSE")
    expect(page.locator(article(entry["id"]))).to_contain_text("hello over SSE")
    assert [e["seq"] for e in recorded(page)] == [entry["seq"]]


def test_untrusted_entry_text_never_runs(page: Page, server: Server) -> None:
    title = "<script>window.__xss=1</script>"
    body = '<img src=x onerror="window.__xss=2">'
    open_reader(page, server, "xss")
    live = publish(server, "xss", title=title, body=body, author="<b>x</b>")
    expect(page.locator(article(live["id"]) + " .lp-title")).to_have_text(title)
    expect(page.locator(article(live["id"]) + " .lp-body")).to_have_text(body)
    assert page.evaluate("window.__xss") is None
    assert page.locator("article img, article script, article b").count() == 0

    # The same entry rendered by the server (pages.py) on a fresh load.
    page.reload()
    page.wait_for_selector(".lp-status[data-status=live]")
    expect(page.locator(article(live["id"]) + " .lp-title")).to_have_text(title)
    expect(page.locator(article(live["id"]) + " .lp-body")).to_have_text(body)
    assert page.evaluate("window.__xss") is None
    assert page.locator("article img, article script, article b").count() == 0


@pytest.mark.parametrize("transport", ["ws", "sse"])
def test_entries_published_across_a_server_restart_appear_once(
    page: Page, start_server: Callable[..., Server], redis_server: RedisServer, transport: str
) -> None:
    node = start_server(redis_server.url)
    other = start_server(redis_server.url)  # takes the posts while `node` is down
    open_reader(page, node, "restart", f"?transport={transport}")
    before = publish(node, "restart", body="before the restart")
    expect(page.locator(article(before["id"]))).to_be_visible()

    node.stop()
    expect(page.locator(".lp-status")).not_to_have_attribute("data-status", "live")
    during = [publish(other, "restart", body=f"while down {i}") for i in range(3)]
    node.start()
    after = publish(node, "restart", body="after the restart")

    expected = [before, *during, after]
    expect(page.locator("article.lp-entry")).to_have_count(len(expected), timeout=AFTER_RESTART_MS)
    assert shown_ids(page) == [e["id"] for e in reversed(expected)]
    events = recorded(page)
    assert [e["entry"]["id"] for e in events] == [e["id"] for e in expected]
    assert [e["seq"] for e in events] == list(range(before["seq"], before["seq"] + len(expected)))
    # It came back on the same transport: a server that was down is not a blocked WebSocket.
    expect(page.locator(".lp-status")).to_have_attribute("data-status", "live")
    expect(page.locator(".lp-status")).to_have_attribute("data-transport", transport)


def test_lost_history_resets_the_page_to_the_new_snapshot(page: Page, server: Server) -> None:
    old = publish(server, "lost", body="from the first life")
    open_reader(page, server, "lost")
    old_epoch = page.get_attribute("main", "data-epoch")
    server.stop()
    server.start()  # the in-process broker starts over: new epoch, seq from 1 again
    new = publish(server, "lost", body="from the second life")

    expect(page.locator(article(new["id"]))).to_be_visible(timeout=AFTER_RESTART_MS)
    expect(page.locator(article(old["id"]))).to_have_count(0)
    assert page.get_attribute("main", "data-epoch") != old_epoch
    assert recorded(page)[0]["type"] == "reset"
    assert [e["entry"]["id"] for e in recorded(page)[1:]] in ([new["id"]], [])


def test_new_entries_wait_behind_a_bar_while_the_reader_reads_below(
    page: Page, server: Server
) -> None:
    for i in range(12):
        publish(server, "bar", title=f"ENTRY {i}", body="A long paragraph. " * 30)
    page.set_viewport_size({"width": 390, "height": 700})
    open_reader(page, server, "bar")
    page.evaluate("window.scrollTo(0, document.body.scrollHeight)")
    scrolled = page.evaluate("window.scrollY")

    fresh = publish(server, "bar", title="FRESH", body="news")
    bar = page.locator(".lp-new-bar")
    expect(bar).to_have_text("1 new entry")
    expect(page.locator(article(fresh["id"]))).to_be_hidden()
    assert page.evaluate("window.scrollY") == scrolled  # nothing moved under the reader

    publish(server, "bar", body="more news")
    expect(bar).to_have_text("2 new entries")
    bar.click()
    expect(bar).to_be_hidden()
    expect(page.locator(article(fresh["id"]))).to_be_in_viewport()


def test_load_older_pages_back_past_the_snapshot(page: Page, server: Server) -> None:
    ids = [publish(server, "older", body=f"entry {i}")["id"] for i in range(55)]
    open_reader(page, server, "older")
    expect(page.locator("article.lp-entry")).to_have_count(50)
    button = page.locator(".lp-load-older")
    button.click()
    expect(page.locator("article.lp-entry")).to_have_count(55)
    expect(button).to_be_hidden()
    assert shown_ids(page) == list(reversed(ids))


def test_offline_then_online_reconnects(page: Page, server: Server) -> None:
    open_reader(page, server, "network")
    page.context.set_offline(True)
    expect(page.locator(".lp-status")).to_have_attribute("data-status", "offline")
    page.context.set_offline(False)
    expect(page.locator(".lp-status")).to_have_attribute("data-status", "live")
    entry = publish(server, "network", body="back online")
    expect(page.locator(article(entry["id"]))).to_be_visible()


@pytest.mark.parametrize(
    ("target", "event"), [("document", "visibilitychange"), ("window", "online")]
)
def test_reconnects_at_once_when_the_tab_wakes_or_the_network_returns(
    page: Page, server: Server, target: str, event: str
) -> None:
    page.clock.install()
    open_reader(page, server, "wake")
    # From here on the page's timers never fire: a reconnect can only come from the event.
    page.clock.pause_at(page.evaluate("Date.now()") + 1000)
    server.stop()
    expect(page.locator(".lp-status")).to_have_attribute("data-status", "reconnecting")
    server.start()
    entry = publish(server, "wake", body="published while the tab slept")
    expect(page.locator(".lp-status")).to_have_attribute("data-status", "reconnecting")

    page.evaluate(f"{target}.dispatchEvent(new Event('{event}'))")
    expect(page.locator(".lp-status")).to_have_attribute("data-status", "live")
    expect(page.locator(article(entry["id"]))).to_be_visible()
