"""Lazy imports of the plugin's heavy libraries, one thread at a time.

numpy, chromadb, bm25s and sentence-transformers load in worker threads on first use (so that
importing the plugin and building a stack stay fast). Python's per-module import locks do not
make that safe: when two threads import intertwined packages at once (``memory.add`` loading
chromadb while ``rag.index`` loads numpy for bm25s), the import system's deadlock detection
hands one thread a partially initialised module and it fails with "cannot import name ...
from partially initialized module 'numpy._typing'". Every heavy import of this plugin goes
under :func:`importing` (``with importing(): import numpy as np``), which holds one
process-wide lock around the import statements; once the modules are in ``sys.modules`` the
statements cost a dictionary lookup and the lock an uncontended acquire. The same lock also
serialises the creation of chroma clients, whose process-wide cache of systems per path is not
thread-safe either.
"""

from __future__ import annotations

import contextlib
import importlib
import threading
from collections.abc import Iterator
from types import ModuleType

__all__ = ["heavy", "importing"]

_IMPORT_LOCK = threading.RLock()


def heavy(name: str) -> ModuleType:
    """Import the module ``name`` (``"numpy"``, ``"chromadb"``...) under the plugin's lock.

    Args:
        name: a dotted module name.

    Returns:
        The module.

    Raises:
        ImportError: the module is not installed or fails to import.
    """
    with _IMPORT_LOCK:
        return importlib.import_module(name)


@contextlib.contextmanager
def importing() -> Iterator[None]:
    """Hold the plugin's import lock around heavy ``import`` statements (re-entrant)."""
    with _IMPORT_LOCK:
        yield
