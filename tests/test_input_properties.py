"""Property tests of untrusted input: entry validation and WebSocket client messages.

Whatever arrives, the answer is a value or the error the SPEC names for it, never
another exception (which would be a 500 or a dropped socket).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from livepush.errors import ClientMessageError, InvalidEntry
from livepush.schema import EDITABLE, MAX_META_BYTES, parse_new_entry, parse_patch
from livepush.transports.ws import query_params
from livepush.wire import (
    MAX_CLIENT_MESSAGE,
    MAX_SEQ,
    ClientMessage,
    Ping,
    Subscribe,
    Unsubscribe,
    parse_client_message,
)

# What orjson.loads can hand the server: integers of 64 bits (larger ones are floats).
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)

# Objects that look like entries: the editable names, some unknown ones, any values.
entry_like = st.dictionaries(
    st.sampled_from([*EDITABLE, "id", "seq", "Body", ""]), json_values, max_size=8
)

valid_entries = st.fixed_dictionaries(
    {"body": st.text(min_size=1, max_size=200)},
    optional={
        "title": st.none() | st.text(max_size=300),
        "author": st.none() | st.text(max_size=200),
        "tags": st.none() | st.lists(st.text(max_size=64), max_size=20),
        "pinned": st.booleans(),
        "meta": st.none() | st.dictionaries(st.text(max_size=10), json_values, max_size=5),
    },
)


def outcome(parse: Callable[[object], dict[str, Any]], raw: object) -> Any:
    """What `parse` returns for `raw`, or the InvalidEntry it raises."""
    try:
        return parse(raw)
    except InvalidEntry as error:
        return error


@settings(max_examples=150)
@given(st.one_of(json_values, entry_like))
def test_any_json_is_an_entry_or_invalid_naming_its_fields(raw: Any) -> None:
    fields = outcome(parse_new_entry, raw)
    if isinstance(fields, InvalidEntry):
        assert fields.fields, "an invalid entry names at least one field"
        assert all(isinstance(v, str) for v in fields.fields.values())
        return
    assert set(fields) == set(EDITABLE)
    assert isinstance(fields["body"], str)
    assert fields["body"]


@settings(max_examples=150)
@given(valid_entries)
def test_every_entry_within_the_spec_is_accepted_as_sent(raw: dict[str, Any]) -> None:
    if len(orjson.dumps(raw.get("meta"))) > MAX_META_BYTES:
        return
    fields = parse_new_entry(raw)
    assert {name: fields[name] for name in raw} == raw


@settings(max_examples=150)
@given(st.one_of(json_values, entry_like))
def test_any_json_is_a_correction_or_invalid(raw: Any) -> None:
    patch = outcome(parse_patch, raw)
    if isinstance(patch, InvalidEntry):
        assert patch.fields
        return
    assert patch
    assert set(patch) <= set(EDITABLE)
    assert patch.get("body", "x") is not None
    assert patch.get("pinned", False) is not None


# WebSocket client messages

messages = st.fixed_dictionaries(
    {"type": st.sampled_from(["subscribe", "unsubscribe", "ping", "pong", "", "SUBSCRIBE"])},
    optional={
        "feed": st.one_of(st.from_regex(r"[a-z0-9][a-z0-9._-]{0,20}", fullmatch=True), json_values),
        "since": st.one_of(st.integers(min_value=-5, max_value=MAX_SEQ + 5), json_values),
        "epoch": json_values,
        "receipts": json_values,
        "token": json_values,
    },
)

frames = st.one_of(
    st.binary(max_size=200),
    st.text(max_size=200).map(str.encode),
    json_values.map(orjson.dumps),
    messages.map(orjson.dumps),
    st.binary(min_size=MAX_CLIENT_MESSAGE - 2, max_size=MAX_CLIENT_MESSAGE + 2),
)

CLIENT_ERROR_CODES = {
    "too_big",
    "bad_json",
    "bad_message",
    "bad_feed",
    "bad_since",
    "bad_epoch",
    "unknown_type",
}


@settings(max_examples=300)
@given(frames)
def test_any_frame_is_a_client_message_or_a_named_error(data: bytes) -> None:
    try:
        message: ClientMessage | ClientMessageError = parse_client_message(data)
    except ClientMessageError as error:
        message = error
    if isinstance(message, ClientMessageError):
        assert message.code in CLIENT_ERROR_CODES
        assert message.message
        return
    assert len(data) <= MAX_CLIENT_MESSAGE
    assert isinstance(message, Subscribe | Unsubscribe | Ping)
    if isinstance(message, Subscribe):
        assert message.since is None or 0 <= message.since <= MAX_SEQ
        assert message.epoch is None or isinstance(message.epoch, str)
        assert message.token is None or isinstance(message.token, str)
        assert isinstance(message.receipts, bool)


@given(st.text(alphabet="af=&%+;2 é", max_size=30))
def test_the_query_of_a_websocket_url_reads_as_parse_qsl_reads_it(query: str) -> None:
    assert query_params(query) == dict(parse_qsl(query))
