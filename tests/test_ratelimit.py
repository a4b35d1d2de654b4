"""TokenBucket: a rate with a burst, on a clock the test moves by hand."""

from __future__ import annotations

import pytest

from livepush.ratelimit import TokenBucket

RATE, BURST = 20.0, 40.0


def _taken(bucket: TokenBucket, count: int, now: float) -> int:
    return sum(bucket.take(now) for _ in range(count))


def test_a_new_bucket_gives_its_whole_burst_at_once_and_not_one_more() -> None:
    bucket = TokenBucket(RATE, BURST, now=100.0)
    assert _taken(bucket, int(BURST), 100.0) == BURST
    assert not bucket.take(100.0)


def test_a_refused_take_takes_nothing() -> None:
    bucket = TokenBucket(RATE, BURST, now=0.0)
    _taken(bucket, int(BURST), 0.0)
    for _ in range(1000):
        assert not bucket.take(0.0)
    assert bucket.take(1 / RATE)  # one token's worth later, exactly one is there


def test_an_empty_bucket_refills_at_the_rate() -> None:
    bucket = TokenBucket(RATE, BURST, now=0.0)
    _taken(bucket, int(BURST), 0.0)
    assert not bucket.take(0.9 / RATE)
    assert bucket.take(1.0 / RATE)
    assert _taken(bucket, 100, 1.0 / RATE + 1.0) == RATE  # one second: RATE more


def test_an_idle_bucket_holds_no_more_than_its_burst() -> None:
    bucket = TokenBucket(RATE, BURST, now=0.0)
    _taken(bucket, int(BURST), 0.0)
    assert _taken(bucket, 1000, 3600.0) == BURST


def test_a_steady_caller_at_the_rate_is_never_refused() -> None:
    bucket = TokenBucket(RATE, BURST, now=0.0)
    assert all(bucket.take(i / RATE) for i in range(10_000))


def test_wait_is_the_time_until_the_next_token() -> None:
    bucket = TokenBucket(RATE, BURST, now=0.0)
    assert bucket.wait() == 0.0
    _taken(bucket, int(BURST), 0.0)
    assert bucket.wait() == pytest.approx(1 / RATE)
    assert not bucket.take(0.25 / RATE)
    assert bucket.wait() == pytest.approx(0.75 / RATE)


def test_a_bucket_without_a_rate_is_refused() -> None:
    with pytest.raises(ValueError, match="rate"):
        TokenBucket(0.0, BURST, now=0.0)
