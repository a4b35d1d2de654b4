"""wire.py: entries and events encoded once, WebSocket frames, client messages parsed."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from websockets.frames import Frame, Opcode
from websockets.streams import StreamReader

from livepush.errors import BadSince, ClientMessageError
from livepush.model import EventType
from livepush.wire import (
    MAX_CLIENT_MESSAGE,
    MAX_SEQ,
    Ping,
    Subscribe,
    Unsubscribe,
    entry_template,
    event_payload,
    join_entry,
    parse_client_message,
    parse_since,
    ws_frame,
)

ENTRY_ID = "abcdefghjkmnpqrs"
FIELDS: dict[str, Any] = {
    "published_at": "2024-05-01T12:00:00.000Z",
    "updated_at": "2024-05-01T12:00:00.000Z",
    "title": "CONVICTION",
    "body": '<p>Guilty on all counts: "unanimous" \u2014 caf\u00e9 \U0001f4f0</p>\n',
    "author": None,
    "tags": ["court", "verdict"],
    "pinned": True,
    "meta": {"source": {"url": "https://example.com/?a=1&b=2"}, "n": 3},
}


def _parse_frame(data: bytes) -> Frame:
    """Parse one frame as a client does (server frames are unmasked) and demand no leftover."""
    reader = StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    parser = Frame.parse(reader.read_exact, mask=False)
    with pytest.raises(StopIteration) as done:
        next(parser)
    assert reader.at_eof(), "bytes left over after the frame"
    frame: Frame = done.value.value
    return frame


# Entries


def test_entry_template_joined_with_its_seq_equals_the_entry_json() -> None:
    parts = entry_template(ENTRY_ID, None, FIELDS)
    joined = join_entry(parts, 42)
    assert joined == orjson.dumps({"id": ENTRY_ID, "seq": 42, **FIELDS})


def test_entry_template_puts_id_and_seq_first() -> None:
    joined = join_entry(entry_template(ENTRY_ID, None, FIELDS), 7)
    assert list(orjson.loads(joined))[:2] == ["id", "seq"]


def test_entry_template_with_a_known_seq_is_the_whole_entry_json() -> None:
    parts = entry_template(ENTRY_ID, 9, FIELDS)
    assert len(parts) == 1
    assert join_entry(parts, 123) == orjson.dumps({"id": ENTRY_ID, "seq": 9, **FIELDS})


def test_entry_template_without_other_fields_is_id_and_seq() -> None:
    assert join_entry(entry_template(ENTRY_ID, None, {}), 5) == orjson.dumps(
        {"id": ENTRY_ID, "seq": 5}
    )


def test_entry_template_seq_of_many_digits_round_trips() -> None:
    joined = join_entry(entry_template(ENTRY_ID, None, FIELDS), 2**53)
    assert orjson.loads(joined)["seq"] == 2**53


# Events


def test_created_event_payload_is_the_spec_shape() -> None:
    entry = join_entry(entry_template(ENTRY_ID, None, FIELDS), 3)
    payload = event_payload(EventType.CREATED, "trial.day-1", 3, entry, ENTRY_ID)
    assert orjson.loads(payload) == {
        "type": "entry.created",
        "feed": "trial.day-1",
        "seq": 3,
        "entry": {"id": ENTRY_ID, "seq": 3, **FIELDS},
    }


def test_updated_event_payload_carries_the_new_revision_with_the_entry_seq() -> None:
    entry = join_entry(entry_template(ENTRY_ID, 3, {**FIELDS, "title": "SENTENCE"}), 8)
    payload = event_payload(EventType.UPDATED, "trial", 8, entry, ENTRY_ID)
    assert orjson.loads(payload) == {
        "type": "entry.updated",
        "feed": "trial",
        "seq": 8,
        "entry": {"id": ENTRY_ID, "seq": 3, **FIELDS, "title": "SENTENCE"},
    }


def test_deleted_event_payload_is_the_spec_shape() -> None:
    payload = event_payload(EventType.DELETED, "trial", 11, None, ENTRY_ID)
    assert orjson.loads(payload) == {
        "type": "entry.deleted",
        "feed": "trial",
        "seq": 11,
        "id": ENTRY_ID,
    }


# WebSocket frames


@pytest.mark.parametrize("size", [0, 125, 126, 65535, 65536, 200_000])
def test_ws_frame_is_one_unmasked_text_frame_carrying_the_payload(size: int) -> None:
    payload = b"x" * size
    frame = _parse_frame(ws_frame(payload))
    assert frame.opcode is Opcode.TEXT
    assert frame.fin
    assert frame.data == payload


def test_ws_frame_of_an_event_parses_back_to_the_event() -> None:
    entry = join_entry(entry_template(ENTRY_ID, None, FIELDS), 1)
    payload = event_payload(EventType.CREATED, "trial", 1, entry, ENTRY_ID)
    frame = _parse_frame(ws_frame(payload))
    assert orjson.loads(frame.data)["entry"]["body"] == FIELDS["body"]


# Client messages


def test_subscribe_message_is_parsed_with_since_and_epoch() -> None:
    message = parse_client_message('{"type":"subscribe","feed":"trial","since":4,"epoch":"Ab_-9"}')
    assert message == Subscribe("trial", 4, "Ab_-9")


def test_subscribe_message_without_since_is_from_now() -> None:
    assert parse_client_message(b'{"type":"subscribe","feed":"trial"}') == Subscribe("trial")


def test_subscribe_message_with_since_zero_is_from_the_start() -> None:
    assert parse_client_message('{"type":"subscribe","feed":"t","since":0}') == Subscribe("t", 0)


def test_unsubscribe_message_is_parsed() -> None:
    assert parse_client_message('{"type":"unsubscribe","feed":"trial"}') == Unsubscribe("trial")


def test_ping_message_is_parsed() -> None:
    assert parse_client_message('{"type":"ping"}') == Ping()


@pytest.mark.parametrize(
    ("data", "code"),
    [
        pytest.param("not json", "bad_json", id="not-json"),
        pytest.param("", "bad_json", id="empty"),
        pytest.param('{"type":"ping"', "bad_json", id="truncated"),
        pytest.param("[1, 2]", "bad_message", id="array"),
        pytest.param('"ping"', "bad_message", id="string"),
        pytest.param("null", "bad_message", id="null"),
        pytest.param('{"type":"subscribe"}', "bad_feed", id="feed-missing"),
        pytest.param('{"type":"subscribe","feed":"Trial"}', "bad_feed", id="feed-uppercase"),
        pytest.param('{"type":"subscribe","feed":"-x"}', "bad_feed", id="feed-leading-dash"),
        pytest.param('{"type":"subscribe","feed":7}', "bad_feed", id="feed-number"),
        pytest.param(
            '{"type":"subscribe","feed":"' + "a" * 129 + '"}', "bad_feed", id="feed-129-chars"
        ),
        pytest.param('{"type":"unsubscribe","feed":"a/b"}', "bad_feed", id="unsubscribe-feed"),
        pytest.param('{"type":"subscribe","feed":"t","since":-1}', "bad_since", id="negative"),
        pytest.param('{"type":"subscribe","feed":"t","since":"3"}', "bad_since", id="string"),
        pytest.param('{"type":"subscribe","feed":"t","since":true}', "bad_since", id="bool"),
        pytest.param('{"type":"subscribe","feed":"t","since":1.5}', "bad_since", id="float"),
        pytest.param('{"type":"subscribe","feed":"t","epoch":5}', "bad_epoch", id="epoch-int"),
        pytest.param('{"type":"subscribe","feed":"t","epoch":[]}', "bad_epoch", id="epoch-list"),
        pytest.param('{"type":"publish","feed":"t"}', "unknown_type", id="unknown-type"),
        pytest.param('{"feed":"t"}', "unknown_type", id="type-missing"),
    ],
)
def test_bad_client_message_raises_its_error_code(data: str, code: str) -> None:
    with pytest.raises(ClientMessageError) as raised:
        parse_client_message(data)
    assert raised.value.code == code
    assert raised.value.message


def test_feed_name_of_128_characters_is_accepted() -> None:
    feed = "a" * 128
    message = orjson.dumps({"type": "unsubscribe", "feed": feed})
    assert parse_client_message(message) == Unsubscribe(feed)


def test_client_message_over_the_limit_is_too_big() -> None:
    padding = "x" * MAX_CLIENT_MESSAGE
    with pytest.raises(ClientMessageError) as raised:
        parse_client_message(orjson.dumps({"type": "ping", "pad": padding}))
    assert raised.value.code == "too_big"


def test_client_message_at_the_limit_is_parsed() -> None:
    head = '{"type":"ping","pad":"'
    message = head + "x" * (MAX_CLIENT_MESSAGE - len(head) - 2) + '"}'
    assert len(message) == MAX_CLIENT_MESSAGE
    assert parse_client_message(message) == Ping()


def test_client_message_limit_counts_bytes_not_characters() -> None:
    # The limit is in bytes (its error says so); a text frame arrives as str, whose
    # len() counts characters: 4,000 three-byte characters are 12,000 bytes.
    message = orjson.dumps({"type": "ping", "pad": "\u20ac" * 4000}).decode()
    assert len(message.encode()) > MAX_CLIENT_MESSAGE
    with pytest.raises(ClientMessageError) as raised:
        parse_client_message(message)
    assert raised.value.code == "too_big"


# Resume positions: one rule for a message's number and a URL's or header's digits


def test_max_seq_is_javascripts_last_exact_integer_plus_one() -> None:
    assert MAX_SEQ == 2**53


@pytest.mark.parametrize("value", [0, 1, MAX_SEQ - 1, MAX_SEQ])
def test_since_from_zero_to_max_seq_is_accepted_as_a_number(value: int) -> None:
    assert parse_since(value) == value


@pytest.mark.parametrize("value", [0, 1, MAX_SEQ - 1, MAX_SEQ])
def test_since_from_zero_to_max_seq_is_accepted_as_digits(value: int) -> None:
    assert parse_since(str(value)) == value


def test_since_digits_may_have_leading_zeros() -> None:
    assert parse_since("007") == 7
    assert parse_since("0" * 100 + str(MAX_SEQ)) == MAX_SEQ


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(-1, id="negative"),
        pytest.param(MAX_SEQ + 1, id="past-max"),
        pytest.param(2**64, id="far-past-max"),
        pytest.param(True, id="true"),
        pytest.param(False, id="false"),
        pytest.param(1.0, id="float"),
        pytest.param(None, id="none"),
        pytest.param([1], id="list"),
        pytest.param("-1", id="negative-digits"),
        pytest.param("+1", id="plus-sign"),
        pytest.param(str(MAX_SEQ + 1), id="digits-past-max"),
        pytest.param("1" + "0" * 16, id="seventeen-digits"),
        pytest.param("9" * 5000, id="more-digits-than-int-reads"),
        pytest.param("", id="empty"),
        pytest.param(" 1", id="space"),
        pytest.param("1.0", id="decimal-point"),
        pytest.param("1e3", id="exponent"),
        pytest.param("0x10", id="hex"),
        pytest.param("1_000", id="underscore"),
        pytest.param("\u0661", id="arabic-indic-digit"),
        pytest.param("\u00b2", id="superscript-two"),
    ],
)
def test_since_outside_zero_to_max_seq_raises_bad_since(value: object) -> None:
    with pytest.raises(BadSince):
        parse_since(value)


def test_message_since_at_max_seq_is_accepted_and_past_it_is_bad_since() -> None:
    at_max = orjson.dumps({"type": "subscribe", "feed": "t", "since": MAX_SEQ})
    assert parse_client_message(at_max) == Subscribe("t", MAX_SEQ)
    with pytest.raises(ClientMessageError) as raised:
        parse_client_message(orjson.dumps({"type": "subscribe", "feed": "t", "since": MAX_SEQ + 1}))
    assert raised.value.code == "bad_since"
