"""flowyard-server: flowyard as a service.

``flowyard serve`` runs an authenticated, multi-tenant HTTP API (FastAPI on uvicorn, with an
OpenAPI schema at ``/openapi.json`` and interactive docs at ``/docs``) over a stack whose
storage keeps a durable task queue; ``flowyard worker`` runs more workers of that queue in
other processes; ``flowyard api-keys`` manages API keys. See ``docs/plugins/server.md``.

Python API (imported lazily):

- :func:`create_app` -- the ASGI app for a :class:`flowyard.Stack`;
- :class:`Worker` -- claims and runs queued tasks;
- :class:`KeyStore` -- creates, verifies, lists and revokes API keys;
- :class:`ServerSettings` -- the ``[server]`` settings.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

__all__ = ["create_app", "Worker", "KeyStore", "ServerSettings", "__version__"]

_LAZY = {
    "create_app": "flowyard_server.app",
    "Worker": "flowyard_server.worker",
    "KeyStore": "flowyard_server.keys",
    "ServerSettings": "flowyard_server.settings",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'flowyard_server' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
