"""The Stack: the composed set of plugins plus configuration that runs use.

Everything a run needs is looked up through the stack's registries; there is no module-level
mutable state, so two stacks in one process never interfere.
"""

from __future__ import annotations

import importlib
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flowyard import __version__
from flowyard.config import Config
from flowyard.errors import StorageError, UnknownNameError
from flowyard.events import EventBus
from flowyard.hookspecs import FAMILIES, HOOK_FAMILIES
from flowyard.interfaces import Provider, SupportsAclose
from flowyard.plugins import BUILTIN_MODULE, BUILTIN_PLUGIN, PluginManager, PluginStatus
from flowyard.registry import Duplicate, Registry
from flowyard.templating import check_template_function

if TYPE_CHECKING:
    from flowyard.interfaces import (
        EventListener,
        Executor,
        MemoryStore,
        Provider,
        Retriever,
        Router,
        StorageBackend,
        Tool,
        WorkflowLoader,
    )
    from flowyard.llm import LLMGateway
    from flowyard.models import Event
    from flowyard.workflow import RunResult, Workflow

__all__ = ["Stack"]


class Stack:
    """Plugins, registries and configuration for running workflows.

    Args:
        plugins: plugin objects (modules or instances with ``@hookimpl`` functions), given as
            objects or ``(name, object)`` pairs; they load after the built-in defaults.
        config: a :class:`Config` or a mapping of overrides on top of the loaded files and
            environment (see :mod:`flowyard.config` for the precedence).
        discover: also load the installed plugins of the entry-point group ``flowyard``.
        builtins: register the in-core defaults (memory storage, local executor, fake
            provider, native workflow loader, built-in actions) as plugin ``builtin``.

    Raises:
        PluginError: a plugin failed and ``plugins.strict`` is set.
        ConfigError: the configuration files or environment are invalid.
    """

    # One registry per hook family, built from flowyard.hookspecs.HOOK_FAMILIES; declared
    # here for type checkers (tests/core/test_hook_meta.py checks they match the table).
    providers: Registry[Provider]
    tools: Registry[Tool]
    storage_schemes: Registry[Any]
    memory_stores: Registry[MemoryStore]
    retrievers: Registry[Retriever]
    routers: Registry[Router]
    executors: Registry[Executor]
    loaders: Registry[WorkflowLoader]
    listeners: Registry[EventListener]
    template_filters: Registry[Any]
    guards: Registry[Any]
    alert_channels: Registry[Any]
    health_checks: Registry[Any]

    def __init__(
        self,
        plugins: Sequence[object] = (),
        *,
        config: Config | Mapping[str, Any] | None = None,
        discover: bool = False,
        builtins: bool = True,
    ) -> None:
        if isinstance(config, Config):
            self.config = config
        else:
            self.config = Config.load(overrides=config)
        self.events = EventBus()
        strict = self.config.strict_plugins
        self._by_family: dict[str, Registry[Any]] = {}
        for family in HOOK_FAMILIES:
            # Providers are checked against their interface when registered (or built): a
            # plugin that registers something else is reported, never a traceback at use.
            protocol = Provider if family.name == "providers" else None
            # template functions are checked (kind, name, callable) when registered
            validator = check_template_function if family.name == "templates" else None
            registry: Registry[Any] = Registry(family.kind, strict=strict, protocol=protocol,
                                               validator=validator)
            setattr(self, family.attribute, registry)
            self._by_family[family.name] = registry

        self.plugin_manager = PluginManager(self.config)
        if builtins:
            # Imported by name, like pytest's default plugins: the built-in plugin sits above
            # the composition root and is replaceable and disable-able like any other plugin.
            builtin_plugin = importlib.import_module(BUILTIN_MODULE)
            self.plugin_manager.add(builtin_plugin, name=BUILTIN_PLUGIN, source="flowyard core",
                                    distribution="flowyard", version=_core_version())
        if discover:
            self.plugin_manager.discover()
        for index, item in enumerate(plugins):
            if isinstance(item, tuple):
                name, obj = item
            else:
                obj = item
                name = getattr(obj, "__name__", None) or f"{type(obj).__name__}-{index}"
            self.plugin_manager.add(obj, name=str(name), source="code")
        for family in HOOK_FAMILIES:
            self.plugin_manager.call_registration(family.hook, self._by_family[family.name],
                                                  self)
        for name in self.listeners.names():
            self.events.subscribe(self.listeners.get(name), name=name)

        self._storage: StorageBackend | None = None
        self._storage_open = False
        self._extra_storages: dict[str, StorageBackend] = {}
        self._llm: LLMGateway | None = None

    @classmethod
    def default(cls, *, config: Config | Mapping[str, Any] | None = None) -> Stack:
        """Return a stack of the built-in defaults plus every installed plugin."""
        return cls(config=config, discover=True)

    # ------------------------------------------------------------------ introspection

    def registry(self, family: str) -> Registry[Any]:
        """Return the registry of a hook family (``"providers"``, ``"tools"``, ...).

        Raises:
            KeyError: unknown family; the message lists the families.
        """
        try:
            return self._by_family[family]
        except KeyError:
            raise KeyError(f"unknown family {family!r}; families: {', '.join(FAMILIES)}") from None

    @property
    def plugin_report(self) -> list[PluginStatus]:
        """The status of every plugin seen (loaded, failed with its error, disabled)."""
        return self.plugin_manager.report()

    @property
    def duplicates(self) -> list[Duplicate]:
        """Names registered twice in any registry (the first registration was kept)."""
        return [d for reg in self._by_family.values() for d in reg.duplicates]

    # ------------------------------------------------------------------ services

    @property
    def llm(self) -> LLMGateway:
        """The LLM gateway (chat, streaming, embeddings through the stack's providers)."""
        if self._llm is None:
            # lazy: the gateway loads on the first model call (`flowyard runs` needs none)
            from flowyard.llm import LLMGateway

            self._llm = LLMGateway(self)
        return self._llm

    def storage_url(self) -> str:
        """Return the storage URL: ``storage.url`` or the default of the preferred backend.

        Without configuration, the registered storage scheme with the highest
        ``default_priority`` metadata supplies ``default_url(config)``.
        """
        configured = self.config.get("storage.url")
        if configured:
            return str(configured)
        scheme = self.storage_schemes.preferred()
        if scheme is None:
            raise StorageError("no storage backend registered (is the builtin plugin disabled?)")
        make_url = self.storage_schemes.metadata_of(scheme).get("default_url")
        return str(make_url(self.config)) if callable(make_url) else f"{scheme}://"

    @property
    def storage(self) -> StorageBackend:
        """The storage backend chosen by :meth:`storage_url` (built, not yet opened)."""
        if self._storage is None:
            url = self.storage_url()
            scheme = url.split(":", 1)[0].split("+", 1)[0]
            factory = self.storage_schemes.get(scheme)
            self._storage = factory(url, self.config)
        return self._storage

    async def open_storage(self, url: str) -> StorageBackend:
        """Return an opened storage backend for ``url``: the stack's own storage when ``url``
        is its :meth:`storage_url`, else a second backend built by the scheme's registered
        factory (one per URL, closed by :meth:`aclose`). For state kept apart from the runs,
        such as ``[cache] url`` or ``[limits] shared``.

        Args:
            url: a storage URL (``redis://127.0.0.1:6379/0``, ``sqlite:///path.db``).

        Returns:
            the opened backend.

        Raises:
            UnknownNameError: no plugin registers the URL's scheme.
            StorageError: the backend could not be opened.
        """
        if url == self.storage_url():
            await self.open()
            return self.storage
        backend = self._extra_storages.get(url)
        if backend is None:
            scheme = url.split(":", 1)[0].split("+", 1)[0]
            backend = self.storage_schemes.get(scheme)(url, self.config)
            await backend.open()
            self._extra_storages[url] = backend
        return backend

    @property
    def storage_is_open(self) -> bool:
        """True once :meth:`open` has opened the storage backend."""
        return self._storage_open

    async def open(self) -> Stack:
        """Open the storage backend (create or migrate its schema). Idempotent."""
        if not self._storage_open:
            await self.storage.open()
            self._storage_open = True
        return self

    async def aclose(self) -> None:
        """Close storage, and every provider, tool and event listener that was built and has
        ``aclose`` (:class:`~flowyard.interfaces.SupportsAclose`: a tool holding connections
        or child processes, such as an MCP server's; the audit listener, which flushes its
        buffer before the storage closes). Safe to call twice.
        """
        for provider in self.providers.loaded().values():
            if isinstance(provider, SupportsAclose):
                await provider.aclose()
        for tool in self.tools.loaded().values():
            if isinstance(tool, SupportsAclose):
                await tool.aclose()
        for listener in self.listeners.loaded().values():
            if isinstance(listener, SupportsAclose):  # the audit log flushes its buffer
                await listener.aclose()
        extra, self._extra_storages = self._extra_storages, {}
        for backend in extra.values():
            await backend.close()
        if self._storage is not None and self._storage_open:
            await self._storage.close()
            self._storage_open = False

    async def __aenter__(self) -> Stack:
        return await self.open()

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def memory(self, name: str | None = None) -> MemoryStore:
        """Return a memory store: ``name``, else ``memory.store`` in the configuration, else the
        registered store with the highest ``default_priority``.

        Raises:
            UnknownNameError: no such store, or none registered.
        """
        return self.memory_stores.get(name or self._pick("memory.store", self.memory_stores))

    def retriever(self, name: str | None = None) -> Retriever:
        """Return a retriever: ``name``, else ``rag.retriever`` in the configuration, else the
        registered retriever with the highest ``default_priority``.

        Raises:
            UnknownNameError: no such retriever, or none registered.
        """
        return self.retrievers.get(name or self._pick("rag.retriever", self.retrievers))

    def _pick(self, key: str, registry: Registry[Any]) -> str:
        configured = self.config.get(key)
        if configured:
            return str(configured)
        name = registry.preferred()
        if name is None:
            raise UnknownNameError(registry.kind, "<default>", [])
        return name

    # ------------------------------------------------------------------ workflows

    def load_workflow(self, source: str | Path | Mapping[str, Any] | Workflow, *,
                      format: str | None = None) -> Workflow:
        """Return a validated :class:`~flowyard.workflow.Workflow` from a file path, YAML text,
        a dict or a workflow object.

        Args:
            source: the workflow.
            format: the workflow loader (format name, as ``flowyard run --format``) that
                parses a file or text; None: a file's loader is chosen by suffix and content
                (see :class:`~flowyard.interfaces.WorkflowLoader`), text is ``native``.

        Raises:
            WorkflowValidationError: every problem found, with file, line and column; an
                unknown ``format``; two loaders claiming the file.
            ValueError: ``format`` given with a dict or a workflow object.
        """
        # lazy: the engine (jinja2) loads on the first run (`flowyard runs`, `doctor` need none)
        from flowyard.engine import load_workflow

        return load_workflow(self, source, format=format)

    async def run(self, workflow: str | Path | Mapping[str, Any] | Workflow,
                  inputs: Mapping[str, Any] | None = None, **options: Any) -> RunResult:
        """Run a workflow to its end and return the run result.

        ``options`` are passed to the engine (``run_id``, ``max_concurrency``...; see
        ``docs/workflows.md``).
        """
        # lazy: the engine (jinja2) loads on the first run (`flowyard runs`, `doctor` need none)
        from flowyard.engine import run_workflow

        return await run_workflow(self, workflow, inputs or {}, **options)

    def run_sync(self, workflow: str | Path | Mapping[str, Any] | Workflow,
                 inputs: Mapping[str, Any] | None = None, *, backend: str = "asyncio",
                 **options: Any) -> RunResult:
        """Blocking :meth:`run` for scripts: opens the stack, runs, closes it."""
        import anyio

        async def main() -> RunResult:
            async with self:
                return await self.run(workflow, inputs, **options)

        return anyio.run(main, backend=backend)

    def stream(self, workflow: str | Path | Mapping[str, Any] | Workflow,
               inputs: Mapping[str, Any] | None = None, **options: Any) -> AsyncIterator[Event]:
        """Run a workflow and yield its events live, ending with ``run.finished``."""
        # lazy: the engine (jinja2) loads on the first run (`flowyard runs`, `doctor` need none)
        from flowyard.engine import stream_workflow

        return stream_workflow(self, workflow, inputs or {}, **options)

    async def resume(self, run_id: str, *, force: bool = False, **options: Any) -> RunResult:
        """Continue a stored run: completed steps are not run again.

        Raises:
            RunNotFoundError: no such run.
            WorkflowChangedError: the workflow changed since the run started (unless ``force``).
        """
        # lazy: the engine (jinja2) loads on the first run (`flowyard runs`, `doctor` need none)
        from flowyard.engine import resume_run

        return await resume_run(self, run_id, force=force, **options)

    async def answer(self, run_id: str, step: str, value: Any, *, actor: str | None = None,
                     resume: bool = True) -> RunResult | None:
        """Answer a human step (``human.approve``/``human.input``) of a ``waiting`` run and,
        by default, resume the run (see :func:`flowyard.engine.human.answer_step`).

        Args:
            run_id: the waiting run.
            step: the step key (``id``; ``id[i]`` for a fan-out item) or the step id.
            value: the answer: ``{"approved": bool, "comment": str}`` for ``human.approve``;
                a JSON value matching the step's ``schema`` for ``human.input``.
            actor: who answers (default: ``"user:<OS user>"``, as the audit log names local
                users).
            resume: resume the run now (default); False only stores the answer.

        Returns:
            the resumed run's result (``waiting`` again when another human step waits), or
            None when ``resume`` is False.

        Raises:
            RunNotFoundError: no such run.
            RunInUseError: another process holds the run right now.
            HumanAnswerError: the run or step is not waiting, the step was already answered,
                or the value is invalid (not JSON-ready, larger than
                ``human.max_answer_bytes``, against the schema); nothing was stored.
        """
        from flowyard.audit import local_actor  # lazy: only when answering
        from flowyard.engine.human import answer_step  # lazy: the engine loads on first use

        return await answer_step(self, run_id, step, value,
                                 actor=actor if actor is not None else local_actor(),
                                 resume=resume)

    async def expire_waiting(self, *, now: float | None = None, resume: bool = True
                             ) -> list[tuple[str, str]]:
        """Give every waiting human step whose ``timeout_s`` passed its default outcome and
        resume its run (see :func:`flowyard.engine.human.expire_waiting`).

        Args:
            now: the time to judge deadlines at, UNIX seconds (default: now).
            resume: resume the runs (default True).

        Returns:
            the ``(run_id, step_key)`` pairs that expired.
        """
        from flowyard.engine.human import expire_waiting  # lazy: the engine loads on first use

        return await expire_waiting(self, now=now, resume=resume)

    async def replay(self, run_id: str, *, from_step: str,
                     set_outputs: Mapping[str, Any] | None = None,
                     inputs: Mapping[str, Any] | None = None, **options: Any) -> RunResult:
        """Replay (fork) a stored run from ``from_step`` as a new, linked run: its completed
        steps before ``from_step`` are reused from its checkpoints, not executed again.

        Args:
            run_id: the original run (not changed).
            from_step: the step to run again, with every step downstream of it.
            set_outputs: ``{step_id: output}`` replacing reused steps' outputs.
            inputs: workflow inputs replacing the original run's.
            **options: ``run_id_new``, ``max_concurrency``, ``raise_on_failure``.

        Returns:
            the new run's result (see :func:`flowyard.engine.replay.replay_run`).

        Raises:
            RunNotFoundError: no such run.
            WorkflowChangedError: the workflow changed since the run started.
            ReplayError: unknown step, or ``set_outputs`` on a step that runs again.
        """
        from flowyard.engine.replay import replay_run  # lazy: the engine loads on first run

        return await replay_run(self, run_id, from_step=from_step, set_outputs=set_outputs,
                                inputs=inputs, **options)

    def __repr__(self) -> str:
        loaded = [s.name for s in self.plugin_report if s.status == "loaded"]
        return f"Stack(plugins={loaded!r})"


def _core_version() -> str:
    return __version__
