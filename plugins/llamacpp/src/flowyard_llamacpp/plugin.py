"""Hook implementations of flowyard-llamacpp (plugin name ``llamacpp``).

Registers the provider ``local`` lazily (nothing is imported from llama.cpp and no model is
loaded until the first call) with ``default_model="local/smollm2"`` and
``default_priority=10``, so SmolLM2 is the stack's default model when no other provider
claims a higher priority and ``models.default`` is not set.
"""

from __future__ import annotations

from typing import Any

from flowyard import Config, Register, hookimpl

#: Priority of ``local/<default alias>`` as the stack's default model.
DEFAULT_PRIORITY = 10


@hookimpl
def register_providers(register: Register, config: Config) -> None:
    """``local``: GGUF models on llama.cpp; models from ``[llamacpp.models]`` plus
    ``smollm2``.

    Raises:
        ConfigError: the ``[llamacpp]`` table is invalid (the plugin is then reported as
            failed and the rest of the stack works).
    """
    from flowyard_llamacpp.spec import specs_from_config

    specs, default_alias = specs_from_config(config.section("llamacpp"))

    def make() -> Any:
        from flowyard_llamacpp.provider import LlamaCppProvider

        return LlamaCppProvider(specs, name="local")

    register("local", factory=make, default_model=f"local/{default_alias}",
             default_priority=DEFAULT_PRIORITY)
