"""The routers of flowyard-routing.

Every router filters the registry's models with :func:`flowyard.modelregistry.ineligibility`
(capabilities, minimum context window, maximum input price, candidates) and returns the models
to try in order, each with the reason it was placed there. The gateway tries them in that
order, moving on after retriable errors, and reports each try as a ``router.choice`` event.

- :class:`CheapestRouter`: the cheapest eligible model first (estimated cost of the prompt
  plus an expected answer length at the model's prices); unpriced models last.
- :class:`FallbackRouter`: a fixed ordered list (the route's candidates or
  ``[routing.fallback] models``), skipping models that do not meet the requirements.
- :class:`UCBRouter`: UCB1, a multi-armed bandit that learns from outcomes (success, cost,
  latency) which model gives the best reward, while still exploring the others.
"""

from __future__ import annotations

import abc
import math
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import attrs
from flowyard import (
    ConfigError,
    ModelInfo,
    RouteRequest,
    UnknownNameError,
    Usage,
    eligible,
    ineligibility,
)

__all__ = ["CheapestRouter", "FallbackRouter", "UCBRouter", "Arm", "expected_cost"]

Choice = tuple[ModelInfo, str]


def expected_cost(info: ModelInfo, request: RouteRequest, output_tokens: int) -> float | None:
    """Return the cost in US dollars of a call with the route's estimated prompt (at least 1
    token) and ``output_tokens`` output tokens at the model's prices (None: unpriced).
    """
    if info.price is None:
        return None
    return info.price.cost(Usage(max(1, request.estimated_input_tokens), output_tokens))


def _none_fits(request: RouteRequest, models: Sequence[ModelInfo]) -> UnknownNameError:
    why = [f"{m.ref} ({ineligibility(m, request)})" for m in models]
    return UnknownNameError("model meeting the route requirements", "auto", why)


def _settings(table: Mapping[str, Any], allowed: Mapping[str, type | tuple[type, ...]],
              where: str) -> dict[str, Any]:
    if not isinstance(table, Mapping):
        raise ConfigError(f"{where} must be a table, got {table!r}")
    out: dict[str, Any] = {}
    for key, value in table.items():
        if key not in allowed:
            raise ConfigError(f"{where}: unknown key {key!r}; expected one of "
                              f"{', '.join(sorted(allowed))}")
        kind = allowed[key]
        if (isinstance(value, bool) and kind is not bool) or not isinstance(value, kind):
            raise ConfigError(f"{where}.{key} has the wrong type: {value!r}")
        out[key] = value
    return out


class _Router(abc.ABC):
    name = "router"

    @abc.abstractmethod
    async def choose_explained(self, request: RouteRequest, models: Sequence[ModelInfo]
                               ) -> list[Choice]:
        """Return ``[(model, reason)]`` in the order to try."""

    async def choose(self, request: RouteRequest, models: Sequence[ModelInfo]) -> list[ModelInfo]:
        """Return the models to try, in order.

        Raises:
            UnknownNameError: no model meets the requirements (the message lists why each
                model was left out).
        """
        return [m for m, _ in await self.choose_explained(request, models)]

    def record_outcome(self, model: ModelInfo, *, success: bool, cost_usd: float | None,
                       latency_s: float) -> None:
        """Ignored by routers that do not learn."""
        return None


class CheapestRouter(_Router):
    """The cheapest model meeting the requirements first, then the next cheapest.

    Args:
        expected_output_tokens: answer length assumed when ranking by cost (tokens).
        include_unpriced: also return unpriced models, after the priced ones.
    """

    name = "cheapest"

    def __init__(self, *, expected_output_tokens: int = 500, include_unpriced: bool = True
                 ) -> None:
        if expected_output_tokens < 0:
            raise ValueError("expected_output_tokens must be >= 0")
        self.expected_output_tokens = expected_output_tokens
        self.include_unpriced = include_unpriced

    @classmethod
    def from_config(cls, table: Mapping[str, Any]) -> CheapestRouter:
        """Build from ``[routing.cheapest]`` (``expected_output_tokens``, ``include_unpriced``).

        Raises:
            ConfigError: unknown key or wrong type.
        """
        return cls(**_settings(table, {"expected_output_tokens": int, "include_unpriced": bool},
                               "routing.cheapest"))

    def rank(self, request: RouteRequest, models: Sequence[ModelInfo]) -> list[Choice]:
        """Return eligible models cheapest first, with reasons (no error when empty)."""
        fitting = eligible(models, request)
        priced = [(expected_cost(m, request, self.expected_output_tokens), m) for m in fitting]
        known = sorted(((c, m) for c, m in priced if c is not None),
                       key=lambda pair: (pair[0], pair[1].ref))
        out: list[Choice] = []
        tokens = (f"~{max(1, request.estimated_input_tokens)} in / "
                  f"{self.expected_output_tokens} out tokens")
        for i, (cost, m) in enumerate(known):
            assert m.price is not None
            rank = "cheapest" if i == 0 else f"#{i + 1} by cost"
            out.append((m, f"{rank} of {len(fitting)} eligible: ~${cost:.6f} for {tokens} "
                           f"(${m.price.input_per_mtok:g}/${m.price.output_per_mtok:g} per Mtok)"))
        if self.include_unpriced:
            for m in sorted((m for c, m in priced if c is None), key=lambda m: m.ref):
                out.append((m, f"price unknown, after {len(known)} priced model(s)"))
        return out

    async def choose_explained(self, request: RouteRequest, models: Sequence[ModelInfo]
                               ) -> list[Choice]:
        """Return ``[(model, reason)]`` cheapest first.

        Raises:
            UnknownNameError: no model meets the requirements.
        """
        out = self.rank(request, models)
        if not out:
            raise _none_fits(request, models)
        return out


class FallbackRouter(_Router):
    """A fixed order: the route's ``candidates`` or the configured ``models`` list.

    Models not listed by their provider are still tried (as bare references) unless the route
    requires capabilities, a context size or a price, which an unlisted model cannot show.

    Args:
        models: ``provider/model`` references in order of preference.
    """

    name = "fallback"

    def __init__(self, models: Sequence[str] = ()) -> None:
        for ref in models:
            if "/" not in ref:
                raise ConfigError(f"routing.fallback.models: {ref!r} is not 'provider/model'")
        self.models = list(models)

    @classmethod
    def from_config(cls, table: Mapping[str, Any]) -> FallbackRouter:
        """Build from ``[routing.fallback]`` (``models = ["p/m", ...]``).

        Raises:
            ConfigError: unknown key, or ``models`` not a list of references.
        """
        settings = _settings(table, {"models": list}, "routing.fallback")
        refs = settings.get("models", [])
        if not all(isinstance(r, str) for r in refs):
            raise ConfigError("routing.fallback.models must be a list of 'provider/model'")
        return cls(refs)

    async def choose_explained(self, request: RouteRequest, models: Sequence[ModelInfo]
                               ) -> list[Choice]:
        """Return the list in order, minus models that do not meet the requirements.

        Raises:
            ConfigError: neither the route nor the configuration gives a list.
            UnknownNameError: no listed model meets the requirements.
        """
        order = list(request.candidates) or self.models
        if not order:
            raise ConfigError("the fallback router needs an ordered list of models: give the "
                              "route candidates, or set [routing.fallback] models = [...]")
        known = {m.ref: m for m in models}
        listed = []
        for ref in order:
            info = known.get(ref)
            if info is None:
                provider, sep, model = ref.partition("/")
                if not sep:
                    raise ConfigError(f"fallback model {ref!r} is not 'provider/model'")
                info = ModelInfo(provider=provider, model=model)
            listed.append(info)
        plain = RouteRequest(capabilities=sorted(request.capabilities),
                             min_context=request.min_context,
                             max_input_price=request.max_input_price,
                             estimated_input_tokens=request.estimated_input_tokens)
        out: list[Choice] = []
        for position, info in enumerate(listed, start=1):
            if ineligibility(info, plain) is None:
                out.append((info, f"position {position} of {len(listed)} in the fallback list"))
        if not out:
            raise _none_fits(plain, listed)
        return out


@attrs.define
class Arm:
    """What the bandit knows about one model.

    Attributes:
        tries: outcomes recorded; reward_sum: summed rewards in [0, 1].
        successes, failures: outcome counts; cost_usd: summed known cost (US dollars);
        latency_s: summed latency (seconds).
    """

    tries: int = 0
    reward_sum: float = 0.0
    successes: int = 0
    failures: int = 0
    cost_usd: float = 0.0
    latency_s: float = 0.0

    @property
    def mean_reward(self) -> float:
        """Average reward (0 when untried)."""
        return self.reward_sum / self.tries if self.tries else 0.0


class UCBRouter(_Router):
    """UCB1 over the eligible models.

    Each outcome earns a reward in [0, 1]: 0 for a failure; for a success
    ``1 - cost_weight * min(1, cost / cost_scale_usd) - latency_weight * min(1, latency /
    latency_scale_s)`` (an unknown cost counts as 0). Untried eligible models are tried first
    (cheapest first); then models are ranked by ``mean + exploration * sqrt(2 ln N / n)``
    (Auer, Cesa-Bianchi and Fischer 2002), N being all tries of the eligible models and n
    the model's own.

    Args:
        exploration: weight of the exploration bonus (>= 0; 0 = greedy).
        cost_weight, latency_weight: reward penalties (each in [0, 1], sum <= 1).
        cost_scale_usd: a call costing this much (US dollars) gets the full cost penalty.
        latency_scale_s: a call taking this long (seconds) gets the full latency penalty.
        expected_output_tokens: answer length for ordering untried models by cost.
    """

    name = "ucb"

    def __init__(self, *, exploration: float = 1.0, cost_weight: float = 0.3,
                 latency_weight: float = 0.2, cost_scale_usd: float = 0.01,
                 latency_scale_s: float = 10.0, expected_output_tokens: int = 500) -> None:
        if exploration < 0:
            raise ValueError("exploration must be >= 0")
        if not (0 <= cost_weight <= 1 and 0 <= latency_weight <= 1
                and cost_weight + latency_weight <= 1):
            raise ValueError("cost_weight and latency_weight must be in [0, 1] with sum <= 1")
        if cost_scale_usd <= 0 or latency_scale_s <= 0:
            raise ValueError("cost_scale_usd and latency_scale_s must be > 0")
        self.exploration = exploration
        self.cost_weight = cost_weight
        self.latency_weight = latency_weight
        self.cost_scale_usd = cost_scale_usd
        self.latency_scale_s = latency_scale_s
        self._cheapest = CheapestRouter(expected_output_tokens=expected_output_tokens)
        self._arms: dict[str, Arm] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_config(cls, table: Mapping[str, Any]) -> UCBRouter:
        """Build from ``[routing.ucb]`` (the constructor's arguments as keys).

        Raises:
            ConfigError: unknown key, wrong type or invalid value.
        """
        number = (int, float)
        settings = _settings(table, {"exploration": number, "cost_weight": number,
                                     "latency_weight": number, "cost_scale_usd": number,
                                     "latency_scale_s": number, "expected_output_tokens": int},
                             "routing.ucb")
        try:
            return cls(**settings)
        except ValueError as exc:
            raise ConfigError(f"routing.ucb: {exc}") from exc

    def reward(self, *, success: bool, cost_usd: float | None, latency_s: float) -> float:
        """Return the reward of one outcome, in [0, 1]."""
        if not success:
            return 0.0
        cost = min(1.0, max(0.0, cost_usd or 0.0) / self.cost_scale_usd)
        latency = min(1.0, max(0.0, latency_s) / self.latency_scale_s)
        return max(0.0, 1.0 - self.cost_weight * cost - self.latency_weight * latency)

    def record_outcome(self, model: ModelInfo, *, success: bool, cost_usd: float | None,
                       latency_s: float) -> None:
        """Learn from one call's outcome."""
        reward = self.reward(success=success, cost_usd=cost_usd, latency_s=latency_s)
        with self._lock:
            arm = self._arms.setdefault(model.ref, Arm())
            arm.tries += 1
            arm.reward_sum += reward
            if success:
                arm.successes += 1
            else:
                arm.failures += 1
            arm.cost_usd += cost_usd or 0.0
            arm.latency_s += max(0.0, latency_s)

    async def choose_explained(self, request: RouteRequest, models: Sequence[ModelInfo]
                               ) -> list[Choice]:
        """Return untried models first (cheapest first), then by UCB score.

        Raises:
            UnknownNameError: no model meets the requirements.
        """
        ranked = self._cheapest.rank(request, models)
        if not ranked:
            raise _none_fits(request, models)
        with self._lock:
            arms = {m.ref: attrs.evolve(self._arms.get(m.ref, Arm())) for m, _ in ranked}
        total = sum(a.tries for a in arms.values())
        untried = [(m, "untried: exploring (cheapest untried first)")
                   for m, _ in ranked if arms[m.ref].tries == 0]
        scored = []
        for m, _ in ranked:
            arm = arms[m.ref]
            if arm.tries == 0:
                continue
            bonus = self.exploration * math.sqrt(2 * math.log(max(total, 1)) / arm.tries)
            score = arm.mean_reward + bonus
            scored.append((score, m, f"ucb score {score:.3f} = mean reward "
                                      f"{arm.mean_reward:.3f} + bonus {bonus:.3f} over "
                                      f"{arm.tries} tries ({arm.successes} ok)"))
        scored.sort(key=lambda t: (-t[0], t[1].ref))
        return untried + [(m, why) for _, m, why in scored]

    def stats(self) -> dict[str, dict[str, Any]]:
        """Return each model's arm (tries, rewards, successes, failures, cost, latency)."""
        with self._lock:
            return {ref: {**attrs.asdict(arm), "mean_reward": arm.mean_reward}
                    for ref, arm in sorted(self._arms.items())}

    def export_state(self) -> dict[str, Any]:
        """Return the learned state, JSON-ready (to persist, e.g. with ``storage.kv_set``)."""
        with self._lock:
            return {"version": 1, "arms": {ref: attrs.asdict(arm)
                                           for ref, arm in self._arms.items()}}

    def import_state(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`export_state` returned (replaces the learned state).

        Raises:
            ValueError: the state is not in the expected shape.
        """
        if not isinstance(state, Mapping) or state.get("version") != 1:
            raise ValueError("UCB router state must be a dict with version 1")
        try:
            arms = {str(ref): Arm(**values) for ref, values in state["arms"].items()}
        except (TypeError, KeyError, AttributeError) as exc:
            raise ValueError(f"malformed UCB router state: {exc}") from exc
        with self._lock:
            self._arms = arms
