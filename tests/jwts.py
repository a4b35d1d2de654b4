"""Reader tokens for tests: keys, well-made JWTs and hostile ones.

Minting is PyJWT's; the hostile tokens that PyJWT refuses to make (an HMAC signed
with an RSA public key) are put together by hand here, as an attacker would.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
import orjson
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

SECRET = "reader-secret-for-tests-only-0123456789"


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass(frozen=True)
class KeyPair:
    algorithm: str
    private: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey

    @classmethod
    def rsa(cls) -> KeyPair:
        return cls("RS256", rsa.generate_private_key(public_exponent=65537, key_size=2048))

    @classmethod
    def ec(cls) -> KeyPair:
        return cls("ES256", ec.generate_private_key(ec.SECP256R1()))

    def public_pem(self) -> bytes:
        return self.private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def write_public(self, directory: Path) -> Path:
        path = directory / f"{self.algorithm.lower()}.pem"
        path.write_bytes(self.public_pem())
        return path

    def mint(self, feeds: list[str], seconds: float = 300, **claims: Any) -> str:
        return jwt.encode(claims_for(feeds, seconds, **claims), self.private, self.algorithm)


def claims_for(feeds: list[str], seconds: float, **claims: Any) -> dict[str, Any]:
    return {"feeds": feeds, "exp": int(time.time() + seconds), "sub": "reader-1", **claims}


def mint(feeds: list[str], seconds: float = 300, secret: str = SECRET, **claims: Any) -> str:
    """An HS256 reader token for `feeds`, expiring in `seconds`."""
    return jwt.encode(claims_for(feeds, seconds, **claims), secret, "HS256")


def unsigned(feeds: list[str]) -> str:
    """`alg: none`: no signature at all."""
    header = b64(orjson.dumps({"alg": "none", "typ": "JWT"}))
    return f"{header}.{b64(orjson.dumps(claims_for(feeds, 300)))}."


def hmac_with_public_key(feeds: list[str], public_pem: bytes) -> str:
    """HS256 signed with the RS256 public key as the secret (algorithm confusion)."""
    header = b64(orjson.dumps({"alg": "HS256", "typ": "JWT"}))
    payload = b64(orjson.dumps(claims_for(feeds, 300)))
    signing_input = f"{header}.{payload}".encode()
    signature = hmac.new(public_pem, signing_input, hashlib.sha256).digest()
    return f"{header}.{payload}.{b64(signature)}"


def tampered(token: str, **changes: Any) -> str:
    """`token` with its payload changed and its signature kept."""
    header, payload, signature = token.split(".")
    claims = orjson.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return f"{header}.{b64(orjson.dumps({**claims, **changes}))}.{signature}"
