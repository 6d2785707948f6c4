"""Users: guest and free-tier sign-up, login, roles, and bulk administration."""

from __future__ import annotations

import uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field

from server.api import ADMIN, ANY_USER, Ctx, Strict, fail
from server.auth import Role
from server.routes import api
from storage import pg
from storage import users as repo

Username = Annotated[str, Field(min_length=3, max_length=40, pattern=r"^[A-Za-z0-9_.-]+$")]
Password = Annotated[str, Field(min_length=8, max_length=200)]
DisplayName = Annotated[str, Field(min_length=1, max_length=80)]
Email = Annotated[str, Field(max_length=200, pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$")]
Tier = Literal["free", "enrolled"]
RoleName = Literal["student", "proctor", "admin"]


class GuestIn(Strict):
    display_name: DisplayName


class TokenOut(BaseModel):
    user_id: str
    role: str
    token: str
    expires_in_s: int


class RegisterIn(Strict):
    username: Username
    password: Password
    display_name: DisplayName
    email: Email | None = None


class LoginIn(Strict):
    username: Annotated[str, Field(min_length=1, max_length=40)]
    password: Annotated[str, Field(min_length=1, max_length=200)]


class UserOut(BaseModel):
    id: str
    username: str
    display_name: str
    email: str | None
    tier: str
    role: str
    created_at: str
    disabled: bool


class NewUserIn(Strict):
    username: Username
    password: Password | None = None
    display_name: DisplayName
    email: Email | None = None
    tier: Tier = "enrolled"
    role: RoleName = "student"


class BulkCreateIn(Strict):
    users: Annotated[list[NewUserIn], Field(min_length=1, max_length=1000)]


class RowResult(BaseModel):
    row: int
    ok: bool
    id: str | None = None
    error: str | None = None


class BulkCreateOut(BaseModel):
    created: int
    failed: int
    rows: list[RowResult]


class UserListQuery(Strict):
    role: RoleName | None = None
    tier: Tier | None = None
    limit: Annotated[int, Field(ge=1, le=500)] = 100
    offset: Annotated[int, Field(ge=0, le=10_000_000)] = 0


class UserListOut(BaseModel):
    total: int
    users: list[UserOut]


class BulkUpdateIn(Strict):
    ids: Annotated[list[uuid.UUID], Field(min_length=1, max_length=5000)]
    role: RoleName | None = None
    tier: Tier | None = None
    disabled: bool | None = None


class BulkUpdateOut(BaseModel):
    updated: int


def _token(ctx: Ctx[Any, Any], user_id: uuid.UUID, role: Role) -> TokenOut:
    ttl = ctx.services.settings.user_token_ttl_s
    return TokenOut(user_id=str(user_id), role=role.value, token=ctx.services.auth.user_token(user_id, role, ttl),
                    expires_in_s=ttl)  # fmt: skip


@api.post("/api/auth/guest", body=GuestIn, response=TokenOut, status=201, tag="auth")
async def guest_login(ctx: Ctx[GuestIn, None]) -> TokenOut:
    """A one-off free-tier student with no password (demos, practice)."""
    uid = await pg.create_guest(ctx.services.pool, ctx.body.display_name.strip() or "guest")
    return _token(ctx, uid, Role.STUDENT)


@api.post("/api/auth/register", body=RegisterIn, response=TokenOut, status=201, tag="auth")
async def register(ctx: Ctx[RegisterIn, None]) -> TokenOut:
    """Free-tier registration: a student account with a password."""
    b = ctx.body
    try:
        user = await repo.create_user(ctx.services.pool, b.username, b.password, b.display_name, email=b.email)
    except repo.UserExists as exc:
        fail(409, "conflict", str(exc))
    return _token(ctx, user.id, Role.STUDENT)


@api.post("/api/auth/login", body=LoginIn, response=TokenOut, tag="auth")
async def login(ctx: Ctx[LoginIn, None]) -> TokenOut:
    """Exchange a username and password for a user token (role inside)."""
    user = await repo.authenticate(ctx.services.pool, ctx.body.username, ctx.body.password)
    if user is None:
        fail(401, "invalid_credentials", "wrong username or password, or the account is disabled")
    out = _token(ctx, user.id, Role(user.role))
    claims_id = uuid.uuid4().hex
    await repo.record_login(ctx.services.pool, user.id, claims_id, out.expires_in_s, ctx.request.remote,
                            ctx.request.headers.get("User-Agent", ""))  # fmt: skip
    return out


@api.get("/api/users/me", response=UserOut, roles=ANY_USER)
async def me(ctx: Ctx[None, None]) -> UserOut:
    """The caller's own profile."""
    user = await repo.get_user(ctx.services.pool, ctx.me.user_id)
    if user is None:
        fail(404, "not_found", "this user no longer exists")
    return UserOut(**user.to_json())


@api.post("/api/users", body=NewUserIn, response=UserOut, roles=ADMIN, status=201)
async def create_user(ctx: Ctx[NewUserIn, None]) -> UserOut:
    """Create one user (enrolled by default) with any role."""
    b = ctx.body
    try:
        user = await repo.create_user(ctx.services.pool, b.username, b.password, b.display_name, email=b.email,
                                      tier=b.tier, role=b.role)  # fmt: skip
    except repo.UserExists as exc:
        fail(409, "conflict", str(exc))
    return UserOut(**user.to_json())


@api.post("/api/users/bulk", body=BulkCreateIn, response=BulkCreateOut, roles=ADMIN)
async def bulk_create(ctx: Ctx[BulkCreateIn, None]) -> BulkCreateOut:
    """Create up to 1,000 users; each row succeeds or fails on its own, with a per-row report."""
    rows: list[RowResult] = []
    for i, u in enumerate(ctx.body.users):
        try:
            user = await repo.create_user(ctx.services.pool, u.username, u.password, u.display_name, email=u.email,
                                          tier=u.tier, role=u.role)  # fmt: skip
            rows.append(RowResult(row=i, ok=True, id=str(user.id)))
        except repo.UserExists as exc:
            rows.append(RowResult(row=i, ok=False, error=str(exc)))
    created = sum(r.ok for r in rows)
    return BulkCreateOut(created=created, failed=len(rows) - created, rows=rows)


@api.get("/api/users", query=UserListQuery, response=UserListOut, roles=ADMIN)
async def list_users(ctx: Ctx[None, UserListQuery]) -> UserListOut:
    """List users, filtered by role and tier."""
    q = ctx.query
    users, total = await repo.list_users(ctx.services.pool, q.role, q.tier, q.limit, q.offset)
    return UserListOut(total=total, users=[UserOut(**u.to_json()) for u in users])


@api.post("/api/users/bulk-update", body=BulkUpdateIn, response=BulkUpdateOut, roles=ADMIN)
async def bulk_update(ctx: Ctx[BulkUpdateIn, None]) -> BulkUpdateOut:
    """Change role, tier or disabled for many users at once."""
    b = ctx.body
    if b.role is None and b.tier is None and b.disabled is None:
        fail(422, "invalid_body", "give at least one of role, tier, disabled")
    if ctx.me.user_id in b.ids and (b.disabled or (b.role is not None and b.role != "admin")):
        fail(409, "conflict", "you cannot disable yourself or drop your own admin role")
    n = await repo.update_users(ctx.services.pool, list(b.ids), role=b.role, tier=b.tier, disabled=b.disabled)
    return BulkUpdateOut(updated=n)
