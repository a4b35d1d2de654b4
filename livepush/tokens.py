"""Publisher tokens: named, scoped and optionally rate-limited, found in constant time.

Two sources (SPEC "Access"): LIVEPUSH_PUBLISH_TOKENS, tokens that may write to every
feed, and LIVEPUSH_TOKENS_FILE, a JSON file of named tokens, each with the feeds it
may write (patterns), its actions and an optional rate. The file is read again when
it changes and on SIGHUP (the runtime asks); a file that does not parse keeps the
tokens in force. Token values never leave this module: every message and log line
names a token by its `name`, and only a SHA-256 digest of each value is kept.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import time
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import orjson

from livepush.errors import ConfigError, Forbidden, RateLimited, Unauthorized
from livepush.patterns import EVERY_FEED, FeedPatterns
from livepush.ratelimit import TokenBucket


class Action(StrEnum):
    """What a write does: POST publishes, PATCH corrects, DELETE retracts."""

    PUBLISH = "publish"
    CORRECT = "correct"
    RETRACT = "retract"


ALL_ACTIONS = frozenset(Action)


def digest(value: str) -> bytes:
    """The form a token is kept and compared in: equal lengths, so compare_digest
    tells nothing about which token a guess was close to, not even its length."""
    return hashlib.sha256(value.encode("utf-8", "surrogatepass")).digest()


@dataclass(frozen=True, slots=True)
class PublisherToken:
    """One publisher token: its name (for logs), scope, actions and rate."""

    name: str
    digest: bytes = field(repr=False)
    feeds: FeedPatterns = EVERY_FEED
    actions: frozenset[Action] = ALL_ACTIONS
    rate: float | None = None  # writes per second; None: no limit

    def covers(self, feed: str) -> bool:
        """Whether `feed` is in this token's scope (it may read it, and see receipts)."""
        return self.feeds.matches(feed)


def environment_tokens(values: tuple[str, ...], rate: float) -> tuple[PublisherToken, ...]:
    """LIVEPUSH_PUBLISH_TOKENS: every feed, every action; named `env-1`, `env-2`, ...
    in their order (logs must name them without showing them); `rate` 0: no limit."""
    return tuple(
        PublisherToken(f"env-{number}", digest(value), rate=rate if rate > 0 else None)
        for number, value in enumerate(values, 1)
    )


_TOKEN_KEYS = {"name", "token", "feeds", "actions", "rate"}
MAX_NAME = 100


def parse_tokens_file(text: bytes | str) -> tuple[PublisherToken, ...]:
    """The tokens of a tokens file, or ConfigError saying what is wrong (never a value).

    `{"tokens": [{"name", "token", "feeds"?, "actions"?, "rate"?}, ...]}`: names and
    values unique, `feeds` patterns (absent: every feed), `actions` a non-empty subset
    of publish/correct/retract (absent: all), `rate` a positive number (absent: none).
    """
    try:
        document = orjson.loads(text)
    except orjson.JSONDecodeError as error:
        # orjson's message gives the position only, never the text around it.
        raise ConfigError(f"not JSON: {error}") from None
    if not isinstance(document, dict) or set(document) != {"tokens"}:
        raise ConfigError('the file must be one object: {"tokens": [...]}')
    items = document["tokens"]
    if not isinstance(items, list):
        raise ConfigError('"tokens" must be a list')
    tokens = tuple(_parse_token(number, item) for number, item in enumerate(items, 1))
    names: set[str] = set()
    digests: dict[bytes, str] = {}
    for token in tokens:
        if token.name in names:
            raise ConfigError(f"two tokens are named {token.name!r}")
        names.add(token.name)
        if token.digest in digests:
            raise ConfigError(f"tokens {digests[token.digest]!r} and {token.name!r} are the same")
        digests[token.digest] = token.name
    return tokens


def _parse_token(number: int, item: Any) -> PublisherToken:
    where = f"token {number}"
    if not isinstance(item, dict):
        raise ConfigError(f"{where}: must be an object")
    name = item.get("name")
    if not isinstance(name, str) or not 0 < len(name) <= MAX_NAME or not name.isprintable():
        raise ConfigError(f"{where}: `name` must be 1..{MAX_NAME} printable characters")
    where = f"token {name!r}"
    unknown = set(item) - _TOKEN_KEYS
    if unknown:
        raise ConfigError(f"{where}: unknown keys {sorted(unknown)}")
    value = item.get("token")
    if not isinstance(value, str) or not value.strip() or value != value.strip():
        raise ConfigError(f"{where}: `token` must be a non-empty string without spaces around it")
    feeds = EVERY_FEED
    if "feeds" in item:
        if not isinstance(item["feeds"], list) or not item["feeds"]:
            raise ConfigError(f"{where}: `feeds` must be a non-empty list of feed patterns")
        try:
            feeds = FeedPatterns(item["feeds"])
        except ValueError as error:
            raise ConfigError(f"{where}: {error}") from None
    actions = ALL_ACTIONS
    if "actions" in item:
        raw = item["actions"]
        if not isinstance(raw, list) or not raw or not set(raw) <= set(ALL_ACTIONS):
            raise ConfigError(
                f"{where}: `actions` must be a non-empty list of publish, correct, retract"
            )
        actions = frozenset(Action(action) for action in raw)
    rate = item.get("rate")
    if rate is not None and (
        isinstance(rate, bool) or not isinstance(rate, int | float) or not rate > 0
    ):
        raise ConfigError(f"{where}: `rate` must be a positive number of writes per second")
    return PublisherToken(
        name, digest(value), feeds, actions, None if rate is None else float(rate)
    )


class TokensFile:
    """The tokens file on disk, and whether it changed since it was last read.

    A change is seen by its stat (inode, size, modification time): a cheap `os.stat`
    each check, and an editor's atomic replace (a new inode) counts too.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._seen: tuple[int, int, int] | None = None

    def _stamp(self) -> tuple[int, int, int] | None:
        try:
            stat = os.stat(self.path)
        except OSError:
            return None
        return (stat.st_ino, stat.st_size, stat.st_mtime_ns)

    def changed(self) -> bool:
        return self._stamp() != self._seen

    def read(self) -> tuple[PublisherToken, ...]:
        """Parse the file now; ConfigError names the file and the reason."""
        self._seen = self._stamp()
        try:
            with open(self.path, "rb") as file:
                text = file.read()
        except OSError as error:
            raise ConfigError(f"tokens file {self.path}: {error.strerror}") from None
        try:
            return parse_tokens_file(text)
        except ConfigError as error:
            raise ConfigError(f"tokens file {self.path}: {error}") from None


class Publishers:
    """The publisher tokens in force: who a bearer is, what they may write, how fast.

    Each lookup compares the presented token's digest with every known token's
    (hmac.compare_digest, no early exit), so its timing tells nothing about which
    token was close. Buckets for rated tokens are made at their first write.
    """

    def __init__(self, tokens: tuple[PublisherToken, ...]) -> None:
        self.tokens = tokens
        self._buckets: dict[tuple[str, float], TokenBucket] = {}

    def replace(self, tokens: tuple[PublisherToken, ...]) -> None:
        """Put another set of tokens in force (a reload); a token whose name and rate
        stay keeps its bucket."""
        self.tokens = tokens
        kept = {(token.name, token.rate) for token in tokens}
        self._buckets = {key: bucket for key, bucket in self._buckets.items() if key in kept}

    def find(self, value: str | None) -> PublisherToken | None:
        """The publisher token `value` is, if it is one."""
        if not value:
            return None
        presented = digest(value)
        found = None
        for token in self.tokens:
            if hmac.compare_digest(presented, token.digest):
                found = token
        return found

    def authorize(self, header: str | None, action: Action, feed: str) -> PublisherToken:
        """The token of an `Authorization: Bearer` header that may do `action` on `feed`:
        401 without a token, 403 for one that is not a publisher's or not for this."""
        token = self.find(bearer_token(header))
        if token is None:
            raise Forbidden("this token may not publish")
        if not token.covers(feed):
            raise Forbidden(f"this token may not write to feed {feed!r}")
        if action not in token.actions:
            raise Forbidden(f"this token may not {action.value}")
        return token

    def spend(self, token: PublisherToken) -> None:
        """Take one write from a rated token's bucket (burst: two seconds' worth), or 429."""
        if token.rate is None:
            return
        now = time.monotonic()
        key = (token.name, token.rate)
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = TokenBucket(token.rate, max(1.0, 2 * token.rate), now)
        if not bucket.take(now):
            retry_after = max(1, round(bucket.wait() + 0.5))
            raise RateLimited("too many writes with this token", retry_after=retry_after)


def bearer_token(header: str | None) -> str:
    """The token of an `Authorization: Bearer <token>` header, or Unauthorized (401)."""
    if not header:
        raise Unauthorized("this needs Authorization: Bearer <token>")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("the Authorization header must be: Bearer <token>")
    return token.strip()
