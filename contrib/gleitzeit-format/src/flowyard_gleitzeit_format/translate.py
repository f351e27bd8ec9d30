"""Translate Gleitzeit workflow files into flowyard workflow definitions.

A Gleitzeit workflow is a mapping with ``tasks`` (each a ``method`` such as ``llm/chat``,
``python/execute`` or ``mcp/tool.<server>.<tool>``, an optional ``protocol``, ``params`` or
``parameters``, ``dependencies``, ``priority``, ``retry``/``retry_config`` and ``timeout``),
or a *batch* workflow (``type: batch``, ``batch: {directory, pattern}`` and a task
``template``). Each task becomes one flowyard step; ``${task.field}`` references become
templates of flowyard's sandbox with Gleitzeit's substitution rules (a string that is
exactly one reference keeps the value's type, references inside longer text are replaced by
the value's ``str()``).

The translated definition is given to :func:`flowyard.parse_workflow` with a
:class:`flowyard.Locations` that maps every translated field to where it was written in the
Gleitzeit file, so every problem, also those found later by flowyard's validation, names the
original file, line and column. Everything the translation cannot express is a located
:class:`flowyard.WorkflowValidationError`, never silently dropped.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import PurePath
from typing import Any

import flowyard

__all__ = ["GleitzeitLoader", "Settings", "TaskInfo", "Translation", "sniff", "translate",
           "PRIORITIES", "FILES_TOOL", "IMAGE_SUFFIXES"]

#: The tool (registered by this plugin) that lists and reads files at run time.
FILES_TOOL = "gleitzeit.files"
#: Gleitzeit's string priorities -> flowyard step ``priority`` (higher runs first).
PRIORITIES: dict[str, int] = {"urgent": 20, "high": 10, "normal": 0, "low": -10}
#: Gleitzeit's numeric priorities (1 is the highest) and the names they stand for.
NUMERIC_PRIORITIES: dict[int, str] = {1: "high", 2: "normal", 3: "low"}
#: File suffixes Gleitzeit treats as images (sent to vision models instead of read as text).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".bmp", ".webp")

_WORKFLOW_KEYS = ("name", "id", "description", "version", "timeout", "wait_for_completion",
                  "max_parallel_tasks", "metadata", "tags", "providers", "tasks", "type",
                  "batch", "template", "protocol")
_TASK_KEYS = ("id", "name", "description", "method", "protocol", "params", "parameters",
              "dependencies", "priority", "retry", "retry_config", "timeout", "metadata",
              "tags")
_LLM_METHODS = ("llm/chat", "llm/vision", "llm/complete", "llm/generate")
_PYTHON_METHODS = ("python/execute",)
_SUPPORTED = (*_LLM_METHODS, *_PYTHON_METHODS)
_LLM_PARAMS = ("model", "messages", "prompt", "system", "temperature", "top_p", "max_tokens",
               "stop", "seed", "images", "image_path", "image_data", "file_path")
_PYTHON_PARAMS = ("file", "code", "context", "timeout")
_MESSAGE_KEYS = ("role", "content", "images")
_RETRY_KEYS = ("max_attempts", "backoff_strategy", "backoff", "base_delay", "initial_delay",
               "max_delay", "backoff_multiplier", "jitter")
_BATCH_KEYS = ("directory", "pattern")
#: Gleitzeit's MCP tool methods: ``mcp/tool.<name>``, ``<name>`` with the server's
#: ``tool_prefix`` (``fs.read``) or without one (``echo``).
_MCP_TOOL = "mcp/tool."
_MCP_SERVER = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")
#: Fields of an MCP task's result that stand for the whole result when it is text.
_MCP_TEXT_FIELDS = ("response", "content", "text", "result")
_GZ_REF = re.compile(r"\$\{([^}]+)\}")
_FIELD = re.compile(r"^([^\[\]]+)((?:\[\d+\])*)$")
_INDEX = re.compile(r"\[(\d+)\]")


@dataclass
class Settings:
    """How Gleitzeit files are translated (the ``[gleitzeit]`` table of ``flowyard.toml``).

    Args:
        provider: the flowyard provider that serves Gleitzeit's model names (``llama3.2``
            becomes ``ollama/llama3.2`` with the default ``ollama``); ``""`` runs every task
            that names a model without a provider on the stack's default model.
        models: explicit model mapping, Gleitzeit name -> flowyard reference
            (``{"llama3.2": "openai/gpt-4o-mini"}``); wins over ``provider``.
        mcp_server: the flowyard MCP server (``[mcp.servers.<name>]`` of flowyard-mcp) that
            serves Gleitzeit MCP methods written without a server prefix
            (``mcp/tool.echo`` -> ``<mcp_server>.echo``); ``""``: such methods are refused
            with a located error. ``mcp/tool.fs.read`` always becomes ``fs.read``.
    """

    provider: str = "ollama"
    models: dict[str, str] = field(default_factory=dict)
    mcp_server: str = ""

    @classmethod
    def from_config(cls, config: Any) -> Settings:
        """Read the ``[gleitzeit]`` section of a :class:`flowyard.Config` (or a mapping).

        Raises:
            ConfigError: a key has the wrong type or is unknown.
        """
        section = config.section("gleitzeit") if hasattr(config, "section") else \
            dict(config or {})
        unknown = sorted(set(section) - {"provider", "models", "root", "max_file_bytes",
                                         "mcp_server"})
        if unknown:
            raise flowyard.ConfigError(
                f"[gleitzeit]: unknown key(s) {', '.join(unknown)} (known: provider, models, "
                "root, max_file_bytes, mcp_server)")
        provider = section.get("provider", "ollama")
        models = section.get("models", {})
        if not isinstance(provider, str):
            raise flowyard.ConfigError(
                f"[gleitzeit] provider must be a string, got {provider!r}")
        if not isinstance(models, Mapping) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in models.items()):
            raise flowyard.ConfigError(
                "[gleitzeit] models must map model names to model references")
        mcp_server = section.get("mcp_server", "")
        if not isinstance(mcp_server, str) or (mcp_server and not _MCP_SERVER.match(mcp_server)):
            raise flowyard.ConfigError(
                f"[gleitzeit] mcp_server must be the name of a [mcp.servers.<name>] table, "
                f"got {mcp_server!r}")
        return cls(provider=provider, models=dict(models), mcp_server=mcp_server)

    def model(self, name: str) -> str | None:
        """Return the flowyard model reference for a Gleitzeit model name (None: the stack's
        default model).
        """
        if name in self.models:
            return self.models[name]
        if "/" in name:
            return name
        return f"{self.provider}/{name}" if self.provider else None


@dataclass
class TaskInfo:
    """What a flowyard step of a translated workflow was in the Gleitzeit file.

    Args:
        key: the task's name as written (``name``, else ``id``); the key of its result in
            :func:`~flowyard_gleitzeit_format.client.run_workflow`.
        step: the flowyard step id.
        method: the Gleitzeit method (``llm/chat``...).
        kind: ``llm``, ``python``, ``mcp`` or ``batch``.
    """

    key: str
    step: str
    method: str
    kind: str


@dataclass
class Translation:
    """The result of :func:`translate`.

    Args:
        definition: the flowyard workflow definition (a dict for :func:`flowyard.parse_workflow`).
        locations: where each of its fields was written in the Gleitzeit file.
        tasks: one :class:`TaskInfo` per translated task, in file order.
    """

    definition: dict[str, Any]
    locations: flowyard.Locations
    tasks: list[TaskInfo]


def sniff(source: str, path: str | None = None) -> bool:
    """Return True when ``source`` looks like a Gleitzeit workflow: a top-level ``tasks`` list
    whose items have a ``method`` (and no top-level ``steps``), or a batch workflow (top-level
    ``batch`` and ``template``). A cheap textual check, never a full parse.

    Args:
        source: the file's text.
        path: the file's path (``.json`` files are checked for JSON keys).

    Returns:
        whether this loader claims the file.
    """
    if source.lstrip().startswith("{") or (path is not None and path.lower().endswith(".json")):
        def has(key: str) -> bool:
            return re.search(rf'"{key}"\s*:', source) is not None
        return (has("tasks") and has("method") and not has("steps")) or \
            (has("batch") and has("template") and not has("steps"))

    def top(key: str) -> bool:
        return re.search(rf"^{key}\s*:", source, re.M) is not None or \
            re.search(rf'^["\']{key}["\']\s*:', source, re.M) is not None
    if top("steps"):
        return False
    if top("tasks") and re.search(r"(^|[\s{,])[\"']?method[\"']?\s*:", source, re.M):
        return True
    return top("batch") and top("template")


class GleitzeitLoader:
    """The ``gleitzeit`` workflow loader: Gleitzeit YAML/JSON files, claimed by content.

    Args:
        settings: model mapping (see :class:`Settings`).
        limits: the parse limits (:class:`flowyard.ParseLimits`), default the defaults.
    """

    name = "gleitzeit"
    suffixes: Sequence[str] = (".yaml", ".yml", ".json")

    def __init__(self, settings: Settings | None = None, limits: Any = None) -> None:
        self.settings = settings or Settings()
        self.limits = limits

    def sniff(self, source: str, path: str | None) -> bool:
        """Claim ``source`` when it is a Gleitzeit workflow (see :func:`sniff`).

        Args:
            source: the file's text.
            path: the file's path, or None.

        Returns:
            True for Gleitzeit workflows.
        """
        return sniff(source, path)

    def translate(self, source: str, *, path: str | None = None) -> Translation:
        """Parse and translate ``source`` without building the workflow.

        Args:
            source: the file's text.
            path: the file's path, named by issues.

        Returns:
            the translated definition, its locations and the task table.

        Raises:
            WorkflowValidationError: not valid YAML, or a located problem of the translation.
        """
        data, locations = flowyard.parse_yaml(source, path=path, limits=self.limits,
                                              keep_going=True)
        return translate(data, locations, path=path, settings=self.settings)

    def load(self, source: str, *, path: str | None = None) -> flowyard.Workflow:
        """Parse a Gleitzeit workflow into a flowyard :class:`~flowyard.Workflow`.

        Args:
            source: the file's text.
            path: the file's path, named by issues.

        Returns:
            the workflow (flowyard's validation of actions and references follows).

        Raises:
            WorkflowValidationError: every problem, each with file, line and column.
        """
        result = self.translate(source, path=path)
        return flowyard.parse_workflow(result.definition, locations=result.locations,
                                       source=path)


def translate(data: Any, locations: flowyard.Locations | None = None, *,
              path: str | None = None, settings: Settings | None = None) -> Translation:
    """Translate a parsed Gleitzeit workflow (a dict) into a flowyard definition.

    Args:
        data: the parsed file (or a dict written in Python, as ``run_workflow`` takes).
        locations: where each value was written (from :func:`flowyard.parse_yaml`); None for
            a dict without a file (issues then name field paths only).
        path: the file, named by issues.
        settings: the model mapping.

    Returns:
        the :class:`Translation`.

    Raises:
        WorkflowValidationError: every problem found, located in the Gleitzeit file.
    """
    translator = _Translator(locations or flowyard.Locations(file=path), path,
                             settings or Settings())
    return translator.run(data)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "_", text).strip("_")


def _norm(text: str) -> str:
    return re.sub(r"[^0-9a-z]+", "_", text.lower()).strip("_")


def _jinja(expr: str) -> str:
    """Return the template ``{{ expr }}``."""
    return "{{ " + expr + " }}"


def _literal(text: str) -> str:
    """Protect literal Gleitzeit text from flowyard's template syntax (Gleitzeit has none)."""
    if "{" not in text and "}" not in text and "#" not in text:
        return text
    if "{% endraw %}" in text or "{%endraw%}" in text:
        raise ValueError("the text contains '{% endraw %}'")
    return "{% raw %}" + text + "{% endraw %}" if ("{" in text or "}" in text) else text


class _Translator:
    def __init__(self, src: flowyard.Locations, path: str | None, settings: Settings) -> None:
        self.src = src
        self.path = path
        self.settings = settings
        self.dst = flowyard.Locations(file=path if path is not None else src.file)
        self.dst.issues.extend(getattr(src, "issues", []))
        self.issues: list[flowyard.ValidationIssue] = []
        self.lookup: dict[str, str] = {}
        self.kinds: dict[str, str] = {}
        self.infos: list[TaskInfo] = []
        self.steps: list[dict[str, Any]] = []

    # ------------------------------------------------------------------ locations, issues

    def error(self, message: str, path: str, *, key: bool = False) -> None:
        self.issues.append(self.src.issue(message, path, key=key))

    def map(self, src: str, dst: str) -> None:
        """Copy the positions of ``src`` and everything below it to ``dst``."""
        for table, out in ((self.src.positions, self.dst.positions),
                           (self.src.keys, self.dst.keys)):
            for p, pos in table.items():
                if p == src or p.startswith(src + ".") or p.startswith(src + "["):
                    out[dst + p[len(src):]] = pos
        if src not in self.src.positions:  # the nearest enclosing position stands in
            line, column = self.src.find(src)
            if line is not None and column is not None:
                self.dst.positions.setdefault(dst, (line, column))

    # ------------------------------------------------------------------ the workflow

    def run(self, data: Any) -> Translation:
        if not isinstance(data, Mapping):
            raise flowyard.WorkflowValidationError([*self.dst.issues, self.src.issue(
                f"a Gleitzeit workflow must be a mapping, got {type(data).__name__}", "")])
        for key in data:
            if key not in _WORKFLOW_KEYS:
                self.error(f"unknown key {key!r} in a Gleitzeit workflow (the gleitzeit "
                           f"loader knows: {', '.join(_WORKFLOW_KEYS)})", str(key), key=True)
        definition: dict[str, Any] = {}
        name = data.get("name") or data.get("id")
        if name is not None and not isinstance(name, str):
            self.error("the workflow 'name' must be a string", "name" if "name" in data else "id")
        if isinstance(name, str) and name:
            definition["name"] = name
            self.map("name" if data.get("name") else "id", "name")
        else:
            definition["name"] = PurePath(self.path).stem if self.path else "gleitzeit"
        for key in ("description", "version"):
            if data.get(key) is not None:
                definition[key] = str(data[key])
                self.map(key, key)
        if data.get("timeout") is not None:
            timeout = data["timeout"]
            if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
                self.error(f"'timeout' must be a positive number of seconds, got {timeout!r}",
                           "timeout")
            else:
                definition["timeout"] = timeout
                self.map("timeout", "timeout")
        mpt = data.get("max_parallel_tasks")
        if mpt is not None:
            if isinstance(mpt, bool) or not isinstance(mpt, int) or mpt < 1:
                self.error(f"'max_parallel_tasks' must be an integer >= 1, got {mpt!r}",
                           "max_parallel_tasks")
            else:
                definition["max_concurrency"] = mpt
                self.map("max_parallel_tasks", "max_concurrency")
        wfc = data.get("wait_for_completion")
        if wfc is not None and not isinstance(wfc, bool):
            self.error("'wait_for_completion' must be true or false", "wait_for_completion")
        is_batch = data.get("type") == "batch" or "batch" in data
        if data.get("type") is not None and data.get("type") != "batch":
            self.error(f"workflow type {data.get('type')!r} is not known (Gleitzeit knows "
                       "'batch'; other workflows have no 'type')", "type")
        if is_batch:
            if "tasks" in data:
                self.error("a batch workflow has a 'batch' and a 'template', not 'tasks'",
                           "tasks", key=True)
            outputs = self.batch(data)
        else:
            for key in ("template", "protocol"):
                if key in data:
                    self.error(f"'{key}' belongs to batch workflows (type: batch)", key,
                               key=True)
            outputs = self.tasks(data)
        definition["steps"] = self.steps
        line, column = self.src.find("tasks" if "tasks" in data else "batch")
        if line is not None and column is not None:
            self.dst.positions.setdefault("steps", (line, column))
        if outputs:
            definition["outputs"] = outputs
        if self.issues:
            raise flowyard.WorkflowValidationError([*self.dst.issues, *self.issues])
        return Translation(definition, self.dst, self.infos)

    # ------------------------------------------------------------------ tasks

    def tasks(self, data: Mapping[str, Any]) -> dict[str, Any]:
        tasks = data.get("tasks")
        if tasks is None:
            self.error("a Gleitzeit workflow needs 'tasks' (or type: batch)", "")
            return {}
        if not isinstance(tasks, list) or not tasks:
            self.error("'tasks' must be a non-empty list of tasks", "tasks")
            return {}
        ids: list[str | None] = []
        for i, task in enumerate(tasks):
            tp = f"tasks[{i}]"
            if not isinstance(task, Mapping):
                self.error("a task must be a mapping", tp)
                ids.append(None)
                continue
            names = [task[k] for k in ("id", "name") if isinstance(task.get(k), str) and task[k]]
            for k in ("id", "name"):
                if k in task and not (isinstance(task[k], str) and task[k]):
                    self.error(f"the task's '{k}' must be a non-empty string", f"{tp}.{k}")
            raw = task.get("id") if isinstance(task.get("id"), str) and task.get("id") else \
                task.get("name") if isinstance(task.get("name"), str) else None
            step = _slug(raw) if raw else f"task_{i + 1}"
            if not step:
                step = f"task_{i + 1}"
            if step in self.kinds:
                self.error(f"two tasks translate to the step id {step!r} (task names and ids "
                           "must be unique)", f"{tp}.id" if "id" in task else f"{tp}.name")
                ids.append(None)
                continue
            method = task.get("method")
            kind = "llm" if method in _LLM_METHODS else "python" if method in _PYTHON_METHODS \
                else "mcp" if isinstance(method, str) and method.startswith("mcp/") else "other"
            self.kinds[step] = kind
            ids.append(step)
            for n in names:
                self.lookup.setdefault(n, step)
                self.lookup.setdefault(_norm(n), step)
            key = raw or step  # Gleitzeit's results are keyed by the task id, else its name
            self.infos.append(TaskInfo(key=str(key), step=step, method=str(method), kind=kind))
        outputs: dict[str, Any] = {}
        for i, task in enumerate(tasks):
            step = ids[i]
            if step is None:
                continue
            made = self.task(task, f"tasks[{i}]", step)
            if made:
                ref = f'steps["{step}"].output'
                outputs[step] = (_jinja(f"{ref}.result if {ref} is not none else none")
                                 if self.kinds[step] == "python" else "${" + step + "}")
        return outputs

    def task(self, task: Mapping[str, Any], tp: str, step_id: str) -> bool:
        for key in task:
            if key not in _TASK_KEYS:
                self.error(f"unknown key {key!r} in a Gleitzeit task (known: "
                           f"{', '.join(_TASK_KEYS)})", f"{tp}.{key}", key=True)
        index = len(self.steps)
        sp = f"steps[{index}]"
        step: dict[str, Any] = {"id": step_id}
        self.steps.append(step)  # its place; helper steps (file_path) come after it
        self.map(tp, sp)
        self.map(f"{tp}.id" if "id" in task else f"{tp}.name", f"{sp}.id")
        method = task.get("method")
        if method is None:
            self.error("a Gleitzeit task needs a 'method' (llm/chat, llm/vision, "
                       "python/execute, ...)", tp)
            self.steps.pop()
            return False
        if not isinstance(method, str):
            self.error("'method' must be a string", f"{tp}.method")
            self.steps.pop()
            return False
        mcp_tool: str | None = None
        if method.startswith("mcp/"):
            mcp_tool = self.mcp_tool(method, f"{tp}.method")
            if mcp_tool is None:
                self.steps.pop()
                return False
        elif method not in _SUPPORTED:
            self.error(f"method {method!r} has no flowyard counterpart (the gleitzeit loader "
                       f"supports {', '.join(_SUPPORTED)})", f"{tp}.method")
            self.steps.pop()
            return False
        family = method.split("/", 1)[0]
        protocol = task.get("protocol")
        if protocol is not None and protocol != f"{family}/v1":
            self.error(f"protocol {protocol!r} does not serve method {method!r} (expected "
                       f"'{family}/v1')", f"{tp}.protocol")
        if "params" in task and "parameters" in task:
            self.error("give 'params' or 'parameters', not both", f"{tp}.parameters", key=True)
        pkey = "params" if "params" in task else "parameters"
        params = task.get(pkey, {})
        pp = f"{tp}.{pkey}"
        if params is None:
            params = {}
        if not isinstance(params, Mapping):
            self.error(f"'{pkey}' must be a mapping", pp)
            self.steps.pop()
            return False
        deps = self.dependencies(task, tp, step_id)
        if deps:
            step["depends_on"] = deps
            self.map(f"{tp}.dependencies", f"{sp}.depends_on")
        self.common(task, tp, sp, step)
        self.map(f"{tp}.method", f"{sp}.uses")
        if family == "llm":
            step["uses"] = "llm.chat"
            step["with"] = self.llm(method, params, pp, f"{sp}.with", step_id)
        elif mcp_tool is not None:
            step["uses"] = mcp_tool
            step["with"] = self.value(dict(params), pp, step_id)
        else:
            step["uses"] = "python.run"
            step["with"] = self.python(params, pp, f"{sp}.with", {}, step_id)
        self.map(pp, f"{sp}.with")
        return True

    def mcp_tool(self, method: str, mp: str) -> str | None:
        """Return the flowyard tool of a Gleitzeit MCP method (``mcp/tool.fs.read`` ->
        ``fs.read``, the tool ``read`` of flowyard-mcp's server ``fs``), or None after a
        located error."""
        name = method[len(_MCP_TOOL):] if method.startswith(_MCP_TOOL) else ""
        if not name or name.startswith(".") or name.endswith("."):
            self.error(f"method {method!r}: of Gleitzeit's MCP methods only "
                       "mcp/tool.<server>.<tool> (or mcp/tool.<tool> with [gleitzeit] "
                       "mcp_server) has a flowyard counterpart; resources and prompts are the "
                       "<server>.resources.read and <server>.prompts.get actions of "
                       "flowyard-mcp", mp)
            return None
        if "." in name:
            server = name.split(".", 1)[0]
            if not _MCP_SERVER.match(server):
                self.error(f"method {method!r}: {server!r} is not an MCP server name "
                           "(a letter, then letters, digits, '_' or '-')", mp)
                return None
            return name
        if not self.settings.mcp_server:
            self.error(f"method {method!r} names no MCP server: write "
                       f"mcp/tool.<server>.{name} (the <server> of [mcp.servers.<server>], "
                       "Gleitzeit's tool_prefix without its dot) or set [gleitzeit] "
                       "mcp_server", mp)
            return None
        return f"{self.settings.mcp_server}.{name}"

    def dependencies(self, task: Mapping[str, Any], tp: str, step_id: str) -> list[str]:
        deps = task.get("dependencies")
        if deps is None:
            return []
        if not isinstance(deps, list):
            self.error("'dependencies' must be a list of task names or ids",
                       f"{tp}.dependencies")
            return []
        out: list[str] = []
        for k, dep in enumerate(deps):
            target = self.lookup.get(dep) if isinstance(dep, str) else None
            if target is None and isinstance(dep, str):
                target = self.lookup.get(_norm(dep))
            if target is None:
                self.error(f"task depends on unknown task {dep!r} (tasks: "
                           f"{', '.join(i.key for i in self.infos)})",
                           f"{tp}.dependencies[{k}]")
            elif target == step_id:
                self.error("a task cannot depend on itself", f"{tp}.dependencies[{k}]")
            elif target not in out:
                out.append(target)
        return out

    def common(self, task: Mapping[str, Any], tp: str, sp: str, step: dict[str, Any]) -> None:
        """``priority``, ``retry``/``retry_config`` and ``timeout``."""
        if "priority" in task:
            value = task["priority"]
            name = NUMERIC_PRIORITIES.get(value) if isinstance(value, int) and \
                not isinstance(value, bool) else value.lower() if isinstance(value, str) else None
            if name not in PRIORITIES:
                self.error(f"priority {value!r} is not a Gleitzeit priority (urgent, high, "
                           "normal, low, or 1 = high, 2 = normal, 3 = low)", f"{tp}.priority")
            else:
                step["priority"] = PRIORITIES[name]
                self.map(f"{tp}.priority", f"{sp}.priority")
        if "retry" in task and "retry_config" in task:
            self.error("give 'retry' or 'retry_config', not both", f"{tp}.retry_config",
                       key=True)
        rkey = "retry_config" if "retry_config" in task else "retry"
        if rkey in task:
            retry = self.retry(task[rkey], f"{tp}.{rkey}")
            if retry is not None:
                step["retry"] = retry
                self.map(f"{tp}.{rkey}", f"{sp}.retry")
        if task.get("timeout") is not None:
            timeout = task["timeout"]
            if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
                self.error(f"'timeout' must be a positive number of seconds, got {timeout!r}",
                           f"{tp}.timeout")
            else:
                step["timeout"] = timeout
                self.map(f"{tp}.timeout", f"{sp}.timeout")

    def retry(self, raw: Any, rp: str) -> dict[str, Any] | None:
        if not isinstance(raw, Mapping):
            self.error("'retry' must be a mapping (max_attempts, backoff_strategy, base_delay, "
                       "max_delay, jitter)", rp)
            return None
        for key in raw:
            if key not in _RETRY_KEYS:
                self.error(f"unknown retry key {key!r} (known: {', '.join(_RETRY_KEYS)})",
                           f"{rp}.{key}", key=True)
        ok = True

        def number(key: str, default: float, minimum: float) -> float:
            nonlocal ok
            value = raw.get(key, default)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < minimum:
                self.error(f"retry '{key}' must be a number >= {minimum:g}, got {value!r}",
                           f"{rp}.{key}")
                ok = False
                return default
            return value

        attempts = raw.get("max_attempts", 3)
        if isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 1:
            self.error(f"retry 'max_attempts' must be an integer >= 1, got {attempts!r}",
                       f"{rp}.max_attempts")
            ok = False
        if "base_delay" in raw and "initial_delay" in raw:
            self.error("give 'base_delay' or 'initial_delay', not both", f"{rp}.initial_delay",
                       key=True)
            ok = False
        base = number("initial_delay" if "initial_delay" in raw else "base_delay", 1.0, 0)
        max_delay = number("max_delay", 300.0, 0)
        skey = "backoff_strategy" if "backoff_strategy" in raw else "backoff"
        strategy = raw.get(skey, "exponential")
        multipliers = {"exponential": 2.0, "fixed": 1.0}
        if strategy not in multipliers:
            self.error(f"retry {skey} {strategy!r} has no flowyard counterpart (flowyard "
                       "backs off exponentially or by a fixed delay: 'exponential', 'fixed')",
                       f"{rp}.{skey}")
            ok = False
        jitter = raw.get("jitter", True)
        if not isinstance(jitter, bool):
            self.error("retry 'jitter' must be true or false", f"{rp}.jitter")
            ok = False
        if "backoff_multiplier" in raw:
            factor = number("backoff_multiplier", 2.0, 1)
            if strategy == "fixed" and ok:
                self.error("'backoff_multiplier' needs the exponential backoff strategy",
                           f"{rp}.backoff_multiplier")
                ok = False
            multipliers["exponential"] = factor
        if not ok:
            return None
        return {"attempts": attempts, "backoff": base, "multiplier": multipliers[strategy],
                "max_backoff": max_delay, "jitter": base if jitter else 0, "on": ["any"]}

    # ------------------------------------------------------------------ methods

    def llm(self, method: str, params: Mapping[str, Any], pp: str, wp: str,
            step_id: str, *, batch_item: str | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key in params:
            if key not in _LLM_PARAMS:
                self.error(f"parameter {key!r} of {method} has no flowyard counterpart "
                           f"(supported: {', '.join(_LLM_PARAMS)})", f"{pp}.{key}", key=True)
        model = params.get("model")
        if model is not None:
            if not isinstance(model, str) or not model:
                self.error("'model' must be a model name", f"{pp}.model")
            else:
                ref = self.settings.model(model)
                if ref is not None:
                    out["model"] = ref
                    self.map(f"{pp}.model", f"{wp}.model")
        for key in ("system", "temperature", "top_p", "max_tokens", "stop", "seed"):
            if key in params:
                out[key] = self.value(params[key], f"{pp}.{key}", step_id)
                self.map(f"{pp}.{key}", f"{wp}.{key}")
        extra: list[tuple[Any, str]] = []  # params-level images: (value, source path)
        messages = params.get("messages")
        if messages is not None:
            if not isinstance(messages, list):
                self.error("'messages' must be a list of {role, content}", f"{pp}.messages")
                messages = []
            translated: list[dict[str, Any]] = []
            for k, message in enumerate(messages):
                mp = f"{pp}.messages[{k}]"
                if not isinstance(message, Mapping):
                    self.error("a message must be a mapping with 'role' and 'content'", mp)
                    continue
                for key in message:
                    if key not in _MESSAGE_KEYS:
                        self.error(f"unknown message key {key!r} (known: "
                                   f"{', '.join(_MESSAGE_KEYS)})", f"{mp}.{key}", key=True)
                role = message.get("role", "user")
                if role not in ("system", "user", "assistant"):
                    self.error(f"message role {role!r} must be system, user or assistant",
                               f"{mp}.role")
                mwp = f"{wp}.messages[{len(translated)}]"
                item: dict[str, Any] = {
                    "role": role,
                    "content": self.value(message.get("content", ""), f"{mp}.content",
                                          step_id)}
                self.map(mp, mwp)
                if message.get("images") is not None:
                    if role != "user":
                        self.error("only user messages take images", f"{mp}.images")
                    item["images"] = [v for v, _ in self.image_list(
                        message["images"], f"{mp}.images", step_id)]
                translated.append(item)
            out["messages"] = translated
        if "prompt" in params:
            out["prompt"] = self.value(params["prompt"], f"{pp}.prompt", step_id)
            self.map(f"{pp}.prompt", f"{wp}.prompt")
        if params.get("images") is not None:
            extra.extend(self.image_list(params["images"], f"{pp}.images", step_id))
        for key in ("image_data", "image_path"):
            if params.get(key) is not None:
                if not isinstance(params[key], str):
                    self.error(f"'{key}' must be a string", f"{pp}.{key}")
                else:
                    extra.append((self.value(params[key], f"{pp}.{key}", step_id),
                                  f"{pp}.{key}"))
        file_path = params.get("file_path")
        if file_path is not None:
            if not isinstance(file_path, str) or not file_path:
                self.error("'file_path' must be a path", f"{pp}.file_path")
            elif file_path.lower().endswith(IMAGE_SUFFIXES):
                extra.append((self.value(file_path, f"{pp}.file_path", step_id),
                              f"{pp}.file_path"))
            else:
                helper = f"{step_id}__file"
                if helper in self.kinds:
                    self.error(f"the step id {helper!r} (which reads file_path) is taken by a "
                               "task", f"{pp}.file_path")
                self.kinds[helper] = "helper"
                index = len(self.steps)
                self.steps.append({"id": helper, "uses": FILES_TOOL,
                                   "with": {"paths": [self.value(file_path, f"{pp}.file_path",
                                                                 step_id)],
                                            "read": True}})
                self.map(f"{pp}.file_path", f"steps[{index}]")
                self.map(f"{pp}.file_path", f"steps[{index}].with.paths[0]")
                self.append_file(out, f'steps["{helper}"].output[0]', pp)
        if batch_item == "text":
            self.append_file(out, "item", pp)
        elif batch_item == "image":
            extra.append(("{{ item.absolute }}", pp))
        if extra:
            self.attach_images(out, extra, pp, wp)
        if method in ("llm/complete", "llm/generate") and "prompt" not in out:
            self.error(f"{method} needs a 'prompt'", pp)
        elif "prompt" not in out and not out.get("messages"):
            self.error(f"{method} needs 'messages' (or a 'prompt')", pp)
        return out

    def append_file(self, out: dict[str, Any], expr: str, pp: str) -> None:
        """Append a file's text to the last user message (or the prompt), as Gleitzeit's
        providers do with ``file_path``.
        """
        suffix = f"\n\nFile content from {_jinja(expr + '.path')}:\n{_jinja(expr + '.content')}"
        messages = out.get("messages") or []
        if messages and messages[-1]["role"] == "user":
            messages[-1]["content"] = _concat(messages[-1]["content"], suffix)
        elif "prompt" in out:
            out["prompt"] = _concat(out["prompt"], suffix)
        else:
            self.error("'file_path' needs a prompt or a last message from the user to add the "
                       "file's text to", f"{pp}.file_path" if pp else "template")

    def image_list(self, raw: Any, ip: str, step_id: str) -> list[tuple[Any, str]]:
        """Translate an ``images`` list; return ``(value, source path)`` pairs."""
        if isinstance(raw, str):
            raw = [raw]
        if not isinstance(raw, list) or not all(isinstance(x, str) for x in raw):
            self.error("'images' must be a list of base64 strings, paths or URLs", ip)
            return []
        return [(self.value(x, f"{ip}[{k}]", step_id), f"{ip}[{k}]") for k, x in enumerate(raw)]

    def attach_images(self, out: dict[str, Any], extra: list[tuple[Any, str]], pp: str,
                      wp: str) -> None:
        """Put task-level images where Gleitzeit's vision provider puts them: on the first
        user message without images of its own (else the last user message), or with the
        prompt when there are no messages.
        """
        messages = out.get("messages") or []
        users = [k for k, m in enumerate(messages) if m["role"] == "user"]
        if messages and not users:
            self.error("images need a message from the user to go with", pp)
            return
        if users:
            free = [k for k in users if not messages[k].get("images")]
            k = free[0] if free else users[-1]
            target = messages[k].setdefault("images", [])
            field_path = f"{wp}.messages[{k}].images"
        else:
            target = out.setdefault("images", [])
            field_path = f"{wp}.images"
        for value, src in extra:
            self.map(src, f"{field_path}[{len(target)}]")
            target.append(value)

    def python(self, params: Mapping[str, Any], pp: str, wp: str, extra_context: dict[str, Any],
               step_id: str = "") -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key in params:
            if key not in _PYTHON_PARAMS:
                hint = " (python.run's isolation is set by [exec] isolation)" \
                    if key == "execution_mode" else \
                    " (python.run passes values in 'context')" if key == "args" else ""
                self.error(f"parameter {key!r} of python/execute has no flowyard counterpart"
                           f"{hint}; supported: {', '.join(_PYTHON_PARAMS)}", f"{pp}.{key}",
                           key=True)
        if "file" in params and "code" in params:
            self.error("give 'file' or 'code', not both", f"{pp}.code", key=True)
        if "file" in params:
            out["script"] = self.value(params["file"], f"{pp}.file", step_id)
            self.map(f"{pp}.file", f"{wp}.script")
        elif "code" in params:
            out["code"] = self.value(params["code"], f"{pp}.code", step_id)
            self.map(f"{pp}.code", f"{wp}.code")
        else:
            self.error("python/execute needs 'file' (a script) or 'code'", pp)
        context = params.get("context")
        if context is not None and not isinstance(context, Mapping):
            self.error("'context' must be a mapping", f"{pp}.context")
            context = None
        if context is not None or extra_context:
            out["context"] = {**(self.value(dict(context), f"{pp}.context", step_id)
                                 if context else {}), **extra_context}
            self.map(f"{pp}.context", f"{wp}.context")
        if "timeout" in params:
            out["timeout"] = params["timeout"]
            self.map(f"{pp}.timeout", f"{wp}.timeout")
        return out

    # ------------------------------------------------------------------ batch

    def batch(self, data: Mapping[str, Any]) -> dict[str, Any]:
        batch = data.get("batch")
        template = data.get("template")
        if not isinstance(batch, Mapping):
            self.error("a batch workflow needs 'batch: {directory, pattern}'",
                       "batch" if "batch" in data else "")
            return {}
        for key in batch:
            if key not in _BATCH_KEYS:
                self.error(f"unknown batch key {key!r} (known: directory, pattern)",
                           f"batch.{key}", key=True)
        directory = batch.get("directory")
        pattern = batch.get("pattern", "*")
        if not isinstance(directory, str) or not directory:
            self.error("a batch workflow requires 'batch.directory'", "batch")
        if not isinstance(pattern, str) or not pattern:
            self.error("'batch.pattern' must be a glob pattern such as '*.txt'", "batch.pattern")
        if not isinstance(template, Mapping):
            self.error("a batch workflow requires a 'template' (the task applied to each file)",
                       "template" if "template" in data else "")
            return {}
        method = template.get("method", "llm/chat")
        if not isinstance(method, str) or method not in _SUPPORTED:
            self.error(f"batch template method {method!r} has no flowyard counterpart "
                       f"(supported: {', '.join(_SUPPORTED)})",
                       "template.method" if "method" in template else "template")
            return {}
        family = method.split("/", 1)[0]
        protocol = data.get("protocol")
        if protocol is not None and protocol not in ("llm/v1", "python/v1"):
            self.error(f"protocol {protocol!r} is not known (llm/v1, python/v1)", "protocol")
        if protocol == "python/v1" and family != "python":
            self.error(f"protocol 'python/v1' does not serve method {method!r}", "protocol")
        # Gleitzeit passes every template key but `method` to the task's params; `priority`,
        # `retry`/`retry_config` and `timeout` are the step's (timeout also python.run's)
        params = {k: v for k, v in template.items()
                  if k not in ("method", "priority", "retry", "retry_config")
                  and (k != "timeout" or family == "python")}
        vision = method == "llm/vision"
        files: dict[str, Any] = {"id": "batch_files", "uses": FILES_TOOL,
                                 "with": {"directory": _literal(str(directory)),
                                          "pattern": _literal(str(pattern)),
                                          "read": family == "llm" and not vision}}
        self.map("batch", "steps[0]")
        self.map("batch.directory", "steps[0].with.directory")
        self.map("batch.pattern", "steps[0].with.pattern")
        self.steps.append(files)
        self.kinds["batch_files"] = "helper"
        step: dict[str, Any] = {"id": "batch", "for_each": "${batch_files}"}
        self.map("template", "steps[1]")
        self.map("template", "steps[1].for_each")
        self.common(template, "template", "steps[1]", step)
        self.map("template.method" if "method" in template else "template", "steps[1].uses")
        if family == "llm":
            step["uses"] = "llm.chat"
            step["with"] = self.llm(method, params, "template", "steps[1].with", "batch",
                                    batch_item="image" if vision else "text")
        else:
            step["uses"] = "python.run"
            step["with"] = self.python(params, "template", "steps[1].with",
                                       {"file_path": "{{ item.path }}"}, "batch")
        self.steps.append(step)
        self.infos.append(TaskInfo(key="batch", step="batch", method=method, kind="batch"))
        results = "${batch}" if family == "llm" else \
            "{{ steps.batch.output | map(attribute='result') | list }}"
        return {"files": "{{ steps.batch_files.output | map(attribute='path') | list }}",
                "results": results}

    # ------------------------------------------------------------------ values, references

    def value(self, raw: Any, path: str, step_id: str) -> Any:
        """Translate a parameter value: strings become templates, containers recursively."""
        if isinstance(raw, str):
            return self.template(raw, path, step_id)
        if isinstance(raw, list):
            return [self.value(v, f"{path}[{k}]", step_id) for k, v in enumerate(raw)]
        if isinstance(raw, Mapping):
            return {k: self.value(v, f"{path}.{k}", step_id) for k, v in raw.items()}
        return raw

    def template(self, text: str, path: str, step_id: str) -> str:
        matches = list(_GZ_REF.finditer(text))
        try:
            if not matches:
                return _literal(text)
            if len(matches) == 1 and matches[0].group(0) == text:
                expr = self.reference(matches[0].group(1), path, step_id)
                return _jinja(expr) if expr else text
            parts: list[str] = []
            pos = 0
            for m in matches:
                parts.append(_literal(text[pos:m.start()]))
                expr = self.reference(m.group(1), path, step_id)
                parts.append(_jinja(f"({expr}) | string") if expr else "")
                pos = m.end()
            parts.append(_literal(text[pos:]))
            return "".join(parts)
        except ValueError as exc:
            self.error(f"this text cannot be translated: {exc}", path)
            return text

    def reference(self, ref: str, path: str, step_id: str) -> str | None:
        """Return the flowyard expression for the Gleitzeit reference ``${ref}``."""
        head, *fields = ref.strip().split(".")
        target = self.lookup.get(head) or self.lookup.get(_norm(head))
        if target is None:
            known = ", ".join(i.key for i in self.infos if i.kind != "batch")
            self.error(f"reference ${{{ref}}} names unknown task {head!r}"
                       f" (tasks: {known or 'none'})", path)
            return None
        if target == step_id:
            self.error(f"reference ${{{ref}}}: a task cannot use its own result", path)
            return None
        parsed: list[tuple[str, list[int]]] = []
        for f in fields:
            m = _FIELD.match(f.strip())
            if not m:
                self.error(f"reference ${{{ref}}}: {f!r} is not a field name "
                           "(name or name[index])", path)
                return None
            parsed.append((m.group(1), [int(n) for n in _INDEX.findall(m.group(2))]))
        base = f'steps["{target}"].output'
        kind = self.kinds[target]
        if kind not in ("llm", "python", "mcp"):
            return None  # the task itself is refused (an unsupported method): reported there
        if kind == "mcp":
            # an MCP tool's value: its structured content (a mapping), else its text; a text
            # result stands for itself under Gleitzeit's result field names
            if not parsed:
                return base
            (first, indexes), rest = parsed[0], parsed[1:]
            if first in _MCP_TEXT_FIELDS:
                expr = (f'({base}["{first}"] if {base} is mapping and "{first}" in {base} '
                        f'else {base})')
            else:
                expr = f'{base}["{first}"]'
            expr += "".join(f"[{n}]" for n in indexes)
        elif kind == "llm":
            if not parsed or parsed[0][0] not in ("response", "text", "result"):
                self.error(f"reference ${{{ref}}}: an LLM task's result is its text, "
                           f"${{{head}.response}}; other fields (model, tokens) have no "
                           "counterpart", path)
                return None
            if parsed[0][0] == "result":
                if len(parsed) < 2 or parsed[1][0] != "response" or parsed[0][1]:
                    self.error(f"reference ${{{ref}}}: an LLM task's result is its text, "
                               f"${{{head}.response}} (${{{head}.result}} would be "
                               "Gleitzeit's whole result record, which has no counterpart)",
                               path)
                    return None
                parsed = parsed[1:]
            expr = base + "".join(f"[{n}]" for n in parsed[0][1])
            rest = parsed[1:]
        else:  # python
            if parsed and parsed[0][0] in ("stdout", "stderr"):
                expr, rest = f'{base}["{parsed[0][0]}"]', parsed
                expr += "".join(f"[{n}]" for n in parsed[0][1])
                rest = parsed[1:]
            elif parsed and parsed[0][0] in ("response", "success", "error"):
                self.error(f"reference ${{{ref}}}: a python/execute task has no "
                           f"'{parsed[0][0]}' (use ${{{head}.result}})", path)
                return None
            else:
                expr = f'{base}["result"]'
                if parsed and parsed[0][0] == "result":
                    expr += "".join(f"[{n}]" for n in parsed[0][1])
                    rest = parsed[1:]
                else:
                    rest = parsed
        for name, indexes in rest:
            expr += f'["{name}"]' + "".join(f"[{n}]" for n in indexes)
        return expr


def _concat(template: Any, suffix: str) -> str:
    return f"{template}{suffix}" if isinstance(template, str) else f"{template!s}{suffix}"
