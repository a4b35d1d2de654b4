"""TokenBucket: a rate with a burst, refilled from the clock reading its caller passes in."""

from __future__ import annotations


class TokenBucket:
    """`rate` tokens a second, holding at most `burst`; it starts full.

    Pure: the caller passes `now` (time.monotonic() in livepush), so tests need no
    sleep. Refills lazily at each take(), so an idle bucket costs no timer.
    """

    __slots__ = ("_checked", "_tokens", "burst", "rate")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        if rate <= 0:
            raise ValueError("a token bucket's rate must be positive")
        self.rate = rate
        self.burst = burst
        self._tokens = burst
        self._checked = now

    def take(self, now: float) -> bool:
        """Take one token if there is one; refused, nothing is taken."""
        self._tokens = min(self.burst, self._tokens + (now - self._checked) * self.rate)
        self._checked = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True

    def wait(self) -> float:
        """Seconds from the last take() until a token is there (0 when one is)."""
        return max(0.0, (1 - self._tokens) / self.rate)
