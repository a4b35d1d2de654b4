"""What the server adds to an entry: its id, its times, its fields in the order clients see."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime
from typing import Any

ID_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"


def new_entry_id() -> str:
    """A random 16-character id from a URL-safe, unambiguous alphabet (80 bits)."""
    return "".join(secrets.choice(ID_ALPHABET) for _ in range(16))


def rfc3339(at: datetime) -> str:
    """`at` (aware) as RFC 3339 in UTC with millisecond precision, as entries carry it."""
    return at.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def rfc3339_ms(at: int) -> str:
    """Unix milliseconds as RFC 3339 in UTC with millisecond precision."""
    return rfc3339(datetime.fromtimestamp(at / 1000, UTC))


def now_rfc3339() -> str:
    """The current time, RFC 3339 in UTC with millisecond precision."""
    return rfc3339(datetime.now(UTC))


def entry_fields(fields: dict[str, Any], published_at: str, updated_at: str) -> dict[str, Any]:
    """An entry's JSON fields after id and seq, in the order clients see them."""
    return {
        "published_at": published_at,
        "updated_at": updated_at,
        "title": fields.get("title"),
        "body": fields["body"],
        "author": fields.get("author"),
        "tags": fields.get("tags"),
        "pinned": fields.get("pinned", False),
        "meta": fields.get("meta"),
    }
