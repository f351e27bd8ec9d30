"""flowyard-schedule: run workflows on cron expressions or fixed intervals.

``flowyard schedule add|list|remove|pause|resume|run``; schedules live in the stack's storage
(key-value namespaces ``schedule`` and ``schedule.state``). See :mod:`flowyard_schedule.spec`
(schedules and fire times), :mod:`flowyard_schedule.scheduler` (the scheduler, its lease and
catch-up policies) and ``docs/plugins/schedule.md``.
"""

from flowyard_schedule.scheduler import FireOutcome, Scheduler, SchedulerLease
from flowyard_schedule.spec import (
    CATCH_UP_POLICIES,
    Schedule,
    ScheduleError,
    fire_key,
    fire_run_id,
    parse_every,
)

__all__ = [
    "__version__",
    "CATCH_UP_POLICIES",
    "FireOutcome",
    "Schedule",
    "ScheduleError",
    "Scheduler",
    "SchedulerLease",
    "fire_key",
    "fire_run_id",
    "parse_every",
]

__version__ = "0.1.0"
