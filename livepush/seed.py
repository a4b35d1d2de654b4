"""The demo feed's first entries: a developing story, so a first run shows a live page."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from livepush.brokers.base import Broker
from livepush.entries import entry_fields, new_entry_id, rfc3339
from livepush.feedmeta import changed_meta
from livepush.model import Change, EventType, Scheduled
from livepush.revisions import changed_fields, revision_record
from livepush.scheduled import scheduled_record
from livepush.wire import entry_template

DEMO_FEED = "demo"
HEADLINE = "Former port director Anton Halvorsen found guilty of fraud and a weapons purchase"
STANDFIRST = (
    "The jury returned its verdicts on the second day of deliberations. "
    "Follow the latest from Court 3."
)
# The name the demo's writes carry in their revisions.
DESK = "demo-desk"

# (minutes before start-up, title, body, pinned): the jury retired the day before.
STORY: list[tuple[int, str | None, str, bool]] = [
    (
        1535,
        "WHAT WE KNOW",
        "The jury in the trial of former port director Anton Halvorsen retired yesterday "
        "after six weeks of evidence.\n\nHalvorsen faces four counts of fraud and one of "
        "illegally importing weapons through the harbour he ran for eleven years.",
        True,
    ),
    (
        1500,
        "JURY RETIRES",
        "The judge sent the jury out after a summing-up that lasted most of the day. "
        "Jurors were told to take as long as they need.",
        False,
    ),
    (
        1425,
        "NO VERDICT TONIGHT",
        "The jury has been sent home for the night without reaching verdicts. "
        "Deliberations resume tomorrow morning; Halvorsen remains on bail.",
        False,
    ),
    (
        82,
        "COURT RESUMES",
        "Court 3 is full. Halvorsen arrived at 9:40, dark suit, no comment to reporters on "
        "the steps. The judge has asked the jury whether it has reached verdicts on all counts.",
        False,
    ),
    (
        71,
        "CONVICTION",
        "Guilty on the first count: false accounting of harbour fees between 2017 and 2021.\n\n"
        "Halvorsen showed no reaction. His wife left the public gallery.",
        False,
    ),
    (
        63,
        "WEAPONS PURCHASE",
        "The jury also finds him guilty of arranging the purchase of 140 rifles through a "
        "shell company registered in his brother-in-law's name.\n\nThe prosecution said the "
        "rifles were declared as agricultural machinery.",
        False,
    ),
    (
        48,
        "ACQUITTAL ON TWO COUNTS",
        "Not guilty on the two counts of bribery relating to the 2019 dredging contract. "
        "The jury could not agree on the fifth count; the judge accepted a majority verdict.",
        False,
    ),
    (
        30,
        "DEFENCE STATEMENT",
        "Outside court, defence counsel Mirela Ostrova said her client would 'study the "
        "verdicts carefully' and that an appeal was 'very likely'.",
        False,
    ),
    (
        12,
        "SENTENCING DATE",
        "Sentencing is set for 14 January. Halvorsen is remanded in custody until then; the "
        "judge refused bail, citing 'a real risk of flight'.",
        False,
    ),
]


# Held until a minute after start-up: a scheduled entry the first run sees appear.
SCHEDULED_AFTER = timedelta(minutes=1)
SCHEDULED = (
    "OUTSIDE COURT",
    "Around forty dock workers have gathered on the court steps. Several held signs "
    "reading 'Eleven years' - the time Halvorsen ran the harbour.",
)


async def seed_demo(broker: Broker, now: datetime | None = None) -> None:
    """Publish the demo story into the `demo` feed, unless the feed already has entries:
    its headline and standfirst, entries over two days, and one entry scheduled for a
    minute after start-up."""
    history = await broker.history(DEMO_FEED, 0, 0)
    if history.head_seq > 0:
        return
    now = now or datetime.now(UTC)
    about = await broker.about(DEMO_FEED)
    meta = changed_meta(about.meta, {"title": HEADLINE, "description": STANDFIRST}, rfc3339(now))
    await broker.publish(
        DEMO_FEED, Change(EventType.FEED_UPDATED, "", (meta,), expected=about.meta)
    )
    for minutes, title, body, pinned in STORY:
        at = rfc3339(now - timedelta(minutes=minutes))
        entry_id = new_entry_id()
        fields = {"title": title, "body": body, "author": "Live desk", "pinned": pinned}
        parts = entry_template(entry_id, None, entry_fields(fields, at, at))
        revision = revision_record(at, DESK, changed_fields(None, fields))
        change = Change(EventType.CREATED, entry_id, parts, pinned=pinned, revision=revision)
        await broker.publish(DEMO_FEED, change)
    due = now + SCHEDULED_AFTER
    title, body = SCHEDULED
    fields = {"title": title, "body": body, "author": "Live desk", "pinned": False}
    entry_id = new_entry_id()
    record = scheduled_record(entry_id, rfc3339(due), fields, DESK, rfc3339(now))
    await broker.schedule(DEMO_FEED, Scheduled(entry_id, int(due.timestamp() * 1000), record))
