"""A feed's metadata as JSON: its title, description, status and times (SPEC "Stories").

The same bytes are the `meta` of its `feed.updated` events, and are stored with the
feed (Redis: its `meta` hash; in-process: the feed's state) from its first use, so
`GET /v1/feeds/{feed}` and the snapshot carry them without a second read.
"""

from __future__ import annotations

from typing import Any

import orjson

from livepush.model import FeedStatus

# The keys, in the order clients see them.
KEYS = ("title", "description", "status", "created_at", "ended_at")


def initial_meta(created_at: str) -> bytes:
    """A new feed's metadata: no title or description, live since `created_at`."""
    return orjson.dumps(
        {
            "title": None,
            "description": None,
            "status": FeedStatus.LIVE.value,
            "created_at": created_at,
            "ended_at": None,
        }
    )


def changed_meta(current: bytes, patch: dict[str, Any], now: str) -> bytes:
    """The metadata after `patch` (title, description, status; null clears the first two).

    `ended_at` is when the feed last became `ended` (`now` on that change, kept while it
    stays ended) and null while it is live or paused: a feed may be reopened.
    """
    meta = orjson.loads(current)
    was_ended = meta.get("status") == FeedStatus.ENDED
    meta.update(patch)
    if meta.get("status") != FeedStatus.ENDED:
        meta["ended_at"] = None
    elif not was_ended:
        meta["ended_at"] = now
    return orjson.dumps({key: meta.get(key) for key in KEYS})


def meta_members(meta: bytes) -> bytes:
    """The metadata object's members without its braces, to splice into another object."""
    return meta[1:-1]
