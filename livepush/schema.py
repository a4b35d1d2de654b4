"""Raw request JSON to a validated entry draft, or InvalidEntry naming each bad field."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

import orjson
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictStr,
    ValidationError,
    field_validator,
)

from livepush.errors import InvalidEntry

MAX_META_BYTES = 8 * 1024

Tag = Annotated[StrictStr, Field(max_length=64)]


# A scheduled entry's `publish_at` (SPEC "Stories"): RFC 3339 with its offset, in the
# future, at most this far ahead.
MAX_SCHEDULE_AHEAD = timedelta(days=30)
_RFC3339 = re.compile(
    r"\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})", re.ASCII
)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def publish_at_ms(text: str) -> int:
    """An RFC 3339 date-time (with its offset) as Unix milliseconds, or ValueError."""
    if not _RFC3339.fullmatch(text):
        raise ValueError("must be an RFC 3339 date-time with an offset, e.g. 2024-11-14T09:30:00Z")
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError("must be a real date and time") from None
    # Rounded up to the millisecond: never before the time asked for (an embargo).
    return -((_EPOCH - moment) // timedelta(milliseconds=1))


def check_publish_at(text: str, now: datetime | None = None) -> int:
    """`publish_at_ms(text)`, refused unless in the future and at most 30 days ahead."""
    at = publish_at_ms(text)
    now_ms = round((now or datetime.now(UTC)).timestamp() * 1000)
    if at <= now_ms:
        raise ValueError("must be in the future")
    if at - now_ms > MAX_SCHEDULE_AHEAD / timedelta(milliseconds=1):
        raise ValueError(f"must be at most {MAX_SCHEDULE_AHEAD.days} days ahead")
    return at


def _date_time_schema(schema: dict[str, Any]) -> None:
    """`publish_at`'s JSON Schema: an RFC 3339 string; its None only means "left out"."""
    schema.pop("default", None)
    schema["format"] = "date-time"


PublishAt = Annotated[
    StrictStr,
    Field(
        default=None,
        description="publish at this time (RFC 3339, in the future, at most 30 days ahead)",
        json_schema_extra=_date_time_schema,
    ),
]


class _Entry(BaseModel):
    """The editor-supplied fields of an entry; the server adds id, seq and times."""

    model_config = ConfigDict(extra="forbid", frozen=True, title="EntryFields")

    body: StrictStr = Field(min_length=1, max_length=65536)
    title: StrictStr | None = Field(default=None, max_length=300)
    author: StrictStr | None = Field(default=None, max_length=200)
    tags: list[Tag] | None = Field(default=None, max_length=20)
    pinned: StrictBool = False
    meta: dict[str, Any] | None = None

    @field_validator("meta")
    @classmethod
    def _meta_small(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None and len(orjson.dumps(value)) > MAX_META_BYTES:
            raise ValueError(f"meta must encode to at most {MAX_META_BYTES} bytes")
        return value


def _patch_schema(schema: dict[str, Any]) -> None:
    """A correction's JSON Schema: at least one field; `body` and `pinned` have no
    default (their None only stands for "left out", it is never a value)."""
    schema["minProperties"] = 1
    for name in ("body", "pinned"):
        schema["properties"][name].pop("default", None)


def _publish_at_valid(value: str | None) -> str | None:
    if value is not None:
        check_publish_at(value)
    return value


class _Fields(_Entry):
    """A new entry: published now, or held until `publish_at` (a scheduled entry)."""

    model_config = ConfigDict(extra="forbid", frozen=True, title="NewEntry")

    publish_at: PublishAt

    _check_publish_at = field_validator("publish_at")(_publish_at_valid)


class _Patch(_Entry):
    # `body` and `pinned` may be left out but not set to null: a default is not
    # validated, an explicit null is.
    model_config = ConfigDict(
        extra="forbid", frozen=True, title="EntryPatch", json_schema_extra=_patch_schema
    )

    body: StrictStr = Field(default=None, min_length=1, max_length=65536)  # type: ignore[assignment]
    pinned: StrictBool = None  # type: ignore[assignment]


class _ScheduledPatch(_Patch):
    """A change to a scheduled entry: its fields, its time, or both."""

    model_config = ConfigDict(
        extra="forbid", frozen=True, title="ScheduledPatch", json_schema_extra=_patch_schema
    )

    publish_at: PublishAt

    _check_publish_at = field_validator("publish_at")(_publish_at_valid)


def _feed_patch_schema(schema: dict[str, Any]) -> None:
    """At least one field; `status` has no default (its None only means "left out")."""
    schema["minProperties"] = 1
    schema["properties"]["status"].pop("default", None)


class _FeedPatch(BaseModel):
    """A change to a feed's metadata (SPEC "Stories"); null clears title or description."""

    model_config = ConfigDict(
        extra="forbid", frozen=True, title="FeedPatch", json_schema_extra=_feed_patch_schema
    )

    title: StrictStr | None = Field(default=None, max_length=300)
    description: StrictStr | None = Field(default=None, max_length=2000)
    status: Literal["live", "paused", "ended"] = Field(default=None)  # type: ignore[arg-type]


class _Purge(BaseModel):
    """A purge's reason, kept in its audit record (a legal takedown's reference)."""

    model_config = ConfigDict(extra="forbid", frozen=True, title="Purge")

    reason: StrictStr = Field(min_length=1, max_length=1000)


EDITABLE = ("body", "title", "author", "tags", "pinned", "meta")

# The models that validate requests, as the API documents (openapi.py) show them.
NewEntry: type[BaseModel] = _Fields
EntryPatch: type[BaseModel] = _Patch
ScheduledPatch: type[BaseModel] = _ScheduledPatch
FeedPatch: type[BaseModel] = _FeedPatch
Purge: type[BaseModel] = _Purge


def _fields_of(error: ValidationError) -> dict[str, str]:
    fields: dict[str, str] = {}
    for item in error.errors():
        name = ".".join(str(part) for part in item["loc"]) or "(body)"
        message = item["msg"]
        if item["type"] == "extra_forbidden":
            message = "unknown field"
        fields.setdefault(name, message)
    return fields


def _as_object(raw: object) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise InvalidEntry("an entry is a JSON object", fields={"(body)": "expected an object"})
    return raw


def parse_new_entry(raw: object) -> dict[str, Any]:
    """Validate a new entry's fields; the result holds every field, defaults filled in."""
    return parse_submission(raw)[0]


def parse_submission(raw: object) -> tuple[dict[str, Any], int | None]:
    """Validate a new entry: its fields (every one, defaults filled in) and, for a
    scheduled entry, when to publish it (Unix ms; None: now)."""
    try:
        fields = _Fields.model_validate(_as_object(raw))
    except ValidationError as error:
        raise InvalidEntry("the entry is not valid", fields=_fields_of(error)) from None
    at = None if fields.publish_at is None else publish_at_ms(fields.publish_at)
    return {name: getattr(fields, name) for name in EDITABLE}, at


def parse_patch(raw: object) -> dict[str, Any]:
    """Validate a correction; the result holds only the fields the editor sent.

    Sending `null` for an optional field (title, author, tags, meta) removes it;
    `body` and `pinned` cannot be removed.
    """
    data = _as_object(raw)
    bad: dict[str, str] = {
        name: "cannot be null" for name in ("body", "pinned") if name in data and data[name] is None
    }
    try:
        _Patch.model_validate(data)
    except ValidationError as error:
        raise InvalidEntry(
            "the correction is not valid", fields={**_fields_of(error), **bad}
        ) from None
    if not data:
        raise InvalidEntry("a correction changes at least one field", fields={"(body)": "empty"})
    return dict(data)


def parse_scheduled_patch(raw: object) -> tuple[dict[str, Any], int | None]:
    """Validate a change to a scheduled entry: the entry fields it sets (as a correction
    would) and its new time (Unix ms; None: unchanged)."""
    data = _as_object(raw)
    bad: dict[str, str] = {
        name: "cannot be null"
        for name in ("body", "pinned", "publish_at")
        if name in data and data[name] is None
    }
    try:
        _ScheduledPatch.model_validate(data)
    except ValidationError as error:
        raise InvalidEntry("the change is not valid", fields={**_fields_of(error), **bad}) from None
    if bad:
        raise InvalidEntry("the change is not valid", fields=bad)
    if not data:
        raise InvalidEntry("a change sets at least one field", fields={"(body)": "empty"})
    patch = {name: value for name, value in data.items() if name != "publish_at"}
    at = data.get("publish_at")
    return patch, None if at is None else publish_at_ms(at)


def parse_feed_patch(raw: object) -> dict[str, Any]:
    """Validate a change to a feed's metadata; the result holds only the fields sent."""
    data = _as_object(raw)
    bad = {"status": "cannot be null"} if "status" in data and data["status"] is None else {}
    try:
        _FeedPatch.model_validate(data)
    except ValidationError as error:
        raise InvalidEntry("the change is not valid", fields={**_fields_of(error), **bad}) from None
    if bad:
        raise InvalidEntry("the change is not valid", fields=bad)
    if not data:
        raise InvalidEntry("a change sets at least one field", fields={"(body)": "empty"})
    return dict(data)


def parse_purge(raw: object) -> str:
    """A purge request's reason."""
    try:
        purge = _Purge.model_validate(_as_object(raw))
    except ValidationError as error:
        raise InvalidEntry("the purge is not valid", fields=_fields_of(error)) from None
    return purge.reason
