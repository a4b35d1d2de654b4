"""config.load: defaults, then LIVEPUSH_* variables, then flags; refused when unsafe."""

from __future__ import annotations

import pytest

from livepush.config import ConfigError, Settings, load


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


def test_an_unknown_ws_compression_is_refused() -> None:
    with pytest.raises(ConfigError, match="compression"):
        load(environ={"LIVEPUSH_WS_COMPRESSION": "per-socket"})
