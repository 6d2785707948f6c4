"""REST endpoints, one module per resource, all declared on the one `api` (server/api.py)."""

from server.api import Api

api = Api()


def load() -> Api:
    """Import every route module (each registers on `api`) and return it."""
    from server.routes import sessions, templates, users  # noqa: F401

    return api
