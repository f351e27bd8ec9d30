"""The cost ledger: tokens and cost of every LLM call, aggregated per call, step, agent, run,
workflow, model or provider.

The gateway writes one :class:`~flowyard.models.CostLine` per call that belongs to a run
(``storage.add_cost``); this module reads them back (``storage.list_costs``) and sums them.
A call whose model has no known price has ``cost_usd = None``; totals keep such calls apart
(``unknown_cost_calls``) so an unknown price is shown as unknown, never as $0.

Example::

    from flowyard_stats.ledger import CostLedger

    ledger = CostLedger(stack.storage)
    total = await ledger.total(run_id)            # CostTotal
    print(total.format())                          # "$0.001234 (3 calls, 1200 in / 300 out)"
    for row in await ledger.by("step", run_id=run_id):
        print(row.key, row.format())
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, Literal

import attrs
from flowyard import CostLine

if TYPE_CHECKING:
    from flowyard import StorageBackend

__all__ = ["CostTotal", "CostRow", "CostLedger", "aggregate", "total_of", "GroupBy"]

GroupBy = Literal["call", "step", "agent", "run", "workflow", "model", "provider"]
_GROUPS = ("call", "step", "agent", "run", "workflow", "model", "provider")


@attrs.define
class CostTotal:
    """Sums over some cost lines.

    Attributes:
        calls: number of LLM calls.
        input_tokens, output_tokens: token counts.
        known_cost_usd: summed cost of the calls whose price was known (US dollars).
        unknown_cost_calls: calls whose price was unknown.
    """

    calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    known_cost_usd: float = 0.0
    unknown_cost_calls: int = 0

    def add(self, line: CostLine) -> None:
        """Add one cost line."""
        self.calls += 1
        self.input_tokens += line.input_tokens
        self.output_tokens += line.output_tokens
        if line.cost_usd is None:
            self.unknown_cost_calls += 1
        else:
            self.known_cost_usd += line.cost_usd

    @property
    def total_tokens(self) -> int:
        """input_tokens + output_tokens."""
        return self.input_tokens + self.output_tokens

    @property
    def cost_known(self) -> bool:
        """True when every call's price was known."""
        return self.unknown_cost_calls == 0

    @property
    def cost_usd(self) -> float | None:
        """The total cost in US dollars, or None when any call's price was unknown."""
        return self.known_cost_usd if self.cost_known else None

    def format(self) -> str:
        """Human-readable: ``$0.001234`` or ``$0.001234 + unknown (2 calls unpriced)``."""
        money = f"${self.known_cost_usd:.6f}"
        if not self.cost_known:
            money = (f"unknown ({self.unknown_cost_calls} unpriced call"
                     f"{'s' if self.unknown_cost_calls != 1 else ''})"
                     if self.known_cost_usd == 0 and self.unknown_cost_calls == self.calls
                     else f"{money} + unknown ({self.unknown_cost_calls} unpriced call"
                          f"{'s' if self.unknown_cost_calls != 1 else ''})")
        return (f"{money} ({self.calls} call{'s' if self.calls != 1 else ''}, "
                f"{self.input_tokens} in / {self.output_tokens} out tokens)")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict; ``cost_usd`` is None when unknown."""
        return {"calls": self.calls, "input_tokens": self.input_tokens,
                "output_tokens": self.output_tokens, "total_tokens": self.total_tokens,
                "cost_usd": self.cost_usd, "known_cost_usd": self.known_cost_usd,
                "unknown_cost_calls": self.unknown_cost_calls, "cost_known": self.cost_known}


@attrs.define
class CostRow(CostTotal):
    """A :class:`CostTotal` for one group: ``key`` is the step id, agent, run id, workflow
    name, ``provider/model``, provider, or (per call) ``"<run>:<index>"``; None for lines
    without that attribute (a call outside any agent).
    """

    key: str | None = None
    run_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict with ``key`` and ``run_id``."""
        return {"key": self.key, "run_id": self.run_id, **super().to_dict()}


def _key(line: CostLine, by: str, index: int) -> str | None:
    if by == "call":
        return f"{line.run_id}:{index}"
    if by == "step":
        return line.step_id
    if by == "agent":
        return line.agent
    if by == "run":
        return line.run_id
    if by == "workflow":
        return line.workflow_name
    if by == "model":
        return f"{line.provider}/{line.model}"
    return line.provider


def total_of(lines: Iterable[CostLine]) -> CostTotal:
    """Return the sum of ``lines``."""
    total = CostTotal()
    for line in lines:
        total.add(line)
    return total


def aggregate(lines: Sequence[CostLine], by: GroupBy) -> list[CostRow]:
    """Group ``lines`` by ``by`` and sum each group.

    Groups come out in the order of their first line (call order); per-step and per-agent
    groups are also split by run, so the same step id in two runs gives two rows.

    Raises:
        ValueError: ``by`` is not one of call, step, agent, run, workflow, model, provider.
    """
    if by not in _GROUPS:
        raise ValueError(f"cannot group costs by {by!r}; choose one of {', '.join(_GROUPS)}")
    rows: dict[tuple[str | None, str | None], CostRow] = {}
    ordered = sorted(enumerate(lines), key=lambda pair: (pair[1].time, pair[0]))
    per_run_index: dict[str, int] = {}
    for _, line in ordered:
        index = per_run_index.get(line.run_id, 0) + 1
        per_run_index[line.run_id] = index
        key = _key(line, by, index)
        run = line.run_id if by in ("call", "step", "agent", "run") else None
        row = rows.get((run, key))
        if row is None:
            row = rows[(run, key)] = CostRow(key=key, run_id=run)
        row.add(line)
    return list(rows.values())


class CostLedger:
    """Queries over a storage backend's cost lines.

    Args:
        storage: an opened :class:`~flowyard.interfaces.StorageBackend`.
    """

    def __init__(self, storage: StorageBackend) -> None:
        self.storage = storage

    async def lines(self, *, run_id: str | None = None, workflow: str | None = None,
                    since: float | None = None) -> list[CostLine]:
        """Return cost lines of one run (or all), optionally of one workflow and at or after
        ``since`` (UNIX seconds).
        """
        lines = await self.storage.list_costs(run_id)
        return [line for line in lines
                if (workflow is None or line.workflow_name == workflow)
                and (since is None or line.time >= since)]

    async def total(self, run_id: str | None = None, *, workflow: str | None = None,
                    since: float | None = None) -> CostTotal:
        """Return the sum over the selected lines."""
        return total_of(await self.lines(run_id=run_id, workflow=workflow, since=since))

    async def by(self, group: GroupBy, *, run_id: str | None = None,
                 workflow: str | None = None, since: float | None = None) -> list[CostRow]:
        """Return one row per call, step, agent, run, workflow, model or provider."""
        return aggregate(await self.lines(run_id=run_id, workflow=workflow, since=since), group)

    async def run_summary(self, run_id: str) -> dict[str, Any]:
        """Return the cost part of a run summary: total, per step, per agent and per model,
        JSON-ready (``cost_usd`` None where a price was unknown).
        """
        lines = await self.lines(run_id=run_id)
        return {
            "total": total_of(lines).to_dict(),
            "steps": [r.to_dict() for r in aggregate(lines, "step")],
            "agents": [r.to_dict() for r in aggregate(lines, "agent") if r.key is not None],
            "models": [r.to_dict() for r in aggregate(lines, "model")],
        }
