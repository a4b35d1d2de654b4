"""Raw request JSON to a validated entry draft, or InvalidEntry naming each bad field."""

from __future__ import annotations

from typing import Annotated, Any

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


class _Fields(BaseModel):
    """The editor-supplied fields of an entry; the server adds id, seq and times."""

    model_config = ConfigDict(extra="forbid", frozen=True, title="NewEntry")

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


class _Patch(_Fields):
    # `body` and `pinned` may be left out but not set to null: a default is not
    # validated, an explicit null is.
    model_config = ConfigDict(
        extra="forbid", frozen=True, title="EntryPatch", json_schema_extra=_patch_schema
    )

    body: StrictStr = Field(default=None, min_length=1, max_length=65536)  # type: ignore[assignment]
    pinned: StrictBool = None  # type: ignore[assignment]


EDITABLE = ("body", "title", "author", "tags", "pinned", "meta")

# The models that validate requests, as the API documents (openapi.py) show them.
NewEntry: type[BaseModel] = _Fields
EntryPatch: type[BaseModel] = _Patch


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
    try:
        fields = _Fields.model_validate(_as_object(raw))
    except ValidationError as error:
        raise InvalidEntry("the entry is not valid", fields=_fields_of(error)) from None
    return {name: getattr(fields, name) for name in EDITABLE}


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
