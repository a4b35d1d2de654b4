"""Publisher tokens without a server: the tokens file's rules, scopes, actions, rates, reloads."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import orjson
import pytest

from livepush.auth import Access
from livepush.config import Settings
from livepush.errors import ConfigError, Forbidden, RateLimited, Unauthorized
from livepush.patterns import FeedPatterns
from livepush.tokens import Action, Publishers, environment_tokens, parse_tokens_file

SPORTS = {
    "name": "sports-desk",
    "token": "s3cret-sports-value",
    "feeds": ["sports-*", "results"],
    "actions": ["publish", "correct", "retract"],
    "rate": 20,
}


def tokens_file(*tokens: Mapping[str, object]) -> bytes:
    return orjson.dumps({"tokens": list(tokens)})


# Patterns


@pytest.mark.parametrize(
    ("pattern", "feed", "matches"),
    [
        ("sports-*", "sports-football", True),
        ("sports-*", "sports-", True),
        ("sports-*", "politics", False),
        ("sports-*", "xsports-football", False),
        ("*", "anything.at_all-1", True),
        ("results", "results", True),
        ("results", "results-2024", False),
        ("*-live", "election-live", True),
        ("a.b", "axb", False),  # `.` is a feed-name character, not a wildcard
    ],
)
def test_a_star_matches_any_run_of_feed_name_characters(
    pattern: str, feed: str, matches: bool
) -> None:
    assert FeedPatterns([pattern]).matches(feed) is matches


@pytest.mark.parametrize("pattern", ["", "Sports", "sports/*", "a b", "-x", 5])
def test_a_pattern_that_cannot_match_a_feed_name_is_refused(pattern: object) -> None:
    with pytest.raises(ValueError, match="feed pattern"):
        FeedPatterns([pattern])  # type: ignore[list-item]


def test_no_patterns_match_nothing() -> None:
    assert not FeedPatterns([]).matches("demo")


# The tokens file


def test_a_tokens_file_gives_each_token_its_scope_actions_and_rate() -> None:
    minimal = {"name": "wire", "token": "wire-token-value"}
    sports, wire = parse_tokens_file(tokens_file(SPORTS, minimal))
    assert sports.name == "sports-desk"
    assert sports.covers("sports-tennis")
    assert sports.covers("results")
    assert not sports.covers("politics")
    assert sports.rate == 20.0
    assert wire.covers("politics")  # no `feeds`: every feed
    assert wire.actions == frozenset(Action)  # no `actions`: all three
    assert wire.rate is None  # no `rate`: no limit


@pytest.mark.parametrize(
    ("document", "reason"),
    [
        (b"{not json", "not JSON"),
        (b"[]", "one object"),
        (b'{"tokens": {}}', "must be a list"),
        (tokens_file({"token": "x"}), "`name`"),
        (tokens_file({"name": "a"}), "`token`"),
        (tokens_file({"name": "a", "token": " padded "}), "`token`"),
        (tokens_file({**SPORTS, "feeds": []}), "`feeds`"),
        (tokens_file({**SPORTS, "feeds": ["Sports"]}), "feed pattern"),
        (tokens_file({**SPORTS, "actions": ["publish", "purge"]}), "`actions`"),
        (tokens_file({**SPORTS, "actions": []}), "`actions`"),
        (tokens_file({**SPORTS, "rate": 0}), "`rate`"),
        (tokens_file({**SPORTS, "rate": True}), "`rate`"),
        (tokens_file({**SPORTS, "scope": "all"}), "unknown keys"),
        (tokens_file(SPORTS, {**SPORTS, "token": "other-value"}), "two tokens are named"),
        (tokens_file(SPORTS, {**SPORTS, "name": "copy"}), "are the same"),
    ],
)
def test_a_broken_tokens_file_says_why_without_any_token_value(
    document: bytes, reason: str
) -> None:
    with pytest.raises(ConfigError, match=reason) as refused:
        parse_tokens_file(document)
    for value in ("s3cret-sports-value", "other-value", "padded"):
        assert value not in str(refused.value)


def test_environment_tokens_reach_every_feed_and_are_named_by_position() -> None:
    first, second = environment_tokens(("alpha", "beta"), 0)
    assert (first.name, second.name) == ("env-1", "env-2")
    assert first.covers("anything")
    assert first.actions == frozenset(Action)
    assert first.rate is None
    assert environment_tokens(("alpha",), 2.5)[0].rate == 2.5


# Authorizing writes


def publishers() -> Publishers:
    tokens = parse_tokens_file(
        tokens_file(
            SPORTS,
            {"name": "fixer", "token": "fixer-value", "actions": ["correct"]},
            {"name": "slow", "token": "slow-value", "rate": 1},
        )
    )
    return Publishers(tokens)


def test_a_write_names_its_token() -> None:
    token = publishers().authorize("Bearer s3cret-sports-value", Action.PUBLISH, "sports-golf")
    assert token.name == "sports-desk"


def test_a_write_outside_the_scope_is_forbidden() -> None:
    with pytest.raises(Forbidden, match="politics"):
        publishers().authorize("Bearer s3cret-sports-value", Action.PUBLISH, "politics")


def test_an_action_the_token_lacks_is_forbidden() -> None:
    with pytest.raises(Forbidden, match="retract"):
        publishers().authorize("Bearer fixer-value", Action.RETRACT, "demo")


def test_an_unknown_token_is_forbidden_and_a_missing_one_unauthorized() -> None:
    with pytest.raises(Forbidden):
        publishers().authorize("Bearer guess", Action.PUBLISH, "demo")
    with pytest.raises(Unauthorized):
        publishers().authorize(None, Action.PUBLISH, "demo")


def test_a_rated_token_is_refused_past_its_burst_and_others_never() -> None:
    found = publishers()
    slow = found.authorize("Bearer slow-value", Action.PUBLISH, "demo")
    fixer = found.authorize("Bearer fixer-value", Action.CORRECT, "demo")
    found.spend(slow)
    found.spend(slow)  # a burst of two seconds' worth
    with pytest.raises(RateLimited) as limited:
        found.spend(slow)
    assert limited.value.retry_after >= 1
    for _ in range(1000):
        found.spend(fixer)  # no rate: never refused


# Reloading


def test_a_reload_replaces_the_tokens_and_a_broken_file_keeps_them(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "tokens.json"
    path.write_bytes(tokens_file(SPORTS))
    access = Access.from_settings(Settings(tokens_file=str(path)))
    assert access.publishers.find("s3cret-sports-value") is not None

    path.write_bytes(tokens_file({"name": "wire", "token": "wire-value"}))
    assert access.reload("test")
    assert access.publishers.find("s3cret-sports-value") is None
    assert access.publishers.find("wire-value") is not None

    path.write_bytes(b'{"tokens": [{"name": "half", "token": "half-value"')
    with caplog.at_level(logging.INFO, logger="livepush"):
        assert not access.reload("test")
    assert access.publishers.find("wire-value") is not None
    assert access.publishers.find("half-value") is None
    assert "kept the 1 tokens in force" in caplog.text
    assert "not JSON" in caplog.text
    for value in ("s3cret-sports-value", "wire-value", "half-value"):
        assert value not in caplog.text  # names only, never values


def test_a_tokens_file_that_does_not_parse_at_start_up_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    path.write_text("{}")
    with pytest.raises(ConfigError, match=str(path)):
        Access.from_settings(Settings(tokens_file=str(path)))
    with pytest.raises(ConfigError, match="No such file"):
        Access.from_settings(Settings(tokens_file=str(tmp_path / "missing.json")))


def test_a_file_token_equal_to_an_environment_token_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    path.write_bytes(tokens_file({"name": "dup", "token": "shared-value"}))
    with pytest.raises(ConfigError, match="are the same"):
        Access.from_settings(Settings(publish_tokens=("shared-value",), tokens_file=str(path)))


def test_the_change_check_sees_a_rewrite(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    path.write_bytes(tokens_file(SPORTS))
    access = Access.from_settings(Settings(tokens_file=str(path)))
    access.reload_if_changed()  # nothing changed: nothing to read
    assert access.publishers.find("s3cret-sports-value") is not None
    replacement = tmp_path / "new.json"
    replacement.write_bytes(tokens_file({"name": "wire", "token": "wire-value-longer"}))
    replacement.replace(path)  # an editor's atomic save: a new inode
    access.reload_if_changed()
    assert access.publishers.find("wire-value-longer") is not None
