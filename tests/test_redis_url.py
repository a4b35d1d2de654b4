"""LIVEPUSH_REDIS_URL: the SPEC's forms, read as redis-py reads a Redis URL."""

from __future__ import annotations

import pytest

from livepush.brokers.redis_url import Topology, parse_redis_url, redact
from livepush.config import load
from livepush.errors import ConfigError


def test_redis_url_is_one_server_with_its_db() -> None:
    target = parse_redis_url("redis://127.0.0.1:6390/2")
    assert target.topology is Topology.SINGLE
    assert target.nodes == (("127.0.0.1", 6390),)
    assert not target.tls
    assert target.connection_options() == {"db": 2}


def test_port_defaults_to_6379() -> None:
    assert parse_redis_url("redis://redis.internal").nodes == (("redis.internal", 6379),)


def test_rediss_url_carries_the_tls_files_as_redis_py_reads_them() -> None:
    target = parse_redis_url(
        "rediss://app:s%40cret@redis.internal:6380/0?ssl_ca_certs=/etc/ca.pem"
        "&ssl_certfile=/etc/client.pem&ssl_keyfile=/etc/client.key&ssl_cert_reqs=required"
        "&ssl_check_hostname=false"
    )
    assert target.tls
    assert target.connection_options() == {
        "ssl": True,
        "ssl_ca_certs": "/etc/ca.pem",
        "ssl_certfile": "/etc/client.pem",
        "ssl_keyfile": "/etc/client.key",
        "ssl_cert_reqs": "required",
        "ssl_check_hostname": False,
        "username": "app",
        "password": "s@cret",
        "db": 0,
    }


def test_sentinel_url_names_every_sentinel_the_primary_and_the_db() -> None:
    target = parse_redis_url("redis+sentinel://:pw@s1:26379,s2,[::1]:26381/mymaster/3")
    assert target.topology is Topology.SENTINEL
    assert target.nodes == (("s1", 26379), ("s2", 26379), ("::1", 26381))
    assert target.master == "mymaster"
    assert target.connection_options() == {"password": "pw", "db": 3}
    # The primary's password is not the sentinels'.
    assert target.node_options() == {}


def test_rediss_sentinel_url_uses_tls_for_sentinels_and_servers_alike() -> None:
    target = parse_redis_url(
        "rediss+sentinel://s1:26379/lp?ssl_ca_certs=/ca.pem&sentinel_password=sp"
    )
    assert target.connection_options() == {"ssl": True, "ssl_ca_certs": "/ca.pem"}
    assert target.node_options() == {"ssl": True, "ssl_ca_certs": "/ca.pem", "password": "sp"}


def test_cluster_url_names_any_number_of_nodes() -> None:
    target = parse_redis_url("rediss+cluster://u:p@n1:7000,n2:7001,n3:7002")
    assert target.topology is Topology.CLUSTER
    assert target.nodes == (("n1", 7000), ("n2", 7001), ("n3", 7002))
    assert target.connection_options() == {"ssl": True, "username": "u", "password": "p"}


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://redis:6379", "must start with one of"),
        ("redis://", "names no host"),
        ("redis://a:1,b:2", "several hosts"),
        ("redis+sentinel://s1:26379", "names the primary"),
        ("redis+cluster://n1:7000/3", "only database 0"),
        ("redis://r:6379/0?ssl_ca_cert=/ca.pem", "unknown Redis URL option 'ssl_ca_cert'"),
        ("redis://r:port", "bad host:port"),
        ("redis://r/0?socket_timeout=soon", "Invalid value for 'socket_timeout'"),
    ],
)
def test_a_bad_url_is_refused_when_the_settings_load(url: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load({"redis_url": url}, {})


def test_min_replicas_needs_redis() -> None:
    with pytest.raises(ConfigError, match="needs Redis"):
        load({}, {"LIVEPUSH_REDIS_MIN_REPLICAS": "1"})
    settings = load({}, {"LIVEPUSH_REDIS_URL": "redis://r", "LIVEPUSH_REDIS_MIN_REPLICAS": "1"})
    assert settings.redis_min_replicas == 1


def test_logs_never_show_a_password() -> None:
    assert redact("redis://u:secret@r:6379/0") == "redis://u:***@r:6379/0"
    assert redact("redis+sentinel://:secret@s1,s2/lp") == "redis+sentinel://:***@s1,s2/lp"
    assert "secret" not in redact("rediss://r/0?ssl_password=secret&sentinel_password=secret")
