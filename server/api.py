"""The REST edge: declare an endpoint once (path, pydantic models, roles) and get routing, validation,
authorization, JSON errors and its OpenAPI 3.1 description from that one declaration.

    api = Api()

    @api.post("/api/templates", body=TemplateIn, response=TemplateOut, roles=ADMIN, status=201)
    async def create_template(ctx: Ctx[TemplateIn, None]) -> TemplateOut: ...

Pydantic produces every JSON Schema; this module only lays them out as OpenAPI paths (no second hand-written
description to drift). Every error is `{"error": <code>, "message": <text>}` with a 4xx status; 503 when
storage is unreachable; 500 only for our own bugs (logged).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import random
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, NoReturn, TypeVar

import asyncpg
from aiohttp import web
from pydantic import BaseModel, ConfigDict, ValidationError
from pydantic.json_schema import models_json_schema
from redis.exceptions import RedisError

from server.auth import Role, TokenError, UserClaims
from server.services import SERVICES, Services
from storage.errors import StorageUnavailable

log = logging.getLogger(__name__)

PUBLIC: frozenset[Role] | None = None  # no token needed
ANY_USER: frozenset[Role] = frozenset(Role)
STAFF: frozenset[Role] = frozenset({Role.PROCTOR, Role.ADMIN})
ADMIN: frozenset[Role] = frozenset({Role.ADMIN})


async def may_watch(services: Services, claims: UserClaims, template_id: int) -> bool:
    """Admins watch every exam; a proctor the exams an admin assigned to them (their room feeds, actions, audit
    trails, and their students' sessions)."""
    if claims.role is Role.ADMIN:
        return True
    if claims.role is not Role.PROCTOR:
        return False
    found = await services.pool.fetchval(
        "SELECT 1 FROM proctor_assignments WHERE user_id = $1 AND template_id = $2", claims.user_id, template_id
    )
    return bool(found)


MAX_BIGINT = 2**63 - 1
B = TypeVar("B")
Q = TypeVar("Q")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
F = TypeVar("F", bound=Callable[..., Awaitable[Any]])


class ErrorOut(BaseModel):
    error: str
    message: str


class Strict(BaseModel):
    """Base of request bodies: unknown fields are an error, not silently dropped."""

    model_config = ConfigDict(extra="forbid")


class ApiError(web.HTTPException):
    def __init__(self, status: int, code: str, message: str, headers: Mapping[str, str] | None = None) -> None:
        self.status_code = status
        super().__init__(
            text=json.dumps({"error": code, "message": message}), content_type="application/json", headers=headers
        )


# A refused request is answered after TARPIT_S (whatever its retry-after: a flooder's is one emission interval,
# 20 ms at 50/s): a flooder with N requests in flight then gets about N refusals per second instead of as many as
# the hub can write (a held request costs a timer and a socket), and a client over its limit learns it 1 s later
# at worst. At most TARPIT_MAX are held at once; beyond that refusals are answered at once (bounded sockets).
# Each hold is drawn from [0.5, 1.5] x TARPIT_S: a flooder's connections, refused together and held alike, would
# come back together, and a hundred handshakes landing in one loop turn delay everyone else's acks by tens of ms.
TARPIT_S = 1.0
TARPIT_MAX = 2000
_held = [0]  # refusals being held right now, in this process


async def too_many(message: str, retry_after_ms: int) -> web.Response:
    """429 with Retry-After and a JSON body, held back TARPIT_S first (rate limits, repeated refused handshakes)."""
    if _held[0] < TARPIT_MAX:
        _held[0] += 1
        try:
            await asyncio.sleep(TARPIT_S * (0.5 + random.random()))
        finally:
            _held[0] -= 1
    retry_s = max(1, math.ceil(retry_after_ms / 1000))
    return web.json_response({"error": "rate_limited", "message": message, "retry_after_ms": retry_after_ms},
                             status=429, headers={"Retry-After": str(retry_s)})  # fmt: skip


def fail(status: int, code: str, message: str, headers: Mapping[str, str] | None = None) -> NoReturn:
    raise ApiError(status, code, message, headers)


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        response = await handler(request)
    except ApiError:
        raise
    except web.HTTPException as exc:
        if exc.status < 400 or exc.content_type == "application/json":
            raise
        code = exc.reason.lower().replace(" ", "_")
        headers = {k: v for k, v in exc.headers.items() if k in ("Allow", "Retry-After")}
        raise ApiError(exc.status, code, exc.reason, headers) from None
    except (StorageUnavailable, RedisError, OSError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError) as exc:
        request.app[SERVICES].api_outage.failed("%s %s: %s", request.method, request.path, exc)
        raise ApiError(503, "unavailable", "storage is unavailable; try again", {"Retry-After": "1"}) from None
    except Exception:
        log.exception("unhandled error in %s %s", request.method, request.path)
        raise ApiError(500, "internal_error", "internal error") from None
    request.app[SERVICES].api_outage.recovered()
    return response


def _first_error(exc: ValidationError, where: str) -> str:
    first = exc.errors(include_url=False)[0]
    loc = ".".join(str(p) for p in first["loc"]) or where
    return f"{loc}: {first['msg']}"


def bearer(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    if header.startswith("Bearer ") and header[7:].strip():
        return header[7:].strip()
    return None


def require_user(request: web.Request) -> UserClaims:
    token = bearer(request)
    if token is None:
        fail(401, "unauthorized", "send a token as 'Authorization: Bearer <token>'")
    try:
        return request.app[SERVICES].auth.verify_user(token)
    except TokenError as exc:
        fail(401, "unauthorized", str(exc))


@dataclass(frozen=True, slots=True)
class Ctx(Generic[B, Q]):
    request: web.Request
    services: Services
    user: UserClaims | None
    body: B
    query: Q

    def path_int(self, name: str) -> int:
        return int(self.request.match_info[name])

    def path_str(self, name: str) -> str:
        return self.request.match_info[name]

    @property
    def me(self) -> UserClaims:
        assert self.user is not None, "endpoint declared without roles"
        return self.user


@dataclass(frozen=True, slots=True)
class Endpoint:
    method: str
    path: str
    fn: Callable[[Ctx[Any, Any]], Awaitable[Any]]
    body: type[BaseModel] | None
    query: type[BaseModel] | None
    response: type[BaseModel] | None
    roles: frozenset[Role] | None
    status: int
    summary: str
    tag: str
    raw_body: str | None  # a non-JSON request body this endpoint accepts (e.g. "text/csv")


_PARAM = re.compile(r"\{(\w+)(?::((?:[^{}]|\{[^{}]*\})+))?\}")  # {name} or {name:regex}, regex may hold {m,n}


def _validate_body(raw: bytes, model: type[BaseModel]) -> BaseModel:
    if b"\\u0000" in raw:
        fail(422, "invalid_body", "strings must not contain NUL characters")
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        fail(422, "invalid_body", _first_error(exc, "body"))


def _validate_query(request: web.Request, model: type[BaseModel]) -> BaseModel:
    if any("\x00" in v or "\x00" in k for k, v in request.query.items()):
        fail(422, "invalid_query", "query parameters must not contain NUL characters")
    data: dict[str, Any] = {}
    for key in request.query:
        values = request.query.getall(key)
        field = model.model_fields.get(key)
        is_list = field is not None and "list" in str(field.annotation)
        data[key] = values if is_list else values[-1]
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        fail(422, "invalid_query", _first_error(exc, "query"))


class Api:
    def __init__(self) -> None:
        self.endpoints: list[Endpoint] = []

    def route(
        self,
        method: str,
        path: str,
        *,
        body: type[BaseModel] | None = None,
        query: type[BaseModel] | None = None,
        response: type[BaseModel] | None = None,
        roles: frozenset[Role] | None = PUBLIC,
        status: int = 200,
        summary: str = "",
        tag: str = "",
        raw_body: str | None = None,
    ) -> Callable[[F], F]:
        def register(fn: F) -> F:
            doc = summary or (fn.__doc__ or "").strip().split("\n")[0]
            tag_ = tag or path.split("/")[2]
            self.endpoints.append(Endpoint(method, path, fn, body, query, response, roles, status, doc, tag_, raw_body))
            return fn

        return register

    def get(self, path: str, **kw: Any) -> Callable[[F], F]:
        return self.route("GET", path, **kw)

    def post(self, path: str, **kw: Any) -> Callable[[F], F]:
        return self.route("POST", path, **kw)

    def put(self, path: str, **kw: Any) -> Callable[[F], F]:
        return self.route("PUT", path, **kw)

    def patch(self, path: str, **kw: Any) -> Callable[[F], F]:
        return self.route("PATCH", path, **kw)

    def delete(self, path: str, **kw: Any) -> Callable[[F], F]:
        return self.route("DELETE", path, **kw)

    # ---- serving -----------------------------------------------------------------------------------------

    def install(self, app: web.Application) -> None:
        for ep in self.endpoints:
            app.router.add_route(ep.method, ep.path, self._wrap(ep))
        spec = self.openapi()

        async def openapi(request: web.Request) -> web.Response:
            return web.json_response(spec)

        app.router.add_get("/api/openapi.json", openapi)

    def _wrap(self, ep: Endpoint) -> Handler:
        int_params = [name for name, pattern in _PARAM.findall(ep.path) if pattern == r"\d+"]

        async def handler(request: web.Request) -> web.StreamResponse:
            for name in int_params:
                if int(request.match_info[name]) > MAX_BIGINT:
                    fail(404, "not_found", f"no such {name}")
            user = require_user(request) if ep.roles is not None else None
            if user is not None and ep.roles is not None and user.role not in ep.roles:
                fail(403, "forbidden", f"this needs the role {' or '.join(sorted(r.value for r in ep.roles))}")
            body: Any = None
            if ep.body is not None:
                if request.content_type != "application/json":
                    fail(415, "unsupported_media_type", "send a JSON body with Content-Type: application/json")
                body = _validate_body(await request.read(), ep.body)
            query = _validate_query(request, ep.query) if ep.query is not None else None
            result = await ep.fn(Ctx(request, request.app[SERVICES], user, body, query))
            if isinstance(result, web.StreamResponse):
                return result
            if isinstance(result, BaseModel):
                result = result.model_dump(mode="json")
            return web.json_response(result, status=ep.status)

        return handler

    # ---- description -------------------------------------------------------------------------------------

    def openapi(self) -> dict[str, Any]:
        models: dict[type[BaseModel], None] = {ErrorOut: None}
        for ep in self.endpoints:
            for m in (ep.body, ep.response):
                if m is not None:
                    models[m] = None
        _, schemas = models_json_schema(
            [(m, "validation") for m in models], ref_template="#/components/schemas/{model}"
        )
        paths: dict[str, dict[str, Any]] = {}
        extra_defs: dict[str, Any] = {}
        for ep in self.endpoints:
            path = _PARAM.sub(lambda m: "{" + m.group(1) + "}", ep.path)
            op: dict[str, Any] = {"summary": ep.summary, "tags": [ep.tag], "operationId": ep.fn.__name__}
            params = [
                {"name": name, "in": "path", "required": True,
                 "schema": {"type": "integer", "minimum": 0, "maximum": MAX_BIGINT} if pattern == r"\d+"
                 else {"type": "string", **({"pattern": f"^{pattern}$"} if pattern else {})}}
                for name, pattern in _PARAM.findall(ep.path)
            ]  # fmt: skip
            if ep.query is not None:
                query_schema = ep.query.model_json_schema(ref_template="#/components/schemas/{model}")
                extra_defs.update(query_schema.get("$defs", {}))  # enums used by query parameters
                for name, schema in query_schema["properties"].items():
                    field = ep.query.model_fields[name]
                    params.append({"name": name, "in": "query", "required": field.is_required(), "schema": schema})
            if params:
                op["parameters"] = params
            if ep.body is not None:
                op["requestBody"] = {
                    "required": True,
                    "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{ep.body.__name__}"}}},
                }
            elif ep.raw_body is not None:
                op["requestBody"] = {"required": True, "content": {ep.raw_body: {"schema": {"type": "string"}}}}
            ok: dict[str, Any] = {"description": "OK"}
            if ep.response is not None:
                ok["content"] = {
                    "application/json": {"schema": {"$ref": f"#/components/schemas/{ep.response.__name__}"}}
                }
            error = {
                "description": "error",
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorOut"}}},
            }
            op["responses"] = {str(ep.status): ok, "4XX": error, "503": error}
            if ep.roles is not None:
                op["security"] = [{"bearer": []}]
                op["description"] = "Roles: " + ", ".join(sorted(r.value for r in ep.roles))
            paths.setdefault(path, {})[ep.method.lower()] = op
        return {
            "openapi": "3.1.0",
            "info": {"title": "examhub", "version": "1"},
            "paths": paths,
            "components": {
                "schemas": {**extra_defs, **schemas.get("$defs", {})},
                "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}},
            },
        }
