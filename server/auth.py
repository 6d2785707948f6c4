"""Signed, short-lived tokens (JWT, HS256 pinned, audience pinned).

A session token names exactly one session: the hub takes the session from the token, never from a
message body. A user token names a user and a role.
"""

from __future__ import annotations

import secrets
import time
import uuid
from dataclasses import dataclass
from enum import StrEnum

import jwt

ALGORITHM = "HS256"
ISSUER = "examhub"
SESSION_AUDIENCE = "examhub:session"
USER_AUDIENCE = "examhub:user"


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


class Auth:
    def __init__(self, secret: str) -> None:
        if len(secret) < 32:
            raise ValueError("the token secret must be at least 32 characters")
        self._secret = secret

    def _encode(self, claims: dict[str, object], audience: str, ttl_s: int) -> str:
        now = int(time.time())
        body = {**claims, "iss": ISSUER, "aud": audience, "iat": now, "exp": now + ttl_s}
        return jwt.encode(body, self._secret, algorithm=ALGORITHM)

    def _decode(self, token: str, audience: str) -> dict[str, object]:
        try:
            claims: dict[str, object] = jwt.decode(
                token,
                self._secret,
                algorithms=[ALGORITHM],
                audience=audience,
                issuer=ISSUER,
                options={"require": ["exp", "iat", "aud", "iss", "sub"]},
            )
        except jwt.ExpiredSignatureError:
            raise TokenError("the token has expired") from None
        except jwt.InvalidAudienceError:
            raise TokenError("the token is not meant for this endpoint") from None
        except jwt.PyJWTError as exc:
            raise TokenError(f"invalid token: {exc}") from None
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
