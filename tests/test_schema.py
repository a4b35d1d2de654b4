"""schema.py: the SPEC's Entry table enforced, each bad field named in InvalidEntry."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from livepush.errors import InvalidEntry
from livepush.schema import MAX_META_BYTES, parse_new_entry, parse_patch


def _bad_fields(raw: object, parse: Any = parse_new_entry) -> dict[str, str]:
    with pytest.raises(InvalidEntry) as raised:
        parse(raw)
    assert raised.value.status == 422
    assert raised.value.fields
    fields: dict[str, str] = raised.value.fields
    return fields


def _names(fields: dict[str, str]) -> set[str]:
    """Each bad top-level field (a tag's position, `tags.3`, names `tags`)."""
    return {name.split(".")[0] for name in fields}


def _meta_of_size(size: int) -> dict[str, str]:
    meta = {"k": "x" * (size - len('{"k":""}'))}
    assert len(orjson.dumps(meta)) == size
    return meta


AT_LIMIT: dict[str, Any] = {
    "body": "b" * 65536,
    "title": "t" * 300,
    "author": "a" * 200,
    "tags": ["g" * 64] * 20,
    "pinned": True,
    "meta": _meta_of_size(MAX_META_BYTES),
}


# A new entry


def test_entry_with_only_a_body_gets_the_defaults() -> None:
    assert parse_new_entry({"body": "Court is in session."}) == {
        "body": "Court is in session.",
        "title": None,
        "author": None,
        "tags": None,
        "pinned": False,
        "meta": None,
    }


def test_entry_with_every_field_at_its_limit_is_accepted() -> None:
    assert parse_new_entry(AT_LIMIT) == AT_LIMIT


def test_body_is_stored_as_given() -> None:
    body = '<p class="x">caf\u00e9 &amp; \U0001f4f0</p>\n  '
    assert parse_new_entry({"body": body})["body"] == body


@pytest.mark.parametrize(
    ("field", "value"),
    [
        pytest.param("body", "", id="body-empty"),
        pytest.param("body", "b" * 65537, id="body-65537"),
        pytest.param("title", "t" * 301, id="title-301"),
        pytest.param("author", "a" * 201, id="author-201"),
        pytest.param("tags", ["g"] * 21, id="tags-21"),
        pytest.param("tags", ["ok", "g" * 65], id="tag-65"),
        pytest.param("meta", _meta_of_size(MAX_META_BYTES + 1), id="meta-over-8KiB"),
    ],
)
def test_field_over_its_limit_is_named(field: str, value: object) -> None:
    entry = {"body": "x", field: value}
    assert _names(_bad_fields(entry)) == {field}


@pytest.mark.parametrize(
    ("field", "value"),
    [
        pytest.param("body", 5, id="body-number"),
        pytest.param("body", None, id="body-null"),
        pytest.param("body", ["x"], id="body-list"),
        pytest.param("title", 300, id="title-number"),
        pytest.param("author", {"name": "x"}, id="author-object"),
        pytest.param("tags", "court", id="tags-string"),
        pytest.param("tags", [1], id="tag-number"),
        pytest.param("pinned", "yes", id="pinned-string"),
        pytest.param("pinned", 1, id="pinned-number"),
        pytest.param("meta", [1, 2], id="meta-list"),
        pytest.param("meta", "x", id="meta-string"),
    ],
)
def test_field_of_the_wrong_type_is_named(field: str, value: object) -> None:
    entry = {"body": "x", field: value}
    assert _names(_bad_fields(entry)) == {field}


def test_missing_body_is_named() -> None:
    assert _names(_bad_fields({"title": "x"})) == {"body"}


def test_unknown_top_level_field_is_named_not_dropped() -> None:
    fields = _bad_fields({"body": "x", "colour": "red"})
    assert fields == {"colour": "unknown field"}


def test_every_bad_field_is_named_at_once() -> None:
    fields = _bad_fields({"body": "", "title": "t" * 301, "pinned": "no", "extra": 1})
    assert _names(fields) == {"body", "title", "pinned", "extra"}


@pytest.mark.parametrize("raw", [[], "body", 5, None], ids=["list", "string", "number", "null"])
def test_entry_that_is_not_an_object_is_invalid(raw: object) -> None:
    _bad_fields(raw)


# A correction


def test_patch_holds_only_the_fields_sent() -> None:
    assert parse_patch({"title": "SENTENCE", "pinned": False}) == {
        "title": "SENTENCE",
        "pinned": False,
    }


def test_patch_with_null_title_removes_it() -> None:
    assert parse_patch({"title": None}) == {"title": None}


@pytest.mark.parametrize("field", ["author", "tags", "meta"])
def test_patch_with_null_optional_field_is_accepted(field: str) -> None:
    assert parse_patch({field: None}) == {field: None}


def test_patch_with_null_body_is_refused() -> None:
    assert _names(_bad_fields({"body": None}, parse_patch)) == {"body"}


def test_patch_with_null_pinned_is_refused() -> None:
    assert _names(_bad_fields({"pinned": None}, parse_patch)) == {"pinned"}


def test_empty_patch_is_refused() -> None:
    _bad_fields({}, parse_patch)


def test_patch_over_a_limit_is_named() -> None:
    fields = _bad_fields({"title": "t" * 301, "body": ""}, parse_patch)
    assert _names(fields) == {"title", "body"}


def test_patch_with_an_unknown_field_is_named() -> None:
    assert _bad_fields({"seq": 4}, parse_patch) == {"seq": "unknown field"}


def test_patch_at_every_limit_is_accepted() -> None:
    assert parse_patch(AT_LIMIT) == AT_LIMIT


def test_patch_that_is_not_an_object_is_invalid() -> None:
    _bad_fields(["title"], parse_patch)
