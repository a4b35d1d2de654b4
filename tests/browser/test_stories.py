"""The stories in a real Chromium: headline, standfirst, status, dates, scheduled entries
on the reader page, and the editor console's coverage, scheduling and revisions."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from playwright.sync_api import BrowserContext, Page, expect

from tests.browser.helpers import article, correct, open_reader, publish, recorded
from tests.browser.test_editor import open_console
from tests.support import Server

DATE = re.compile(r"^[A-Z][a-z]+ \d{1,2}, \d{4}$")  # "November 14, 2024"


def update_feed(server: Server, feed: str, **change: Any) -> dict[str, Any]:
    url = f"{server.base_url}/v1/feeds/{feed}"
    response = httpx.patch(url, json=change, headers=server.headers())
    assert response.status_code == 200, response.text
    about: dict[str, Any] = response.json()
    return about


def schedule(server: Server, feed: str, after: timedelta, **entry: Any) -> dict[str, Any]:
    at = (datetime.now(UTC) + after).isoformat()
    response = server.post(feed, {**entry, "publish_at": at})
    assert response.status_code == 202, response.text
    accepted: dict[str, Any] = response.json()
    return accepted


def local_input(after: timedelta) -> str:
    """A datetime-local value `after` from now (the browser context runs in UTC)."""
    return (datetime.now(UTC) + after).strftime("%Y-%m-%dT%H:%M:%S")


def scheduled_ids(server: Server, feed: str) -> list[str]:
    url = f"{server.base_url}/v1/feeds/{feed}/scheduled"
    listed = httpx.get(url, headers=server.headers()).json()
    return [item["id"] for item in listed["scheduled"]]


def test_headline_and_standfirst_render_and_follow_changes(page: Page, server: Server) -> None:
    update_feed(server, "kupiansk", title="Russian infantry briefly entered Kupiansk")
    update_feed(server, "kupiansk", description="Follow the latest information.")
    open_reader(page, server, "kupiansk")
    expect(page.locator("h1.lp-headline")).to_have_text("Russian infantry briefly entered Kupiansk")
    expect(page.locator(".lp-standfirst")).to_have_text("Follow the latest information.")
    expect(page.locator(".lp-minute")).to_have_text("Minute by minute")
    assert page.title() == "Live: Russian infantry briefly entered Kupiansk"

    update_feed(server, "kupiansk", title="Kupiansk: the front line moves", description=None)
    expect(page.locator("h1.lp-headline")).to_have_text("Kupiansk: the front line moves")
    expect(page.locator(".lp-standfirst")).to_be_hidden()
    assert page.title() == "Live: Kupiansk: the front line moves"
    assert [e["type"] for e in recorded(page)] == ["feed.updated"]


def test_the_status_banner_changes_live(page: Page, server: Server) -> None:
    open_reader(page, server, "night")
    banner = page.locator(".lp-banner")
    expect(banner).to_be_hidden()
    update_feed(server, "night", status="paused")
    expect(banner).to_have_text("We have paused our live coverage")
    expect(page.locator("main")).to_have_attribute("data-feed-status", "paused")
    update_feed(server, "night", status="live")
    expect(banner).to_be_hidden()
    entry = publish(server, "night", body="Back with you this morning.")
    expect(page.locator(article(entry["id"]))).to_be_visible()
    update_feed(server, "night", status="ended")
    expect(banner).to_have_text("Coverage has ended")

    # An ended feed still serves its page, with the banner rendered by the server.
    page.reload()
    page.wait_for_selector(".lp-status[data-status=live]")
    expect(banner).to_have_text("Coverage has ended")
    expect(page.locator(article(entry["id"]))).to_be_visible()


def test_a_scheduled_entry_appears_on_the_reader_page_when_due(page: Page, server: Server) -> None:
    open_reader(page, server, "embargo")
    before = publish(server, "embargo", body="Before the embargo.")
    accepted = schedule(server, "embargo", timedelta(seconds=2), title="EMBARGO", body="Lifted.")
    expect(page.locator(article(before["id"]))).to_be_visible()
    expect(page.locator(article(accepted["id"]))).to_have_count(0)

    released = page.locator(article(accepted["id"]))
    expect(released.locator(".lp-title")).to_have_text("EMBARGO")
    events = recorded(page)
    assert [(e["type"], e["seq"]) for e in events] == [
        ("entry.created", before["seq"]),
        ("entry.created", before["seq"] + 1),
    ]
    assert events[1]["entry"]["published_at"] == accepted["publish_at"]
    assert scheduled_ids(server, "embargo") == []


def test_dates_label_a_blog_that_spans_two_days(
    page: Page, start_server: Callable[..., Server]
) -> None:
    demo = start_server(LIVEPUSH_DEMO="1")  # its story began the day before
    open_reader(page, demo, "demo")
    labels = page.locator("article.lp-entry.is-day-start .lp-day")
    expect(labels.first).to_be_visible()
    texts = labels.all_inner_texts()
    assert all(DATE.match(text) for text in texts), texts
    days = page.locator("article.lp-entry[data-pinned=false] .lp-day").all_inner_texts()
    # Newest first, under each date its own entries: the unpinned ones show each date once.
    shown = page.locator("article.lp-entry[data-pinned=false].is-day-start .lp-day")
    assert shown.all_inner_texts() == list(dict.fromkeys(days))
    assert len(set(days)) >= 2
    today = datetime.now(UTC)
    assert f"{today:%B} {today.day}, {today.year}" in days

    # A new entry of today goes on top of today's entries, under today's date.
    fresh = publish(demo, "demo", body="Later today.")
    expect(page.locator(article(fresh["id"]))).to_have_class(re.compile(r"\bis-day-start\b"))
    expect(page.locator("article.lp-entry[data-pinned=false].is-day-start")).to_have_count(
        len(set(days))
    )


def test_a_feed_on_one_day_shows_no_dates(page: Page, server: Server) -> None:
    publish(server, "one-day", body="Morning.")
    open_reader(page, server, "one-day")
    publish(server, "one-day", body="Afternoon.")
    expect(page.locator("article.lp-entry")).to_have_count(2)
    expect(page.locator(".lp-day:visible")).to_have_count(0)


def test_the_editor_sets_headline_standfirst_and_status(
    page: Page, context: BrowserContext, server: Server
) -> None:
    reader = context.new_page()
    open_reader(reader, server, "desk-meta")
    open_console(page, server, "desk-meta")
    page.fill(".ed-coverage input[name=title]", "Verdict day")
    page.fill(".ed-coverage textarea[name=description]", "Live from Court 3.")
    page.select_option(".ed-coverage select[name=status]", "paused")
    page.click(".ed-coverage button[type=submit]")
    expect(reader.locator("h1.lp-headline")).to_have_text("Verdict day")
    expect(reader.locator(".lp-standfirst")).to_have_text("Live from Court 3.")
    expect(reader.locator(".lp-banner")).to_have_text("We have paused our live coverage")
    expect(page.locator(".ed-coverage-info")).to_have_text(re.compile(r"^Paused · updated #1\.$"))

    page.select_option(".ed-coverage select[name=status]", "ended")
    page.click(".ed-coverage button[type=submit]")
    expect(reader.locator(".lp-banner")).to_have_text("Coverage has ended")
    expect(page.locator(".ed-coverage-info")).to_contain_text("Ended at ")


def test_the_editor_schedules_an_entry_and_cancels_one(
    page: Page, context: BrowserContext, server: Server
) -> None:
    reader = context.new_page()
    open_reader(reader, server, "desk-schedule")
    open_console(page, server, "desk-schedule")
    form = page.locator(".ed-publish")
    form.locator("input[name=title]").fill("LATER")
    form.locator("textarea[name=body]").fill("Held for an hour.")
    form.locator("input[name=publish_at]").fill(local_input(timedelta(hours=1)))
    expect(form.locator("button[type=submit]")).to_have_text("Schedule")
    form.locator("button[type=submit]").click()
    expect(form.locator(".ed-notice")).to_have_text(re.compile(r"^Scheduled for "))
    rows = page.locator(".ed-scheduled-list li")
    expect(rows).to_have_count(1)
    expect(rows.first.locator(".ed-countdown")).to_have_text(re.compile(r"^in 59:\d\d$"))
    expect(rows.first.locator(".ed-title")).to_have_text("LATER")

    form.locator("textarea[name=body]").fill("Out in a moment.")
    form.locator("input[name=publish_at]").fill(local_input(timedelta(seconds=3)))
    form.locator("button[type=submit]").click()
    expect(rows).to_have_count(2)
    soon = rows.first  # soonest first
    expect(soon.locator(".ed-body")).to_have_text("Out in a moment.")
    soon_id = soon.get_attribute("data-id")
    assert soon_id

    # When due, it is published: on the reader page, among the console's entries, and
    # gone from the scheduled list.
    expect(reader.locator(article(soon_id) + " .lp-body")).to_have_text("Out in a moment.")
    expect(page.locator(f".ed-list li[data-id='{soon_id}']")).to_have_count(1)
    expect(rows).to_have_count(1)

    later = rows.first
    later_id = later.get_attribute("data-id")
    later.get_by_role("button", name="Cancel").click()
    later.get_by_role("button", name="Really cancel?").click()
    expect(rows).to_have_count(0)
    expect(page.locator(".ed-scheduled-empty")).to_be_visible()
    assert later_id not in scheduled_ids(server, "desk-schedule")
    assert scheduled_ids(server, "desk-schedule") == []


def test_the_editor_shows_an_entrys_revisions_side_by_side(page: Page, server: Server) -> None:
    entry = publish(server, "desk-revisions", title="CONVICTION", body="Guilty on one count.")
    correct(server, "desk-revisions", entry["id"], body="Guilty on the first count.")
    correct(server, "desk-revisions", entry["id"], title="FIRST COUNT")
    open_console(page, server, "desk-revisions")
    row = page.locator(f".ed-list li[data-id='{entry['id']}']")
    row.get_by_role("button", name="Revisions").click()
    versions = row.locator(".ed-version")
    expect(versions).to_have_count(3)
    expect(versions.nth(0).locator(".ed-version-by")).to_have_text("by env-1; changed Body, Title")
    expect(versions.nth(1).locator(".ed-version-by")).to_have_text("by env-1; changed Body")
    expect(versions.nth(2).locator(".ed-version-by")).to_have_text("by env-1; changed Title")
    first_body = versions.nth(0).locator("[data-field=body] .ed-version-value")
    expect(first_body).to_have_text("Guilty on one count.")
    expect(versions.nth(1).locator("[data-field=body]")).to_have_class(
        re.compile(r"\bis-changed\b")
    )
    expect(versions.nth(1).locator("[data-field=title]")).not_to_have_class(
        re.compile(r"\bis-changed\b")
    )
    expect(versions.nth(2).locator("[data-field=title] .ed-version-value")).to_have_text(
        "FIRST COUNT"
    )
    # Side by side: one row, oldest on the left.
    boxes = [versions.nth(i).bounding_box() for i in range(3)]
    assert all(box is not None for box in boxes)
    lefts = [box["x"] for box in boxes if box]
    tops = [box["y"] for box in boxes if box]
    assert lefts == sorted(lefts)
    assert len(set(lefts)) == 3
    assert max(tops) - min(tops) < 1
