"""The model registry: what every provider of a stack serves, for routing and budgets.

Built from the providers' ``list_models()`` (context window, maximum output, capabilities,
prices) plus the ``[models.info]`` configuration table, which fills in or corrects facts the
provider does not report::

    [models.info."openai/gpt-4o-mini"]
    input_per_mtok = 0.15          # US dollars per million input tokens
    output_per_mtok = 0.60         # US dollars per million output tokens
    source = "https://openai.com/api/pricing"   # where the price was read
    as_of = "2026-11-01"                        # when
    context_window = 128000
    max_output_tokens = 16384
    capabilities = ["chat", "tools", "vision", "json"]

A model named only in configuration is added to the registry when its provider is registered.
A configured price wins over the provider's: budgets reserve it and the cost ledger records
it, even when the provider reports its own cost for a call (:meth:`ModelRegistry.configured_price`).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import anyio
import attrs

from flowyard.errors import ConfigError, FlowyardError
from flowyard.models import ModelInfo, ModelPrice

if TYPE_CHECKING:
    from flowyard.interfaces import RouteRequest
    from flowyard.interfaces import Services

__all__ = ["ModelRegistry", "ineligibility", "eligible", "apply_overrides"]

_INFO_KEYS = {"input_per_mtok", "output_per_mtok", "source", "as_of", "context_window",
              "max_output_tokens", "capabilities"}


def apply_overrides(info: ModelInfo, table: Mapping[str, Any], *, where: str) -> ModelInfo:
    """Return ``info`` with the fields of a ``[models.info."ref"]`` table applied.

    Raises:
        ConfigError: unknown keys, or a price given without its pair (names ``where``).
    """
    unknown = set(table) - _INFO_KEYS
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}; expected "
                          f"{', '.join(sorted(_INFO_KEYS))}")
    changes: dict[str, Any] = {}
    if "input_per_mtok" in table or "output_per_mtok" in table:
        if not ("input_per_mtok" in table and "output_per_mtok" in table):
            raise ConfigError(f"{where}: give both input_per_mtok and output_per_mtok")
        try:
            changes["price"] = ModelPrice(float(table["input_per_mtok"]),
                                          float(table["output_per_mtok"]),
                                          source=str(table.get("source", f"config {where}")),
                                          as_of=str(table.get("as_of", "")))
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{where}: prices must be numbers (US dollars per million "
                              f"tokens): {exc}") from exc
    for key in ("context_window", "max_output_tokens"):
        if key in table:
            value = table[key]
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ConfigError(f"{where}.{key} must be a positive integer, got {value!r}")
            changes[key] = value
    if "capabilities" in table:
        caps = table["capabilities"]
        if not isinstance(caps, list) or not all(isinstance(c, str) for c in caps):
            raise ConfigError(f"{where}.capabilities must be a list of strings, got {caps!r}")
        changes["capabilities"] = frozenset(caps)
    return attrs.evolve(info, **changes)


def ineligibility(info: ModelInfo, request: RouteRequest) -> str | None:
    """Return why ``info`` does not meet ``request`` (None when it does).

    Rules: the model must be a chat model (``chat`` among its capabilities, unless it lists
    none); have every required capability; have a known context window of at least
    ``min_context`` and of more than ``estimated_input_tokens``; have a known input price of at
    most ``max_input_price`` (US dollars per million tokens); and be among ``candidates`` when
    those are given.
    """
    if request.candidates and info.ref not in request.candidates:
        return "not among the candidates"
    if info.capabilities and "chat" not in info.capabilities:
        return "not a chat model"
    missing = request.capabilities - info.capabilities
    if missing:
        return f"lacks {', '.join(sorted(missing))}"
    if request.min_context is not None:
        if info.context_window is None:
            return "context window unknown"
        if info.context_window < request.min_context:
            return f"context window {info.context_window} < {request.min_context}"
    if request.estimated_input_tokens and info.context_window is not None \
            and info.context_window <= request.estimated_input_tokens:
        return (f"context window {info.context_window} <= prompt of "
                f"~{request.estimated_input_tokens} tokens")
    if request.max_input_price is not None:
        if info.price is None:
            return "price unknown"
        if info.price.input_per_mtok > request.max_input_price:
            return (f"input price ${info.price.input_per_mtok:g}/Mtok > "
                    f"${request.max_input_price:g}/Mtok")
    return None


def eligible(models: Sequence[ModelInfo], request: RouteRequest) -> list[ModelInfo]:
    """Return the models meeting ``request``, in the given order (candidates' order when the
    request names candidates).
    """
    fitting = [m for m in models if ineligibility(m, request) is None]
    if request.candidates:
        order = {ref: i for i, ref in enumerate(request.candidates)}
        fitting.sort(key=lambda m: order[m.ref])
    return fitting


class ModelRegistry:
    """Every model of a stack's providers, with configuration overrides applied.

    Args:
        stack: the stack whose providers are asked.
        timeout_s: seconds to wait for one provider's ``list_models``.
    """

    def __init__(self, stack: Services, *, timeout_s: float = 10.0) -> None:
        self.stack = stack
        self.timeout_s = timeout_s
        self._by_provider: dict[str, dict[str, ModelInfo]] = {}
        #: provider name -> error text of the last failed listing.
        self.errors: dict[str, str] = {}
        #: seconds before a provider whose listing failed is asked again by :meth:`get`.
        self.retry_failed_s = 60.0
        self._failed_at: dict[str, float] = {}

    def _overrides(self) -> dict[str, Mapping[str, Any]]:
        table = self.stack.config.get("models.info", {}) or {}
        if not isinstance(table, Mapping):
            raise ConfigError(f"models.info must be a table, got {table!r}")
        return {str(k): v for k, v in table.items()}

    def _apply(self, provider: str, infos: Sequence[ModelInfo]) -> dict[str, ModelInfo]:
        out = {info.model: info for info in infos}
        for ref, table in self._overrides().items():
            prov, sep, model = ref.partition("/")
            if not sep or prov != provider:
                continue
            if not isinstance(table, Mapping):
                raise ConfigError(f"models.info.{ref!r} must be a table")
            base = out.get(model) or ModelInfo(provider=provider, model=model)
            out[model] = apply_overrides(base, table, where=f"models.info.{ref!r}")
        return out

    def configured_price(self, ref: str) -> ModelPrice | None:
        """Return the price ``[models.info."provider/model"]`` sets for ``ref``, or None when
        the configuration gives it no ``input_per_mtok``/``output_per_mtok``.

        A configured price is what budgets reserve and what the cost ledger records for the
        model, whatever figure the provider reports for a call (see
        ``docs/budgets-and-limits.md``).

        Args:
            ref: ``provider/model``.

        Returns:
            The configured :class:`~flowyard.models.ModelPrice` (US dollars per million
            tokens), or None.

        Raises:
            ConfigError: a malformed ``[models.info]`` entry for ``ref``.
        """
        table = self._overrides().get(ref)
        if table is None:
            return None
        if not isinstance(table, Mapping):
            raise ConfigError(f"models.info.{ref!r} must be a table")
        if "input_per_mtok" not in table and "output_per_mtok" not in table:
            return None
        provider, _, model = ref.partition("/")
        return apply_overrides(ModelInfo(provider=provider, model=model), table,
                               where=f"models.info.{ref!r}").price

    async def load_provider(self, name: str, *, refresh: bool = False) -> dict[str, ModelInfo]:
        """Return ``{model id: info}`` of one provider (cached).

        Raises:
            ConfigError: a malformed ``[models.info]`` entry for this provider.
            FlowyardError / OSError / TimeoutError: the provider failed to list its models.
        """
        if not refresh and name in self._by_provider:
            return self._by_provider[name]
        provider = self.stack.providers.get(name)
        with anyio.fail_after(self.timeout_s):
            infos = await provider.list_models()
        models = self._apply(name, infos)
        self._by_provider[name] = models
        self.errors.pop(name, None)
        self._failed_at.pop(name, None)
        return models

    async def get(self, ref: str) -> ModelInfo | None:
        """Return the info of ``provider/model``, or None when the provider does not list it
        (or cannot list its models: the error is kept in :attr:`errors` and the provider is
        not asked again for :attr:`retry_failed_s` seconds).
        """
        provider, _, model = ref.partition("/")
        failed_at = self._failed_at.get(provider)
        if failed_at is not None and time.monotonic() - failed_at < self.retry_failed_s:
            return None
        try:
            models = await self.load_provider(provider)
        except ConfigError:
            raise
        except (FlowyardError, OSError, TimeoutError) as exc:
            self.errors[provider] = f"{type(exc).__name__}: {exc}"
            self._failed_at[provider] = time.monotonic()
            return None
        return models.get(model)

    async def all(self, *, refresh: bool = False) -> list[ModelInfo]:
        """Return the models of every registered provider, sorted by reference.

        Providers are asked concurrently. Those that fail to list (or take longer than
        ``timeout_s``) are left out, recorded in :attr:`errors` and, unless ``refresh``, not
        asked again for :attr:`retry_failed_s` seconds. A malformed ``[models.info]`` table
        raises ConfigError.
        """
        out: dict[str, list[ModelInfo]] = {}
        config_errors: list[ConfigError] = []
        now = time.monotonic()

        async def one(name: str) -> None:
            try:
                models = await self.load_provider(name, refresh=refresh)
            except ConfigError as exc:
                config_errors.append(exc)
                return
            except (FlowyardError, OSError, TimeoutError) as exc:
                self.errors[name] = f"{type(exc).__name__}: {exc}"
                self._failed_at[name] = time.monotonic()
                self.stack.events.make("provider.error", provider=name, error=str(exc))
                return
            out[name] = list(models.values())

        async with anyio.create_task_group() as tg:
            for name in self.stack.providers.names():
                failed_at = self._failed_at.get(name)
                if (not refresh and failed_at is not None
                        and now - failed_at < self.retry_failed_s):
                    continue
                tg.start_soon(one, name)
        if config_errors:
            raise config_errors[0]
        return sorted((m for infos in out.values() for m in infos), key=lambda m: m.ref)

    def invalidate(self, provider: str | None = None) -> None:
        """Forget cached listings (of one provider, or all)."""
        if provider is None:
            self._by_provider.clear()
            self._failed_at.clear()
        else:
            self._by_provider.pop(provider, None)
            self._failed_at.pop(provider, None)
