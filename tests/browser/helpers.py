"""What the page tests share: opening a reader, publishing over HTTP, reading the page."""

from __future__ import annotations

from typing import Any

import httpx
from playwright.sync_api import Page

from tests.support import Server

# Every event the reader applied, in order, as the page announces it on <main>.
RECORD_EVENTS = """() => {
  window.__events = [];
  const main = document.getElementById("live");
  main.addEventListener("livepush:event", (e) => window.__events.push(e.detail));
}"""


def open_reader(page: Page, server: Server, feed: str, query: str = "") -> None:
    """Load the reader page of `feed`, wait until it is live, and record its events."""
    page.goto(f"{server.base_url}/feeds/{feed}{query}")
    page.wait_for_selector(".lp-status[data-status=live]")
    page.evaluate(RECORD_EVENTS)


def publish(server: Server, feed: str, **entry: Any) -> dict[str, Any]:
    response = server.post(feed, entry)
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


def correct(server: Server, feed: str, entry_id: str, **change: Any) -> dict[str, Any]:
    url = f"{server.base_url}/v1/feeds/{feed}/entries/{entry_id}"
    response = httpx.patch(url, json=change, headers=server.headers())
    assert response.status_code == 200, response.text
    updated: dict[str, Any] = response.json()
    return updated


def retract(server: Server, feed: str, entry_id: str) -> None:
    url = f"{server.base_url}/v1/feeds/{feed}/entries/{entry_id}"
    response = httpx.delete(url, headers=server.headers())
    assert response.status_code == 204, response.text


def article(entry_id: str) -> str:
    """The selector of an entry's <article> on the reader page."""
    return f"article.lp-entry[data-id='{entry_id}']"


def shown_ids(page: Page) -> list[str]:
    """The ids of the entries a reader sees, top to bottom."""
    ids: list[str] = page.eval_on_selector_all(
        "article.lp-entry:not([hidden])", "articles => articles.map(a => a.dataset.id)"
    )
    return ids


def recorded(page: Page) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = page.evaluate("window.__events")
    return events
