"""The LLM gateway: every model call of a stack goes through here.

It resolves ``provider/model`` references (or the stack's default model), fills in cost from
the provider's model info when the provider did not, emits an ``llm.call`` event per call, and
records a cost line in storage when the call belongs to a run. Routing, budgets, rate limits
and circuit breakers hook in here (see ``docs/architecture.md``).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any

import attrs

from flowyard.errors import ConfigError, ProviderError, UnknownNameError
from flowyard.models import ChatChunk, ChatRequest, ChatResponse, CostLine, Message, ModelInfo, Usage

if TYPE_CHECKING:
    from flowyard.context import ToolContext
    from flowyard.interfaces import Provider
    from flowyard.stack import Stack

__all__ = ["LLMGateway", "split_ref"]


def split_ref(ref: str) -> tuple[str, str]:
    """Split ``"provider/model"`` into its parts.

    Raises:
        ValueError: ``ref`` has no provider prefix.
    """
    provider, sep, model = ref.partition("/")
    if not sep or not provider or not model:
        raise ValueError(f"model reference {ref!r} must look like 'provider/model'")
    return provider, model


class LLMGateway:
    """Chat, streaming and embeddings for one stack.

    Args:
        stack: the stack whose providers, events and storage are used.
    """

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self._model_info: dict[str, dict[str, ModelInfo]] = {}

    # ------------------------------------------------------------------ models

    def default_model(self) -> str:
        """Return the default model reference.

        ``models.default`` in the configuration wins; otherwise the registered provider with
        the highest ``default_priority`` metadata that names a ``default_model``.

        Raises:
            ConfigError: no default can be found (names what to install or set).
        """
        configured = self.stack.config.get("models.default")
        if configured:
            return str(configured)
        best: tuple[int, str] | None = None
        for name in self.stack.providers.names():
            meta = self.stack.providers.metadata_of(name)
            if meta.get("default_model"):
                candidate = (int(meta.get("default_priority", 0)), str(meta["default_model"]))
                if best is None or candidate[0] > best[0]:
                    best = candidate
        if best is None:
            raise ConfigError(
                "no default model: set models.default in flowyard.toml (or "
                "FLOWYARD_DEFAULT_MODEL), or install flowyard-llamacpp for the local default; "
                f"providers registered: {', '.join(self.stack.providers.names()) or 'none'}"
            )
        return best[1]

    def resolve(self, ref: str | None) -> tuple[Provider, str, str]:
        """Return ``(provider, provider_name, model_id)`` for a reference (None: default).

        Aliases from ``[models.aliases]`` in the configuration are applied first.

        Raises:
            UnknownNameError: the provider is not registered.
            ValueError: the reference is malformed.
        """
        ref = ref or self.default_model()
        aliases = self.stack.config.get("models.aliases", {}) or {}
        ref = str(aliases.get(ref, ref))
        provider_name, model = split_ref(ref)
        return self.stack.providers.get(provider_name), provider_name, model

    async def model_info(self, ref: str) -> ModelInfo | None:
        """Return the provider's info for ``ref`` (cached per provider), or None if unlisted."""
        provider, provider_name, model = self.resolve(ref)
        if provider_name not in self._model_info:
            infos = await provider.list_models()
            self._model_info[provider_name] = {info.model: info for info in infos}
        return self._model_info[provider_name].get(model)

    async def list_models(self) -> list[ModelInfo]:
        """Return the models of every registered provider; failing providers are skipped
        and reported as a ``provider.error`` event."""
        out: list[ModelInfo] = []
        for name in self.stack.providers.names():
            try:
                provider = self.stack.providers.get(name)
                infos = await provider.list_models()
            except (ProviderError, UnknownNameError, OSError) as exc:
                self.stack.events.make("provider.error", provider=name, error=str(exc))
                continue
            self._model_info[name] = {info.model: info for info in infos}
            out.extend(infos)
        return out

    # ------------------------------------------------------------------ calls

    def build_request(self, model_id: str, messages: Sequence[Message] | str, **params: Any
                      ) -> ChatRequest:
        """Return a :class:`ChatRequest`; a string becomes one user message."""
        if isinstance(messages, str):
            messages = [Message.user(messages)]
        return ChatRequest(model=model_id, messages=list(messages), **params)

    async def _cost(self, ref: str, response_cost: float | None, usage: Usage) -> float | None:
        if response_cost is not None:
            return response_cost
        info = await self.model_info(ref)
        if info is None or info.price is None:
            return None
        return info.price.cost(usage)

    async def _record(self, ctx: ToolContext | None, provider_name: str, model: str,
                      usage: Usage, cost: float | None, latency_s: float, **extra: Any) -> None:
        run_id = ctx.run_id if ctx else ""
        step_id = ctx.step_id if ctx else None
        self.stack.events.make(
            "llm.call", run_id=run_id, step_id=step_id, provider=provider_name, model=model,
            input_tokens=usage.input_tokens, output_tokens=usage.output_tokens,
            cost_usd=cost, latency_s=round(latency_s, 6),
            agent=ctx.agent if ctx else None, **extra,
        )
        if ctx is not None and ctx.run_id and self.stack.storage_is_open:
            await self.stack.storage.add_cost(CostLine(
                run_id=ctx.run_id, provider=provider_name, model=model,
                input_tokens=usage.input_tokens, output_tokens=usage.output_tokens,
                cost_usd=cost, step_id=step_id, agent=ctx.agent,
                workflow_name=ctx.workflow_name,
            ))

    async def chat(self, messages: Sequence[Message] | str, *, model: str | None = None,
                   context: ToolContext | None = None, **params: Any) -> ChatResponse:
        """Call a model and return its response, with ``cost_usd`` filled where known.

        Args:
            messages: the conversation, or a prompt string.
            model: ``provider/model`` (None: the default model).
            context: the calling step's context (events and cost lines are attributed to it).
            **params: :class:`ChatRequest` fields (temperature, max_tokens, tools, ...).

        Raises:
            ProviderError: typed provider errors; UnknownNameError: unknown provider.
        """
        provider, provider_name, model_id = self.resolve(model)
        if context is not None and context.idempotency_key and "idempotency_key" not in params:
            params["idempotency_key"] = context.idempotency_key
        request = self.build_request(model_id, messages, **params)
        started = time.perf_counter()
        response = await provider.chat(request)
        latency = time.perf_counter() - started
        cost = await self._cost(f"{provider_name}/{model_id}", response.cost_usd, response.usage)
        response = attrs.evolve(response, cost_usd=cost, provider=provider_name,
                                model=response.model or model_id)
        await self._record(context, provider_name, model_id, response.usage, cost, latency,
                           finish_reason=response.finish_reason)
        return response

    async def stream(self, messages: Sequence[Message] | str, *, model: str | None = None,
                     context: ToolContext | None = None, **params: Any
                     ) -> AsyncIterator[ChatChunk]:
        """Stream a completion chunk by chunk; the usage is recorded when the stream ends.

        Raises:
            ProviderError: as :meth:`chat`; MalformedResponseError for a cut stream.
        """
        provider, provider_name, model_id = self.resolve(model)
        request = self.build_request(model_id, messages, **params)
        started = time.perf_counter()
        usage = Usage()
        async for chunk in provider.stream(request):
            if chunk.usage is not None:
                usage = chunk.usage
            yield chunk
        cost = await self._cost(f"{provider_name}/{model_id}", None, usage)
        await self._record(context, provider_name, model_id, usage, cost,
                           time.perf_counter() - started, streamed=True)

    async def embed(self, texts: Sequence[str], *, model: str | None = None) -> list[list[float]]:
        """Return embeddings of ``texts`` from ``model`` (``provider/model``).

        Raises:
            ConfigError: no model given and ``models.embedding`` is not set.
        """
        ref = model or self.stack.config.get("models.embedding")
        if not ref:
            raise ConfigError("no embedding model: pass model= or set models.embedding")
        provider, _, model_id = self.resolve(str(ref))
        return await provider.embed(list(texts), model=model_id)
