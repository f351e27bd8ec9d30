"""Budgets in US dollars, with atomic reservations.

Before an LLM call, the gateway reserves the call's estimated maximum cost in every budget
scope that applies (run, step, agent). A reservation that does not fit raises
:class:`~flowyard.errors.BudgetExceeded` and the call is not made; after the call the
reservation is reconciled with the actual cost. Reservations are taken under one lock per
budget chain, so concurrent calls can never overspend, even under fan-out and retries.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import attrs

from flowyard.errors import BudgetExceeded, ConfigError

if TYPE_CHECKING:
    from flowyard.models import ChatRequest, ModelPrice

__all__ = ["Budget", "BudgetChain", "Reservation", "CallerBudgets", "estimate_text_tokens",
           "estimate_prompt_tokens", "estimate_output_tokens", "estimate_max_cost",
           "IMAGE_TOKENS", "MESSAGE_OVERHEAD", "CHARS_PER_OUTPUT_TOKEN"]

#: Tokens assumed per image part (conservative: a 2048 px image at high detail costs about
#: 1100 OpenAI tokens and 1600 Anthropic tokens).
IMAGE_TOKENS = 1600
#: Tokens assumed per message for role and separators (OpenAI's chat format uses 3-4).
MESSAGE_OVERHEAD = 4

_LOCK = threading.Lock()  # reservations across scopes are atomic as a whole


@attrs.define(eq=False)
class Budget:
    """One budget scope.

    Args:
        limit_usd: the most that may be spent, in US dollars.
        scope: ``"run"``, ``"step"`` or ``"agent"`` (for messages and events).
        name: which run, step or agent.

    Attributes:
        spent_usd: actual cost of finished calls (including any overshoot).
        reserved_usd: estimated maximum of calls in flight.
        overshoot_usd: how much finished calls cost beyond their reservations, in US dollars
            (a server ignoring ``max_tokens``); already part of ``spent_usd``, so
            ``spent_usd`` may exceed ``limit_usd`` by at most this much.
        estimated_calls: finished calls whose cost was estimated from locally counted tokens.
    """

    limit_usd: float
    scope: str = "run"
    name: str = ""
    spent_usd: float = 0.0
    reserved_usd: float = 0.0
    unknown_cost_calls: int = 0
    overshoot_usd: float = 0.0
    estimated_calls: int = 0

    def __attrs_post_init__(self) -> None:
        if self.limit_usd < 0:
            raise ValueError(f"budget limit must be >= 0 US dollars, got {self.limit_usd}")

    @property
    def remaining_usd(self) -> float:
        """The limit minus what is spent and reserved, in US dollars (never below 0)."""
        return max(0.0, self.limit_usd - self.spent_usd - self.reserved_usd)

    def snapshot(self) -> dict[str, Any]:
        """Return the budget as a JSON-ready dict (US dollars)."""
        return {"scope": self.scope, "name": self.name, "limit_usd": self.limit_usd,
                "spent_usd": self.spent_usd, "reserved_usd": self.reserved_usd,
                "remaining_usd": self.remaining_usd,
                "unknown_cost_calls": self.unknown_cost_calls,
                "overshoot_usd": self.overshoot_usd, "estimated_calls": self.estimated_calls}


@attrs.define(eq=False)
class Reservation:
    """An amount held in several budgets until :meth:`BudgetChain.settle` or
    :meth:`BudgetChain.release`.
    """

    budgets: tuple[Budget, ...]
    amount_usd: float
    settled: bool = False


@attrs.frozen
class BudgetChain:
    """The budgets that apply to one call, outermost first (run, step, agent)."""

    budgets: tuple[Budget, ...] = ()

    def extend(self, budget: Budget | None) -> BudgetChain:
        """Return a chain with ``budget`` added (unchanged when None)."""
        return self if budget is None else BudgetChain((*self.budgets, budget))

    def reserve(self, amount_usd: float) -> Reservation:
        """Hold ``amount_usd`` in every budget of the chain, all or none.

        Raises:
            BudgetExceeded: some budget's remaining amount is smaller; nothing is held.
        """
        if amount_usd < 0:
            raise ValueError("reservation must be >= 0 US dollars")
        with _LOCK:
            for budget in self.budgets:
                if amount_usd > budget.remaining_usd + 1e-12:
                    raise BudgetExceeded(
                        f"{budget.scope} budget {budget.name!r} of ${budget.limit_usd:.6f} "
                        f"cannot cover ${amount_usd:.6f} (spent ${budget.spent_usd:.6f}, "
                        f"reserved ${budget.reserved_usd:.6f})",
                        scope=budget.scope, limit_usd=budget.limit_usd,
                        requested_usd=amount_usd,
                    )
            for budget in self.budgets:
                budget.reserved_usd += amount_usd
        return Reservation(self.budgets, amount_usd)

    @staticmethod
    def settle(reservation: Reservation, actual_usd: float | None, *,
               estimated: bool = False) -> float:
        """Replace the held amount with the actual cost (US dollars). Idempotent.

        ``None`` means the cost is unknown (a model without a price, allowed by
        ``budgets.unknown_price = "allow"``): nothing is added to ``spent_usd`` and the
        budgets count it in ``unknown_cost_calls``. An actual cost above the reservation (a
        server that ignored ``max_tokens``) is spent in full and the excess is added to every
        budget's ``overshoot_usd``. ``estimated`` counts the call in ``estimated_calls``.

        Returns:
            The overshoot in US dollars: ``actual_usd - amount_usd`` when positive, else 0.0
            (also 0.0 for an unknown cost and for a reservation settled before).
        """
        with _LOCK:
            if reservation.settled:
                return 0.0
            reservation.settled = True
            overshoot = 0.0
            if actual_usd is not None and actual_usd > reservation.amount_usd + 1e-12:
                overshoot = actual_usd - reservation.amount_usd
            for budget in reservation.budgets:
                budget.reserved_usd -= reservation.amount_usd
                if actual_usd is None:
                    budget.unknown_cost_calls += 1
                else:
                    budget.spent_usd += actual_usd
                    budget.overshoot_usd += overshoot
                if estimated:
                    budget.estimated_calls += 1
            return overshoot

    @staticmethod
    def release(reservation: Reservation) -> None:
        """Give the held amount back (the call failed before costing anything)."""
        BudgetChain.settle(reservation, 0.0)

    def __bool__(self) -> bool:
        return bool(self.budgets)

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self.budgets)

    @classmethod
    def of(cls, budgets: Sequence[Budget | None]) -> BudgetChain:
        """Build a chain from budgets, skipping None."""
        return cls(tuple(b for b in budgets if b is not None))

    @property
    def remaining_usd(self) -> float:
        """The smallest remaining amount of the chain (inf for an empty chain), US dollars."""
        return min((b.remaining_usd for b in self.budgets), default=math.inf)

    def snapshot(self) -> list[dict[str, Any]]:
        """Return every budget's :meth:`Budget.snapshot`, outermost first."""
        with _LOCK:
            return [b.snapshot() for b in self.budgets]


# ----------------------------------------------------------------------------- estimates


def estimate_text_tokens(text: str) -> int:
    """Return a conservative token count for ``text``.

    ASCII characters count one token per 3 characters (English text averages about 4
    characters per token in GPT and Llama tokenizers); every other character counts as one
    token (CJK and emoji often take 1-2 tokens each, accented letters 1).
    """
    if not text:
        return 0
    if text.isascii():
        return math.ceil(len(text) / 3)
    ascii_chars = len(text.encode("ascii", "ignore"))
    return math.ceil(ascii_chars / 3) + (len(text) - ascii_chars)


#: Characters per output token assumed when a server reports no usage: OpenAI's documented
#: rule of thumb for English ("one token is about 4 characters"), also close for Llama and
#: Claude tokenizers on English prose.
CHARS_PER_OUTPUT_TOKEN = 4


def estimate_output_tokens(text: str, tool_calls: Sequence[Any] = ()) -> int:
    """Return an estimate of the output tokens of ``text`` (received reply text) and of
    ``tool_calls`` (:class:`~flowyard.models.ToolCall`: name and JSON arguments), for a stream
    whose server sent no usage or was cut before sending it.

    ASCII characters count one token per :data:`CHARS_PER_OUTPUT_TOKEN` (4) characters, every
    other character one token. Unlike :func:`estimate_text_tokens` (an upper bound, 3
    characters per token, used to *reserve*), this is the expected count: it is *charged* as
    spent and decides when a stream has used up its reservation, so a conservative count
    would both overbill and cut off servers that honour ``max_tokens`` just before their own
    end. Remote models have no local tokenizer in flowyard, and providers expose no
    output-counting hook (``count_prompt_tokens`` counts requests only), hence the estimate;
    cost lines from it are marked ``estimated``.
    """
    import json

    total = 0
    if text:
        ascii_chars = len(text) if text.isascii() else len(text.encode("ascii", "ignore"))
        total += math.ceil(ascii_chars / CHARS_PER_OUTPUT_TOKEN) + (len(text) - ascii_chars)
    for call in tool_calls:
        total += estimate_output_tokens(str(getattr(call, "name", "")))
        total += estimate_output_tokens(json.dumps(getattr(call, "arguments", {}),
                                                   ensure_ascii=False, default=str))
    return total


def estimate_prompt_tokens(request: ChatRequest) -> int:
    """Return a conservative estimate of the prompt tokens of ``request``: every message's
    text, tool calls and name (:func:`estimate_text_tokens`), :data:`MESSAGE_OVERHEAD` per
    message, :data:`IMAGE_TOKENS` per image, and the JSON of tool schemas and the response
    schema.
    """
    import json

    total = 3  # reply priming
    for message in request.messages:
        total += MESSAGE_OVERHEAD + estimate_text_tokens(message.text)
        total += IMAGE_TOKENS * len(message.images)
        if message.name:
            total += estimate_text_tokens(message.name)
        for call in message.tool_calls:
            total += estimate_text_tokens(call.name) + estimate_text_tokens(
                json.dumps(call.arguments, ensure_ascii=False)) + MESSAGE_OVERHEAD
    for spec in request.tools:
        total += estimate_text_tokens(spec.name) + estimate_text_tokens(spec.description)
        total += estimate_text_tokens(json.dumps(spec.parameters, ensure_ascii=False))
        total += MESSAGE_OVERHEAD
    if request.response_schema is not None:
        total += estimate_text_tokens(json.dumps(request.response_schema, ensure_ascii=False))
    return total


def estimate_max_cost(price: ModelPrice, prompt_tokens: int, max_output_tokens: int) -> float:
    """Return the most a call can cost in US dollars: ``prompt_tokens`` input tokens and
    ``max_output_tokens`` output tokens at ``price`` (per million tokens).
    """
    return (prompt_tokens * price.input_per_mtok
            + max_output_tokens * price.output_per_mtok) / 1_000_000


class CallerBudgets:
    """Daily budgets per caller, and the deployment-wide budget.

    Per caller: ``[budgets.<kind>.<id>] usd_per_day = 5`` (kinds ``user``, ``key``,
    ``tenant``; id ``"*"``: each caller of that kind gets its own budget of that size). A
    caller's budget covers one UTC day and starts afresh at midnight UTC.

    Deployment-wide: ``[budgets.global] usd_per_day = 20`` (every call of the deployment, per
    UTC day) and/or ``usd = 100`` (every call, in total, with no reset). Every call is
    charged to them, with or without a caller.

    Without ``[limits] shared`` these budgets are kept in the memory of the process (a
    server's worker): a restart starts them at $0, and two processes each keep their own
    (:meth:`budgets`). With it they live in the shared backend (:meth:`shared_budgets` gives
    their keys), where every process charges the same ones.

    Args:
        section: the ``[budgets]`` table (its caller-kind tables and ``global`` are read;
            other keys, such as ``unknown_price``, are left to their readers).
        now: wall-clock time source (seconds since the epoch), for tests.

    Raises:
        ConfigError: a caller table that is not ``id -> {usd_per_day = number >= 0}``, or a
            ``global`` table other than ``{usd_per_day = number >= 0, usd = number >= 0}``
            (either or both).
    """

    KINDS = ("user", "key", "tenant")
    #: the keys a ``[budgets.global]`` table may have: ``usd_per_day`` and ``usd`` (total)
    GLOBAL_KEYS = ("usd_per_day", "usd")

    def __init__(self, section: Mapping[str, object], *,
                 now: Callable[[], float] = time.time) -> None:
        self.now = now
        self.limits: dict[tuple[str, str], float] = {}
        for kind in self.KINDS:
            table = section.get(kind)
            if table is None:
                continue
            if not isinstance(table, Mapping):
                raise ConfigError(f"budgets.{kind} must be a table of caller ids, got {table!r}")
            for ident, entry in table.items():
                where = f"budgets.{kind}.{ident!r}"
                if not isinstance(entry, Mapping) or set(entry) != {"usd_per_day"}:
                    raise ConfigError(f"{where} must be a table with usd_per_day only, got "
                                      f"{entry!r}")
                limit = entry["usd_per_day"]
                if isinstance(limit, bool) or not isinstance(limit, (int, float)) or limit < 0:
                    raise ConfigError(f"{where}.usd_per_day must be a number >= 0, got "
                                      f"{limit!r}")
                self.limits[(kind, str(ident))] = float(limit)
        #: ``[budgets.global]``: ``"usd_per_day"`` and/or ``"usd"`` -> US dollars
        self.global_limits: dict[str, float] = {}
        table = section.get("global")
        if table is not None:
            if not isinstance(table, Mapping) or not table or not set(table) <= set(
                    self.GLOBAL_KEYS):
                raise ConfigError(f"budgets.global must be a table with usd_per_day and/or "
                                  f"usd, got {table!r}")
            for name, limit in table.items():
                if isinstance(limit, bool) or not isinstance(limit, (int, float)) or not (
                        0 <= limit < math.inf):
                    raise ConfigError(f"budgets.global.{name} must be a number >= 0, got "
                                      f"{limit!r}")
                self.global_limits[name] = float(limit)
        self._current: dict[tuple[str, str], tuple[int, Budget]] = {}
        self._total: Budget | None = (
            Budget(self.global_limits["usd"], scope="global", name="total")
            if "usd" in self.global_limits else None)

    def __bool__(self) -> bool:
        return bool(self.limits) or bool(self.global_limits)

    def shared_budgets(self, callers: Sequence[tuple[str, str]]
                       ) -> list[tuple[str, float, str, str]]:
        """Return the keys of today's shared budgets of ``callers`` and of the deployment.

        Keys: ``"budget:<kind>:<id>:<YYYY-MM-DD>"`` (UTC day) per caller,
        ``"budget:global:day:<YYYY-MM-DD>"`` and ``"budget:global:total"``.

        Args:
            callers: ``(kind, id)`` pairs (:func:`flowyard.llm.ratelimit.caller_keys`).

        Returns:
            ``(key, limit in US dollars, scope, name)`` per budget that applies: callers
            first (in the given order), then ``global`` (``day``, then ``total``).
        """
        day = time.strftime("%Y-%m-%d", time.gmtime(self.now()))
        found = []
        for kind, ident in callers:
            limit = self.limits.get((kind, ident), self.limits.get((kind, "*")))
            if limit is not None:
                found.append((f"budget:{kind}:{ident}:{day}", limit, kind, ident))
        if "usd_per_day" in self.global_limits:
            found.append((f"budget:global:day:{day}", self.global_limits["usd_per_day"],
                          "global", f"day {day}"))
        if "usd" in self.global_limits:
            found.append(("budget:global:total", self.global_limits["usd"], "global",
                          "total"))
        return found

    def budgets(self, callers: Sequence[tuple[str, str]]) -> list[Budget]:
        """Return today's in-process budgets of ``callers`` (those configured, directly or by
        ``*``), then the deployment's (``[budgets.global]``: today's, then the total).

        Args:
            callers: ``(kind, id)`` pairs (:func:`flowyard.llm.ratelimit.caller_keys`).

        Returns:
            the budgets (scope: the kind, name: the id; ``global``: scope ``global``, name
            ``day YYYY-MM-DD`` or ``total``).
        """
        day = int(self.now() // 86400)
        found = []
        with _LOCK:
            for kind, ident in callers:
                limit = self.limits.get((kind, ident), self.limits.get((kind, "*")))
                if limit is None:
                    continue
                current = self._current.get((kind, ident))
                if current is None or current[0] != day:
                    current = (day, Budget(limit, scope=kind, name=ident))
                    self._current[(kind, ident)] = current
                found.append(current[1])
            if "usd_per_day" in self.global_limits:
                current = self._current.get(("global", "day"))
                if current is None or current[0] != day:
                    name = f"day {time.strftime('%Y-%m-%d', time.gmtime(day * 86400))}"
                    current = (day, Budget(self.global_limits["usd_per_day"], scope="global",
                                           name=name))
                    self._current[("global", "day")] = current
                found.append(current[1])
            if self._total is not None:
                found.append(self._total)
        return found

    def snapshot(self) -> dict[str, dict[str, object]]:
        """Return each caller's budget of today, by ``kind:id``, JSON-ready.

        Returns:
            the snapshots.
        """
        with _LOCK:
            found = {f"{kind}:{ident}": budget.snapshot()
                     for (kind, ident), (_, budget) in sorted(self._current.items())}
            if self._total is not None:
                found["global:total"] = self._total.snapshot()
            return found
