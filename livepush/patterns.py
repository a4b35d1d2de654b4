"""Feed patterns: feed names in which `*` stands for any run of feed-name characters.

Tokens' scopes, private feeds and reader JWTs' `feeds` claim are all lists of these
(SPEC "Access"). A pattern is checked when it is read, so a typo in a tokens file or
a JWT is an error rather than a scope that silently matches nothing.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

# A feed name's characters (model.FEED_NAME), and `*`.
_PATTERN = re.compile(r"[a-z0-9*][a-z0-9._*-]{0,127}")
_RUN = "[a-z0-9._-]*"


class FeedPatterns:
    """A set of feed patterns, matched as one compiled regular expression.

    Costs one `fullmatch` per check, whatever the number of patterns.
    """

    __slots__ = ("_regex", "patterns")

    def __init__(self, patterns: Iterable[str]) -> None:
        self.patterns = tuple(patterns)
        for pattern in self.patterns:
            if not isinstance(pattern, str) or not _PATTERN.fullmatch(pattern):
                raise ValueError(
                    f"{pattern!r} is not a feed pattern (feed-name characters and `*`)"
                )
        alternatives = "|".join(
            _RUN.join(re.escape(part) for part in pattern.split("*")) for pattern in self.patterns
        )
        self._regex = re.compile(f"(?:{alternatives})") if self.patterns else None

    def matches(self, feed: str) -> bool:
        return self._regex is not None and self._regex.fullmatch(feed) is not None

    def __bool__(self) -> bool:
        return bool(self.patterns)

    def __repr__(self) -> str:
        return f"FeedPatterns({list(self.patterns)!r})"


EVERY_FEED = FeedPatterns(["*"])
NO_FEED = FeedPatterns([])
