"""Fixtures of the security checks: the server tests' `client` (an aiohttp TestClient over create_app), reused
as it is, so that every check here runs against the same app the server tests use."""

from __future__ import annotations

from tests.server.conftest import client

__all__ = ["client"]
