"""Publisher tokens, Origin checks and the per-token publish rate limit."""

from __future__ import annotations

import hmac
import time

from livepush.errors import Forbidden, RateLimited, Unauthorized
from livepush.ratelimit import TokenBucket


def bearer_token(header: str | None) -> str:
    """The token of an `Authorization: Bearer <token>` header, or Unauthorized (401)."""
    if not header:
        raise Unauthorized("publishing needs Authorization: Bearer <publisher token>")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("the Authorization header must be: Bearer <publisher token>")
    return token.strip()


class Publishers:
    """Checks publisher tokens in constant time and limits each token's publish rate."""

    def __init__(self, tokens: tuple[str, ...], rate: float) -> None:
        self._tokens = tuple(token.encode() for token in tokens)
        self._rate = rate
        self._buckets: dict[bytes, TokenBucket] = {}

    def check(self, header: str | None) -> bytes:
        """The caller's token if it is a publisher's; 401 without one, 403 for a wrong one."""
        token = bearer_token(header).encode()
        # Compare with every token, so timing tells nothing about which one was close.
        matches = [hmac.compare_digest(token, known) for known in self._tokens]
        if not any(matches):
            raise Forbidden("this token may not publish")
        return token

    def is_publisher(self, token: str | None) -> bool:
        """Whether `token` is a publisher's (for receipts asked over a WebSocket)."""
        if not token:
            return False
        matches = [hmac.compare_digest(token.encode(), known) for known in self._tokens]
        return any(matches)

    def spend(self, token: bytes) -> None:
        """Take one publish from the token's bucket (burst: two seconds' worth), or 429."""
        if self._rate <= 0:
            return
        now = time.monotonic()
        bucket = self._buckets.get(token)
        if bucket is None:
            bucket = self._buckets[token] = TokenBucket(self._rate, 2 * self._rate, now)
        if not bucket.take(now):
            retry_after = max(1, round(bucket.wait() + 0.5))
            raise RateLimited("too many publishes with this token", retry_after=retry_after)


def origin_allowed(origin: str | None, allowed: tuple[str, ...]) -> bool:
    """Whether a subscription from `origin` may open: any when no allow-list is set.

    Requests without an Origin header (native apps, servers) are not browsers and
    cannot be the victims of cross-site use, so they pass.
    """
    if not allowed or origin is None:
        return True
    return origin.rstrip("/") in allowed or "*" in allowed
