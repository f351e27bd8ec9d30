"""Gleitzeit's Python convenience API on a flowyard stack.

Mirrors the client of Gleitzeit's Python API reference (seed 004): a :class:`GleitzeitClient`
with ``chat``, ``vision``, ``execute_python``, ``run_workflow``, ``create_workflow``,
``batch_process``, ``batch_chat`` and the status methods, and module-level one-off functions
:func:`chat`, :func:`vision`, :func:`run_workflow`, :func:`batch_process`,
:func:`execute_python`. Every call runs as a flowyard workflow through ``stack.run``, so it is
recorded in the stack's storage (budgets, rate limits and the cost ledger apply).

Persistence: ``"memory"`` works with the core alone; ``"sqlite"`` (Gleitzeit's default) needs
the ``flowyard-sql`` plugin installed (``pip install flowyard-sql``), which registers the
``sqlite://`` storage; without it :meth:`GleitzeitClient.initialize` raises a
:class:`RuntimeError` saying so. ``"redis"`` has no flowyard counterpart (a ``ValueError``).

Models: Gleitzeit names Ollama models (``llama3.2:latest``); they are mapped as the workflow
loader maps them (``[gleitzeit] provider``, default ``ollama``; ``""`` = the stack's default
model; ``[gleitzeit] models`` for explicit names).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import flowyard

from flowyard_gleitzeit_format.translate import (
    IMAGE_SUFFIXES,
    Settings,
    Translation,
    translate,
)

__all__ = ["GleitzeitClient", "GleitzeitWorkflow", "InvalidWorkflowError", "TaskResult",
           "batch_process", "chat", "execute_python", "run_workflow", "vision"]

_DEFAULT_DB = "~/.gleitzeit/gleitzeit.db"


class InvalidWorkflowError(ValueError):
    """A Gleitzeit workflow that cannot be translated or validated (a ``ValueError``, as
    Gleitzeit raises for invalid workflows).

    Args:
        error: the flowyard validation error; its ``issues`` carry file, line and column.
    """

    def __init__(self, error: flowyard.WorkflowValidationError) -> None:
        super().__init__(str(error))
        self.issues = list(error.issues)


@dataclass
class TaskResult:
    """The result of one task of :meth:`GleitzeitClient.run_workflow`.

    Args:
        task_id: the task's ``id`` (else its ``name``) as written in the workflow.
        status: the flowyard step status (``completed``, ``failed``, ``skipped``...).
        result: Gleitzeit's result record: ``{"response": text}`` for LLM tasks;
            ``{"success", "result", "stdout", "stderr"}`` for ``python/execute``; the list
            of per-file results for a batch; None when the task did not complete.
        error: the error message of a failed task.
    """

    task_id: str
    status: str
    result: Any = None
    error: str | None = None


@dataclass
class GleitzeitWorkflow:
    """A workflow made by :meth:`GleitzeitClient.create_workflow` (already translated and
    checked), to give to :meth:`GleitzeitClient.run_workflow`.

    Args:
        name: the workflow name.
        tasks: the task definitions as given.
        translation: the flowyard translation.
    """

    name: str
    tasks: list[dict[str, Any]]
    translation: Translation = field(repr=False)


class GleitzeitClient:
    """Gleitzeit's client on a flowyard :class:`~flowyard.Stack`.

    Use it as an async context manager, or call :meth:`initialize` and :meth:`shutdown`.

    Args:
        persistence: ``"sqlite"`` (the default, or ``GLEITZEIT_PERSISTENCE_BACKEND``; needs
            flowyard-sql) or ``"memory"``; ``"redis"`` is refused.
        db_path: the SQLite file (default ``GLEITZEIT_SQLITE_PATH``, else
            ``~/.gleitzeit/gleitzeit.db``).
        redis_url: accepted for signature compatibility; Redis is not supported.
        ollama_url: the Ollama server (``[ollama] base_url``; default ``GLEITZEIT_OLLAMA_URL``,
            else ``http://localhost:11434``).
        config: more flowyard configuration (a mapping of tables, merged over the above).
        stack: a stack to use instead of building one (persistence options are then ignored:
            the stack's storage is used, and the caller opens and closes it).

    Raises:
        ValueError: an unknown ``persistence`` or ``"redis"``.
    """

    def __init__(self, persistence: str | None = None, db_path: str | None = None,
                 redis_url: str | None = None, ollama_url: str | None = None, *,
                 config: Mapping[str, Any] | None = None,
                 stack: flowyard.Stack | None = None) -> None:
        self.persistence = persistence or os.environ.get("GLEITZEIT_PERSISTENCE_BACKEND",
                                                         "sqlite")
        if self.persistence == "redis" or redis_url is not None:
            raise ValueError("GleitzeitClient: Redis persistence has no flowyard counterpart; "
                             "use persistence='sqlite' (flowyard-sql) or 'memory', or pass a "
                             "stack whose storage is PostgreSQL (flowyard-sql)")
        if self.persistence not in ("sqlite", "memory"):
            raise ValueError(f"GleitzeitClient: unknown persistence {self.persistence!r} "
                             "(sqlite, memory)")
        self.db_path = db_path or os.environ.get("GLEITZEIT_SQLITE_PATH", _DEFAULT_DB)
        self.ollama_url = ollama_url or os.environ.get("GLEITZEIT_OLLAMA_URL",
                                                       "http://localhost:11434")
        self._config = dict(config or {})
        self._stack = stack
        self._owns_stack = stack is None
        self._open = False
        self._runs: list[str] = []

    # ------------------------------------------------------------------ lifecycle

    @property
    def stack(self) -> flowyard.Stack:
        """The flowyard stack (after :meth:`initialize`).

        Raises:
            RuntimeError: the client is not initialized.
        """
        if self._stack is None or not self._open:
            raise RuntimeError("GleitzeitClient: not initialized; use 'async with "
                               "GleitzeitClient() as client' or 'await client.initialize()'")
        return self._stack

    async def initialize(self) -> None:
        """Build and open the stack.

        Raises:
            RuntimeError: ``persistence="sqlite"`` without the flowyard-sql plugin.
        """
        if self._open:
            return
        if self._stack is None:
            url = "memory://" if self.persistence == "memory" else \
                f"sqlite:///{Path(self.db_path).expanduser()}"
            config: dict[str, Any] = {"storage": {"url": url},
                                      "ollama": {"base_url": self.ollama_url}}
            for table, values in self._config.items():
                if isinstance(values, Mapping) and isinstance(config.get(table), dict):
                    config[table] = {**config[table], **values}
                else:
                    config[table] = values
            stack = flowyard.Stack.default(config=config)
            scheme = str(config["storage"].get("url", url)).split(":", 1)[0]
            if scheme not in stack.storage_schemes.names():
                raise RuntimeError(
                    f"GleitzeitClient: persistence={self.persistence!r} needs the "
                    f"'{scheme}' storage, which the flowyard-sql plugin provides (pip install "
                    "flowyard-sql); use persistence='memory' without it")
            if self.persistence == "sqlite":
                Path(self.db_path).expanduser().parent.mkdir(parents=True, exist_ok=True)
            self._stack = stack
            await stack.open()
        self._open = True

    async def shutdown(self) -> None:
        """Close the stack (when the client built it)."""
        if self._open and self._owns_stack and self._stack is not None:
            await self._stack.aclose()
        self._open = False

    async def __aenter__(self) -> GleitzeitClient:
        await self.initialize()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.shutdown()

    @property
    def settings(self) -> Settings:
        """The ``[gleitzeit]`` settings of the stack (model mapping)."""
        return Settings.from_config(self.stack.config)

    async def _run(self, definition: Mapping[str, Any] | flowyard.Workflow,
                   inputs: Mapping[str, Any] | None = None) -> flowyard.RunResult:
        result = await self.stack.run(definition, dict(inputs or {}))
        self._runs.append(result.run_id)
        return result

    def _model(self, name: str | None) -> dict[str, Any]:
        model = self.settings.model(name) if name else None
        return {"model": model} if model else {}

    # ------------------------------------------------------------------ core methods

    async def chat(self, prompt: str, model: str = "llama3.2:latest", system: str | None = None,
                   temperature: float = 0.7, max_tokens: int | None = None) -> str:
        """Ask a model once.

        Args:
            prompt: the user prompt (data, never a template).
            model: the model (a Gleitzeit/Ollama name or a flowyard reference).
            system: a system prompt.
            temperature: sampling temperature (0-2).
            max_tokens: most tokens to generate.

        Returns:
            the answer text.

        Raises:
            RuntimeError: the call failed (the message says why).
        """
        args: dict[str, Any] = {"prompt": "${inputs.prompt}", "temperature": temperature,
                                **self._model(model)}
        inputs: dict[str, Any] = {"prompt": prompt}
        if system is not None:
            args["system"] = "${inputs.system}"
            inputs["system"] = system
        if max_tokens is not None:
            args["max_tokens"] = max_tokens
        result = await self._run({
            "name": "gleitzeit-chat",
            "inputs": {k: {"type": "string"} for k in inputs},
            "steps": [{"id": "chat", "uses": "llm.chat", "with": args}],
            "outputs": {"response": "${chat}"}}, inputs)
        if not result.ok:
            raise RuntimeError(f"chat failed: {result.error}")
        return str(result.outputs["response"])

    async def vision(self, image_path: str, prompt: str = "Describe this image",
                     model: str = "llava:latest") -> str:
        """Ask a vision model about an image.

        Args:
            image_path: the image file (relative to the working directory), a URL or base64.
            prompt: the question.
            model: the vision model.

        Returns:
            the answer text.

        Raises:
            RuntimeError: the call failed (unreadable image, a model without vision...).
        """
        image = image_path
        if "://" not in image and Path(image).suffix.lower() in IMAGE_SUFFIXES:
            image = str(Path(image).resolve())
        result = await self._run({
            "name": "gleitzeit-vision",
            "inputs": {"prompt": {"type": "string"}, "image": {"type": "string"}},
            "steps": [{"id": "vision", "uses": "llm.chat",
                       "with": {"prompt": "${inputs.prompt}", "images": ["${inputs.image}"],
                                **self._model(model)}}],
            "outputs": {"response": "${vision}"}}, {"prompt": prompt, "image": image})
        if not result.ok:
            raise RuntimeError(f"vision failed: {result.error}")
        return str(result.outputs["response"])

    async def execute_python(self, script_file: str, context: Mapping[str, Any] | None = None,
                             timeout: int = 10) -> Any:
        """Run a Python script with ``context``; return its ``result`` variable.

        Needs flowyard-exec (the ``python.run`` tool; the script must lie inside
        ``[exec] script_dir``, default the working directory).

        Args:
            script_file: the script.
            context: values visible to the script as ``context``.
            timeout: seconds.

        Returns:
            the script's ``result``.

        Raises:
            RuntimeError: python.run is not installed, or the script failed.
            TimeoutError: the script ran longer than ``timeout``.
        """
        if "python.run" not in self.stack.tools.names():
            raise RuntimeError("execute_python needs the python.run tool of the flowyard-exec "
                               "plugin (pip install flowyard-exec)")
        result = await self._run({
            "name": "gleitzeit-python",
            "inputs": {"context": {"type": "object"}},
            "steps": [{"id": "python", "uses": "python.run",
                       "with": {"script": script_file, "context": "${inputs.context}",
                                "timeout": timeout}}],
            "outputs": {"result": "{{ steps.python.output.result }}"}},
            {"context": dict(context or {})})
        if not result.ok:
            step = result.steps.get("python")
            if step is not None and (step.error_type == "StepTimeoutError"
                                     or "timed out" in (step.error or "")):
                raise TimeoutError(f"execute_python: {script_file} timed out after {timeout} s")
            raise RuntimeError(f"execute_python failed: {result.error}")
        return result.outputs["result"]

    # ------------------------------------------------------------------ workflows

    async def create_workflow(self, name: str, tasks: list[dict[str, Any]]
                              ) -> GleitzeitWorkflow:
        """Make a workflow from task definitions (checked now).

        Args:
            name: the workflow name.
            tasks: Gleitzeit task definitions (``id``/``name``, ``method``, ``params``, ...).

        Returns:
            the workflow, for :meth:`run_workflow`.

        Raises:
            InvalidWorkflowError: a task cannot be translated.
        """
        try:
            translation = translate({"name": name, "tasks": tasks}, settings=self.settings)
        except flowyard.WorkflowValidationError as exc:
            raise InvalidWorkflowError(exc) from None
        return GleitzeitWorkflow(name=name, tasks=list(tasks), translation=translation)

    def _translation(self, workflow: str | Path | Mapping[str, Any] | GleitzeitWorkflow
                     ) -> tuple[Translation, str | None]:
        if isinstance(workflow, GleitzeitWorkflow):
            return workflow.translation, None
        try:
            if isinstance(workflow, Mapping):
                return translate(dict(workflow), settings=self.settings), None
            path = Path(workflow)
            if not path.is_file():
                raise FileNotFoundError(f"Workflow file not found: {workflow}")
            source = path.read_text(encoding="utf-8")
            data, locations = flowyard.parse_yaml(
                source, path=str(path), limits=flowyard.ParseLimits.from_config(
                    self.stack.config), keep_going=True)
            return translate(data, locations, path=str(path), settings=self.settings), \
                str(path)
        except flowyard.WorkflowValidationError as exc:
            raise InvalidWorkflowError(exc) from None

    async def run_workflow(self, workflow: str | Path | Mapping[str, Any] | GleitzeitWorkflow
                           ) -> dict[str, TaskResult]:
        """Run a Gleitzeit workflow (a YAML/JSON file, a dict, or a created workflow).

        Args:
            workflow: the workflow.

        Returns:
            one :class:`TaskResult` per task, keyed by the task's ``id`` (else its name); a
            batch workflow has the one key ``batch``.

        Raises:
            FileNotFoundError: no such file.
            InvalidWorkflowError: the workflow is not valid (a ``ValueError``).
        """
        translation, path = self._translation(workflow)
        try:
            parsed = flowyard.parse_workflow(translation.definition,
                                             locations=translation.locations, source=path)
            result = await self._run(parsed)
        except flowyard.WorkflowValidationError as exc:
            raise InvalidWorkflowError(exc) from None
        out: dict[str, TaskResult] = {}
        for info in translation.tasks:
            step = result.steps.get(info.step)
            if step is None:
                out[info.key] = TaskResult(info.key, "pending")
                continue
            value: Any = None
            if step.status == "completed":
                if info.kind == "llm":
                    value = {"response": step.output}
                elif info.kind == "python":
                    value = {"success": True, "result": step.output.get("result"),
                             "stdout": step.output.get("stdout", ""),
                             "stderr": step.output.get("stderr", "")}
                else:
                    value = step.output
            out[info.key] = TaskResult(info.key, step.status, value, step.error)
        return out

    # ------------------------------------------------------------------ batches

    async def batch_process(self, directory: str | None = None, files: list[str] | None = None,
                            pattern: str = "*", method: str = "llm/chat",
                            prompt: str = "Analyze this file", model: str = "llama3.2:latest",
                            protocol: str = "llm/v1") -> dict[str, Any]:
        """Process files with an LLM, one task per file, all in parallel; a failing file does
        not stop the others.

        Text files are added to the prompt (``File content from PATH:``); images (and every
        file with ``method="llm/vision"``) are sent as images.

        Args:
            directory: a directory to list (relative to the working directory).
            files: file paths, instead of (or besides) the directory.
            pattern: the glob pattern within ``directory``.
            method: ``llm/chat`` or ``llm/vision``.
            prompt: the prompt for each file.
            model: the model.
            protocol: ``llm/v1``.

        Returns:
            ``{"total_files", "successful", "failed", "file_results": [{"file_path",
            "status", "result", "error"}], "run_id"}``.

        Raises:
            ValueError: neither files nor a directory; an unsupported method or protocol.
            FileNotFoundError: the directory does not exist.
        """
        if method not in ("llm/chat", "llm/vision") or protocol != "llm/v1":
            raise ValueError(f"batch_process: method {method!r} with protocol {protocol!r} "
                             "has no flowyard counterpart (llm/chat or llm/vision, llm/v1)")
        paths: list[str] = list(files or [])
        if directory is not None:
            folder = Path(directory)
            if not folder.is_dir():
                raise FileNotFoundError(f"batch_process: directory not found: {directory}")
            paths += [str(folder / p.name) for p in sorted(folder.glob(pattern)) if p.is_file()]
        if not paths and directory is None:
            raise ValueError("batch_process: give a directory or files")
        entries: list[dict[str, Any]] = []
        steps: list[dict[str, Any]] = []
        for i, given in enumerate(paths):
            full = Path(given).resolve()
            image = method == "llm/vision" or full.suffix.lower() in IMAGE_SUFFIXES
            entry: dict[str, Any] = {"path": given, "absolute": str(full)}
            ref = f"inputs.files[{i}]"
            args: dict[str, Any] = dict(self._model(model))
            if image:
                args.update(prompt="${inputs.prompt}", images=["{{ " + ref + ".absolute }}"])
            else:
                try:
                    entry["content"] = full.read_text(encoding="utf-8")
                except (OSError, UnicodeDecodeError) as exc:
                    raise ValueError(f"batch_process: cannot read {given!r} as text: {exc}"
                                     ) from None
                args["prompt"] = ("{{ inputs.prompt }}\n\nFile content from {{ " + ref
                                  + ".path }}:\n{{ " + ref + ".content }}")
            entries.append(entry)
            steps.append({"id": f"file_{i}", "uses": "llm.chat", "with": args,
                          "on_error": "continue"})
        if not steps:
            return {"total_files": 0, "successful": 0, "failed": 0, "file_results": [],
                    "run_id": None}
        result = await self._run({
            "name": "gleitzeit-batch", "on_failure": "continue",
            "inputs": {"prompt": {"type": "string"}, "files": {"type": "array"}},
            "steps": steps}, {"prompt": prompt, "files": entries})
        file_results = []
        for i, entry in enumerate(entries):
            step = result.steps[f"file_{i}"]
            file_results.append({"file_path": entry["path"], "status": step.status,
                                 "result": step.output if step.status == "completed" else None,
                                 "error": step.error})
        ok = sum(1 for r in file_results if r["status"] == "completed")
        return {"total_files": len(entries), "successful": ok, "failed": len(entries) - ok,
                "file_results": file_results, "run_id": result.run_id}

    async def batch_chat(self, directory: str, pattern: str = "*.txt",
                         prompt: str = "Summarize this document",
                         model: str = "llama3.2:latest") -> dict[str, Any]:
        """:meth:`batch_process` of the text files of a directory with ``llm/chat``.

        Args:
            directory: the directory.
            pattern: the glob pattern.
            prompt: the prompt for each file.
            model: the model.

        Returns:
            as :meth:`batch_process`.
        """
        return await self.batch_process(directory=directory, pattern=pattern, prompt=prompt,
                                        model=model)

    # ------------------------------------------------------------------ status

    async def get_workflow_status(self, workflow_id: str) -> Any:
        """Return the stored run (a :class:`flowyard.RunRecord`-like record) of a workflow
        run id, or None.

        Args:
            workflow_id: the run id.
        """
        try:
            return await self.stack.storage.get_run(workflow_id)
        except flowyard.RunNotFoundError:
            return None

    async def get_task_result(self, task_id: str, workflow_id: str | None = None) -> Any:
        """Return the stored output of a task (a flowyard step id), from the given run or the
        latest run of this client that has it; None when none has.

        Args:
            task_id: the step id (a task's ``id``, or its name with other characters than
                letters, digits, ``_`` and ``-`` replaced by ``_``).
            workflow_id: the run id to look in.
        """
        runs = [workflow_id] if workflow_id else list(reversed(self._runs))
        for run_id in runs:
            checkpoints = await self.stack.storage.load_checkpoints(run_id)
            if task_id in checkpoints:
                return checkpoints[task_id]
        return None

    async def list_workflows(self, limit: int = 20) -> list[Any]:
        """Return the most recent stored runs, newest first.

        Args:
            limit: how many (1-1000).
        """
        return list(await self.stack.storage.list_runs(flowyard.RunQuery(limit=limit)))


# ---------------------------------------------------------------------- one-off functions


async def chat(prompt: str, model: str = "llama3.2:latest", system: str | None = None,
               **client_options: Any) -> str:
    """One chat call with a client of its own (see :meth:`GleitzeitClient.chat`).

    Args:
        prompt: the prompt.
        model: the model.
        system: a system prompt.
        **client_options: :class:`GleitzeitClient` arguments (``persistence``, ``config``...).

    Returns:
        the answer text.
    """
    async with GleitzeitClient(**client_options) as client:
        return await client.chat(prompt, model=model, system=system)


async def vision(image_path: str, prompt: str = "Describe this image",
                 model: str = "llava:latest", **client_options: Any) -> str:
    """One vision call (see :meth:`GleitzeitClient.vision`).

    Args:
        image_path: the image.
        prompt: the question.
        model: the vision model.
        **client_options: :class:`GleitzeitClient` arguments.

    Returns:
        the answer text.
    """
    async with GleitzeitClient(**client_options) as client:
        return await client.vision(image_path, prompt, model)


async def run_workflow(workflow: str | Path | Mapping[str, Any],
                       **client_options: Any) -> dict[str, TaskResult]:
    """Run a Gleitzeit workflow (see :meth:`GleitzeitClient.run_workflow`).

    Args:
        workflow: a file or a dict.
        **client_options: :class:`GleitzeitClient` arguments.

    Returns:
        the task results by task id.
    """
    async with GleitzeitClient(**client_options) as client:
        return await client.run_workflow(workflow)


async def batch_process(directory: str | None = None, pattern: str = "*",
                        prompt: str = "Analyze this file", *, files: list[str] | None = None,
                        method: str = "llm/chat", model: str = "llama3.2:latest",
                        **client_options: Any) -> dict[str, Any]:
    """Process files in a batch (see :meth:`GleitzeitClient.batch_process`); the first three
    arguments are positional, as in ``batch_process("docs", "*.txt", "Summarize")``.

    Args:
        directory: the directory.
        pattern: the glob pattern.
        prompt: the prompt for each file.
        files: file paths instead of a directory.
        method: ``llm/chat`` or ``llm/vision``.
        model: the model.
        **client_options: :class:`GleitzeitClient` arguments.

    Returns:
        the batch summary.
    """
    async with GleitzeitClient(**client_options) as client:
        return await client.batch_process(directory=directory, files=files, pattern=pattern,
                                          method=method, prompt=prompt, model=model)


async def execute_python(script_file: str, context: Mapping[str, Any] | None = None,
                         timeout: int = 10, **client_options: Any) -> Any:
    """Run a Python script (see :meth:`GleitzeitClient.execute_python`).

    Args:
        script_file: the script.
        context: values for the script.
        timeout: seconds.
        **client_options: :class:`GleitzeitClient` arguments.

    Returns:
        the script's ``result``.
    """
    async with GleitzeitClient(**client_options) as client:
        return await client.execute_python(script_file, context, timeout)
