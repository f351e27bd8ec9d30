"""Settings of the chroma plugin, read from the ``[chroma]`` table of the configuration.

Keys (all optional)::

    [chroma]
    path = "/var/lib/flowyard/chroma"   # persistent client directory (default: <data_dir>/chroma)
    url = "http://127.0.0.1:8000"       # use a chroma server over HTTP instead of ``path``
    headers = { Authorization = "Bearer ..." }   # extra HTTP headers for ``url``
    tenant = "default_tenant"
    database = "default_database"
    embedding = "minilm"      # "minilm" (bundled all-MiniLM-L6-v2), a sentence-transformers
                              # model directory, or "provider/model" (stack.llm.embed)
    device = "cpu"            # torch device for sentence-transformers models
    batch_size = 64           # texts per embedding batch
    chunk_tokens = 200        # RAG chunk size in tokenizer tokens (MiniLM reads at most 256)
    chunk_overlap = 40        # tokens shared by consecutive chunks
    rrf_k = 60                # the k constant of reciprocal rank fusion
    candidates = 50           # how many dense and BM25 candidates feed the fusion
    mode = "hybrid"           # default retrieval: "hybrid", "dense" or "bm25"
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs
from flowyard import Config, ConfigError

__all__ = ["ChromaSettings", "MODES"]

#: Retrieval modes understood by the retriever.
MODES = ("hybrid", "dense", "bm25")


def _positive_int(name: str, value: Any, *, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"[chroma] {name} must be an integer >= {minimum}, got {value!r}")
    return value


@attrs.frozen
class ChromaSettings:
    """Resolved settings (see the module docstring for the meaning of each field).

    ``path`` is None when ``url`` is set.
    """

    path: Path | None
    url: str | None = None
    headers: dict[str, str] = attrs.field(factory=dict)
    tenant: str = "default_tenant"
    database: str = "default_database"
    embedding: str = "minilm"
    device: str = "cpu"
    batch_size: int = 64
    chunk_tokens: int = 200
    chunk_overlap: int = 40
    rrf_k: int = 60
    candidates: int = 50
    mode: str = "hybrid"

    @classmethod
    def from_config(cls, config: Config, overrides: Mapping[str, Any] | None = None
                    ) -> ChromaSettings:
        """Read ``config.section("chroma")`` with ``overrides`` on top.

        Raises:
            ConfigError: a key has the wrong type or an out-of-range value, or an unknown key
                is present (the message names it).
        """
        raw: dict[str, Any] = dict(config.section("chroma"))
        raw.update(overrides or {})
        known = {f.name for f in attrs.fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ConfigError(f"[chroma] unknown key(s) {', '.join(unknown)}; known keys: "
                              f"{', '.join(sorted(known))}")
        url = raw.get("url")
        if url is not None and (not isinstance(url, str) or not url.startswith(("http://",
                                                                                 "https://"))):
            raise ConfigError(f"[chroma] url must be an http(s) URL, got {url!r}")
        path: Path | None = None
        if url is None:
            configured = raw.get("path")
            if configured is None:
                path = config.data_dir / "chroma"
            elif isinstance(configured, (str, Path)) and str(configured):
                path = Path(configured).expanduser()
            else:
                raise ConfigError(f"[chroma] path must be a directory path, got {configured!r}")
        headers = raw.get("headers", {})
        if not isinstance(headers, Mapping) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in headers.items()):
            raise ConfigError(f"[chroma] headers must be a table of strings, got {headers!r}")
        for key in ("tenant", "database", "embedding", "device", "mode"):
            if key in raw and (not isinstance(raw[key], str) or not raw[key]):
                raise ConfigError(f"[chroma] {key} must be a non-empty string, got {raw[key]!r}")
        mode = raw.get("mode", "hybrid")
        if mode not in MODES:
            raise ConfigError(f"[chroma] mode must be one of {', '.join(MODES)}, got {mode!r}")
        chunk_tokens = _positive_int("chunk_tokens", raw.get("chunk_tokens", 200), minimum=8)
        overlap = _positive_int("chunk_overlap", raw.get("chunk_overlap", 40), minimum=0)
        if overlap >= chunk_tokens:
            raise ConfigError(f"[chroma] chunk_overlap ({overlap}) must be smaller than "
                              f"chunk_tokens ({chunk_tokens})")
        return cls(
            path=path,
            url=url,
            headers=dict(headers),
            tenant=raw.get("tenant", "default_tenant"),
            database=raw.get("database", "default_database"),
            embedding=raw.get("embedding", "minilm"),
            device=raw.get("device", "cpu"),
            batch_size=_positive_int("batch_size", raw.get("batch_size", 64)),
            chunk_tokens=chunk_tokens,
            chunk_overlap=overlap,
            rrf_k=_positive_int("rrf_k", raw.get("rrf_k", 60)),
            candidates=_positive_int("candidates", raw.get("candidates", 50)),
            mode=mode,
        )
