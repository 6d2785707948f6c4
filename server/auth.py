"""Signed, short-lived tokens (JWT, HS256 pinned, audience pinned).

A session token names exactly one session: the hub takes the session from the token, never from a
message body. A user token names a user and a role.

The tokens are JWS compact serializations (RFC 7515) of JWT claims (RFC 7519), signed and checked here with the
standard library's HMAC rather than PyJWT: PyJWT's decode cost ~150 us of CPU (most of it a per-character check of
the base64url alphabet in Python), three tokens a student in a start storm, 13% of the hub's CPU there (py-spy;
docs/performance.md). Only HS256 with our own secret is accepted, so the whole of JWS that applies is: the header
must say HS256, the signature is compared in constant time before anything of the payload is read, each segment
must be canonical unpadded base64url, and the registered claims are checked as PyJWT checks them (save that an
"iat" up to IAT_LEEWAY_S ahead is let through: PyJWT allowed none).
tests/security/test_tokens.py holds this to PyJWT both ways (each reads the other's tokens, and refuses the same
crafted ones).
"""

from __future__ import annotations

import base64
import binascii
import hmac
import secrets
import time
import uuid
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import orjson

ALGORITHM = "HS256"
ISSUER = "examhub"
SESSION_AUDIENCE = "examhub:session"
USER_AUDIENCE = "examhub:user"
REQUIRED = ("exp", "iat", "aud", "iss", "sub")
# How far in the future a token's "iat" may be: hub processes on different hosts issue and check each other's
# tokens, and their clocks differ by a little (PyJWT allowed none).
IAT_LEEWAY_S = 30


class Role(StrEnum):
    STUDENT = "student"
    PROCTOR = "proctor"
    ADMIN = "admin"


class TokenError(Exception):
    """The token is missing, malformed, forged, expired or meant for something else."""


@dataclass(frozen=True, slots=True)
class SessionClaims:
    sid: str
    user_id: uuid.UUID
    token_id: str


@dataclass(frozen=True, slots=True)
class UserClaims:
    user_id: uuid.UUID
    role: Role


def _b64encode(raw: bytes) -> bytes:
    return base64.urlsafe_b64encode(raw).rstrip(b"=")


def _b64decode(segment: bytes) -> bytes:
    """Canonical unpadded base64url only: decoding and encoding again must give the segment back, which refuses
    padding, characters outside the alphabet (b64decode's validate) and '+' or '/' (which altchars would map)."""
    try:
        raw = base64.b64decode(segment + b"=" * (-len(segment) % 4), altchars=b"-_", validate=True)
    except binascii.Error:
        raise TokenError("invalid token: a segment is not base64url") from None
    if _b64encode(raw) != segment:
        raise TokenError("invalid token: a segment is not canonical base64url")
    return raw


# The only header this verifier accepts, as every issuer of ours (PyJWT before this module, and this module) writes
# it: sorted keys, no spaces.
_HEADER = _b64encode(b'{"alg":"HS256","typ":"JWT"}')


class Auth:
    def __init__(self, secret: str) -> None:
        if len(secret) < 32:
            raise ValueError("the token secret must be at least 32 characters")
        self._key = secret.encode()

    def _encode(self, claims: dict[str, object], audience: str, ttl_s: int) -> str:
        now = int(time.time())
        body = {**claims, "iss": ISSUER, "aud": audience, "iat": now, "exp": now + ttl_s}
        signing_input = _HEADER + b"." + _b64encode(orjson.dumps(body))
        return (signing_input + b"." + _b64encode(hmac.digest(self._key, signing_input, "sha256"))).decode()

    def _decode(self, token: str, audience: str) -> dict[str, Any]:
        try:
            header, payload, signature = token.encode("ascii").split(b".")
        except (UnicodeEncodeError, ValueError):
            raise TokenError("invalid token: not three base64url segments") from None
        if header != _HEADER:
            raise TokenError(f"invalid token: the header must be {{'alg': '{ALGORITHM}', 'typ': 'JWT'}}")
        expected = hmac.digest(self._key, header + b"." + payload, "sha256")
        if not hmac.compare_digest(expected, _b64decode(signature)):
            raise TokenError("invalid token: signature verification failed")
        try:  # signed by us from here on: what follows guards against our own mistakes and other versions
            claims = orjson.loads(_b64decode(payload))
        except orjson.JSONDecodeError:
            raise TokenError("invalid token: the payload is not JSON") from None
        if not isinstance(claims, dict):
            raise TokenError("invalid token: the payload is not a JSON object")
        missing = [c for c in REQUIRED if c not in claims]
        if missing:
            raise TokenError(f'invalid token: the token is missing the "{missing[0]}" claim')
        exp, iat, aud = claims["exp"], claims["iat"], claims["aud"]
        if not _is_time(exp) or not _is_time(iat):
            raise TokenError("invalid token: exp and iat must be numbers")
        now = time.time()
        if exp <= now:
            raise TokenError("the token has expired")
        if iat > now + IAT_LEEWAY_S:
            raise TokenError("invalid token: issued in the future")
        if not isinstance(claims["sub"], str) or not isinstance(claims.get("jti", ""), str):
            raise TokenError("invalid token: sub and jti must be strings")
        if audience != aud and not (isinstance(aud, list) and audience in aud):
            raise TokenError("the token is not meant for this endpoint")
        if claims["iss"] != ISSUER:
            raise TokenError("invalid token: invalid issuer")
        return claims

    def session_token(self, sid: str, user_id: uuid.UUID, ttl_s: int) -> tuple[str, str]:
        token_id = secrets.token_urlsafe(12)
        token = self._encode({"sub": str(user_id), "sid": sid, "jti": token_id}, SESSION_AUDIENCE, ttl_s)
        return token, token_id

    def verify_session(self, token: str) -> SessionClaims:
        c = self._decode(token, SESSION_AUDIENCE)
        try:
            return SessionClaims(str(c["sid"]), uuid.UUID(str(c["sub"])), str(c["jti"]))
        except (KeyError, ValueError):
            raise TokenError("invalid token: missing or malformed claims") from None

    def user_token(self, user_id: uuid.UUID, role: Role, ttl_s: int) -> str:
        return self._encode({"sub": str(user_id), "role": role.value}, USER_AUDIENCE, ttl_s)

    def verify_user(self, token: str) -> UserClaims:
        c = self._decode(token, USER_AUDIENCE)
        try:
            return UserClaims(uuid.UUID(str(c["sub"])), Role(str(c["role"])))
        except (KeyError, ValueError):
            raise TokenError("invalid token: missing or malformed claims") from None


def _is_time(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
