"""The data of the dashboard's providers page (``/ui/providers``).

For each model provider of the stack:

- **models** from the provider's ``list_models`` (prices in US dollars per million tokens,
  when known);
- a **health check**: that same ``list_models`` call, given 5 seconds. *Up* with the time it
  took in milliseconds, or *down* with a generic reason and the error's type name only: an
  error's text may quote a request, a header or a key, so it is never shown;
- **rate limits** from the LLM gateway's limiters (calls in flight, callers queued, paused
  until) for the provider and each of its models, plus the configured limits;
- the **circuit breaker** (closed, open, half open; consecutive failures; when it opened).

Rate limiters and breakers live in memory, per process: the page shows what *this server
process* sees. Runs executed by separate ``flowyard worker`` processes go through their own
limiters and breakers, which this page cannot see. Looking never changes state: no limiter
or breaker is made by the page (:meth:`~flowyard.llm.circuit.BreakerSet.peek`), and the
health check calls the provider directly, not through the gateway.

The checks of all providers run concurrently, so the page takes at most about 5 seconds.
Their results are kept for :data:`HEALTH_CACHE_S` seconds, and page loads arriving while a
check runs wait for it rather than start their own: reloading the page (or many people
looking at once) does not turn into a stream of calls to the providers' APIs. Rate limits
and breakers are read afresh on every load (they cost nothing to read).
"""

from __future__ import annotations

import datetime as dt
import math
import os
import time
import weakref
from typing import Any

import anyio
import attrs

__all__ = ["providers_context", "check_provider", "HEALTH_TIMEOUT_S", "HEALTH_CACHE_S"]

#: Seconds a provider has to list its models before it is reported down.
HEALTH_TIMEOUT_S = 5.0
#: Seconds the health checks' results are reused by later page loads.
HEALTH_CACHE_S = 10.0

#: service -> (monotonic expiry, UNIX time of the check, results by provider)
_checked: weakref.WeakKeyDictionary[Any, tuple[float, float, dict[str, dict[str, Any]]]] = (
    weakref.WeakKeyDictionary())
_checking: weakref.WeakKeyDictionary[Any, anyio.Lock] = weakref.WeakKeyDictionary()

_STATE_LABELS = {"closed": "closed", "open": "open", "half_open": "half-open"}
_LIMIT_NAMES = (("rps", "req/s"), ("rpm", "req/min"), ("rph", "req/h"), ("rpd", "req/day"),
                ("tpm", "tokens/min"), ("concurrency", "concurrent"))


def _iso(when: float | None) -> str | None:
    if when is None:
        return None
    return dt.datetime.fromtimestamp(when, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def _price(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) \
        else None


def _model_row(provider: str, info: Any) -> dict[str, Any]:
    price = getattr(info, "price", None)
    model = str(getattr(info, "model", info))
    input_price = _price(getattr(price, "input_per_mtok", None)) if price else None
    output_price = _price(getattr(price, "output_per_mtok", None)) if price else None
    return {
        "model": model,
        "ref": f"{provider}/{model}",
        "context_window": getattr(info, "context_window", None),
        "input_per_mtok": input_price,
        "output_per_mtok": output_price,
        "price_known": input_price is not None and output_price is not None,
        "capabilities": sorted(str(c) for c in getattr(info, "capabilities", ()) or ()),
    }


async def check_provider(stack: Any, name: str, *, timeout: float = HEALTH_TIMEOUT_S
                         ) -> dict[str, Any]:
    """Check one provider: list its models within ``timeout`` seconds.

    Args:
        stack: the stack.
        name: the provider's registered name.
        timeout: seconds allowed for ``list_models``.

    Returns:
        ``status`` (``"up"`` or ``"down"``), ``latency_ms`` (milliseconds, int, when up),
        ``error`` (a generic reason, when down: never the error's text, which may hold
        secrets), ``error_type`` (the exception's class name, when down) and ``models``
        (rows: ``model``, ``ref``, ``context_window``, ``input_per_mtok`` and
        ``output_per_mtok`` in US dollars per million tokens or None, ``price_known``,
        ``capabilities``).
    """
    out: dict[str, Any] = {"status": "down", "latency_ms": None, "error": None,
                           "error_type": None, "models": []}
    try:
        provider = stack.providers.get(name)
    except Exception as exc:  # noqa: BLE001 - a broken plugin or missing configuration
        out.update(error="the provider could not be set up (check its configuration)",
                   error_type=type(exc).__name__)
        return out
    started = time.perf_counter()
    models: list[Any] | None = None
    try:
        with anyio.move_on_after(timeout):
            models = list(await provider.list_models())
    except Exception as exc:  # noqa: BLE001 - reported, never raised to the page
        out.update(error="listing its models failed", error_type=type(exc).__name__)
        return out
    if models is None:
        out.update(error=f"no answer within {timeout:g} s", error_type="Timeout")
        return out
    out.update(status="up", latency_ms=max(0, round((time.perf_counter() - started) * 1000)))
    out["models"] = sorted((_model_row(name, m) for m in models), key=lambda r: r["model"])
    return out


def _limits_text(limits: Any) -> str:
    if not isinstance(limits, dict):
        return ""
    parts = [f"{limits[key]:,} {unit}" for key, unit in _LIMIT_NAMES
             if limits.get(key) is not None]
    if parts and limits.get("smooth") is False:
        parts.append("not smoothed")
    return ", ".join(parts)


def _rate_limits(gateway: Any, name: str) -> list[dict[str, Any]]:
    """The provider's limiters (and its models'), as this process sees them."""
    limiters = gateway.limiters
    now = limiters.clock.now()
    wall = time.time()
    stats: dict[str, dict[str, Any]] = limiters.stats()  # existing limiters only
    keys = {k for k in stats if k == name or k.startswith(name + "/")}
    configured = {k: v for k, v in getattr(limiters, "configured", {}).items()
                  if k == name or k.startswith(name + "/")}
    keys |= set(configured)
    rows = []
    for key in sorted(keys, key=lambda k: (k != name, k)):
        st = stats.get(key)
        paused_until = st.get("paused_until") if st else None
        paused_for = (paused_until - now if isinstance(paused_until, (int, float))
                      and not math.isinf(paused_until) else None)
        if paused_for is not None and paused_for <= 0:
            paused_for = None
        limits = st.get("limits") if st else None
        if limits is None and key in configured:
            limits = attrs.asdict(configured[key])
        rows.append({
            "key": key,
            "scope": "provider" if key == name else "model",
            "used": st is not None,
            "in_flight": int(st.get("in_flight", 0)) if st else 0,
            "queued": int(st.get("queued", 0)) if st else 0,
            "admitted": int(st.get("admitted", 0)) if st else 0,
            "waited_calls": int(st.get("waited_calls", 0)) if st else 0,
            "paused_for_s": round(paused_for, 1) if paused_for is not None else None,
            "paused_until": _iso(wall + paused_for) if paused_for is not None else None,
            "limits": _limits_text(limits) or "no limits configured",
        })
    return rows


def _circuit(gateway: Any, name: str) -> dict[str, Any]:
    """The provider's circuit breaker, as this process sees it (none is made by looking)."""
    breakers = gateway.breakers
    if not breakers.enabled(name):
        return {"enabled": False, "state": "disabled", "label": "disabled",
                "consecutive_failures": 0, "opened_at": None, "next_probe_in_s": None,
                "rejected": 0, "failure_threshold": None, "cooldown_s": None}
    breaker = breakers.peek(name)
    settings = {**breakers.defaults, **breakers.overrides.get(name, {})}
    if breaker is None:  # no call went through a breaker yet
        return {"enabled": True, "state": "closed", "label": "closed",
                "consecutive_failures": 0, "opened_at": None, "next_probe_in_s": None,
                "rejected": 0, "failure_threshold": int(settings.get("failure_threshold", 5)),
                "cooldown_s": float(settings.get("cooldown_s", 30.0))}
    snap = breaker.snapshot()
    now = breakers.clock.now()
    opened = snap.get("opened_at")
    opened_at = next_probe = None
    if isinstance(opened, (int, float)):
        opened_at = _iso(time.time() - (now - opened))  # clock time -> wall time
        if snap["state"] == "open":
            next_probe = max(0.0, round(opened + snap["cooldown_s"] - now, 1))
    return {"enabled": True, "state": snap["state"],
            "label": _STATE_LABELS.get(snap["state"], str(snap["state"])),
            "consecutive_failures": int(snap.get("consecutive_failures", 0)),
            "opened_at": opened_at, "next_probe_in_s": next_probe,
            "rejected": int(snap.get("rejected", 0)),
            "failure_threshold": snap.get("failure_threshold"),
            "cooldown_s": snap.get("cooldown_s")}


async def _health(svc: Any, names: list[str]) -> tuple[float, dict[str, dict[str, Any]]]:
    """The health checks of ``names`` (UNIX time of the check, results by provider), reused
    for :data:`HEALTH_CACHE_S` seconds; one check at a time per service.
    """
    lock = _checking.get(svc)
    if lock is None:
        lock = _checking[svc] = anyio.Lock()
    async with lock:
        cached = _checked.get(svc)
        if cached is not None and cached[0] > time.monotonic() and set(cached[2]) == set(names):
            return cached[1], cached[2]
        checks: dict[str, dict[str, Any]] = {}

        async def check(name: str) -> None:
            checks[name] = await check_provider(svc.stack, name, timeout=HEALTH_TIMEOUT_S)

        checked_at = time.time()
        async with anyio.create_task_group() as tg:
            for name in names:
                tg.start_soon(check, name)
        _checked[svc] = (time.monotonic() + HEALTH_CACHE_S, checked_at, checks)
        return checked_at, checks


async def providers_context(svc: Any) -> dict[str, Any]:
    """Data of the providers page.

    Args:
        svc: the server's :class:`~flowyard_server.app.Service`.

    Returns:
        The template context: ``providers`` (one dict per provider, by name: ``name``, the
        health check of :func:`check_provider` -- ``status``, ``latency_ms``, ``error``,
        ``error_type``, ``models`` --, ``rate_limits`` (rows: ``key``, ``scope``,
        ``in_flight``, ``queued``, ``admitted``, ``paused_for_s`` in seconds,
        ``paused_until`` as ``YYYY-MM-DD HH:MM:SS UTC``, ``limits`` text) and ``circuit``
        (``state``, ``label``, ``consecutive_failures``, ``opened_at`` in the same format,
        ``next_probe_in_s``, ``rejected``, ``failure_threshold``, ``cooldown_s`` in seconds,
        ``enabled``)),
        ``gateway_error`` (the error type when the gateway's limits or circuit configuration
        is invalid, else None), ``worker`` (the in-process worker's name, or None),
        ``process_id`` and ``checked_at`` (the same format; the health checks are reused for
        :data:`HEALTH_CACHE_S` seconds).
    """
    stack = svc.stack
    names = list(stack.providers.names())
    checked_at, checks = await _health(svc, names)
    gateway_error = None
    try:
        gateway = stack.llm
        gateway.limiters  # noqa: B018 - built from the configuration here, errors shown
        gateway.breakers  # noqa: B018
    except Exception as exc:  # noqa: BLE001 - a bad [limits] or [circuit] table
        gateway, gateway_error = None, type(exc).__name__
    providers = []
    for name in names:
        row: dict[str, Any] = {"name": name, **checks[name], "rate_limits": [],
                               "circuit": None}
        if gateway is not None:
            row["rate_limits"] = _rate_limits(gateway, name)
            row["circuit"] = _circuit(gateway, name)
        providers.append(row)
    worker = getattr(svc, "worker", None)
    return {
        "providers": providers,
        "gateway_error": gateway_error,
        "worker": getattr(worker, "name", None) if worker is not None else None,
        "process_id": os.getpid(),
        "checked_at": _iso(checked_at),
    }
