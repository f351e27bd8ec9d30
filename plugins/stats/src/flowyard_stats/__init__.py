"""flowyard-stats: reporting for flowyard.

- :mod:`flowyard_stats.ledger` — the cost ledger: totals per call, step, agent, run, workflow
  and model from the stored cost lines;
- :mod:`flowyard_stats.metrics` — run, step and LLM metrics from storage, and
  :class:`~flowyard_stats.metrics.LiveMetrics`, the event listener ``stats.live`` counting this
  process's LLM calls;
- :mod:`flowyard_stats.command` — the ``flowyard stats`` command.
"""

__version__ = "0.1.0"
