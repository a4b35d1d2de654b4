"""Reader JWTs without a server: what verifies, and every hostile token refused with 401."""

from __future__ import annotations

import time

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from livepush.errors import ConfigError, Unauthorized
from livepush.readers import ReaderKeys
from tests.jwts import SECRET, KeyPair, hmac_with_public_key, mint, tampered, unsigned


@pytest.fixture(scope="module")
def rsa_key() -> KeyPair:
    return KeyPair.rsa()


@pytest.fixture(scope="module")
def ec_key() -> KeyPair:
    return KeyPair.ec()


def test_an_hs256_token_grants_its_feeds_until_it_expires() -> None:
    grant = ReaderKeys(SECRET).verify(mint(["members-*", "vip"], 60))
    assert grant.feeds.matches("members-only")
    assert grant.feeds.matches("vip")
    assert not grant.feeds.matches("politics")
    assert time.time() < grant.expires <= time.time() + 61
    assert grant.subject == "reader-1"


@pytest.mark.parametrize("kind", ["rsa_key", "ec_key"])
def test_rs256_and_es256_tokens_verify_with_the_pem_public_key(
    kind: str, request: pytest.FixtureRequest
) -> None:
    pair: KeyPair = request.getfixturevalue(kind)
    keys = ReaderKeys(None, pair.public_pem())
    assert keys.algorithms == (pair.algorithm,)
    assert keys.verify(pair.mint(["vip"])).feeds.matches("vip")


def test_audience_and_issuer_are_checked_when_configured() -> None:
    keys = ReaderKeys(SECRET, audience="news", issuer="https://news.example")
    good = mint(["vip"], aud="news", iss="https://news.example")
    assert keys.verify(good).feeds.matches("vip")
    with pytest.raises(Unauthorized, match="audience"):
        keys.verify(mint(["vip"], aud="sports", iss="https://news.example"))
    with pytest.raises(Unauthorized, match="issuer"):
        keys.verify(mint(["vip"], aud="news", iss="https://evil.example"))
    with pytest.raises(Unauthorized, match="aud"):
        keys.verify(mint(["vip"], iss="https://news.example"))  # no aud at all


def test_audience_and_issuer_are_not_checked_when_not_configured() -> None:
    assert ReaderKeys(SECRET).verify(mint(["vip"], aud="any", iss="any")).feeds.matches("vip")


HOSTILE = ["alg-none", "hs256-with-rsa-public-key", "expired", "not-yet-valid", "tampered"]


@pytest.mark.parametrize("attack", HOSTILE)
def test_a_hostile_token_is_refused(attack: str, rsa_key: KeyPair) -> None:
    keys = ReaderKeys(SECRET, rsa_key.public_pem(), audience="news")
    token = {
        "alg-none": lambda: unsigned(["vip"]),
        "hs256-with-rsa-public-key": lambda: hmac_with_public_key(["vip"], rsa_key.public_pem()),
        "expired": lambda: mint(["vip"], -5, aud="news"),
        "not-yet-valid": lambda: mint(["vip"], 300, aud="news", nbf=int(time.time()) + 120),
        "tampered": lambda: tampered(rsa_key.mint(["vip"], aud="news"), feeds=["*"]),
    }[attack]()
    with pytest.raises(Unauthorized):
        keys.verify(token)


def test_hs256_signed_with_the_public_key_is_refused_even_with_a_secret_configured(
    rsa_key: KeyPair,
) -> None:
    # The secret verifies HS256; the RSA key only ever verifies RS256.
    keys = ReaderKeys("another-secret-of-at-least-32-bytes", rsa_key.public_pem())
    with pytest.raises(Unauthorized, match="signature"):
        keys.verify(hmac_with_public_key(["vip"], rsa_key.public_pem()))


def test_a_token_signed_for_another_key_is_refused(rsa_key: KeyPair) -> None:
    with pytest.raises(Unauthorized):
        ReaderKeys(None, KeyPair.ec().public_pem()).verify(KeyPair.ec().mint(["vip"]))
    with pytest.raises(Unauthorized, match="signed with HS256"):
        ReaderKeys(SECRET).verify(rsa_key.mint(["vip"]))


@pytest.mark.parametrize(
    ("token", "reason"),
    [
        ("not-a-jwt", "not a JWT"),
        ("", "not a JWT"),
        ("a.b.c", "not a JWT"),
        ("x" * 9000, "too long"),
    ],
)
def test_garbage_is_refused(token: str, reason: str) -> None:
    with pytest.raises(Unauthorized, match=reason):
        ReaderKeys(SECRET).verify(token)


@pytest.mark.parametrize("feeds", ["vip", ["Vip"], [1], None, {"vip": True}])
def test_a_token_with_a_malformed_feeds_claim_is_refused(feeds: object) -> None:
    token = jwt.encode({"feeds": feeds, "exp": int(time.time()) + 60}, SECRET, "HS256")
    with pytest.raises(Unauthorized, match="feeds"):
        ReaderKeys(SECRET).verify(token)


def test_a_token_without_exp_is_refused() -> None:
    token = jwt.encode({"feeds": ["vip"]}, SECRET, "HS256")
    with pytest.raises(Unauthorized, match="`exp`"):
        ReaderKeys(SECRET).verify(token)


def test_a_short_hs256_secret_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="32 bytes"):
        ReaderKeys("short")


def test_no_key_configured_accepts_no_reader_token() -> None:
    with pytest.raises(Unauthorized, match="no JWT key"):
        ReaderKeys().verify(mint(["vip"]))


def test_an_unusable_public_key_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="PEM"):
        ReaderKeys(None, b"-----BEGIN PUBLIC KEY-----\nnope\n-----END PUBLIC KEY-----\n")
    pem = (
        ec.generate_private_key(ec.SECP384R1())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    with pytest.raises(ConfigError, match="P-256"):
        ReaderKeys(None, pem)
