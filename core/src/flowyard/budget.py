"""Budgets in US dollars, with atomic reservations.

Before an LLM call, the gateway reserves the call's estimated maximum cost in every budget
scope that applies (run, step, agent). A reservation that does not fit raises
:class:`~flowyard.errors.BudgetExceeded` and the call is not made; after the call the
reservation is reconciled with the actual cost. Reservations are taken under one lock per
budget chain, so concurrent calls can never overspend, even under fan-out and retries.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

import attrs

from flowyard.errors import BudgetExceeded

__all__ = ["Budget", "BudgetChain", "Reservation"]

_LOCK = threading.Lock()  # reservations across scopes are atomic as a whole


@attrs.define(eq=False)
class Budget:
    """One budget scope.

    Args:
        limit_usd: the most that may be spent, in US dollars.
        scope: ``"run"``, ``"step"`` or ``"agent"`` (for messages and events).
        name: which run, step or agent.

    Attributes:
        spent_usd: actual cost of finished calls.
        reserved_usd: estimated maximum of calls in flight.
    """

    limit_usd: float
    scope: str = "run"
    name: str = ""
    spent_usd: float = 0.0
    reserved_usd: float = 0.0

    def __attrs_post_init__(self) -> None:
        if self.limit_usd < 0:
            raise ValueError(f"budget limit must be >= 0 US dollars, got {self.limit_usd}")

    @property
    def remaining_usd(self) -> float:
        """limit - spent - reserved, in US dollars (never below 0)."""
        return max(0.0, self.limit_usd - self.spent_usd - self.reserved_usd)


@attrs.define(eq=False)
class Reservation:
    """An amount held in several budgets until :meth:`BudgetChain.settle` or
    :meth:`BudgetChain.release`."""

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
    def settle(reservation: Reservation, actual_usd: float) -> None:
        """Replace the held amount with the actual cost (US dollars). Idempotent."""
        with _LOCK:
            if reservation.settled:
                return
            reservation.settled = True
            for budget in reservation.budgets:
                budget.reserved_usd -= reservation.amount_usd
                budget.spent_usd += actual_usd

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
