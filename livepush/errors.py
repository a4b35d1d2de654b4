"""The exception tree, each error carrying its SPEC code and HTTP status."""

from __future__ import annotations


class LivepushError(Exception):
    """Base of every error that reaches a client; `code` and `status` come from the SPEC."""

    code = "internal_error"
    status = 500

    def __init__(self, message: str, *, fields: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.fields = fields or {}


class BadJSON(LivepushError):
    code, status = "bad_json", 400


class Unauthorized(LivepushError):
    code, status = "unauthorized", 401


class Forbidden(LivepushError):
    code, status = "forbidden", 403


class NotFound(LivepushError):
    code, status = "not_found", 404


class TooLarge(LivepushError):
    code, status = "too_large", 413


class UnsupportedMediaType(LivepushError):
    code, status = "unsupported_media_type", 415


class InvalidEntry(LivepushError):
    code, status = "invalid", 422


class RateLimited(LivepushError):
    code, status = "rate_limited", 429

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class BrokerUnavailable(LivepushError):
    code, status = "broker_unavailable", 503


class Conflict(Exception):
    """The stored entry changed under a compare-and-set: read it again and retry."""


class BadSince(ValueError):
    """A resume position that is not an integer in 0..2**53 (wire.parse_since).

    Not a LivepushError: each transport answers it its own way (a WebSocket `error`
    message, a 400 on SSE, a 422 naming `since` on history).
    """
