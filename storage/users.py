"""Users and passwords in PostgreSQL. Passwords are hashed with scrypt (stdlib), never stored."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from storage import pg

_N, _R, _P = 2**14, 8, 1


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, maxmem=64 * 1024 * 1024, dklen=32)


async def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    digest = await asyncio.to_thread(_scrypt, password, salt, _N, _R, _P)
    b64 = base64.b64encode
    return f"scrypt${_N}${_R}${_P}${b64(salt).decode()}${b64(digest).decode()}"


async def check_password(password: str, stored: str | None) -> bool:
    if not stored:
        await asyncio.to_thread(_scrypt, password, b"x" * 16, _N, _R, _P)  # same cost: no timing oracle
        return False
    _, n, r, p, salt, digest = stored.split("$")
    got = await asyncio.to_thread(_scrypt, password, base64.b64decode(salt), int(n), int(r), int(p))
    return hmac.compare_digest(got, base64.b64decode(digest))


@dataclass(frozen=True, slots=True)
class User:
    id: uuid.UUID
    username: str
    display_name: str
    email: str | None
    tier: str
    role: str
    created_at: datetime
    disabled: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "id": str(self.id), "username": self.username, "display_name": self.display_name,
            "email": self.email, "tier": self.tier, "role": self.role,
            "created_at": self.created_at.isoformat(), "disabled": self.disabled,
        }  # fmt: skip


_COLUMNS = "id, username, display_name, email, tier, role, created_at, disabled_at IS NOT NULL AS disabled"


def _user(row: Any) -> User:
    return User(**dict(row))


class UserExists(Exception):
    pass


async def create_user(
    conn: pg.Pool | asyncpg.Connection,
    username: str,
    password: str | None,
    display_name: str,
    *,
    email: str | None = None,
    tier: str = "free",
    role: str = "student",
) -> User:
    hashed = await hash_password(password) if password else None
    try:
        row = await conn.fetchrow(
            f"""INSERT INTO users (username, display_name, email, tier, role, password_hash)
                VALUES ($1, $2, $3, $4, $5, $6) RETURNING {_COLUMNS}""",
            username, display_name, email, tier, role, hashed,
        )  # fmt: skip
    except asyncpg.UniqueViolationError as exc:
        raise UserExists(f"{exc.constraint_name.split('_')[1] if exc.constraint_name else 'user'} is taken") from None
    return _user(row)


async def authenticate(pool: pg.Pool, username: str, password: str) -> User | None:
    row = await pool.fetchrow(f"SELECT {_COLUMNS}, password_hash FROM users WHERE username = $1", username)
    stored = row["password_hash"] if row else None
    ok = await check_password(password, stored)
    if row is None or not ok or row["disabled"]:
        return None
    fields = dict(row)
    del fields["password_hash"]
    return _user(fields)


async def record_login(
    pool: pg.Pool, user_id: uuid.UUID, token_id: str, ttl_s: int, ip: str | None, agent: str
) -> None:
    await pool.execute(
        """INSERT INTO login_sessions (user_id, token_id, expires_at, ip, user_agent)
           VALUES ($1, $2, now() + make_interval(secs => $3), $4::inet, $5)""",
        user_id, token_id, ttl_s, ip, agent[:300],
    )  # fmt: skip


async def get_user(pool: pg.Pool, user_id: uuid.UUID) -> User | None:
    row = await pool.fetchrow(f"SELECT {_COLUMNS} FROM users WHERE id = $1", user_id)
    return _user(row) if row else None


async def list_users(
    pool: pg.Pool, role: str | None, tier: str | None, limit: int, offset: int
) -> tuple[list[User], int]:
    where = "WHERE ($1::text IS NULL OR role = $1) AND ($2::text IS NULL OR tier = $2)"
    rows = await pool.fetch(
        f"SELECT {_COLUMNS} FROM users {where} ORDER BY created_at, id LIMIT $3 OFFSET $4", role, tier, limit, offset
    )
    total = await pool.fetchval(f"SELECT count(*) FROM users {where}", role, tier)
    return [_user(r) for r in rows], int(total)


async def update_users(
    pool: pg.Pool, ids: list[uuid.UUID], *, role: str | None, tier: str | None, disabled: bool | None
) -> int:
    status = await pool.execute(
        """UPDATE users SET role = coalesce($2, role), tier = coalesce($3, tier),
                  disabled_at = CASE WHEN $4::boolean IS NULL THEN disabled_at
                                     WHEN $4 THEN coalesce(disabled_at, now()) ELSE NULL END
            WHERE id = ANY($1::uuid[])""",
        ids, role, tier, disabled,
    )  # fmt: skip
    return int(status.split()[-1])
