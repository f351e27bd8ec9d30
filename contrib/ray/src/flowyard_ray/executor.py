"""The driver side: :class:`RayExecutor`, the ``ray`` executor.

The workflow engine stays in the driver (the process running ``flowyard run`` or a
``flowyard worker``): it schedules the DAG, applies priorities, retries, timeouts and
budgets, and commits attempts, checkpoints and events to the stack's storage. The executor
only carries one attempt at a time to Ray and brings back its reply
(:class:`flowyard.SupportsStepCalls`).
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import logging
import threading
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import anyio
import flowyard
import sniffio

from . import worker as _worker

log = logging.getLogger("flowyard.ray")

#: steps whose tool matches one of these names run on actors by default (they keep state:
#: a loaded local model, an agent's or a sub-workflow's model calls)
DEFAULT_ACTOR_TOOLS = ("llm.*", "agent", "workflow")
_ADDRESS_KEYS = {"address", "namespace", "runtime_env", "plugins", "discover", "actor_tools",
                 "actors", "max_retries", "cancel_grace_s", "num_cpus", "log_to_driver"}


class WorkerLostError(flowyard.FlowyardError):
    """The Ray worker, actor or node running an attempt was lost. Retriable: the step's
    retry policy (``on: [retriable]``) may run the attempt again.
    """

    retriable = True


def settings(config: flowyard.Config) -> dict[str, Any]:
    """Resolve the ``[ray]`` table of the configuration.

    Args:
        config: the stack's configuration.

    Returns:
        ``{"address", "namespace", "runtime_env", "actor_tools", "actors", "max_retries",
        "cancel_grace_s", "num_cpus", "log_to_driver"}``: the address is ``"auto"`` (a
        cluster started with ``ray start`` on this machine, the default), ``"local"`` (a
        Ray instance started inside this process, for development) or ``"HOST:PORT"`` /
        ``"ray://HOST:PORT"``; ``actors`` is the size of each actor pool; ``max_retries``
        how often Ray itself reruns a task whose worker or node died (default 3);
        ``cancel_grace_s`` the seconds a cancelled call may take to stop (default 10);
        ``num_cpus`` the CPUs a step asks for when its ``resources`` do not say (default 1).

    Raises:
        ConfigError: a key is unknown or has the wrong type (the message names it).
    """
    section = config.section("ray")
    unknown = sorted(set(section) - _ADDRESS_KEYS)
    if unknown:
        raise flowyard.ConfigError(f"[ray] unknown key(s) {', '.join(unknown)} (allowed: "
                                   f"{', '.join(sorted(_ADDRESS_KEYS))})")

    def number(key: str, default: float, *, integer: bool = False, minimum: float = 0) -> Any:
        value = section.get(key, default)
        kinds = (int,) if integer else (int, float)
        if isinstance(value, bool) or not isinstance(value, kinds) or value < minimum:
            kind = "an integer" if integer else "a number"
            raise flowyard.ConfigError(f"[ray] {key} must be {kind} >= {minimum}, "
                                       f"got {value!r}")
        return value

    address = section.get("address", "auto")
    if not isinstance(address, str) or not address:
        raise flowyard.ConfigError(f"[ray] address must be 'auto', 'local' or 'HOST:PORT', "
                                   f"got {address!r}")
    runtime_env = section.get("runtime_env")
    if runtime_env is not None and not isinstance(runtime_env, Mapping):
        raise flowyard.ConfigError("[ray] runtime_env must be a table")
    tools = section.get("actor_tools", list(DEFAULT_ACTOR_TOOLS))
    if not isinstance(tools, (list, tuple)) or not all(isinstance(t, str) for t in tools):
        raise flowyard.ConfigError(f"[ray] actor_tools must be a list of tool names or "
                                   f"patterns, got {tools!r}")
    plugins = section.get("plugins", [])
    if not isinstance(plugins, (list, tuple)) or not all(isinstance(p, str) for p in plugins):
        raise flowyard.ConfigError(f"[ray] plugins must be a list of 'module[:attribute]', "
                                   f"got {plugins!r}")
    return {
        "address": address,
        "namespace": str(section.get("namespace", "flowyard")),
        "runtime_env": dict(runtime_env) if runtime_env else None,
        "actor_tools": tuple(tools),
        "actors": number("actors", 2, integer=True, minimum=1),
        "max_retries": number("max_retries", 3, integer=True, minimum=0),
        "cancel_grace_s": float(number("cancel_grace_s", 10.0)),
        "num_cpus": float(number("num_cpus", 1.0)),
        "log_to_driver": section.get("log_to_driver", True) is not False,
    }


_INIT_LOCK = threading.Lock()


def connect(options: Mapping[str, Any]) -> None:
    """Connect this process to Ray once (``ray.init``); later calls do nothing.

    Args:
        options: :func:`settings`.

    Raises:
        ConfigError: the cluster cannot be reached (the message names the address and
            how to start one).
    """
    import ray  # lazy: importing Ray takes about a second; only when a step uses it

    with _INIT_LOCK:
        if ray.is_initialized():
            return
        address = options["address"]
        try:
            ray.init(address=None if address == "local" else address,
                     namespace=options["namespace"], runtime_env=options["runtime_env"],
                     log_to_driver=options["log_to_driver"], include_dashboard=False,
                     configure_logging=False)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise flowyard.ConfigError(
                f"[ray] address {address!r}: cannot connect to a Ray cluster ({exc}). Start "
                f"one with `ray start --head` (then address = 'auto' or 'HOST:PORT'), or set "
                f"address = 'local' for a Ray instance inside this process") from exc


def _waker() -> Callable[[Callable[[], None]], None]:
    """Return a function that runs a callback soon on the current event loop, callable from
    any thread (Ray completes futures in its own threads).
    """
    library = sniffio.current_async_library()
    if library == "asyncio":
        import asyncio  # lazy: per backend

        return asyncio.get_running_loop().call_soon_threadsafe
    if library == "trio":
        import trio  # lazy: per backend

        return trio.lowlevel.current_trio_token().run_sync_soon
    raise RuntimeError(f"flowyard-ray: unsupported async library {library!r}")


async def _wait(ref: Any) -> Any:
    """Wait for ``ref`` without blocking the event loop; return ``ray.get(ref)``'s value or
    raise its error. Cancellation of the caller leaves ``ref`` running (the caller cancels it).
    """
    future = ref.future()
    if not future.done():
        event = anyio.Event()
        call_soon = _waker()
        future.add_done_callback(lambda _: call_soon(event.set))
        await event.wait()
    return future.result()


class RayExecutor:
    """Runs steps on a Ray cluster: stateless steps as Ray tasks, steps whose tool matches
    ``[ray] actor_tools`` on a pool of async actors per resource shape (their stacks and
    what those load, such as a local model, stay in memory between calls).

    Args:
        config: the stack's configuration (``[ray]``, see :func:`settings`).
        services: the stack's services (its storage receives the cost lines of calls whose
            workers could not reach it: a ``memory://`` storage is not shared).

    Raises:
        ConfigError: from the constructor, a bad ``[ray]`` table.
    """

    name = "ray"

    def __init__(self, config: flowyard.Config, services: flowyard.Services | None = None
                 ) -> None:
        self.options = settings(config)
        self.services = services
        self._config_refs: dict[int, tuple[Mapping[str, Any], str, Any]] = {}
        self._task_fns: dict[Any, Any] = {}
        self._pools: dict[Any, list[Any]] = {}
        self._pool_next: dict[Any, int] = {}
        self._action_fn: Any = None
        self._actor_cls: Any = None
        self._step_fn: Any = None
        self._actor_tools: dict[str, bool] = {}
        self._default = self._placement(None)
        self._memory_storage: bool | None = None

    # ------------------------------------------------------------------ helpers

    def _ready(self) -> None:
        if self._step_fn is not None:
            return
        connect(self.options)
        import ray  # lazy: see connect

        self._step_fn = ray.remote(_worker.run_step_task)
        self._action_fn = ray.remote(_worker.run_action_task)
        self._actor_cls = ray.remote(_worker.StepActor)

    def _config(self, config: Mapping[str, Any]) -> tuple[str, Any]:
        """The configuration's hash and its object in Ray's store (put once per mapping)."""
        cached = self._config_refs.get(id(config))
        if cached is not None and cached[0] is config:
            return cached[1], cached[2]
        import ray  # lazy: see connect

        key = hashlib.sha256(json.dumps(config, sort_keys=True, default=repr)
                             .encode()).hexdigest()
        ref = ray.put(dict(config))
        self._config_refs[id(config)] = (config, key, ref)
        return key, ref

    def _placement(self, resources: Mapping[str, Any] | None, *,
                   default_cpus: float | None = None) -> dict[str, Any]:
        """Ray options for a step's ``resources`` (CPUs: ``default_cpus`` when not given,
        else ``[ray] num_cpus``).
        """
        resources = dict(resources or {})
        cpus = self.options["num_cpus"] if default_cpus is None else default_cpus
        options: dict[str, Any] = {"num_cpus": resources.pop("num_cpus", cpus)}
        if "num_gpus" in resources:
            options["num_gpus"] = resources.pop("num_gpus")
        if "memory" in resources:
            options["memory"] = resources.pop("memory")
        if resources:
            options["resources"] = resources
        return options

    def _check_fits(self, call: flowyard.StepCall, options: Mapping[str, Any]) -> None:
        """Refuse a step whose resources no node of the cluster has (Ray would wait
        forever), naming the step and what is missing.

        Raises:
            ConfigError: no alive node offers every resource the step asks for.
        """
        import ray  # lazy: see connect

        wanted = {"CPU": options.get("num_cpus", 0), "GPU": options.get("num_gpus", 0),
                  "memory": options.get("memory", 0), **options.get("resources", {})}
        wanted = {k: v for k, v in wanted.items() if v}
        nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
        if any(all(node.get(k, 0) >= v for k, v in wanted.items()) for node in nodes):
            return
        largest = {k: max((node.get(k, 0) for node in nodes), default=0) for k in wanted}
        raise flowyard.ConfigError(
            f"step {call.step_id!r} ({call.step_key}) asks for resources {wanted} that no "
            f"node of the Ray cluster has (largest per resource: {largest})")

    def _is_actor_tool(self, tool: str) -> bool:
        return any(fnmatch.fnmatchcase(tool, pattern) for pattern in self.options["actor_tools"])

    def _actor(self, call: flowyard.StepCall, options: Mapping[str, Any]) -> Any:
        """The next actor of the pool for ``options`` (created on first use)."""
        shape = json.dumps(options, sort_keys=True)
        pool = self._pools.get(shape)
        if pool is None:
            self._check_fits(call, options)
            pool = self._pools[shape] = [
                self._actor_cls.options(**options, max_restarts=-1,
                                        scheduling_strategy="SPREAD",
                                        max_task_retries=self.options["max_retries"],
                                        max_concurrency=8).remote()
                for _ in range(self.options["actors"])]
            self._pool_next[shape] = 0
        index = self._pool_next[shape]
        self._pool_next[shape] = (index + 1) % len(pool)
        return pool[index]

    async def _await(self, ref: Any, *, what: str, force_cancel: bool) -> Any:
        """Wait for ``ref``; on cancellation cancel it in Ray and wait (shielded, up to
        ``cancel_grace_s``) until it has stopped; map Ray's failures to flowyard errors.
        """
        import ray  # lazy: see connect

        try:
            return await _wait(ref)
        except anyio.get_cancelled_exc_class():
            with anyio.CancelScope(shield=True):
                ray.cancel(ref, force=False)
                with anyio.move_on_after(self.options["cancel_grace_s"]) as scope:
                    try:
                        await _wait(ref)
                    except ray.exceptions.RayError:
                        pass  # the expected end of a cancelled call
                if scope.cancelled_caught and force_cancel:
                    log.warning("%s did not stop within %s s of its cancellation; "
                                "killing its worker", what, self.options["cancel_grace_s"])
                    ray.cancel(ref, force=True)
            raise
        except ray.exceptions.RayTaskError as exc:
            # the worker's own code failed (not the tool: its errors come in the reply), e.g.
            # a [ray] plugins entry or the storage that cannot be opened there: raise that
            cause = exc.cause
            if isinstance(cause, Exception):
                raise cause from None
            raise WorkerLostError(f"{what} was interrupted on its Ray worker: {exc}") from exc
        except (ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError,
                ray.exceptions.RayActorError, ray.exceptions.ObjectLostError,
                ray.exceptions.OwnerDiedError, ray.exceptions.TaskCancelledError) as exc:
            raise WorkerLostError(f"{what}: its Ray worker or node was lost "
                                  f"({type(exc).__name__}: {exc})") from exc

    # ------------------------------------------------------------------ the protocols

    async def execute(self, action: Callable[[], Awaitable[Any]], *, step_id: str) -> Any:
        """Run ``action`` (pickled with cloudpickle: it must not hold open connections,
        locks or the stack) as a Ray task and return its result.

        Args:
            action: a coroutine function of no arguments.
            step_id: the step, for messages and the task's name.

        Returns:
            what ``action()`` returned.

        Raises:
            Exception: what ``action()`` raised, unchanged when it can be pickled.
            WorkerLostError: the Ray worker or node running it was lost (retriable).
            ConfigError: the Ray cluster cannot be reached.
        """
        if self._step_fn is None:
            await anyio.to_thread.run_sync(self._ready)
        ref = self._action_fn.options(name=f"flowyard:{step_id}", num_cpus=self.options[
            "num_cpus"], max_retries=self.options["max_retries"]).remote(action)
        status, value = await self._await(ref, what=f"step {step_id!r}", force_cancel=True)
        if status == "error":
            raise value
        return value

    async def execute_step(self, call: flowyard.StepCall, action: Callable[[], Awaitable[Any]]
                           ) -> flowyard.StepReply:
        """Run one attempt on the cluster: as a Ray task, or on an actor of the pool for
        the step's resources when its tool matches ``[ray] actor_tools``.

        Args:
            call: the attempt (see :class:`flowyard.StepCall`).
            action: the in-process closure of the same attempt (unused: every call goes
                to Ray).

        Returns:
            the worker's :class:`flowyard.StepReply` (the action's error inside it).

        Raises:
            WorkerLostError: the worker, actor or node was lost and Ray's own retries
                (``[ray] max_retries``) are used up (retriable).
            ConfigError: the cluster cannot be reached, or no node has the step's resources.
        """
        if self._step_fn is None:
            await anyio.to_thread.run_sync(self._ready)
        key, config_ref = self._config(call.config)
        light = _without_config(call)
        placement = self._placement(call.resources) if call.resources else self._default
        what = f"step {call.step_id!r} ({call.step_key}, attempt {call.attempt})"
        actor_tool = self._actor_tools.get(call.tool)
        if actor_tool is None:
            actor_tool = self._actor_tools[call.tool] = self._is_actor_tool(call.tool)
        if actor_tool:
            # an actor holds what it asks for as long as it lives: only what the step asks
            # for explicitly, not [ray] num_cpus (Ray's default for actors: none while running)
            actor = self._actor(call, self._placement(call.resources, default_cpus=0))
            ref = actor.run.options(name=f"flowyard:{call.step_key}").remote(
                light, key, config_ref)
            reply = await self._await(ref, what=what, force_cancel=False)
        else:
            shape = json.dumps(placement, sort_keys=True) if call.resources else None
            fn = self._task_fns.get(shape)
            if fn is None:
                self._check_fits(call, placement)
                fn = self._task_fns[shape] = self._step_fn.options(
                    **placement, max_retries=self.options["max_retries"],
                    retry_exceptions=False)
            ref = fn.remote(light, key, config_ref)
            reply = await self._await(ref, what=what, force_cancel=True)
        await self._record_costs(call, reply)
        return reply  # type: ignore[no-any-return]

    async def _record_costs(self, call: flowyard.StepCall, reply: flowyard.StepReply) -> None:
        """Write the cost lines of the reply's model calls when the workers' storage is not
        the driver's (``memory://``: each process has its own); with a shared storage the
        worker's gateway wrote them.
        """
        services = self.services
        if services is None or not services.storage_is_open:
            return
        if self._memory_storage is None:
            self._memory_storage = isinstance(services, flowyard.Stack) and \
                services.storage_url().startswith("memory:")
        if not self._memory_storage:
            return
        for event in reply.events:
            if event.type != "llm.call":
                continue
            data = event.data
            await services.storage.add_cost(flowyard.CostLine(
                run_id=call.run_id, provider=str(data.get("provider", "")),
                model=str(data.get("model", "")),
                input_tokens=int(data.get("input_tokens", 0)),
                output_tokens=int(data.get("output_tokens", 0)),
                cost_usd=data.get("cost_usd"), step_id=call.step_id, agent=data.get("agent"),
                workflow_name=call.workflow_name, estimated=bool(data.get("estimated")),
                overshoot_usd=float(data.get("overshoot_usd") or 0.0)))

    def __repr__(self) -> str:
        return f"RayExecutor(address={self.options['address']!r})"


def _without_config(call: flowyard.StepCall) -> flowyard.StepCall:
    """``call`` without its configuration (sent apart, once, through Ray's object store)."""
    import attrs  # lazy: attrs.evolve only here

    return attrs.evolve(call, config={})


__all__ = ["RayExecutor", "WorkerLostError", "settings", "connect", "DEFAULT_ACTOR_TOOLS"]
