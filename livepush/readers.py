"""Reader tokens: JWTs, verified by PyJWT, that name the private feeds their holder may read.

A reader token (SPEC "Access") is signed with LIVEPUSH_JWT_SECRET (HS256) or by the
private half of the PEM public key in LIVEPUSH_JWT_PUBLIC_KEY (RS256 for an RSA key,
ES256 for a P-256 key). Each key is only ever used with its own algorithm, fixed here
by configuration, never taken from the token: a token whose header says HS256 is
checked against the secret alone, so an RSA public key can never be used as an HMAC
secret, and `alg: none` matches no key. `exp` is required; `nbf` and `iat` are
checked when present; `aud` and `iss` when LIVEPUSH_JWT_AUDIENCE / _ISSUER are set.
"""

from __future__ import annotations

from dataclasses import dataclass

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from livepush.errors import ConfigError, Unauthorized
from livepush.patterns import FeedPatterns

# A reader token is a few hundred bytes; never parse kilobytes of base64 from a URL.
MAX_TOKEN = 8192
MIN_SECRET = 32


@dataclass(frozen=True, slots=True)
class ReaderGrant:
    """What a verified reader token allows: the feeds it names, until `expires`."""

    feeds: FeedPatterns
    expires: float  # Unix time, the token's `exp`
    subject: str | None = None


@dataclass(frozen=True, slots=True)
class _Key:
    algorithm: str
    key: str | rsa.RSAPublicKey | ec.EllipticCurvePublicKey


class ReaderKeys:
    """The keys reader tokens may be signed with, and the claims they must carry.

    Costs one signature check per call (tens of microseconds for HS256 and RS256,
    about a hundred for ES256): once per subscription or read, never per event.
    """

    def __init__(
        self,
        secret: str | None = None,
        public_key_pem: bytes | None = None,
        *,
        audience: str | None = None,
        issuer: str | None = None,
    ) -> None:
        keys: dict[str, _Key] = {}
        if secret:
            if len(secret.encode()) < MIN_SECRET:
                # RFC 7518 3.2: an HS256 key at least as long as the hash; a shorter one
                # can be guessed offline from any one token.
                raise ConfigError(f"LIVEPUSH_JWT_SECRET must be at least {MIN_SECRET} bytes")
            keys["HS256"] = _Key("HS256", secret)
        if public_key_pem is not None:
            key = _public_key(public_key_pem)
            keys[key.algorithm] = key
        self._keys = keys
        self.audience = audience
        self.issuer = issuer

    @classmethod
    def from_files(
        cls,
        secret: str | None,
        public_key_path: str | None,
        audience: str | None,
        issuer: str | None,
    ) -> ReaderKeys:
        pem = None
        if public_key_path:
            try:
                with open(public_key_path, "rb") as file:
                    pem = file.read()
            except OSError as error:
                raise ConfigError(f"JWT public key {public_key_path}: {error.strerror}") from None
        return cls(secret, pem, audience=audience, issuer=issuer)

    @property
    def configured(self) -> bool:
        return bool(self._keys)

    @property
    def algorithms(self) -> tuple[str, ...]:
        return tuple(self._keys)

    def verify(self, token: str) -> ReaderGrant:
        """The grant of a valid reader token, or Unauthorized saying why not."""
        if not self._keys:
            raise Unauthorized("this server accepts no reader tokens (no JWT key configured)")
        if len(token) > MAX_TOKEN:
            raise Unauthorized("the token is too long")
        try:
            algorithm = jwt.get_unverified_header(token).get("alg")
        except jwt.InvalidTokenError:
            raise Unauthorized("the token is not a JWT") from None
        key = self._keys.get(algorithm) if isinstance(algorithm, str) else None
        if key is None:
            raise Unauthorized(f"reader tokens must be signed with {', '.join(self._keys)}")
        try:
            claims = jwt.decode(
                token,
                key.key,
                algorithms=[key.algorithm],
                audience=self.audience,
                issuer=self.issuer,
                options={"require": ["exp"], "verify_aud": self.audience is not None},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthorized("the token has expired") from None
        except jwt.ImmatureSignatureError:
            raise Unauthorized("the token is not valid yet") from None
        except jwt.InvalidAudienceError:
            raise Unauthorized("the token is for another audience") from None
        except jwt.InvalidIssuerError:
            raise Unauthorized("the token is from another issuer") from None
        except jwt.MissingRequiredClaimError as error:
            raise Unauthorized(f"the token has no `{error.claim}` claim") from None
        except jwt.InvalidTokenError:
            raise Unauthorized("the token's signature or claims are not valid") from None
        return _grant(claims)


def _grant(claims: dict[str, object]) -> ReaderGrant:
    feeds = claims.get("feeds")
    if not isinstance(feeds, list) or not all(isinstance(feed, str) for feed in feeds):
        raise Unauthorized("the token's `feeds` claim must be a list of feed names or patterns")
    try:
        patterns = FeedPatterns(feeds)
    except ValueError as error:
        raise Unauthorized(f"the token's `feeds` claim: {error}") from None
    expires = claims["exp"]
    assert isinstance(expires, int | float)  # PyJWT checked it is a number
    subject = claims.get("sub")
    return ReaderGrant(patterns, float(expires), subject if isinstance(subject, str) else None)


def _public_key(pem: bytes) -> _Key:
    try:
        key = load_pem_public_key(pem)
    except ValueError:
        raise ConfigError("the JWT public key is not a PEM public key") from None
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < 2048:
            raise ConfigError("the JWT RSA public key must be at least 2048 bits")
        return _Key("RS256", key)
    if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1):
        return _Key("ES256", key)
    raise ConfigError("the JWT public key must be RSA (RS256) or EC P-256 (ES256)")
