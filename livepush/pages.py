"""HTML of the reader page and the editor console, rendered from data without I/O.

Entry text is untrusted (the SPEC stores bodies "plain text or HTML, as given"): every
value is escaped with `html.escape` and bodies are shown as text, never as markup. The
entry markup here must stay the same as `entryElement()` in `static/reader.js`, which
renders the live events the same way in the browser.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from html import escape
from importlib.resources import files
from urllib.parse import quote

# Read once at import: the console is a static page apart from its asset version, and
# keeping it in an .html file lets it be edited (and served from /static) as one.
_EDITOR_TEMPLATE = files("livepush").joinpath("static/editor.html").read_text("utf-8")
_ASSET_VERSION_MARK = "__ASSET_VERSION__"
_NONCE_MARK = " __NONCE__"  # in the inline script's tag: ` nonce="..."`, or nothing

_PARAGRAPH_BREAK = re.compile(r"\n\s*\n")


def render_reader(
    feed: str,
    snapshot: dict[str, object],
    *,
    asset_version: str,
    limit: int = 50,
    nonce: str = "",
    token: str | None = None,
) -> str:
    """The reader page for a feed's snapshot, readable before (and without) JavaScript.

    `snapshot` is the SPEC snapshot body decoded, asked for with `limit`. The page hands
    `epoch` and `head_seq` to the client on `<main>`, so it subscribes exactly where the
    snapshot ends. `nonce` is the Content-Security-Policy nonce of its inline script
    (`page_headers`); `token` (a private feed's reader token, which the page was opened
    with) goes to the client on `<main>` too, for its subscription and reads.
    """
    entries = sorted(_entries(snapshot.get("entries")), key=_reader_order)
    epoch = _text(snapshot, "epoch")
    headline = _text(snapshot, "title") or feed
    standfirst = _text(snapshot, "description")
    status = _text(snapshot, "status") or "live"
    banner = BANNERS.get(status, "")
    head_seq = _int(snapshot, "head_seq") or 0
    # "Load older" pages back from the oldest unpinned entry shown (pinned ones are
    # always in the snapshot, whatever their age). A snapshot shorter than its limit
    # holds every live entry: then there is nothing older, and `before` says so with 0.
    unpinned = [_int(entry, "seq") or 0 for entry in entries if entry.get("pinned") is not True]
    before = min(unpinned, default=0) if len(entries) >= limit else 0
    v = quote(asset_version, safe="")
    starts = day_starts(entries)
    articles = "\n".join(render_entry(entry, day_start) for entry, day_start in starts)
    token_data = f' data-token="{escape(token)}"' if token else ""
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Live: {escape(headline)}</title>
<link rel="icon" href="data:,">
<link rel="stylesheet" href="/static/reader.css?v={v}">
<link rel="modulepreload" href="/v1/livepush.js?v={v}">
</head>
<body>
<main id="live" class="lp-reader" data-feed="{escape(feed)}" data-epoch="{escape(epoch)}" \
data-head-seq="{head_seq}" data-before="{before}" data-feed-status="{escape(status)}"{token_data}>
<header class="lp-header">
<p class="lp-kicker"><span class="lp-live-mark">Live</span> updates</p>
<h1 class="lp-headline">{escape(headline)}</h1>
<p class="lp-standfirst"{"" if standfirst else " hidden"}>{escape(standfirst)}</p>
<p class="lp-status" role="status" data-status="offline" hidden>\
<span class="lp-dot" aria-hidden="true"></span><span class="lp-status-text"></span></p>
</header>
<p class="lp-banner" role="status"{"" if banner else " hidden"}>{escape(banner)}</p>
<button type="button" class="lp-new-bar" aria-live="polite" hidden></button>
<h2 class="lp-minute">Minute by minute</h2>
<section class="lp-entries" aria-label="Entries, newest first">
{articles}
</section>
<p class="lp-empty"{"" if not entries else " hidden"}>No entries yet. \
This page updates by itself.</p>
<div class="lp-more"><button type="button" class="lp-load-older" hidden>\
Load older entries</button></div>
</main>
<script type="module"{_nonce(nonce)}>
import {{ subscribe }} from "/v1/livepush.js?v={v}";
import {{ startReader }} from "/static/reader.js?v={v}";
startReader(document.getElementById("live"), subscribe);
</script>
</body>
</html>
"""


def render_editor(*, asset_version: str, nonce: str = "") -> str:
    """The editor console page, its asset URLs pinned to `asset_version`."""
    page = _EDITOR_TEMPLATE.replace(_ASSET_VERSION_MARK, quote(asset_version, safe=""))
    return page.replace(_NONCE_MARK, _nonce(nonce))


def _nonce(nonce: str) -> str:
    return f' nonce="{escape(nonce)}"' if nonce else ""


def page_headers(nonce: str, *, frame_ancestors: str, host: str | None) -> dict[str, str]:
    """The security headers of a page whose one inline script carries `nonce`.

    Scripts only from this origin and that script; no plugins, no `<base>`, forms
    only to this origin; `frame_ancestors` says who may frame the page (the editor
    console, which holds a publisher token: nobody). `connect-src` names the page's
    own host with ws: and wss: as well as 'self', for browsers whose 'self' does not
    cover WebSocket URLs yet. No Referer leaves the page: a private feed's page may
    carry its reader token in its URL.
    """
    connect = "'self'"
    if host is not None and _HOST.fullmatch(host):
        connect += f" ws://{host} wss://{host}"
    policy = (
        f"default-src 'none'; script-src 'self' 'nonce-{nonce}'; style-src 'self'; "
        f"img-src 'self' data:; connect-src {connect}; base-uri 'none'; "
        f"form-action 'self'; frame-ancestors {frame_ancestors}"
    )
    headers = {
        "Content-Security-Policy": policy,
        "Referrer-Policy": "no-referrer",
        "X-Content-Type-Options": "nosniff",
    }
    if frame_ancestors == "'none'":
        headers["X-Frame-Options"] = "DENY"  # browsers that predate frame-ancestors
    return headers


# A Host header as it may appear in a CSP source: a name or an address, and a port.
_HOST = re.compile(r"[A-Za-z0-9.-]+(?::[0-9]{1,5})?|\[[0-9A-Fa-f:.]+\](?::[0-9]{1,5})?")


# What the page says about coverage that is not live (SPEC "Stories"); reader.js has
# the same words.
BANNERS = {"paused": "We have paused our live coverage", "ended": "Coverage has ended"}


def day_starts(entries: list[Mapping[str, object]]) -> list[tuple[Mapping[str, object], bool]]:
    """Each entry (in reader order) with whether its date is shown: on a blog whose
    entries span more than one day, pinned entries show theirs, and the others show it
    where a new day starts (they are newest first, so under each date come its entries).
    Same rule as `markDays()` in reader.js, which applies it in the reader's time zone.
    """
    days = [_day(_text(entry, "published_at")) for entry in entries]
    if len(set(days)) < 2:
        return [(entry, False) for entry in entries]
    marked, previous = [], None
    for entry, day in zip(entries, days, strict=True):
        if entry.get("pinned") is True:
            marked.append((entry, True))
        else:
            marked.append((entry, day != previous))
            previous = day
    return marked


def render_entry(entry: Mapping[str, object], day_start: bool = False) -> str:
    """One entry as an `<article>`: its date (shown where a day starts), marker, time,
    correction time, author, title, body."""
    entry_id = _text(entry, "id")
    seq = _int(entry, "seq") or 0
    pinned = entry.get("pinned") is True
    published = _text(entry, "published_at")
    updated = _text(entry, "updated_at")
    title = _text(entry, "title")
    author = _text(entry, "author")
    meta = []
    if pinned:
        meta.append('<span class="lp-pin">Pinned</span>')
    meta.append(f'<time class="lp-time" datetime="{escape(published)}">{_clock(published)}</time>')
    if updated and updated != published:
        meta.append(
            f'<span class="lp-updated">Updated <time datetime="{escape(updated)}">'
            f"{_clock(updated)}</time></span>"
        )
    if author:
        meta.append(f'<span class="lp-author">{escape(author)}</span>')
    heading = f'<h2 class="lp-title">{escape(title)}</h2>' if title else ""
    body = "".join(f"<p>{escape(p)}</p>" for p in paragraphs(_text(entry, "body")))
    classes = "lp-entry" + (" is-pinned" if pinned else "") + (" is-day-start" if day_start else "")
    return (
        f'<article class="{classes}" id="entry-{escape(entry_id)}"'
        f' data-id="{escape(entry_id)}" data-seq="{seq}" data-pinned="{str(pinned).lower()}">'
        f'<p class="lp-day">{_day(published)}</p>'
        f'<header class="lp-entry-meta">{"".join(meta)}</header>'
        f'{heading}<div class="lp-body">{body}</div></article>'
    )


def paragraphs(body: str) -> list[str]:
    """A body's paragraphs: split on blank lines; single newlines stay (CSS pre-line)."""
    text = body.replace("\r\n", "\n").replace("\r", "\n").strip()
    return [p.strip() for p in _PARAGRAPH_BREAK.split(text)] if text else []


def _reader_order(entry: Mapping[str, object]) -> tuple[bool, int]:
    """Pinned entries first, then newest (highest creation seq) first."""
    return (entry.get("pinned") is not True, -(_int(entry, "seq") or 0))


def _clock(timestamp: str) -> str:
    """`HH:MM` in UTC: the server cannot know the reader's zone; reader.js relabels it."""
    try:
        moment = datetime.fromisoformat(timestamp)
    except ValueError:
        return ""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%H:%M UTC")


def _day(timestamp: str) -> str:
    """The date, as "November 14, 2024", in UTC (reader.js relabels it in the reader's
    own time zone); "" for a time that does not parse."""
    try:
        moment = datetime.fromisoformat(timestamp)
    except ValueError:
        return ""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    moment = moment.astimezone(UTC)
    return f"{moment:%B} {moment.day}, {moment.year}"


def _entries(value: object) -> Iterable[Mapping[str, object]]:
    if not isinstance(value, list):
        return []
    return [item for item in value if isinstance(item, dict)]


def _text(data: Mapping[str, object], key: str) -> str:
    value = data.get(key)
    return value if isinstance(value, str) else ""


def _int(data: Mapping[str, object], key: str) -> int | None:
    value = data.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else None
