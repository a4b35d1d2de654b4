"""Screenshots of the reader (phone, desktop) and the editor console, for a human to look at.

Saved under test-artifacts/ (gitignored). The assertions are the layout facts a reader
would notice first: nothing wider than the screen, the pinned entry on top.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect

from tests.browser.helpers import article, correct, open_reader, publish
from tests.browser.test_editor import open_console
from tests.support import Server


@pytest.fixture
def demo(start_server: Callable[..., Server]) -> Server:
    """A server with the demo story, one correction and one fresh entry."""
    server = start_server(LIVEPUSH_DEMO="1")
    snapshot: dict[str, Any] = httpx.get(f"{server.base_url}/v1/feeds/demo/snapshot").json()
    conviction = next(e for e in snapshot["entries"] if e.get("title") == "CONVICTION")
    correct(
        server, "demo", conviction["id"], body=conviction["body"] + "\n\n(Corrected: count one.)"
    )
    return server


@pytest.mark.parametrize(("name", "width", "height"), [("phone", 390, 844), ("desktop", 1280, 900)])
def test_reader_screenshot(
    browser: Browser, demo: Server, artifacts: Path, name: str, width: int, height: int
) -> None:
    context = browser.new_context(
        viewport={"width": width, "height": height}, timezone_id="UTC", locale="en-GB"
    )
    page = context.new_page()
    try:
        open_reader(page, demo, "demo")
        fresh = publish(demo, "demo", title="VERDICT READ OUT", body="The foreman stood.")
        expect(page.locator(article(fresh["id"]))).to_be_visible()
        assert page.evaluate("document.documentElement.scrollWidth") <= width
        assert page.locator("article.lp-entry").first.get_attribute("data-pinned") == "true"
        expect(page.locator(".lp-updated")).to_have_count(1)
        page.screenshot(
            path=artifacts / f"reader-{width}.png", full_page=True, animations="disabled"
        )
    finally:
        context.close()


def test_reader_new_entries_bar_screenshot(page: Page, demo: Server, artifacts: Path) -> None:
    page.set_viewport_size({"width": 390, "height": 700})
    open_reader(page, demo, "demo")
    page.evaluate("window.scrollTo(0, 600)")
    publish(demo, "demo", body="One more.")
    publish(demo, "demo", body="And another.")
    expect(page.locator(".lp-new-bar")).to_have_text("2 new entries")
    page.screenshot(path=artifacts / "reader-390-new-entries.png", animations="disabled")


@pytest.mark.parametrize(("width", "height"), [(1280, 900), (390, 844)])
def test_editor_screenshot(
    browser: Browser, demo: Server, artifacts: Path, width: int, height: int
) -> None:
    context = browser.new_context(
        viewport={"width": width, "height": height}, timezone_id="UTC", locale="en-GB"
    )
    page = context.new_page()
    try:
        open_console(page, demo, "demo")
        page.fill(".ed-publish input[name=title]", "SENTENCING")
        page.fill(".ed-publish textarea[name=body]", "The judge will sentence on 14 January.")
        page.fill(".ed-publish input[name=author]", "Live desk")
        page.click(".ed-publish button[type=submit]")
        expect(page.locator(".ed-list li").first.locator(".ed-propagation")).to_contain_text(
            "reached"
        )
        assert page.evaluate("document.documentElement.scrollWidth") <= width
        page.screenshot(
            path=artifacts / f"editor-{width}.png", full_page=True, animations="disabled"
        )
    finally:
        context.close()


def test_reader_paused_screenshot(page: Page, demo: Server, artifacts: Path) -> None:
    page.set_viewport_size({"width": 390, "height": 844})
    open_reader(page, demo, "demo")
    response = httpx.patch(
        f"{demo.base_url}/v1/feeds/demo", json={"status": "paused"}, headers=demo.headers()
    )
    assert response.status_code == 200
    expect(page.locator(".lp-banner")).to_have_text("We have paused our live coverage")
    page.screenshot(path=artifacts / "reader-390-paused.png", animations="disabled")


def test_editor_stories_screenshot(browser: Browser, demo: Server, artifacts: Path) -> None:
    context = browser.new_context(
        viewport={"width": 1280, "height": 900}, timezone_id="UTC", locale="en-GB"
    )
    page = context.new_page()
    try:
        open_console(page, demo, "demo")
        at = (datetime.now(UTC) + timedelta(hours=3)).strftime("%Y-%m-%dT%H:%M:%S")
        page.fill(".ed-publish input[name=title]", "SENTENCING PREVIEW")
        page.fill(".ed-publish textarea[name=body]", "What the judge must weigh on 14 January.")
        page.fill(".ed-publish input[name=publish_at]", at)
        page.click(".ed-publish button[type=submit]")
        # The demo's own scheduled entry, a minute after start-up, and this one.
        expect(page.locator(".ed-scheduled-list li")).to_have_count(2)
        row = page.locator(".ed-list li", has_text="CONVICTION")
        row.get_by_role("button", name="Revisions").click()
        expect(row.locator(".ed-version")).to_have_count(2)
        assert page.evaluate("document.documentElement.scrollWidth") <= 1280
        page.evaluate("window.scrollTo(0, 0)")  # the sticky column where a reader starts
        page.screenshot(
            path=artifacts / "editor-stories-1280.png", full_page=True, animations="disabled"
        )
    finally:
        context.close()
