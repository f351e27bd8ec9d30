"""What the memory store and the retriever share: settings, the chroma client, the embedder,
collection naming and the binding to a stack.
"""

from __future__ import annotations

import hashlib
import re
import threading
import uuid
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

import anyio.to_thread
from flowyard import Config, ConfigError, StorageError

from flowyard_chroma._imports import importing
from flowyard_chroma.embeddings import Embedder, make_embedder
from flowyard_chroma.settings import ChromaSettings

if TYPE_CHECKING:
    from flowyard import LLMService, Services

__all__ = ["ChromaBase", "collection_name", "KIND_KEY", "NAME_KEY", "EMBEDDER_KEY",
           "GENERATION_KEY"]

T = TypeVar("T")

KIND_KEY = "flowyard_kind"
NAME_KEY = "flowyard_name"
EMBEDDER_KEY = "flowyard_embedder"
GENERATION_KEY = "flowyard_generation"

_SLUG = re.compile(r"[^A-Za-z0-9_-]+")


def collection_name(prefix: str, name: str) -> str:
    """Return the chroma collection name for a flowyard namespace or collection ``name``.

    Chroma accepts 3-512 characters of ``[A-Za-z0-9._-]`` starting and ending with a letter or
    digit; the result is ``<prefix>_<slug>_<8 hex of sha256(name)>`` so that any name maps to
    a valid, distinct collection.

    Raises:
        ValueError: ``name`` is empty or not a string.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"namespace/collection name must be a non-empty string, got {name!r}")
    slug = _SLUG.sub("-", name).strip("-_")[:40] or "x"
    digest = hashlib.sha256(name.encode("utf-8")).hexdigest()[:8]
    return f"{prefix}_{slug}_{digest}"


class ChromaBase:
    """Chroma client, embedder and stack binding shared by the store and the retriever.

    Args:
        config: the stack configuration (``[chroma]`` table; see :mod:`flowyard_chroma.settings`).
        stack: the stack whose LLM gateway serves ``provider/model`` embeddings (can be bound
            later with :meth:`bind`).
        embedder: an embedder object to use instead of the configured one.
        **overrides: ``[chroma]`` keys given in code (``path=...``, ``embedding=...``).

    Raises:
        ConfigError: invalid ``[chroma]`` settings.
    """

    kind = "base"
    prefix = "fy"

    def __init__(self, config: Config | None = None, *, stack: Services | None = None,
                 embedder: Embedder | None = None, **overrides: Any) -> None:
        self.config = config if config is not None else (stack.config if stack else
                                                         Config.load())
        self.settings = ChromaSettings.from_config(self.config, overrides)
        self._stack = stack
        self._embedder = embedder
        self._client: Any = None
        self._client_lock = threading.Lock()
        self._write_lock = threading.Lock()

    # ------------------------------------------------------------------ wiring

    def bind(self, stack: Services) -> None:
        """Use ``stack``'s LLM gateway for ``provider/model`` embeddings. Idempotent."""
        self._stack = stack

    def _gateway(self) -> LLMService:
        if self._stack is None:
            raise ConfigError(
                f"chroma {self.kind}: provider/model embeddings "
                f"({self.settings.embedding!r}) go through a stack's LLM gateway, and this "
                "object has none: get it from a stack (stack.memory('chroma')), pass stack=, "
                "or call bind(stack) first")
        return self._stack.llm

    @property
    def embedder(self) -> Embedder:
        """The embedder (built from ``[chroma] embedding`` on first use)."""
        if self._embedder is None:
            self._embedder = make_embedder(self.settings.embedding, device=self.settings.device,
                                           batch_size=self.settings.batch_size,
                                           gateway=self._gateway)
        return self._embedder

    def client(self) -> Any:
        """Return the chroma client (persistent under ``path``, or HTTP to ``url``); blocking.

        Raises:
            StorageError: the directory cannot be created or the server cannot be reached.
        """
        if self._client is not None:
            return self._client
        # The plugin-wide lock, not only this object's: chromadb keeps one shared system per
        # path in a process-wide cache that is not thread-safe, so a memory store and a
        # retriever on the same directory creating their clients at once corrupt it
        # ("'RustBindingsAPI' object has no attribute 'bindings'").
        with self._client_lock, importing():
            if self._client is None:
                import chromadb
                from chromadb.config import Settings
                from chromadb.errors import ChromaError

                settings = Settings(anonymized_telemetry=False)
                s = self.settings
                try:
                    if s.url is not None:
                        from urllib.parse import urlparse

                        parsed = urlparse(s.url)
                        self._client = chromadb.HttpClient(
                            host=parsed.hostname or "localhost",
                            port=parsed.port or (443 if parsed.scheme == "https" else 8000),
                            ssl=parsed.scheme == "https", headers=s.headers or None,
                            settings=settings, tenant=s.tenant, database=s.database)
                    else:
                        assert s.path is not None
                        s.path.mkdir(parents=True, exist_ok=True)
                        self._client = chromadb.PersistentClient(
                            path=str(s.path), settings=settings, tenant=s.tenant,
                            database=s.database)
                except OSError as exc:
                    raise StorageError(f"chroma store {self.location}: {exc}") from exc
                except (ValueError, ChromaError) as exc:
                    raise StorageError(f"cannot open chroma store {self.location}: "
                                       f"{type(exc).__name__}: {exc}") from exc
        return self._client

    @property
    def location(self) -> str:
        """The server URL or the persistent directory."""
        return self.settings.url or str(self.settings.path)

    async def _run(self, func: Callable[..., T], *args: Any) -> T:
        return await anyio.to_thread.run_sync(func, *args)

    # ------------------------------------------------------------------ collections

    def _collection(self, name: str, create: bool = False) -> Any:
        """Return the collection of a namespace/collection ``name`` (None when absent and not
        ``create``); blocking. Checks that it was built with the same embedder.

        Raises:
            ConfigError: the collection holds vectors of another embedding model.
        """
        client = self.client()
        cname = collection_name(self.prefix, name)
        embedder_name = self.embedder.name
        if create:
            col = client.get_or_create_collection(
                cname, embedding_function=None, configuration={"hnsw": {"space": "cosine"}},
                metadata={KIND_KEY: self.kind, NAME_KEY: name, EMBEDDER_KEY: embedder_name,
                          GENERATION_KEY: uuid.uuid4().hex})
        else:
            from chromadb.errors import NotFoundError

            try:
                col = client.get_collection(cname, embedding_function=None)
            except NotFoundError:
                return None
        stored = (col.metadata or {}).get(EMBEDDER_KEY)
        if stored is not None and stored != embedder_name:
            raise ConfigError(
                f"chroma {self.kind} {name!r} at {self.location} was built with embedding "
                f"model {stored!r}, but {embedder_name!r} is configured; use another "
                f"{'namespace' if self.kind == 'memory' else 'collection'} or set "
                "[chroma] embedding back")
        return col

    def _bump_generation(self, col: Any) -> None:
        meta = {k: v for k, v in (col.metadata or {}).items() if not k.startswith("hnsw:")}
        meta[GENERATION_KEY] = uuid.uuid4().hex
        col.modify(metadata=meta)

    def _names(self) -> list[str]:
        """Return the flowyard names of this kind's collections (blocking)."""
        out = []
        for col in self.client().list_collections():
            c = col if not isinstance(col, str) else self.client().get_collection(col)
            meta: Mapping[str, Any] = c.metadata or {}
            if meta.get(KIND_KEY) == self.kind and isinstance(meta.get(NAME_KEY), str):
                out.append(str(meta[NAME_KEY]))
        return sorted(out)

    def _drop(self, name: str) -> bool:
        col = self._collection(name, create=False)
        if col is None:
            return False
        self.client().delete_collection(col.name)
        return True

    def _batches(self) -> int:
        try:
            return max(1, int(self.client().get_max_batch_size()))
        except (AttributeError, TypeError):
            return 1000
