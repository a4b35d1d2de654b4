"""history.py: the bounded ring of a feed's events and the replay-or-reset decision."""

from __future__ import annotations

from livepush.history import Lost, Replay, Reset, Ring, decide
from livepush.model import Event, EventType

EPOCH = "e1"


def _event(seq: int) -> Event:
    return Event("feed", EPOCH, seq, EventType.CREATED, b'{"seq":%d}' % seq)


def _ring(size: int, *seqs: int) -> Ring:
    ring = Ring(size)
    for seq in seqs:
        ring.append(_event(seq))
    return ring


def _seqs(events: list[Event] | None) -> list[int] | None:
    return None if events is None else [event.seq for event in events]


# Ring


def test_ring_after_returns_the_events_after_seq_up_to_head_oldest_first() -> None:
    ring = _ring(10, 1, 2, 3, 4, 5)
    assert _seqs(ring.after(2, 5)) == [3, 4, 5]


def test_ring_after_zero_returns_every_event_when_the_ring_reaches_back_to_seq_one() -> None:
    ring = _ring(10, 1, 2, 3)
    assert _seqs(ring.after(0, 3)) == [1, 2, 3]


def test_ring_after_the_head_is_empty() -> None:
    ring = _ring(10, 1, 2, 3)
    assert ring.after(3, 3) == []


def test_ring_after_keeps_only_the_newest_size_events() -> None:
    ring = _ring(3, 1, 2, 3, 4, 5, 6)
    assert len(ring) == 3
    assert ring.first_seq(6) == 4


def test_ring_after_the_seq_just_before_the_oldest_held_is_continued() -> None:
    ring = _ring(3, 1, 2, 3, 4, 5, 6)
    assert _seqs(ring.after(3, 6)) == [4, 5, 6]


def test_ring_after_a_seq_older_than_the_ring_reaches_is_none() -> None:
    ring = _ring(3, 1, 2, 3, 4, 5, 6)
    assert ring.after(2, 6) is None
    assert ring.after(0, 6) is None


def test_ring_after_with_limit_returns_at_most_limit_oldest_first() -> None:
    ring = _ring(10, 1, 2, 3, 4, 5, 6)
    assert _seqs(ring.after(1, 6, limit=2)) == [2, 3]
    assert _seqs(ring.after(4, 6, limit=10)) == [5, 6]


def test_ring_after_with_limit_zero_is_empty() -> None:
    ring = _ring(10, 1, 2, 3)
    assert ring.after(0, 3, limit=0) == []


def test_empty_ring_behind_a_head_past_zero_cannot_continue() -> None:
    ring = Ring(10)
    assert ring.after(2, 5) is None


def test_empty_ring_at_head_zero_has_nothing_to_replay() -> None:
    assert Ring(10).after(0, 0) == []


def test_ring_first_seq_when_empty_is_one_past_the_head() -> None:
    assert Ring(10).first_seq(7) == 8


def test_ring_of_size_zero_holds_nothing() -> None:
    ring = _ring(0, 1, 2, 3)
    assert len(ring) == 0
    assert ring.after(0, 3) is None


def test_ring_prepend_puts_a_read_reaching_further_back_in_front() -> None:
    ring = Ring(10)
    for seq in (8, 9, 10):
        ring.append(_event(seq))
    assert ring.prepend([_event(seq) for seq in range(3, 10)], 10) == 5  # 3..7; 8, 9 held
    assert [event.seq for event in ring.after(2, 10) or []] == list(range(3, 11))


def test_ring_prepend_into_an_empty_ring_only_takes_what_ends_at_the_head() -> None:
    ring = Ring(10)
    assert ring.prepend([_event(seq) for seq in range(1, 5)], 6) == 0  # 5 and 6 missing
    assert len(ring) == 0
    assert ring.prepend([_event(seq) for seq in range(1, 7)], 6) == 6
    assert [event.seq for event in ring.after(0, 6) or []] == [1, 2, 3, 4, 5, 6]


def test_ring_prepend_stops_at_a_hole_and_at_the_ring_size() -> None:
    ring = Ring(4)
    ring.append(_event(10))
    holed = [_event(seq) for seq in (5, 6, 8, 9)]  # 7 missing
    assert ring.prepend(holed, 10) == 2  # 8, 9: what is older than the hole stays out
    assert ring.first_seq(10) == 8
    ring = Ring(4)
    ring.append(_event(10))
    assert ring.prepend([_event(seq) for seq in range(1, 10)], 10) == 3  # room for 3
    assert [event.seq for event in ring.after(6, 10) or []] == [7, 8, 9, 10]


def test_ring_clear_forgets_every_event() -> None:
    ring = _ring(10, 1, 2, 3)
    ring.clear()
    assert len(ring) == 0
    assert ring.after(0, 3) is None


# decide


def test_decide_another_epoch_is_a_reset() -> None:
    assert decide(3, "other", EPOCH, head_seq=10, first_seq=1) == Reset("epoch")


def test_decide_another_epoch_is_a_reset_even_without_since() -> None:
    assert isinstance(decide(None, "other", EPOCH, head_seq=10, first_seq=1), Reset)


def test_decide_the_current_epoch_is_replayed() -> None:
    assert decide(3, EPOCH, EPOCH, head_seq=10, first_seq=1) == Replay(3)


def test_decide_without_since_replays_from_the_head() -> None:
    assert decide(None, None, EPOCH, head_seq=10, first_seq=5) == Replay(10)


def test_decide_since_beyond_the_head_is_a_reset() -> None:
    assert decide(11, None, EPOCH, head_seq=10, first_seq=1) == Reset("ahead")


def test_decide_since_at_the_head_is_replayed_with_nothing_to_send() -> None:
    assert decide(10, None, EPOCH, head_seq=10, first_seq=1) == Replay(10)


def test_decide_since_older_than_history_holds_is_a_reset() -> None:
    assert decide(3, None, EPOCH, head_seq=10, first_seq=5) == Reset("expired")


def test_decide_since_just_before_the_oldest_held_seq_is_replayed() -> None:
    assert decide(4, None, EPOCH, head_seq=10, first_seq=5) == Replay(4)


def test_decide_since_zero_on_a_full_history_is_replayed() -> None:
    assert decide(0, None, EPOCH, head_seq=10, first_seq=1) == Replay(0)


def test_decide_since_zero_on_a_new_feed_is_replayed() -> None:
    assert decide(0, None, EPOCH, head_seq=0, first_seq=1) == Replay(0)


def test_decide_since_beyond_the_head_of_its_own_epoch_is_lost_writes() -> None:
    assert decide(11, EPOCH, EPOCH, head_seq=10, first_seq=1) == Lost()


def test_decide_a_node_behind_its_own_head_is_lost_writes_too() -> None:
    # A node that delivered seq 12 reads a history whose head is 10 under the same epoch.
    assert isinstance(decide(12, EPOCH, EPOCH, head_seq=10, first_seq=1), Lost)
