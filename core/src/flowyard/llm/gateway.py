"""The LLM gateway: every model call of a stack goes through here.

For each call it:

1. resolves the model: a ``provider/model`` reference, an alias from ``[models.aliases]``, the
   stack's default model, or ``"auto"``: a router (``router=`` per call, else the
   ``routing.router`` setting, else ``cheapest``) picks from the model registry what meets a
   :class:`~flowyard.interfaces.RouteRequest`, and the gateway tries the returned models in
   order after retriable errors; every choice and its reason is a ``router.choice`` event;
2. reserves the call's estimated maximum cost in the caller's budgets
   (``context.budget``, a :class:`~flowyard.llm.budget.BudgetChain`) or raises
   :class:`~flowyard.errors.BudgetExceeded` without calling;
3. waits for the provider's and model's rate limits (fair FIFO queue; a wait longer than
   ``limits.max_wait_s`` becomes a retriable ``RateLimitedError``, so routing moves on);
4. asks the provider's circuit breaker (fails fast with ``CircuitOpenError`` while open);
5. calls the provider, then settles the reservation with the actual cost (tokens at the price
   configured in ``[models.info]`` when one is set, the same price the reservation used;
   else the provider's own figure, else its listed price), records the token
   usage with the rate limiter, emits ``llm.call`` (or ``llm.error``) and stores a cost line
   when the call belongs to a run.

A stream whose server sends no usage, or that is cut after some chunks arrived, is charged for
the prompt and the output actually received, counted locally
(:func:`~flowyard.llm.budget.estimate_output_tokens`): the reservation is settled with that
estimate (never released to $0), and the ``llm.call`` event and cost line say
``estimated=True`` (a cut stream also ``partial=True``, and then ``llm.error`` follows). A
stream whose received output uses up its reservation (a server ignoring ``max_tokens``) is
stopped there: the provider's stream is closed and a final chunk with
``finish_reason="length"`` ends it (``stopped="reservation used up"``). A call that costs more
than its reservation anyway (a non-streamed reply past ``max_tokens``) is charged in full and
the excess is ``overshoot_usd`` on the event, the cost line and every budget of the chain.

Before all that, the stack's guards (:mod:`flowyard.guards`, stage ``model``) see the
prompt and may deny the call (:class:`~flowyard.guards.GuardDenied`, nothing sent) or redact
it; a chat reply's message (and each streamed chunk's text) passes the ``model_output``
guards. With no guard this is one lookup per call.

A 429 with a retry-after pauses the model's limiter for that long, up to
``limits.max_retry_after`` (60 s by default); a longer one does not pause it and the
``RateLimitedError`` is made non-retriable (it fails at once). See
``docs/budgets-and-limits.md``.

Events emitted (``data`` keys in brackets): ``llm.call`` [provider, model, input_tokens,
output_tokens, cost_usd, latency_s, waited_s, agent, finish_reason, router, estimated,
overshoot_usd; streams also streamed, usage_reported, partial, stopped],
``llm.error`` [provider, model, error_type, error, retriable, latency_s],
``router.choice`` [router, model, reason, attempt, fallbacks], ``budget.exceeded``
[provider, model, scope, limit_usd, requested_usd, error], ``ratelimit.wait`` [key, waited_s],
``ratelimit.paused`` [key, seconds], ``circuit.state`` [provider, old, new].

Learning routers (:class:`~flowyard.interfaces.SupportsRouterState`, like ``ucb``) keep what
they learned in the storage key-value area (namespace ``flowyard.routing``) when the stack's storage
is open, unless ``routing.persist = false``.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import AsyncGenerator, AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import anyio
import attrs

from flowyard.clock import Clock, MonotonicClock
from flowyard.errors import (
    BadRequestError,
    BudgetExceeded,
    CircuitOpenError,
    ConfigError,
    ProviderError,
    RateLimitedError,
    UnknownNameError,
)
from flowyard.guards import GuardSet, guard_set
from flowyard.interfaces import (
    RouteRequest,
    SupportsExplainedChoice,
    SupportsRouterState,
    SupportsTokenCounting,
)
from flowyard.llm.budget import (
    CHARS_PER_OUTPUT_TOKEN,
    Budget,
    BudgetChain,
    CallerBudgets,
    Reservation,
    estimate_max_cost,
    estimate_output_tokens,
    estimate_prompt_tokens,
    estimate_text_tokens,
)
from flowyard.llm.cache import (
    CachedResponse,
    CachePolicy,
    configured_policy,
    default_ttl,
    is_deterministic,
    open_response_cache,
    request_key,
)
from flowyard.llm.circuit import BreakerSet, counts_as_failure
from flowyard.llm.modelregistry import ModelRegistry
from flowyard.llm.ratelimit import LimiterSet, caller_keys
from flowyard.llm.shared import SharedLimits, open_shared_limits
from flowyard.models import (
    ChatChunk,
    ChatRequest,
    ChatResponse,
    CostLine,
    Message,
    ModelInfo,
    ToolCall,
    Usage,
)
from flowyard.serialization import structure, unstructure

if TYPE_CHECKING:
    from flowyard.context import ToolContext
    from flowyard.interfaces import Provider, Router, Services

__all__ = ["LLMGateway", "split_ref", "AUTO"]

#: The model reference that asks a router to choose.
AUTO = "auto"
#: Storage key-value namespace where learning routers' state is kept (key: router name).
ROUTER_STATE_NAMESPACE = "flowyard.routing"

_UNKNOWN_PRICE_POLICIES = ("refuse", "allow")
_UNSET: Any = object()


def split_ref(ref: str) -> tuple[str, str]:
    """Split ``"provider/model"`` into its parts.

    Raises:
        ValueError: ``ref`` has no provider prefix.
    """
    provider, sep, model = ref.partition("/")
    if not sep or not provider or not model:
        raise ValueError(f"model reference {ref!r} must look like 'provider/model'")
    return provider, model


@attrs.define
class _Call:
    """Book-keeping of one provider call inside :meth:`LLMGateway._guard`."""

    provider: str
    model: str
    info: ModelInfo | None
    prompt_estimate: int
    reservation: Reservation | None
    waited_s: float = 0.0
    usage: Usage | None = None
    cost_usd: float | None = None
    #: the body received part of a reply before failing: settle ``cost_usd`` (tokens
    #: received), never release the reservation
    partial: bool = False
    #: ``usage`` was counted locally, not reported by the server
    estimated: bool = False
    #: US dollars charged beyond the reservation (set when the reservation is settled)
    overshoot_usd: float = 0.0
    #: the id of the call's reservation in the shared budgets (``[limits] shared``)
    shared_reservation: str | None = None


class _Received:
    """What a stream has delivered so far: chunks, characters of text (ASCII and other, to
    count tokens like :func:`~flowyard.llm.budget.estimate_output_tokens` without joining
    the text at every chunk), complete tool calls and the finish reason.
    """

    __slots__ = ("chunks", "ascii_chars", "other_chars", "tool_tokens", "finish_reason")

    def __init__(self) -> None:
        self.chunks = 0
        self.ascii_chars = 0
        self.other_chars = 0
        self.tool_tokens = 0
        self.finish_reason: str | None = None

    def add(self, chunk: ChatChunk) -> None:
        self.chunks += 1
        text = chunk.delta
        if text:
            ascii_chars = len(text) if text.isascii() else len(text.encode("ascii", "ignore"))
            self.ascii_chars += ascii_chars
            self.other_chars += len(text) - ascii_chars
        if chunk.tool_calls:
            self.tool_tokens += estimate_output_tokens("", chunk.tool_calls)
        if chunk.finish_reason:
            self.finish_reason = chunk.finish_reason

    def usage(self, prompt_tokens: int) -> Usage:
        """``prompt_tokens`` in, and the output received so far (estimated tokens) out."""
        out = (-(-self.ascii_chars // CHARS_PER_OUTPUT_TOKEN) + self.other_chars
               + self.tool_tokens)
        return Usage(prompt_tokens, out)


class LLMGateway:
    """Chat, streaming and embeddings for one stack, with routing, budgets, rate limits and
    circuit breakers.

    Args:
        stack: the stack whose providers, routers, events and storage are used.
        clock: time source of the rate limiters and circuit breakers (the event loop's clock
            by default; a :class:`~flowyard.clock.VirtualClock` in tests).

    Attributes:
        models: the :class:`~flowyard.llm.modelregistry.ModelRegistry`.
    """

    def __init__(self, stack: Services, *, clock: Clock | None = None) -> None:
        self.stack = stack
        self.clock: Clock = clock or MonotonicClock()
        self.models = ModelRegistry(stack)
        self._limiters: LimiterSet | None = None
        self._caller_budgets: CallerBudgets | None = None
        self._breakers: BreakerSet | None = None
        #: the shared limits of ``[limits] shared`` (None: per-process; _UNSET: not opened)
        self._shared: Any = _UNSET
        self._router_state_loaded: set[str] = set()
        #: id(provider) -> (provider, whether it counts its prompt tokens itself)
        self._counts_tokens: dict[int, tuple[Any, bool]] = {}

    # ------------------------------------------------------------------ configuration

    def use_clock(self, clock: Clock) -> None:
        """Switch to ``clock``; rate limiters and breakers start afresh."""
        self.clock = clock
        self._limiters = None
        self._breakers = None
        self._shared = _UNSET

    @property
    def limiters(self) -> LimiterSet:
        """The rate limiters, built from the ``[limits]`` table on first use."""
        if self._limiters is None:
            self._limiters = LimiterSet(self.stack.config.section("limits"), clock=self.clock)
        return self._limiters

    @property
    def breakers(self) -> BreakerSet:
        """The circuit breakers, built from the ``[circuit]`` table on first use."""
        if self._breakers is None:
            self._breakers = BreakerSet(self.stack.config.section("circuit"), clock=self.clock,
                                        on_change=self._circuit_changed)
        return self._breakers

    async def shared_limits(self) -> SharedLimits | None:
        """The shared rate limits, breakers and budgets of ``[limits] shared`` (opened on
        first use), or None when limits are kept in this process.

        Raises:
            ConfigError: the backend does not implement SupportsSharedLimits (names its URL).
            StorageError: the backend could not be opened (names its URL; asked again on the
                next call).
        """
        shared = self._shared
        if shared is _UNSET:
            shared = await open_shared_limits(self.stack, self.limiters, self.breakers,
                                              on_change=self._circuit_changed)
            self._shared = shared
        return shared  # type: ignore[no-any-return]

    def unknown_price_policy(self) -> str:
        """``budgets.unknown_price``: ``"refuse"`` (default) or ``"allow"``.

        Raises:
            ConfigError: another value.
        """
        policy = str(self.stack.config.get("budgets.unknown_price", "refuse"))
        if policy not in _UNKNOWN_PRICE_POLICIES:
            raise ConfigError(f"budgets.unknown_price must be 'refuse' or 'allow', "
                              f"got {policy!r}")
        return policy

    def _circuit_changed(self, provider: str, old: str, new: str) -> None:
        self.stack.events.make("circuit.state", provider=provider, old=old, new=new)

    # ------------------------------------------------------------------ models

    def default_model(self) -> str:
        """Return the default model reference.

        ``models.default`` in the configuration wins (``"auto"`` routes every call without a
        model); otherwise the registered provider with the highest ``default_priority``
        metadata that names a ``default_model``.

        Raises:
            ConfigError: no default can be found (names what to install or set).
        """
        configured = self.stack.config.get("models.default")
        if configured:
            return str(configured)
        provider = self.stack.providers.preferred(requires="default_model")
        if provider is None:
            raise ConfigError(
                "no default model: set models.default in flowyard.toml (or "
                "FLOWYARD_DEFAULT_MODEL), or install flowyard-llamacpp for the local default; "
                f"providers registered: {', '.join(self.stack.providers.names()) or 'none'}"
            )
        return str(self.stack.providers.metadata_of(provider)["default_model"])

    def _alias(self, ref: str) -> str:
        aliases = self.stack.config.get("models.aliases", {}) or {}
        return str(aliases.get(ref, ref))

    def resolve(self, ref: str | None) -> tuple[Provider, str, str]:
        """Return ``(provider, provider_name, model_id)`` for a reference (None: default).

        Aliases from ``[models.aliases]`` in the configuration are applied first.

        Raises:
            UnknownNameError: the provider is not registered.
            ValueError: the reference is malformed (or is ``"auto"``, which needs routing).
        """
        ref = self._alias(ref or self.default_model())
        if ref == AUTO:
            raise ValueError("model 'auto' is chosen by a router: call chat()/stream() with "
                             "model='auto' (and route=...), not resolve()")
        provider_name, model = split_ref(ref)
        return self.stack.providers.get(provider_name), provider_name, model

    async def model_info(self, ref: str) -> ModelInfo | None:
        """Return the registry's info for ``ref`` (None if its provider does not list it)."""
        _, provider_name, model = self.resolve(ref)
        return await self.models.get(f"{provider_name}/{model}")

    async def list_models(self) -> list[ModelInfo]:
        """Return the models of every registered provider; failing providers are skipped
        and reported as a ``provider.error`` event.
        """
        return await self.models.all()

    # ------------------------------------------------------------------ helpers

    def build_request(self, model_id: str, messages: Sequence[Message] | str, **params: Any
                      ) -> ChatRequest:
        """Return a :class:`ChatRequest`; a string becomes one user message."""
        if isinstance(messages, str):
            messages = [Message.user(messages)]
        return ChatRequest(model=model_id, messages=list(messages), **params)

    async def _cost(self, ref: str, response_cost: float | None, usage: Usage) -> float | None:
        """The cost of a call in US dollars: a price configured in ``[models.info]`` (the one
        the budget reserved with) wins; else the provider's own figure for the call; else the
        registry's price; None when unknown.
        """
        configured = self.models.configured_price(ref)
        if configured is not None:
            return configured.cost(usage)
        if response_cost is not None:
            return response_cost
        info = await self.models.get(ref)
        if info is None or info.price is None:
            return None
        return info.price.cost(usage)

    async def _record(self, ctx: ToolContext | None, provider_name: str, model: str,
                      usage: Usage, cost: float | None, latency_s: float, *,
                      estimated: bool = False, overshoot_usd: float = 0.0,
                      **extra: Any) -> None:
        run_id = ctx.run_id if ctx else ""
        step_id = ctx.step_id if ctx else None
        self.stack.events.make(
            "llm.call", run_id=run_id, step_id=step_id, provider=provider_name, model=model,
            input_tokens=usage.input_tokens, output_tokens=usage.output_tokens,
            cost_usd=cost, latency_s=round(latency_s, 6),
            agent=ctx.agent if ctx else None, estimated=estimated,
            overshoot_usd=overshoot_usd, **extra,
        )
        if ctx is not None and ctx.run_id and self.stack.storage_is_open:
            await self.stack.storage.add_cost(CostLine(
                run_id=ctx.run_id, provider=provider_name, model=model,
                input_tokens=usage.input_tokens, output_tokens=usage.output_tokens,
                cost_usd=cost, step_id=step_id, agent=ctx.agent,
                workflow_name=ctx.workflow_name, estimated=estimated,
                overshoot_usd=overshoot_usd,
            ))

    def _emit(self, ctx: ToolContext | None, type: str, **data: Any) -> None:
        self.stack.events.make(type, run_id=ctx.run_id if ctx else "",
                               step_id=ctx.step_id if ctx else None, **data)

    @staticmethod
    def _chain(ctx: ToolContext | None) -> BudgetChain:
        budget = ctx.budget if ctx is not None else None
        if budget is None:
            return BudgetChain()
        if isinstance(budget, BudgetChain):
            return budget
        if isinstance(budget, Budget):
            return BudgetChain((budget,))
        raise TypeError(f"context.budget must be a BudgetChain or Budget, got "
                        f"{type(budget).__name__}")

    async def _prompt_tokens(self, provider: Any, request: ChatRequest) -> int:
        """The prompt tokens of ``request``: the provider's own count when it offers
        :class:`~flowyard.interfaces.SupportsTokenCounting`, else the local estimate.
        """
        # isinstance() against a runtime protocol costs ~10 us; providers live as long as the
        # stack, so the answer is kept per provider object (held, so its id is not reused)
        known = self._counts_tokens.get(id(provider))
        if known is None or known[0] is not provider:
            known = (provider, isinstance(provider, SupportsTokenCounting))
            self._counts_tokens[id(provider)] = known
        if known[1]:
            counted = provider.count_prompt_tokens(request)
            if inspect.isawaitable(counted):
                counted = await counted
            return int(counted)
        return estimate_prompt_tokens(request)

    @property
    def caller_budgets(self) -> CallerBudgets:
        """The per-caller daily budgets of ``[budgets.<kind>.<id>]``, built on first use."""
        if self._caller_budgets is None:
            self._caller_budgets = CallerBudgets(self.stack.config.section("budgets"))
        return self._caller_budgets

    def _reserve(self, ctx: ToolContext | None, ref: str, info: ModelInfo | None,
                 prompt_tokens: int, max_tokens: int | None,
                 callers: Sequence[tuple[str, str]] = ()) -> Reservation | None:
        """Reserve the estimated maximum cost in the caller's budgets (None: no budget):
        the context's chain plus the per-caller daily budgets of ``callers``.
        """
        chain = self._chain(ctx)
        caller_budgets = self.caller_budgets
        if caller_budgets:
            for budget in caller_budgets.budgets(callers):
                chain = chain.extend(budget)
        if not chain:
            return None
        scope = chain.budgets[0]
        try:
            return chain.reserve(self._max_cost(ref, info, prompt_tokens, max_tokens,
                                                scope.scope, scope.limit_usd))
        except BudgetExceeded as exc:
            self._emit(ctx, "budget.exceeded", model=ref, scope=exc.scope,
                       limit_usd=exc.limit_usd, requested_usd=exc.requested_usd, error=str(exc))
            raise

    def _max_cost(self, ref: str, info: ModelInfo | None, prompt_tokens: int,
                  max_tokens: int | None, scope: str, limit_usd: float) -> float:
        """The most a call can cost in US dollars (0.0 for an unknown price under
        ``budgets.unknown_price = "allow"``).

        Raises:
            BudgetExceeded: the cost cannot be bounded (unknown price, or no maximum output);
                ``scope`` and ``limit_usd`` name the outermost budget.
        """
        if info is None or info.price is None:
            if self.unknown_price_policy() == "allow":
                return 0.0
            raise BudgetExceeded(
                f"the price of {ref} is unknown, so a call under a budget cannot be "
                f"bounded: set [models.info.\"{ref}\"] input_per_mtok and output_per_mtok, "
                "or budgets.unknown_price = \"allow\"", scope=scope,
                limit_usd=limit_usd, requested_usd=float("nan"))
        max_out = max_tokens or info.max_output_tokens
        if max_out is None and info.context_window is not None:
            max_out = max(0, info.context_window - prompt_tokens)
        if max_out is None:
            raise BudgetExceeded(
                f"cannot bound the cost of a call to {ref}: neither max_tokens nor the "
                "model's maximum output or context window is known; pass max_tokens",
                scope=scope, limit_usd=limit_usd, requested_usd=float("nan"))
        return estimate_max_cost(info.price, prompt_tokens, max_out)

    async def _reserve_shared(self, shared: SharedLimits, ctx: ToolContext | None, ref: str,
                              info: ModelInfo | None, prompt_tokens: int,
                              max_tokens: int | None, callers: Sequence[tuple[str, str]]
                              ) -> tuple[Reservation | None, str | None]:
        """Reserve the estimated maximum cost in the context's in-process chain (run, step,
        agent) and in the shared caller and global budgets, all or none.

        Returns:
            the in-process reservation (None without any budget) and the shared
            reservation id (None without shared budgets).

        Raises:
            BudgetExceeded: some budget cannot cover it (``budget.exceeded`` is emitted).
            StorageError: the shared backend failed (nothing held).
        """
        chain = self._chain(ctx)
        caller_budgets = self.caller_budgets
        budgets = caller_budgets.shared_budgets(callers) if caller_budgets else []
        if not chain and not budgets:
            return None, None
        scope, limit = ((chain.budgets[0].scope, chain.budgets[0].limit_usd) if chain
                        else (budgets[0][2], budgets[0][1]))
        try:
            reservation = chain.reserve(self._max_cost(ref, info, prompt_tokens, max_tokens,
                                                       scope, limit))
            if not budgets:
                return reservation, None
            try:
                return reservation, await shared.reserve(budgets, reservation.amount_usd)
            except BaseException:
                BudgetChain.release(reservation)
                raise
        except BudgetExceeded as exc:
            self._emit(ctx, "budget.exceeded", model=ref, scope=exc.scope,
                       limit_usd=exc.limit_usd, requested_usd=exc.requested_usd, error=str(exc))
            raise

    @asynccontextmanager
    async def _guard(self, provider: Any, provider_name: str, model_id: str,
                     request: ChatRequest, ctx: ToolContext | None) -> AsyncIterator[_Call]:
        """Budget, rate limit and circuit breaker around one provider call.

        The body sets ``call.usage`` and ``call.cost_usd`` on success; a body that received
        part of a reply before a provider error sets them to what was received, with
        ``call.partial`` (and ``call.estimated`` when counted locally), so the reservation is
        settled with that cost instead of released. The reservation is held until then.
        ``call.overshoot_usd`` is set when the reservation is settled.
        """
        shared = self._shared
        if shared is not None:
            if shared is _UNSET:
                shared = await self.shared_limits()
            if shared is not None:
                async with self._guard_shared(shared, provider, provider_name, model_id,
                                              request, ctx) as call:
                    yield call
                return
        ref = f"{provider_name}/{model_id}"
        info = await self.models.get(ref)
        self._check_images(request, ref, info)
        prompt = await self._prompt_tokens(provider, request)
        max_out = request.max_tokens or (info.max_output_tokens if info else None)
        breaker = self.breakers.breaker(provider_name)
        if breaker is not None:
            breaker.check()  # fail fast before reserving money or queueing
        callers = (caller_keys(ctx.actor) if ctx is not None and ctx.actor is not None
                   else [])
        reservation = self._reserve(ctx, ref, info, prompt, request.max_tokens, callers)
        call = _Call(provider_name, model_id, info, prompt, reservation)
        try:
            limited = await self.limiters.acquire(provider_name, model_id,
                                                  prompt + (max_out or 0), callers)
        except TimeoutError as exc:
            if reservation is not None:
                BudgetChain.release(reservation)
            raise RateLimitedError(f"{ref}: {exc} (limits.max_wait_s)", provider=provider_name,
                                   model=model_id) from exc
        except BaseException:
            if reservation is not None:
                BudgetChain.release(reservation)
            raise
        call.waited_s = limited.waited_s
        if limited.waited_s > 0:
            self._emit(ctx, "ratelimit.wait", key=ref, waited_s=limited.waited_s)
        probe = False
        try:
            probe = breaker.before_call() if breaker is not None else False
        except CircuitOpenError:
            limited.release()
            if reservation is not None:
                BudgetChain.release(reservation)
            raise
        try:
            yield call
        except RateLimitedError as exc:
            if (exc.retry_after is not None
                    and exc.retry_after > self.limiters.max_retry_after):
                # longer than limits.max_retry_after: fail now, never park the model
                exc.retriable = False
            elif exc.retry_after is not None and exc.retry_after > 0:
                key = self.limiters.pause(provider_name, model_id, exc.retry_after)
                self._emit(ctx, "ratelimit.paused", key=key, seconds=exc.retry_after)
            if breaker is not None:
                breaker.on_abort(probe)
            self._settle_failed(call, limited)
            raise
        except ProviderError as exc:
            if breaker is not None:
                if counts_as_failure(exc):
                    breaker.on_failure(probe)
                else:
                    breaker.on_success(probe)
            self._settle_failed(call, limited)
            raise
        except BaseException:
            # Cancelled or broken mid-call: the provider may have billed; keep the
            # reservation as spent (conservative).
            if breaker is not None:
                breaker.on_abort(probe)
            if reservation is not None:
                BudgetChain.settle(reservation, reservation.amount_usd)
            raise
        finally:
            limited.release()
        if breaker is not None:
            breaker.on_success(probe)
        if call.usage is not None:
            limited.record_tokens(call.usage.total_tokens)
        if reservation is not None:
            call.overshoot_usd = BudgetChain.settle(reservation, call.cost_usd,
                                                    estimated=call.estimated)

    @asynccontextmanager
    async def _guard_shared(self, shared: SharedLimits, provider: Any, provider_name: str,
                            model_id: str, request: ChatRequest, ctx: ToolContext | None
                            ) -> AsyncIterator[_Call]:
        """:meth:`_guard` with ``[limits] shared``: the breaker, the rate limits and the
        caller and global budgets are the shared backend's (the run, step and agent budgets
        stay in this process). Every backend failure raises StorageError (fail closed).
        """
        ref = f"{provider_name}/{model_id}"
        info = await self.models.get(ref)
        self._check_images(request, ref, info)
        prompt = await self._prompt_tokens(provider, request)
        max_out = request.max_tokens or (info.max_output_tokens if info else None)
        await shared.check(provider_name)  # fail fast before reserving money or queueing
        callers = (caller_keys(ctx.actor) if ctx is not None and ctx.actor is not None
                   else [])
        reservation, rid = await self._reserve_shared(shared, ctx, ref, info, prompt,
                                                      request.max_tokens, callers)
        call = _Call(provider_name, model_id, info, prompt, reservation,
                     shared_reservation=rid)
        try:
            permit = await shared.acquire(provider_name, model_id, prompt + (max_out or 0),
                                          callers)
        except TimeoutError as exc:
            await self._release_shared(shared, call)
            raise RateLimitedError(f"{ref}: {exc} (limits.max_wait_s)", provider=provider_name,
                                   model=model_id) from exc
        except BaseException:
            await self._release_shared(shared, call)
            raise
        call.waited_s = permit.waited_s
        if permit.waited_s > 0:
            self._emit(ctx, "ratelimit.wait", key=ref, waited_s=permit.waited_s)
        probe = False
        try:
            try:
                probe = await shared.before_call(provider_name)
            except BaseException:
                await self._release_shared(shared, call)
                raise
            try:
                yield call
            except RateLimitedError as exc:
                if (exc.retry_after is not None
                        and exc.retry_after > self.limiters.max_retry_after):
                    exc.retriable = False  # longer than limits.max_retry_after: fail now
                elif exc.retry_after is not None and exc.retry_after > 0:
                    with anyio.CancelScope(shield=True):
                        key = await shared.pause(provider_name, model_id, exc.retry_after)
                    self._emit(ctx, "ratelimit.paused", key=key, seconds=exc.retry_after)
                await self._settle_failed_shared(shared, call)
                await shared.outcome(provider_name, "abort", probe)
                raise
            except ProviderError as exc:
                await self._settle_failed_shared(shared, call)
                await shared.outcome(provider_name,
                                     "failure" if counts_as_failure(exc) else "success", probe)
                raise
            except BaseException:
                # Cancelled or broken mid-call: the provider may have billed; keep the
                # reservation as spent (conservative).
                if reservation is not None:
                    BudgetChain.settle(reservation, reservation.amount_usd)
                    if rid is not None:
                        await shared.settle(rid, reservation.amount_usd)
                await shared.outcome(provider_name, "abort", probe)
                raise
        finally:
            await permit.release(call.usage.total_tokens if call.usage is not None else None)
        await shared.outcome(provider_name, "success", probe)
        if reservation is not None:
            call.overshoot_usd = BudgetChain.settle(reservation, call.cost_usd,
                                                    estimated=call.estimated)
            if rid is not None:
                await shared.settle(rid, call.cost_usd)

    @staticmethod
    async def _release_shared(shared: SharedLimits, call: _Call) -> None:
        """Give a call's reservations back (in-process and shared): nothing was sent."""
        if call.reservation is not None:
            BudgetChain.release(call.reservation)
        if call.shared_reservation is not None:
            await shared.settle(call.shared_reservation, 0.0)

    @classmethod
    async def _settle_failed_shared(cls, shared: SharedLimits, call: _Call) -> None:
        """:meth:`_settle_failed` for both the in-process and the shared reservation."""
        if not call.partial:
            await cls._release_shared(shared, call)
            return
        if call.reservation is not None:
            call.overshoot_usd = BudgetChain.settle(call.reservation, call.cost_usd,
                                                    estimated=call.estimated)
        if call.shared_reservation is not None:
            await shared.settle(call.shared_reservation, call.cost_usd)

    @staticmethod
    def _check_images(request: ChatRequest, ref: str, info: ModelInfo | None) -> None:
        """Refuse a request with images for a model whose listed capabilities lack
        ``vision`` (before anything is reserved or sent; never drop the images).

        A model the registry does not know, or that lists no capabilities, is not refused:
        its provider sends the images and the server decides.

        Raises:
            BadRequestError: the model cannot take images (names how to say it can).
        """
        if info is None or not info.capabilities or "vision" in info.capabilities:
            return
        count = sum(len(m.images) for m in request.messages)
        if count:
            raise BadRequestError(
                f"{ref} cannot take images: the request has {count} image(s) and the model's "
                f"capabilities ({', '.join(sorted(info.capabilities))}) lack 'vision'; use a "
                f"vision model, or add \"vision\" to capabilities in "
                f"[models.info.\"{ref}\"] if this model does take images",
                provider=info.provider, model=info.model)

    @staticmethod
    def _settle_failed(call: _Call, limited: Any) -> None:
        """After a provider error: charge what a partial reply received (``call.partial``),
        else give the reservation back (nothing was received, so nothing is charged).
        """
        if not call.partial:
            if call.reservation is not None:
                BudgetChain.release(call.reservation)
            return
        if call.usage is not None:
            limited.record_tokens(call.usage.total_tokens)
        if call.reservation is not None:
            call.overshoot_usd = BudgetChain.settle(call.reservation, call.cost_usd,
                                                    estimated=call.estimated)

    def _error_event(self, ctx: ToolContext | None, provider_name: str, model_id: str,
                     exc: BaseException, started: float) -> None:
        self._emit(ctx, "llm.error", provider=provider_name, model=model_id,
                   error_type=type(exc).__name__, error=str(exc),
                   retriable=bool(getattr(exc, "retriable", False)),
                   latency_s=round(time.perf_counter() - started, 6))

    # ------------------------------------------------------------------ routing

    def _router(self, name: str | None) -> tuple[str, Router]:
        router_name = name or str(self.stack.config.get("routing.router") or "cheapest")
        return router_name, self.stack.routers.get(router_name)

    async def route(self, route: RouteRequest | None = None, *, router: str | None = None,
                    request: ChatRequest | None = None) -> tuple[str, list[tuple[ModelInfo, str]]]:
        """Ask a router which models to try; return ``(router name, [(model, reason)])``.

        Capabilities implied by ``request`` are added to the route's: ``tools`` when tools are
        given, ``json`` for a response schema, ``vision`` for images. The prompt size is
        estimated when the route does not say.

        Raises:
            UnknownNameError: unknown router, or no model meets the requirements.
        """
        router_name, chooser = self._router(router)
        await self._load_router_state(router_name, chooser)
        route = route if route is not None else RouteRequest()
        capabilities = set(route.capabilities)
        estimate = route.estimated_input_tokens
        if request is not None:
            if request.tools:
                capabilities.add("tools")
            if request.response_schema is not None:
                capabilities.add("json")
            if any(m.images for m in request.messages):
                capabilities.add("vision")
            estimate = estimate or estimate_prompt_tokens(request)
        route = RouteRequest(capabilities=sorted(capabilities), min_context=route.min_context,
                             max_input_price=route.max_input_price,
                             candidates=route.candidates, estimated_input_tokens=estimate)
        models = await self.models.all()
        if isinstance(chooser, SupportsExplainedChoice):
            choices = list(await chooser.choose_explained(route, models))
        else:
            choices = [(m, f"position {i + 1} of router {router_name!r}")
                       for i, m in enumerate(await chooser.choose(route, models))]
        if not choices:
            raise UnknownNameError("model meeting the route requirements", AUTO,
                                   [m.ref for m in models])
        return router_name, choices

    def _persist_routers(self) -> bool:
        value = self.stack.config.get("routing.persist", True)
        if not isinstance(value, bool):
            raise ConfigError(f"routing.persist must be true or false, got {value!r}")
        return value and self.stack.storage_is_open

    async def _load_router_state(self, name: str, chooser: Any) -> None:
        """Give a learning router (:class:`~flowyard.interfaces.SupportsRouterState`) what it
        learned in earlier processes, from the storage key-value area (namespace
        ``flowyard.routing``).
        """
        if name in self._router_state_loaded or not isinstance(chooser, SupportsRouterState):
            return
        if not self._persist_routers():
            return
        self._router_state_loaded.add(name)
        state = await self.stack.storage.kv_get(ROUTER_STATE_NAMESPACE, name)
        if state is None:
            return
        try:
            chooser.import_state(state)
        except ValueError as exc:
            # The stored state is kept as it is (never lose data); the router starts afresh.
            self.stack.events.make("router.state_error", router=name, error=str(exc))

    async def _save_router_state(self, name: str, chooser: Any) -> None:
        if name not in self._router_state_loaded or not isinstance(chooser,
                                                                   SupportsRouterState):
            return
        if self._persist_routers():
            await self.stack.storage.kv_set(ROUTER_STATE_NAMESPACE, name, chooser.export_state())

    async def _routed(self, router_name: str, chooser: Any,
                      choices: list[tuple[ModelInfo, str]], ctx: ToolContext | None,
                      messages: Sequence[Message] | str, params: dict[str, Any]
                      ) -> ChatResponse:
        last: BaseException | None = None
        fallbacks = [m.ref for m, _ in choices[1:]]
        for attempt, (info, reason) in enumerate(choices):
            if last is not None:
                reason = f"after {type(last).__name__} from the previous model: {reason}"
            self._emit(ctx, "router.choice", router=router_name, model=info.ref, reason=reason,
                       attempt=attempt, fallbacks=fallbacks[attempt:])
            started = time.perf_counter()
            try:
                response = await self._chat_one(info.provider, info.model, messages, ctx,
                                                dict(params), router=router_name)
            except BudgetExceeded as exc:
                last = exc
                continue
            except ProviderError as exc:
                chooser.record_outcome(info, success=False, cost_usd=None,
                                       latency_s=time.perf_counter() - started)
                if not exc.retriable:
                    raise
                last = exc
                continue
            chooser.record_outcome(info, success=True, cost_usd=response.cost_usd,
                                   latency_s=time.perf_counter() - started)
            return response
        assert last is not None
        raise last

    # ------------------------------------------------------------------ calls

    async def _chat_one(self, provider_name: str, model_id: str,
                        messages: Sequence[Message] | str, context: ToolContext | None,
                        params: dict[str, Any], **extra: Any) -> ChatResponse:
        provider = self.stack.providers.get(provider_name)
        guards = guard_set(self.stack)
        if guards is not None:
            messages = await self._guard_prompt(guards, provider_name, model_id, messages,
                                                context)
        if context is not None and context.idempotency_key and "idempotency_key" not in params:
            params["idempotency_key"] = context.idempotency_key
        request = self.build_request(model_id, messages, **params)
        started = time.perf_counter()
        try:
            async with self._guard(provider, provider_name, model_id, request, context) as call:
                started = time.perf_counter()
                response = await provider.chat(request)
                call.usage = response.usage
                call.cost_usd = await self._cost(f"{provider_name}/{model_id}",
                                                 response.cost_usd, response.usage)
        except (ProviderError, BudgetExceeded) as exc:
            self._error_event(context, provider_name, model_id, exc, started)
            raise
        latency = time.perf_counter() - started
        response = attrs.evolve(response, cost_usd=call.cost_usd, provider=provider_name,
                                model=response.model or model_id)
        if guards is not None and guards.has("model_output"):
            message = await guards.apply("model_output", f"{provider_name}/{model_id}",
                                         response.message, context)
            response = attrs.evolve(response, message=message)
        await self._record(context, provider_name, model_id, response.usage, call.cost_usd,
                           latency, finish_reason=response.finish_reason,
                           waited_s=round(call.waited_s, 6),
                           overshoot_usd=call.overshoot_usd, **extra)
        return response

    @staticmethod
    async def _guard_prompt(guards: GuardSet, provider_name: str, model_id: str,
                            messages: Sequence[Message] | str, context: ToolContext | None
                            ) -> Sequence[Message] | str:
        """Pass the prompt through the ``model`` guards (they may deny or redact it)."""
        if not guards.has("model"):
            return messages
        listed = [Message.user(messages)] if isinstance(messages, str) else list(messages)
        return await guards.apply("model", f"{provider_name}/{model_id}", listed, context)

    async def chat(self, messages: Sequence[Message] | str, *, model: str | None = None,
                   context: ToolContext | None = None, route: RouteRequest | None = None,
                   router: str | None = None, cache: Any = None, **params: Any
                   ) -> ChatResponse:
        """Call a model and return its response, with ``cost_usd`` filled where known.

        A cache hit (see ``cache``) makes no provider call: its response has ``cost_usd``
        0.0, zero usage, ``raw["cache"] == "hit"`` and ``raw["saved_usd"]``, and emits
        ``llm.cache.hit``; a miss emits ``llm.cache.miss`` and stores the response.

        Args:
            messages: the conversation, or a prompt string.
            model: ``provider/model``, an alias, ``"auto"`` (a router chooses), or None (the
                default model, which may itself be ``"auto"``).
            context: the calling step's context: events and cost lines are attributed to it,
                and ``context.budget`` (a :class:`~flowyard.llm.budget.BudgetChain`) is charged.
            route: requirements for ``"auto"`` (capabilities, minimum context, maximum price,
                candidates).
            router: router name for ``"auto"`` (default: ``routing.router``, else
                ``cheapest``).
            cache: ``True``, ``{ttl_s, allow_nondeterministic}`` or a
                :class:`~flowyard.llm.cache.CachePolicy`: answer a repeated deterministic
                request from the response cache (:mod:`flowyard.llm.cache`); None (default):
                ``[cache.models."<model>"]`` applies to that model's deterministic requests;
                False: never use the cache.
            **params: :class:`ChatRequest` fields (temperature, max_tokens, tools, ...).

        Raises:
            BudgetExceeded: the estimated maximum cost does not fit a budget (nothing sent).
            CircuitOpenError: the provider's breaker is open.
            ProviderError: typed provider errors (for ``"auto"``: the last model's error
                once every candidate failed).
            UnknownNameError: unknown provider or router, or no model meets the route.
            ValueError: ``cache`` asked for on a request that is neither ``temperature`` 0
                nor seeded, without ``allow_nondeterministic``.
            ConfigError: a malformed ``cache`` value or ``[cache]`` table.
        """
        ref = self._alias(model or self.default_model())
        policy = self._cache_policy(ref, cache, params)
        if policy is not None:
            return await self._chat_cached(policy, ref, messages, context, route, router,
                                           params)
        return await self._chat_uncached(ref, messages, context, route, router, params)

    def _cache_policy(self, ref: str, cache: Any, params: Mapping[str, Any]
                      ) -> CachePolicy | None:
        """Return the response cache policy of one call (None: not cached).

        Raises:
            ValueError: ``cache`` on a sampled request without ``allow_nondeterministic``.
            ConfigError: a malformed ``cache`` or ``[cache.models]`` entry.
        """
        if cache is False:
            return None
        section = self.stack.config.section("cache")
        if cache is None:
            policy = configured_policy(section, ref)
            # a model-wide setting caches only what may be cached without asking
            if policy is None or (not policy.allow_nondeterministic
                                  and not is_deterministic(params)):
                return None
            return policy
        policy = cache if isinstance(cache, CachePolicy) else CachePolicy.from_argument(
            cache, default_ttl_s=default_ttl(section), where="cache")
        if policy is not None and not policy.allow_nondeterministic \
                and not is_deterministic(params):
            raise ValueError(
                "cache: only deterministic requests are cached (temperature=0 or a seed); "
                "pass temperature=0 or seed=..., or cache={'allow_nondeterministic': True}")
        return policy

    async def _chat_cached(self, policy: CachePolicy, ref: str,
                           messages: Sequence[Message] | str, context: ToolContext | None,
                           route: RouteRequest | None, router: str | None,
                           params: dict[str, Any]) -> ChatResponse:
        """:meth:`chat` through the response cache (see :mod:`flowyard.llm.cache`)."""
        listed = [Message.user(messages)] if isinstance(messages, str) else list(messages)
        cache = await open_response_cache(self.stack)
        key = request_key(ref, listed, {**params, "route": route})
        entry = await cache.get(key)
        if entry is not None:
            self._emit(context, "llm.cache.hit", key=key,
                       model=f"{entry.provider}/{entry.model}", cost_usd=0.0,
                       saved_usd=entry.cost_usd, input_tokens=entry.input_tokens,
                       output_tokens=entry.output_tokens)
            calls = [structure(c, ToolCall) for c in entry.tool_calls]
            return ChatResponse(message=Message.assistant(entry.text, tool_calls=calls),
                                model=entry.model, provider=entry.provider,
                                finish_reason=entry.finish_reason, cost_usd=0.0,
                                raw={"cache": "hit", "saved_usd": entry.cost_usd})
        self._emit(context, "llm.cache.miss", key=key, model=ref)
        response = await self._chat_uncached(ref, messages, context, route, router, params)
        await cache.put(key, CachedResponse(
            response.text, provider=response.provider, model=response.model,
            input_tokens=response.usage.input_tokens,
            output_tokens=response.usage.output_tokens, cost_usd=response.cost_usd,
            tool_calls=unstructure(response.message.tool_calls),
            finish_reason=response.finish_reason), ttl_s=policy.ttl_s)
        return response

    async def _chat_uncached(self, ref: str, messages: Sequence[Message] | str,
                             context: ToolContext | None, route: RouteRequest | None,
                             router: str | None, params: dict[str, Any]) -> ChatResponse:
        """:meth:`chat` without the response cache."""
        if ref == AUTO:
            probe = self.build_request(AUTO, messages, **params)
            router_name, choices = await self.route(route, router=router, request=probe)
            _, chooser = self._router(router_name)
            try:
                return await self._routed(router_name, chooser, choices, context, messages,
                                          params)
            finally:
                await self._save_router_state(router_name, chooser)
        provider_name, model_id = split_ref(ref)
        return await self._chat_one(provider_name, model_id, messages, context, dict(params))

    async def stream(self, messages: Sequence[Message] | str, *, model: str | None = None,
                     context: ToolContext | None = None, route: RouteRequest | None = None,
                     router: str | None = None, **params: Any) -> AsyncIterator[ChatChunk]:
        """Stream a completion chunk by chunk; the usage is recorded when the stream ends.

        Budgets, rate limits and breakers apply as in :meth:`chat` (the rate-limit slot is
        held until the stream ends). With ``model="auto"`` the router's first choice is
        streamed; a retriable error before the first chunk moves on to the next choice.

        Raises:
            ProviderError: as :meth:`chat`; MalformedResponseError for a cut stream.
        """
        ref = self._alias(model or self.default_model())
        if ref != AUTO:
            provider_name, model_id = split_ref(ref)
            async for chunk in self._stream_one(provider_name, model_id, messages, context,
                                                dict(params)):
                yield chunk
            return
        probe = self.build_request(AUTO, messages, **params)
        router_name, choices = await self.route(route, router=router, request=probe)
        _, chooser = self._router(router_name)
        try:
            async for chunk in self._stream_routed(router_name, chooser, choices, context,
                                                   messages, params):
                yield chunk
        finally:
            await self._save_router_state(router_name, chooser)

    async def _stream_routed(self, router_name: str, chooser: Any,
                             choices: list[tuple[ModelInfo, str]], context: ToolContext | None,
                             messages: Sequence[Message] | str, params: dict[str, Any]
                             ) -> AsyncIterator[ChatChunk]:
        last: BaseException | None = None
        for attempt, (info, reason) in enumerate(choices):
            self._emit(context, "router.choice", router=router_name, model=info.ref,
                       reason=reason, attempt=attempt,
                       fallbacks=[m.ref for m, _ in choices[attempt + 1:]])
            started = time.perf_counter()
            yielded = False
            try:
                async for chunk in self._stream_one(info.provider, info.model, messages,
                                                    context, dict(params), router=router_name):
                    yielded = True
                    yield chunk
            except BudgetExceeded as exc:
                if yielded:
                    raise
                last = exc
                continue
            except ProviderError as exc:
                chooser.record_outcome(info, success=False, cost_usd=None,
                                       latency_s=time.perf_counter() - started)
                if yielded or not exc.retriable:
                    raise
                last = exc
                continue
            chooser.record_outcome(info, success=True, cost_usd=None,
                                   latency_s=time.perf_counter() - started)
            return
        assert last is not None
        raise last

    async def _stream_one(self, provider_name: str, model_id: str,
                          messages: Sequence[Message] | str, context: ToolContext | None,
                          params: dict[str, Any], **extra: Any) -> AsyncIterator[ChatChunk]:
        """Stream one model; charge what was received (see the module docstring).

        Usage reported by the server is charged as reported. Without it (a server that sends
        none, or a stream cut before it) the prompt (``call.prompt_estimate``: the provider's
        ``count_prompt_tokens`` or the conservative estimate) and the output received
        (:func:`~flowyard.llm.budget.estimate_output_tokens`) are charged, marked
        ``estimated``. With a budget and a known price, a stream whose charge passes its
        reservation is closed after the chunk that passed it and ended with a
        ``finish_reason="length"`` chunk; the excess (at most that chunk) is the overshoot.

        Raises:
            ProviderError: the provider's error (a cut stream: after its partial cost line
                and ``llm.call`` event with ``partial=True``).
            BudgetExceeded: the reservation did not fit (nothing sent).
        """
        provider = self.stack.providers.get(provider_name)
        guards = guard_set(self.stack)
        if guards is not None:
            messages = await self._guard_prompt(guards, provider_name, model_id, messages,
                                                context)
        redact = guards is not None and guards.has("model_output")
        request = self.build_request(model_id, messages, **params)
        ref = f"{provider_name}/{model_id}"
        started = time.perf_counter()
        usage = Usage()
        usage_reported = False
        received = _Received()
        stopped: str | None = None
        call: _Call | None = None
        try:
            async with self._guard(provider, provider_name, model_id, request, context) as call:
                started = time.perf_counter()
                price = call.info.price if call.info is not None else None
                cap = (call.reservation.amount_usd
                       if call.reservation is not None and price is not None else None)
                chunks = provider.stream(request)
                try:
                    async for chunk in chunks:
                        if chunk.usage is not None:
                            usage = chunk.usage
                            usage_reported = True
                        received.add(chunk)
                        if redact and chunk.delta:
                            assert guards is not None
                            chunk = attrs.evolve(chunk, delta=await guards.apply(
                                "model_output", ref, chunk.delta, context))
                        yield chunk
                        if cap is not None and not chunk.done:
                            so_far = usage if usage_reported else received.usage(
                                call.prompt_estimate)
                            if price.cost(so_far) > cap + 1e-12:  # type: ignore[union-attr]
                                stopped = "reservation used up"
                                break
                except ProviderError:
                    if received.chunks:  # the reply had begun: the provider bills it
                        call.partial = True
                        self._charge(call, price, usage if usage_reported else None, received)
                    raise
                finally:
                    if isinstance(chunks, AsyncGenerator):  # close the provider's stream now
                        await chunks.aclose()
                if usage_reported:
                    call.usage = usage
                    call.cost_usd = await self._cost(ref, None, usage)
                else:
                    self._charge(call, price, None, received)
        except (ProviderError, BudgetExceeded) as exc:
            if call is not None and call.partial and call.usage is not None:
                await self._record(context, provider_name, model_id, call.usage,
                                   call.cost_usd, time.perf_counter() - started,
                                   estimated=call.estimated, overshoot_usd=call.overshoot_usd,
                                   streamed=True, usage_reported=usage_reported, partial=True,
                                   stopped=None, finish_reason=None,
                                   waited_s=round(call.waited_s, 6), **extra)
            self._error_event(context, provider_name, model_id, exc, started)
            raise
        assert call is not None and call.usage is not None
        await self._record(context, provider_name, model_id, call.usage, call.cost_usd,
                           time.perf_counter() - started, estimated=call.estimated,
                           overshoot_usd=call.overshoot_usd, streamed=True,
                           usage_reported=usage_reported, partial=False, stopped=stopped,
                           finish_reason="length" if stopped else received.finish_reason,
                           waited_s=round(call.waited_s, 6), **extra)
        if stopped:
            yield ChatChunk(done=True, finish_reason="length", usage=call.usage)

    @staticmethod
    def _charge(call: _Call, price: Any, reported: Usage | None, received: _Received) -> None:
        """Set ``call.usage``/``call.cost_usd`` from reported usage, else from the locally
        counted prompt and received output (``call.estimated``). Cost None: unknown price.
        """
        if reported is not None:
            call.usage = reported
        else:
            call.usage = received.usage(call.prompt_estimate)
            call.estimated = True
        call.cost_usd = price.cost(call.usage) if price is not None else None

    async def embed(self, texts: Sequence[str], *, model: str | None = None) -> list[list[float]]:
        """Return embeddings of ``texts`` from ``model`` (``provider/model``).

        Rate limits (one request; tokens estimated from the text) and the circuit breaker
        apply; budgets do not (embedding calls return no usage to settle against).

        Raises:
            ConfigError: no model given and ``models.embedding`` is not set.
        """
        ref = model or self.stack.config.get("models.embedding")
        if not ref:
            raise ConfigError("no embedding model: pass model= or set models.embedding")
        provider, provider_name, model_id = self.resolve(str(ref))
        tokens = sum(estimate_text_tokens(t) for t in texts)
        shared = self._shared
        if shared is _UNSET:
            shared = await self.shared_limits()
        if shared is not None:
            return await self._embed_shared(shared, provider, provider_name, model_id, texts,
                                            tokens)
        limited = await self.limiters.acquire(provider_name, model_id, tokens)
        breaker = self.breakers.breaker(provider_name)
        try:
            probe = breaker.before_call() if breaker is not None else False
        except CircuitOpenError:
            limited.release()
            raise
        try:
            vectors = await provider.embed(list(texts), model=model_id)
        except RateLimitedError as exc:
            if exc.retry_after and exc.retry_after > self.limiters.max_retry_after:
                exc.retriable = False  # longer than limits.max_retry_after: fail now
            elif exc.retry_after:
                self.limiters.pause(provider_name, model_id, exc.retry_after)
            if breaker is not None:
                breaker.on_abort(probe)
            raise
        except ProviderError as exc:
            if breaker is not None:
                (breaker.on_failure if counts_as_failure(exc) else breaker.on_success)(probe)
            raise
        except BaseException:
            if breaker is not None:
                breaker.on_abort(probe)
            raise
        finally:
            limited.release()
        if breaker is not None:
            breaker.on_success(probe)
        return vectors

    async def _embed_shared(self, shared: SharedLimits, provider: Any, provider_name: str,
                            model_id: str, texts: Sequence[str], tokens: int
                            ) -> list[list[float]]:
        """:meth:`embed` under the shared rate limits and breaker."""
        await shared.check(provider_name)
        try:
            permit = await shared.acquire(provider_name, model_id, tokens)
        except TimeoutError as exc:
            raise RateLimitedError(f"{provider_name}/{model_id}: {exc} (limits.max_wait_s)",
                                   provider=provider_name, model=model_id) from exc
        try:
            probe = await shared.before_call(provider_name)
            try:
                vectors = await provider.embed(list(texts), model=model_id)
            except RateLimitedError as exc:
                if exc.retry_after and exc.retry_after > self.limiters.max_retry_after:
                    exc.retriable = False
                elif exc.retry_after:
                    with anyio.CancelScope(shield=True):
                        await shared.pause(provider_name, model_id, exc.retry_after)
                await shared.outcome(provider_name, "abort", probe)
                raise
            except ProviderError as exc:
                await shared.outcome(provider_name,
                                     "failure" if counts_as_failure(exc) else "success", probe)
                raise
            except BaseException:
                await shared.outcome(provider_name, "abort", probe)
                raise
        finally:
            await permit.release()
        await shared.outcome(provider_name, "success", probe)
        return vectors

    # ------------------------------------------------------------------ introspection

    def health(self) -> dict[str, Any]:
        """Return rate limiter and circuit breaker state, JSON-ready (with ``[limits]
        shared``, ``"shared"`` names the backend, whose state is not copied here).
        """
        found = {"limits": self.limiters.stats(), "circuits": self.breakers.snapshot()}
        if isinstance(self._shared, SharedLimits):
            found["shared"] = {"url": self._shared.where}
        return found
