"""Health checks extensible by plugins (the ``register_health_checks`` hook family).

A health check is an async function without arguments returning a :class:`HealthResult`
(``UP``, ``DEGRADED`` or ``DOWN`` and a detail). flowyard-server's ``/v1/health/ready`` and
``flowyard doctor`` run every registered check through :func:`run_health_checks`, each within
a timeout. The built-in checks (:func:`builtin_health_checks`): ``storage`` (the storage backend
answers a key-value read), ``model`` (the default model's provider answers ``list_models``)
and ``disk`` (free space of the data directory). See ``docs/alerts.md``.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import anyio
import attrs

from flowyard.errors import FlowyardError

if TYPE_CHECKING:
    from flowyard.interfaces import Services

__all__ = ["HealthResult", "HealthCheck", "run_health_checks", "builtin_health_checks",
           "DISK_DOWN_BYTES", "DISK_DEGRADED_BYTES"]

#: Free bytes of the data directory below which ``disk`` is DOWN / DEGRADED.
DISK_DOWN_BYTES = 100 * 1024 * 1024
DISK_DEGRADED_BYTES = 1024 * 1024 * 1024

HealthStatus = Literal["UP", "DEGRADED", "DOWN"]


@attrs.frozen
class HealthResult:
    """What one health check found.

    Args:
        status: ``"UP"``, ``"DEGRADED"`` (works, but not fully) or ``"DOWN"``.
        detail: a short human-readable finding.
        duration_ms: how long the check took, milliseconds (set by :func:`run_health_checks`).
    """

    status: HealthStatus
    detail: str = ""
    duration_ms: float = 0.0


#: A health check: an async function without arguments.
HealthCheck = Callable[[], Awaitable[HealthResult]]


async def run_health_checks(services: Services, *, timeout_s: float = 2.0,
                            names: Sequence[str] | None = None) -> dict[str, HealthResult]:
    """Run every registered health check, each within ``timeout_s`` seconds.

    A check that times out, raises, or returns something else than a :class:`HealthResult`
    is reported as ``DOWN`` with the reason in its detail (a plugin's bug is a finding, never
    a crash of the health route).

    Args:
        services: the stack (its ``health_checks`` registry).
        timeout_s: seconds each check may take.
        names: run only these checks (None: every registered one).

    Returns:
        ``check name -> HealthResult`` (with ``duration_ms``), in the order of the names.
    """
    results: dict[str, HealthResult] = {}
    for name in services.health_checks.names() if names is None else names:
        started = time.perf_counter()
        try:
            check = services.health_checks.get(name)
            with anyio.fail_after(timeout_s):
                result = await check()
            if not isinstance(result, HealthResult):
                result = HealthResult("DOWN", f"the check returned {type(result).__name__}, "
                                              "not a HealthResult")
        except TimeoutError:
            result = HealthResult("DOWN", f"no answer within {timeout_s:g}s")
        except Exception as exc:  # noqa: BLE001 - a plugin's bug is a finding, not a crash
            result = HealthResult("DOWN", f"{type(exc).__name__}: {exc}")
        results[name] = attrs.evolve(result,
                                     duration_ms=(time.perf_counter() - started) * 1000)
    return results


def builtin_health_checks(services: Services) -> dict[str, HealthCheck]:
    """The first-party checks of ``services``.

    * ``storage``: the storage backend is opened and answers a key-value read (else DOWN);
    * ``model``: the default model's provider answers ``list_models`` (else DEGRADED: runs
      that need it fail, the rest works; no default model: DEGRADED);
    * ``disk``: free space of the data directory (below 100 MiB DOWN, below 1 GiB DEGRADED);
    * ``shared_limits`` (only with ``[limits] shared``): the shared limits backend opens and
      answers a budget read (else DOWN: every model call fails while it is unreachable).

    Args:
        services: the stack the checks look at.

    Returns:
        ``name -> check``.
    """

    async def storage() -> HealthResult:
        try:
            await services.open()
            await services.storage.kv_get("flowyard.health", "ping")
        except (FlowyardError, OSError) as exc:
            return HealthResult("DOWN", f"{type(exc).__name__}: {exc}")
        return HealthResult("UP", type(services.storage).__name__)

    async def model() -> HealthResult:
        try:
            default = services.llm.default_model()
        except FlowyardError as exc:
            return HealthResult("DEGRADED", f"no default model: {exc}")
        if default == "auto":
            return HealthResult("UP", "auto (routed per call)")
        provider = default.partition("/")[0]
        try:
            infos = await services.providers.get(provider).list_models()
        except (FlowyardError, OSError) as exc:
            return HealthResult("DEGRADED", f"{default}: {type(exc).__name__}: {exc}")
        return HealthResult("UP", f"{default} ({provider}: {len(infos)} model(s))")

    async def disk() -> HealthResult:
        path = Path(services.config.data_dir)
        while not path.exists() and path != path.parent:  # not created yet: its volume
            path = path.parent
        try:
            usage = await anyio.to_thread.run_sync(shutil.disk_usage, path)
        except OSError as exc:
            return HealthResult("DOWN", f"{path}: {exc}")
        status: HealthStatus = ("DOWN" if usage.free < DISK_DOWN_BYTES else
                                "DEGRADED" if usage.free < DISK_DEGRADED_BYTES else "UP")
        return HealthResult(status, f"{path}: {usage.free / 1024**3:.2f} GiB free")

    async def shared_limits() -> HealthResult:
        try:
            shared = await services.llm.shared_limits()  # type: ignore[attr-defined]
            if shared is None:
                return HealthResult("UP", "per process (no [limits] shared)")
            await shared.backend.shared_budget_state("flowyard.health")
        except (FlowyardError, OSError) as exc:
            return HealthResult("DOWN", f"{type(exc).__name__}: {exc}")
        return HealthResult("UP", f"{shared.where} ({type(shared.backend).__name__})")

    checks: dict[str, HealthCheck] = {"storage": storage, "model": model, "disk": disk}
    if services.config.get("limits.shared"):
        checks["shared_limits"] = shared_limits
    return checks
