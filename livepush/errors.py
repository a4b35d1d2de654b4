"""The exception tree: every error livepush raises, each client-facing one with its SPEC code.

LivepushError and its subclasses are answered over HTTP (app.py maps them once);
ClientMessageError is answered over a WebSocket as an `error` message; the rest
never reach a client as they are.
"""

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


class BadPosition(LivepushError):
    """An SSE resume position (`?since=` or Last-Event-ID) that is not [<epoch>:]<seq>."""

    code, status = "bad_since", 400


class ClientMessageError(Exception):
    """A client message the server cannot act on; answered with an `error` message."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class Conflict(Exception):
    """The stored entry changed under a compare-and-set: read it again and retry."""


class BadSince(ValueError):
    """A resume position that is not an integer in 0..2**53 (wire.parse_since).

    Not a LivepushError: each transport answers it its own way (a WebSocket `error`
    message, a 400 on SSE, a 422 naming `since` on history).
    """


class ConfigError(ValueError):
    """A setting has a value livepush cannot run with."""
