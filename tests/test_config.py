"""config.load: defaults, then LIVEPUSH_* variables, then flags; refused when unsafe."""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path

import pytest

from livepush import cli
from livepush.config import SETTINGS, Settings, environment, load
from livepush.errors import ConfigError

README = Path(__file__).resolve().parent.parent / "README.md"


def test_defaults_without_flags_or_variables() -> None:
    settings = load({}, {})
    assert settings == Settings()
    assert settings.host == "127.0.0.1"
    assert settings.port == 8000
    assert settings.redis_url is None
    assert settings.workers == 1
    assert settings.publish_tokens == ()
    assert settings.allowed_origins == ()
    assert settings.history_size == 1000


def test_variables_override_defaults() -> None:
    settings = load(
        {},
        {
            "LIVEPUSH_PORT": "9001",
            "LIVEPUSH_REDIS_URL": "redis://127.0.0.1:6390/2",
            "LIVEPUSH_WORKERS": "3",
            "LIVEPUSH_PUBLISH_TOKENS": "alpha, beta,,gamma ",
            "LIVEPUSH_ALLOWED_ORIGINS": "https://news.example,https://m.news.example",
            "LIVEPUSH_HISTORY_SIZE": "50",
            "LIVEPUSH_PUBLISH_RATE": "2.5",
            "LIVEPUSH_DEMO": "0",
        },
    )
    assert settings.port == 9001
    assert settings.redis_url == "redis://127.0.0.1:6390/2"
    assert settings.workers == 3
    assert settings.publish_tokens == ("alpha", "beta", "gamma")
    assert settings.allowed_origins == ("https://news.example", "https://m.news.example")
    assert settings.history_size == 50
    assert settings.publish_rate == 2.5
    assert settings.demo is False


def test_empty_redis_url_variable_means_the_in_process_broker() -> None:
    assert load({}, {"LIVEPUSH_REDIS_URL": ""}).redis_url is None


def test_flags_override_variables() -> None:
    settings = load(
        {"port": 9100, "history_size": 7, "publish_tokens": ("flag-token",)},
        {
            "LIVEPUSH_PORT": "9001",
            "LIVEPUSH_HISTORY_SIZE": "50",
            "LIVEPUSH_PUBLISH_TOKENS": "env-token",
        },
    )
    assert settings.port == 9100
    assert settings.history_size == 7
    assert settings.publish_tokens == ("flag-token",)


def test_unset_flags_leave_variables_in_force() -> None:
    settings = load({"port": None, "redis_url": None}, {"LIVEPUSH_PORT": "9001"})
    assert settings.port == 9001


def test_variables_are_read_from_the_process_environment_by_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("LIVEPUSH_HISTORY_SIZE", "77")
    assert load().history_size == 77


def test_several_workers_without_redis_are_refused() -> None:
    with pytest.raises(ConfigError, match="Redis"):
        load({"workers": 2}, {})


def test_several_workers_with_redis_are_accepted() -> None:
    settings = load({"workers": 2, "redis_url": "redis://127.0.0.1:6379/0"}, {})
    assert settings.workers == 2


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.10", "::", "news.example"])
def test_non_loopback_host_without_tokens_is_refused(host: str) -> None:
    with pytest.raises(ConfigError, match="token"):
        load({"host": host}, {})


@pytest.mark.parametrize("host", ["0.0.0.0", "news.example"])
def test_non_loopback_host_with_a_token_is_accepted(host: str) -> None:
    settings = load({"host": host}, {"LIVEPUSH_PUBLISH_TOKENS": "secret"})
    assert settings.host == host


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "localhost"])
def test_loopback_host_without_tokens_is_accepted(host: str) -> None:
    assert load({"host": host}, {}).host == host


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("LIVEPUSH_PORT", "eighty"),
        ("LIVEPUSH_PORT", ""),
        ("LIVEPUSH_WORKERS", "2.5"),
        ("LIVEPUSH_HISTORY_SIZE", "1k"),
        ("LIVEPUSH_MAX_BUFFER", "0x"),
        ("LIVEPUSH_PUBLISH_RATE", "fast"),
    ],
)
def test_bad_number_in_a_variable_is_a_config_error_naming_it(variable: str, value: str) -> None:
    with pytest.raises(ConfigError, match=variable):
        load({}, {variable: value})


@pytest.mark.parametrize(
    "flags",
    [
        {"port": 0},
        {"port": 65536},
        {"workers": 0},
        {"history_size": -1},
        {"max_buffer": 10},
    ],
)
def test_out_of_range_value_is_a_config_error(flags: dict[str, int]) -> None:
    with pytest.raises(ConfigError):
        load(flags, {})


def test_settings_are_frozen() -> None:
    settings = load({}, {})
    with pytest.raises(AttributeError):
        settings.port = 1  # type: ignore[misc]


def test_ws_compression_is_shared_by_default_and_off_on_request() -> None:
    assert load(environ={}).ws_compression == "shared"
    assert load(environ={"LIVEPUSH_WS_COMPRESSION": "off"}).ws_compression == "off"


@pytest.mark.parametrize(
    "variable", ["LIVEPUSH_SUBSCRIBE_TIMEOUT", "LIVEPUSH_FIRST_REQUEST_TIMEOUT"]
)
def test_a_timeout_of_zero_seconds_is_refused_and_a_fraction_is_taken(variable: str) -> None:
    with pytest.raises(ConfigError, match="timeout must be more than 0 seconds"):
        load(environ={variable: "0"})
    settings = load(environ={variable: "0.5"})
    assert 0.5 in (settings.subscribe_timeout, settings.first_request_timeout)
    assert load(environ={}).first_request_timeout == 10.0


def test_an_unknown_ws_compression_is_refused() -> None:
    with pytest.raises(ConfigError, match="compression"):
        load(environ={"LIVEPUSH_WS_COMPRESSION": "per-socket"})


# One table: the flags, the variables and the README


def _readme_flag_cells() -> dict[str, str]:
    """The README's configuration table: each variable's flag cell."""
    cells: dict[str, str] = {}
    for line in README.read_text().splitlines():
        row = [cell.strip() for cell in line.strip().strip("|").split("|")]
        variable = re.fullmatch(r"`(LIVEPUSH_\w+)`.*", row[1]) if len(row) == 4 else None
        if variable:
            cells[variable.group(1)] = row[0]
    return cells


def test_every_settings_field_but_the_fixed_ones_has_a_variable() -> None:
    fixed = {"max_body", "generated_token"}  # the SPEC's body limit; set by `serve` itself
    assert {f.name for f in fields(Settings)} - fixed == {setting.attr for setting in SETTINGS}


def test_the_readme_configuration_table_lists_every_variable() -> None:
    assert set(_readme_flag_cells()) == {setting.variable for setting in SETTINGS}


def test_every_variable_has_its_flag_or_is_documented_as_variable_only() -> None:
    cells = _readme_flag_cells()
    for setting in SETTINGS:
        expected = "\u2014" if setting.flag is None else f"`{setting.flag}`"
        assert cells[setting.variable].startswith(expected), setting.variable


def test_every_flag_sets_its_setting_and_workers_get_the_same_from_the_environment() -> None:
    argv = ["serve", "--host", "0.0.0.0", "--port", "9100", "--redis-url", "redis://r:1/0"]
    argv += ["--workers", "2", "--publish-token", "a", "--publish-token", "b"]
    argv += ["--allowed-origin", "https://news.example", "--history-size", "5"]
    argv += ["--max-buffer", "2048", "--ping-interval", "3.5", "--publish-rate", "2"]
    argv += ["--drain-seconds", "1.5", "--ws-compression", "off", "--no-demo"]
    argv += ["--log-level", "debug", "--tokens-file", "/etc/livepush/tokens.json"]
    argv += ["--private-feed", "members-*", "--private-feed", "vip"]
    argv += ["--jwt-public-key", "/etc/livepush/jwt.pem", "--jwt-audience", "news"]
    argv += ["--jwt-issuer", "https://news.example", "--max-connections-per-address", "50"]
    argv += ["--redis-min-replicas", "1"]
    flags = vars(cli.parser().parse_args(argv))
    flags["publish_tokens"] = tuple(flags["publish_tokens"])
    flags["allowed_origins"] = tuple(flags["allowed_origins"])
    flags["private_feeds"] = tuple(flags["private_feeds"])
    from_flags = load(flags, {})
    defaults = Settings()
    flagged = [setting.attr for setting in SETTINGS if setting.flag is not None]
    unchanged = [attr for attr in flagged if getattr(from_flags, attr) == getattr(defaults, attr)]
    assert unchanged == []
    assert load({}, environment(flags)) == from_flags


def test_unset_flags_are_none_so_variables_apply() -> None:
    flags = vars(cli.parser().parse_args(["serve"]))
    assert all(flags[setting.attr] is None for setting in SETTINGS if setting.flag is not None)
