"""Who may read and write which feed: publisher tokens, reader JWTs, private feeds, Origins.

The SPEC's "Access" rules in one place, for every transport to ask:
- a write needs a publisher token whose scope and actions cover it (tokens.py);
- a private feed (LIVEPUSH_PRIVATE_FEEDS) is read with a reader JWT naming it
  (readers.py), or with a publisher token whose scope covers it; every other feed
  is public and anonymous, and a token sent with it is ignored;
- a reader token never writes: it is no publisher token, so a write with it is 403.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import orjson
from starlette.requests import HTTPConnection

from livepush.config import Settings
from livepush.errors import ConfigError, Forbidden, Unauthorized
from livepush.patterns import FeedPatterns
from livepush.readers import ReaderKeys
from livepush.tokens import (
    Action,
    Publishers,
    PublisherToken,
    TokensFile,
    bearer_token,
    environment_tokens,
)

log = logging.getLogger("livepush.auth")
# One line per accepted write, at INFO whatever the log level (logs.py): who (the
# token's name, never its value), what, where, and the event it became.
audit_log = logging.getLogger("livepush.audit")


@dataclass(frozen=True, slots=True)
class ReadGrant:
    """Leave to read one feed, until `expires` (Unix time; None: for as long as wanted)."""

    expires: float | None = None
    reader: str | None = None  # the JWT's `sub`, or the publisher token's name


PUBLIC = ReadGrant()


class Access:
    """The node's access rules: its publisher tokens, reader keys and private feeds."""

    def __init__(
        self,
        publishers: Publishers,
        readers: ReaderKeys,
        private: FeedPatterns,
        tokens_file: TokensFile | None = None,
        environment: tuple[PublisherToken, ...] = (),
    ) -> None:
        self.publishers = publishers
        self.readers = readers
        self.private = private
        self.tokens_file = tokens_file
        self._environment = environment

    @classmethod
    def from_settings(cls, settings: Settings) -> Access:
        """The rules `settings` name; ConfigError for a tokens file or key that is unusable
        (at start-up there are no previous tokens to keep)."""
        environment = environment_tokens(settings.publish_tokens, settings.publish_rate)
        tokens_file = TokensFile(settings.tokens_file) if settings.tokens_file else None
        tokens = environment + (tokens_file.read() if tokens_file else ())
        _check_distinct(tokens)
        try:
            private = FeedPatterns(settings.private_feeds)
        except ValueError as error:
            raise ConfigError(f"LIVEPUSH_PRIVATE_FEEDS: {error}") from None
        readers = ReaderKeys.from_files(
            settings.jwt_secret,
            settings.jwt_public_key,
            settings.jwt_audience,
            settings.jwt_issuer,
        )
        return cls(Publishers(tokens), readers, private, tokens_file, environment)

    # Writing

    def writer(self, header: str | None, action: Action, feed: str) -> PublisherToken:
        """The publisher token of `Authorization` that may do `action` on `feed`, or 401/403."""
        return self.publishers.authorize(header, action, feed)

    # Reading

    def is_private(self, feed: str) -> bool:
        return self.private.matches(feed)

    def read(self, feed: str, token: str | None) -> ReadGrant:
        """Leave to read `feed` with `token` (a reader JWT or a publisher token).

        Public feeds need nothing. A private one: 401 with no token, an unknown,
        expired or badly signed one; 403 for a valid token that does not name it.
        """
        if not self.private.matches(feed):
            return PUBLIC
        if not token:
            raise Unauthorized(f"feed {feed!r} is private: send a reader token")
        publisher = self.publishers.find(token)
        if publisher is not None:
            if not publisher.covers(feed):
                raise Forbidden(f"this token may not read feed {feed!r}")
            return ReadGrant(None, publisher.name)
        grant = self.readers.verify(token)
        if not grant.feeds.matches(feed):
            raise Forbidden(f"this token may not read feed {feed!r}")
        return ReadGrant(grant.expires, grant.subject)

    def read_request(self, connection: HTTPConnection, feed: str) -> ReadGrant:
        """`read()` with the token of an HTTP request: `Authorization: Bearer`, else `?token=`."""
        if not self.private.matches(feed):
            return PUBLIC
        header = connection.headers.get("authorization")
        token = bearer_token(header) if header else connection.query_params.get("token")
        return self.read(feed, token)

    def sees_receipts(self, feed: str, token: str | None) -> bool:
        """Receipts (subscriber counts) are the newsroom's: a publisher token covering `feed`."""
        publisher = self.publishers.find(token)
        return publisher is not None and publisher.covers(feed)

    # Reloading the tokens file

    def reload(self, why: str) -> bool:
        """Read the tokens file again; a file that does not parse keeps the tokens in force.

        Returns whether the tokens changed. Logs the names, never the values.
        """
        if self.tokens_file is None:
            return False
        try:
            tokens = self._environment + self.tokens_file.read()
            _check_distinct(tokens)
        except ConfigError as error:
            log.warning(
                "%s: kept the %d tokens in force: %s", why, len(self.publishers.tokens), error
            )
            return False
        self.publishers.replace(tokens)
        log.info(
            "%s: tokens file read, %d tokens in force: %s",
            why,
            len(tokens),
            ", ".join(token.name for token in tokens),
        )
        return True

    def reload_if_changed(self) -> None:
        if self.tokens_file is not None and self.tokens_file.changed():
            self.reload("tokens file changed")


def audit(token: PublisherToken, action: Action, feed: str, entry_id: str, seq: int) -> None:
    """Log an accepted write as one JSON object: token name, action, feed, entry id, seq."""
    if audit_log.isEnabledFor(logging.INFO):
        line = {"token": token.name, "action": action.value, "feed": feed}
        audit_log.info("%s", orjson.dumps({**line, "entry": entry_id, "seq": seq}).decode())


def _check_distinct(tokens: tuple[PublisherToken, ...]) -> None:
    """No two tokens (from the environment and the file) share a name or a value."""
    seen: dict[bytes, str] = {}
    names: set[str] = set()
    for token in tokens:
        if token.name in names:
            raise ConfigError(f"two tokens are named {token.name!r}")
        names.add(token.name)
        if token.digest in seen:
            raise ConfigError(f"tokens {seen[token.digest]!r} and {token.name!r} are the same")
        seen[token.digest] = token.name


def origin_allowed(origin: str | None, allowed: tuple[str, ...]) -> bool:
    """Whether a subscription from `origin` may open: any when no allow-list is set.

    Requests without an Origin header (native apps, servers) are not browsers and
    cannot be the victims of cross-site use, so they pass.
    """
    if not allowed or origin is None:
        return True
    return origin.rstrip("/") in allowed or "*" in allowed
