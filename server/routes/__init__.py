"""REST endpoints, one module per resource, all declared on the one `api` (server/api.py).

Every module in this package is imported by `load()`; declaring an endpoint there is all it takes.
"""

import importlib
import pkgutil

from server.api import Api

api = Api()


def load() -> Api:
    """Import every route module (each registers on `api` when first imported) and return it."""
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        importlib.import_module(f"{__name__}.{info.name}")
    return api
