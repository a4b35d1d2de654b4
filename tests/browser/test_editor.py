"""The editor console in a real Chromium: publish, correct, retract, and propagation."""

from __future__ import annotations

import re
from collections.abc import Callable

from playwright.sync_api import BrowserContext, Page, expect

from tests.browser.helpers import article, open_reader
from tests.support import RedisServer, Server

RECEIPT = r"reached (\d[\d,]*) subscribers? on 1 node, fan-out \d+\.\d ms"


def open_console(page: Page, server: Server, feed: str, token: str | None = None) -> None:
    page.goto(server.base_url + "/editor")
    page.fill(".ed-settings input[name=token]", token or server.token)
    page.fill(".ed-settings input[name=feed]", feed)
    page.click(".ed-settings button[type=submit]")
    expect(page.locator(".ed-status")).to_have_attribute("data-status", "live")


def test_editor_publishes_corrects_and_retracts_with_propagation(
    page: Page, context: BrowserContext, server: Server
) -> None:
    reader = context.new_page()
    open_reader(reader, server, "desk")
    open_console(page, server, "desk")

    page.fill(".ed-publish input[name=title]", "FROM THE DESK")
    page.fill(".ed-publish textarea[name=body]", "First take.")
    page.fill(".ed-publish input[name=author]", "Night editor")
    page.click(".ed-publish button[type=submit]")
    row = page.locator(".ed-list li").first
    published = row.locator(".ed-propagation").nth(0)
    expect(published).to_have_text(re.compile(rf"^Published #1: {RECEIPT}$"))
    match = re.search(RECEIPT, published.inner_text())
    assert match is not None
    assert int(match.group(1).replace(",", "")) >= 2  # the reader page and the console
    entry_id = row.get_attribute("data-id")
    assert entry_id
    expect(reader.locator(article(entry_id) + " .lp-title")).to_have_text("FROM THE DESK")

    row.get_by_role("button", name="Correct").click()
    row.locator(".ed-correction textarea[name=body]").fill("Second take.")
    row.get_by_role("button", name="Save correction").click()
    expect(reader.locator(article(entry_id) + " .lp-body")).to_have_text("Second take.")
    expect(row.locator(".ed-propagation").nth(1)).to_have_text(
        re.compile(rf"^Corrected #2: {RECEIPT}$")
    )

    row.get_by_role("button", name="Retract").click()
    row.get_by_role("button", name="Really retract?").click()
    expect(reader.locator(article(entry_id))).to_have_count(0)
    expect(row).to_have_class(re.compile(r"\bis-retracted\b"))
    expect(row.locator(".ed-propagation").nth(2)).to_have_text(
        re.compile(rf"^Retracted #3: {RECEIPT}$")
    )


def test_editor_keeps_the_token_and_reports_a_refused_one(page: Page, server: Server) -> None:
    open_console(page, server, "desk", token="wrong-token")
    page.fill(".ed-publish textarea[name=body]", "should not publish")
    page.click(".ed-publish button[type=submit]")
    expect(page.locator(".ed-publish .ed-notice")).to_have_text("The publisher token was refused")
    page.reload()
    expect(page.locator(".ed-settings input[name=token]")).to_have_value("wrong-token")


def test_the_console_on_node_a_counts_subscribers_on_node_b_too(
    page: Page,
    context: BrowserContext,
    redis_server: RedisServer,
    start_server: Callable[..., Server],
) -> None:
    node_a, node_b = start_server(redis_server.url), start_server(redis_server.url)
    readers = [context.new_page() for _ in range(3)]
    for reader in readers:
        open_reader(reader, node_b, "two-nodes")
    open_console(page, node_a, "two-nodes")

    page.fill(".ed-publish textarea[name=body]", "Seen on both nodes.")
    page.click(".ed-publish button[type=submit]")
    line = page.locator(".ed-list li").first.locator(".ed-propagation").nth(0)
    # Totals arrive as each node reports: wait for both nodes' figures, summed.
    expect(line).to_have_text(
        re.compile(r"^Published #1: reached 4 subscribers on 2 nodes, fan-out \d+\.\d ms$")
    )
    for reader in readers:
        expect(reader.locator(".lp-entry")).to_have_count(1)
