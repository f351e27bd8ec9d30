"""Translate an Orchestrator pipeline (parsed YAML) into a flowyard workflow definition.

Every field of the translated definition keeps the file, line and column where the user wrote
it in the pipeline, so flowyard's own validation (unknown tools, bad arguments, unknown names
in templates) and this module's errors both point at the original file.

The mapping (what each Orchestrator feature becomes) is documented in the plugin's README and
in ``docs/plugins/orchestrator-format.md``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from typing import Any

from flowyard import Locations, ValidationIssue, WorkflowValidationError

from flowyard_orchestrator_format.templates import (
    Ref,
    TemplateRewriteError,
    as_expression,
    rewrite_template,
    template_names,
)

__all__ = ["EXECUTION_STEP", "LLM_ACTIONS", "OUTPUT_PATH", "PARAMETERS_STEP", "TOOLS",
           "translate"]

#: The step added when a template uses ``execution.*``: the run's timestamp and id, computed
#: once per run (and checkpointed with it).
EXECUTION_STEP = "orchestrator-execution"
#: The step added when a parameter has ``choices``: it checks the run's values first, and
#: every step without dependencies waits for it.
PARAMETERS_STEP = "orchestrator-parameters"
#: The input the Orchestrator's ``scripts/run_pipeline.py -o DIR`` passes to every pipeline; a
#: pipeline that uses it without declaring it gets it as a required input.
OUTPUT_PATH = "output_path"

#: ``<AUTO>prompt</AUTO>``, also with attributes (``<AUTO task="summarize">``).
_AUTO = re.compile(r"<AUTO(?:\s[^>]*)?>(.*?)</AUTO>", re.DOTALL)
_AUTO_OPEN = re.compile(r"<AUTO(?:\s[^>]*)?>")
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_SHORT_RESULT = re.compile(r"\$results\.([A-Za-z_][\w.\-]*)\Z")

_TOP_KEYS = ("id", "name", "description", "version", "parameters", "inputs", "steps",
             "outputs", "metadata")
_STEP_KEYS = ("id", "name", "description", "action", "tool", "parameters", "dependencies",
              "depends_on", "condition", "if", "on_false", "on_success", "on_failure",
              "max_retries", "timeout", "for_each", "steps", "max_parallel", "loop_var", "as",
              "while", "until", "max_iterations", "metadata", "produces", "foreach",
              "parallel", "add_completion_task")
_TYPES = {"string": "string", "str": "string", "integer": "integer", "int": "integer",
          "number": "number", "float": "number", "boolean": "boolean", "bool": "boolean",
          "array": "array", "list": "array", "object": "object", "dict": "object",
          "any": "any"}
_FAILURE = ("continue", "skip", "fail", "retry")
_PARAMETER_KEYS = ("type", "default", "description", "required", "choices")
#: Names the Orchestrator's templates do not define either (it leaves a template naming one
#: unrendered), with what to write instead.
_NAME_HINTS = {"current_timestamp": "execution.timestamp", "current_date": "execution.timestamp",
               "current_time": "execution.timestamp"}

# ---------------------------------------------------------------- tools and actions


def _same(expression: str) -> str:
    return expression


def _field(name: str) -> Callable[[str], str]:
    return lambda expression: f"{expression}.{name}"


#: Orchestrator tool -> action -> (flowyard tool, parameter map, result field map).
#: A parameter mapped to None is accepted and has nothing to do in flowyard.
TOOLS: dict[str, dict[str, tuple[str, dict[str, str | None], dict[str, Callable[[str], str]]]]] = {
    "filesystem": {
        "read": ("filesystem.read", {"path": "path", "encoding": "encoding"}, {}),
        "write": ("filesystem.write",
                  {"path": "path", "content": "content", "encoding": "encoding",
                   "overwrite": "overwrite", "create_dirs": "make_parents"},
                  {"size": _field("bytes_written"), "filepath": _field("path")}),
        "append": ("filesystem.append",
                   {"path": "path", "content": "content", "encoding": "encoding"}, {}),
        "copy": ("filesystem.copy",
                 {"path": "source", "source": "source", "destination": "destination",
                  "overwrite": "overwrite"}, {}),
        "move": ("filesystem.move",
                 {"path": "source", "source": "source", "destination": "destination",
                  "overwrite": "overwrite"}, {}),
        "delete": ("filesystem.delete", {"path": "path", "recursive": "recursive"}, {}),
        "list": ("filesystem.list", {"path": "path"}, {"files": _field("entries"),
                                                        "items": _field("entries")}),
        "exists": ("filesystem.exists", {"path": "path"}, {}),
        "mkdir": ("filesystem.mkdir", {"path": "path", "parents": "parents",
                                       "exist_ok": "exist_ok"}, {}),
    },
    "terminal": {
        "execute": ("shell.run",
                    {"command": "command", "capture_output": None, "timeout": "timeout",
                     "environment": "env", "env": "env", "stdin": "stdin"},
                    {"return_code": _field("exit_code"), "returncode": _field("exit_code"),
                     "exit_code": _field("exit_code"), "output": _field("stdout"),
                     "success": lambda expression: f"({expression}.exit_code == 0)"}),
    },
    "python-executor": {
        "execute": ("python.run", {"code": "code", "timeout": "timeout"},
                    {"return_code": _field("exit_code"), "returncode": _field("exit_code"),
                     "output": _field("stdout"), "result": _field("result"),
                     "success": lambda expression: f"({expression}.exit_code == 0)"}),
    },
    "web-search": {
        "search": ("web.search",
                   {"query": "query", "max_results": "max_results", "region": "region"},
                   {"total_results": lambda expression: f"({expression}.results | length)"}),
    },
    "headless-browser": {
        "search": ("web.search", {"query": "query", "max_results": "max_results"},
                   {"total_results": lambda expression: f"({expression}.results | length)"}),
        "scrape": ("web.fetch", {"url": "url", "timeout": "timeout"},
                   {"text": _field("content")}),
        "fetch": ("web.fetch", {"url": "url", "timeout": "timeout"},
                  {"text": _field("content")}),
    },
    "report-generator": {
        "generate": ("echo", {"title": "title", "content": "content", "format": "format"},
                     {"report": _field("markdown"), "content": _field("markdown"),
                      "markdown": _field("markdown")}),
    },
}

#: Actions written without a tool (the Orchestrator's action names) -> (tool, action).
_ACTION_ALIASES = {
    "read_file": ("filesystem", "read"), "write_file": ("filesystem", "write"),
    "copy_file": ("filesystem", "copy"), "move_file": ("filesystem", "move"),
    "delete_file": ("filesystem", "delete"), "list_directory": ("filesystem", "list"),
    "file_exists": ("filesystem", "exists"), "create_directory": ("filesystem", "mkdir"),
    "execute_command": ("terminal", "execute"), "search_web": ("web-search", "search"),
    "web_search": ("web-search", "search"), "quick_search": ("web-search", "search"),
    "scrape_page": ("headless-browser", "scrape"),
    "generate_report": ("report-generator", "generate"),
}
_DEFAULT_ACTION = {"filesystem": None, "terminal": "execute", "web-search": "search",
                   "headless-browser": "scrape", "report-generator": "generate",
                   "python-executor": "execute"}

#: LLM actions (no tool): action -> the parameters it takes.
LLM_ACTIONS = {
    "generate_text": "text", "generate-text": "text", "generate": "text",
    "analyze_text": "analyze", "analyze-text": "analyze",
    "generate_structured": "structured", "generate-structured": "structured",
    "summarize_text": "text",
}
_LLM_PARAMS = {"prompt": "prompt", "model": "model", "max_tokens": "max_tokens",
               "max_completion_tokens": "max_tokens", "temperature": "temperature",
               "system": "system", "system_prompt": "system", "top_p": "top_p", "stop": "stop",
               "seed": "seed"}
#: Bare model names whose provider the name says (the Orchestrator finds them in its
#: registry; flowyard's references are ``provider/model``).
_MODEL_PROVIDERS = ((re.compile(r"claude-"), "anthropic"),
                    (re.compile(r"(gpt-|chatgpt-|o[134](-|\Z))"), "openai"))
_LLM_EXTRA = {"analyze": ("text", "analysis_type", "response_format"),
              "structured": ("schema", "response_format"), "text": ("response_format",)}


# ---------------------------------------------------------------- scopes


class _Info:
    """What a step of the pipeline produces, for translating references to it."""

    def __init__(self, step_id: str, kind: str,
                 fields: Mapping[str, Callable[[str], str]] | None = None,
                 children: dict[str, _Info] | None = None,
                 item: _Info | None = None) -> None:
        self.id = step_id
        self.kind = kind            # "action", "foreach", "loop" (per item), "while"
        self.fields = dict(fields or {})
        self.children = children or {}
        self.item = item            # "foreach": what each item's result is

    def ref(self, expression: str) -> Ref:
        """Return the :class:`Ref` of this step's result at ``expression``."""
        if self.kind == "action":
            return Ref(expression, step=self._action_field)
        if self.kind == "foreach":
            return Ref(expression, step=_drop_result,
                       item=self.item.ref("") if self.item else None)
        if self.kind == "loop":
            return Ref(expression, step=_drop_result,
                       item=Ref("", step=self._child_field))
        return Ref(expression, step=self._child_field)     # while: the last iteration

    def _action_field(self, expression: str, name: str) -> tuple[str, Ref | None]:
        if name == "result" and "result" not in self.fields:
            # a tool's result is the mapping of its fields
            return expression, Ref(expression, step=self._result_field)
        return self._result_field(expression, name)

    def _result_field(self, expression: str, name: str) -> tuple[str, Ref | None]:
        if name in self.fields:
            return self.fields[name](expression), None
        return f"{expression}.{name}", None

    def _child_field(self, expression: str, name: str) -> tuple[str, Ref | None]:
        if name == "result":
            return expression, Ref(expression, step=self._child_field)
        child = self.children.get(name)
        if child is None:
            return f"{expression}.{name}", None
        text = f"{expression}.{name}" if _IDENT.match(name) else f"{expression}[{name!r}]"
        return text, child.ref(text)


def _drop_result(expression: str, name: str) -> tuple[str, Ref | None]:
    return (expression, None) if name == "result" else (f"{expression}.{name}", None)


def _step_expression(step_id: str) -> str:
    if _IDENT.match(step_id):
        return f"steps.{step_id}.output"
    return f"steps[{json.dumps(step_id)}].output"


class _Scope:
    """The names a template of one step list sees (the pipeline, or a loop's body)."""

    def __init__(self, translator: _Translator, parent: _Scope | None,
                 params: set[str] | None = None, steps: dict[str, _Info] | None = None,
                 names: dict[str, Ref] | None = None, passing: bool = True) -> None:
        self.translator = translator
        self.parent = parent
        self.params = params or set()
        self.steps = steps or {}
        self.names = names or {}       # loop variables and the like
        self.passing = passing         # a sub-workflow: outer names come in as inputs
        self.passed: dict[str, str] = {}     # child input -> the parent's template
        self.outer_deps: list[str] = []

    def resolve(self, name: str) -> Ref | None:
        """Return what ``name`` stands for in this scope, or None when unknown."""
        if name in self.names:
            return self.names[name]
        if name in self.steps:
            return self.steps[name].ref(_step_expression(name))
        if name in self.params:
            return Ref(f"inputs.{name}")
        if name == "results":
            return Ref("", step=self._results)
        if self.parent is None:
            if name in ("inputs", "parameters"):        # the pipeline's parameters
                return Ref("inputs")
            if name == "execution":
                self.translator.execution_used = True
                return Ref(_step_expression(EXECUTION_STEP), step=_execution_field)
            if name == OUTPUT_PATH:      # what the Orchestrator's run script passes (-o DIR)
                self.translator.output_path_used = True
                return Ref(f"inputs.{OUTPUT_PATH}")
            if name == "timestamp":     # the Orchestrator's run start time (ISO 8601)
                self.translator.execution_used = True
                return Ref(_step_expression(EXECUTION_STEP) + ".timestamp")
            return None
        outer = self.parent.resolve(name)
        if outer is None or not self.passing:
            return outer
        child_input = f"outer_{name}"
        self.passed[child_input] = "{{ " + outer.text + " }}"
        return Ref(f"inputs.{child_input}", step=outer.step, item=outer.item)

    def _results(self, expression: str, name: str) -> tuple[str, Ref | None]:
        ref = self.resolve(name)
        if ref is None:
            return f"results.{name}", None
        return ref.text, ref

    def known(self) -> list[str]:
        """Return the names templates may use here, innermost first."""
        names = [*self.names, *self.steps, *sorted(self.params)]
        if self.parent is not None:
            names += [n for n in self.parent.known() if n not in names]
        else:
            names += ["execution", "inputs", "output_path", "parameters", "results",
                      "timestamp"]
        return names

    def is_step(self, name: str) -> bool:
        """True when ``name`` is a step of this scope or of an enclosing one."""
        return name in self.steps or (self.parent is not None and self.parent.is_step(name))


def _execution_field(expression: str, name: str) -> tuple[str, Ref | None]:
    aliases = {"id": "run_id", "execution_id": "run_id", "run_id": "run_id",
               "timestamp": "timestamp", "start_time": "timestamp",
               "pipeline_id": "pipeline_id", "pipeline": "pipeline_id"}
    return f"{expression}.{aliases.get(name, name)}", None


# ---------------------------------------------------------------- the translator


class _Translator:
    def __init__(self, locations: Locations, path: str | None) -> None:
        self.orig = locations
        self.path = path
        self.issues: list[ValidationIssue] = []
        self.records: list[tuple[str, str]] = []
        self.execution_used = False
        self.pipeline_id = ""
        self.choices: dict[str, tuple[list[Any], str]] = {}     # parameter -> (choices, path)
        self.output_path_used = False

    # -- issues and locations

    def error(self, message: str, path: str, *, key: bool = False) -> None:
        self.issues.append(self.orig.issue(message, path, key=key))

    def record(self, new_path: str, orig_path: str) -> None:
        self.records.append((new_path, orig_path))

    def locations(self) -> Locations:
        located = Locations(file=self.path)
        for new_path, orig_path in self.records:
            line, column = self.orig.find(orig_path)
            if line is not None and column is not None:
                located.set(new_path, line, column)
            if orig_path in self.orig.keys:
                key_line, key_column = self.orig.keys[orig_path]
                located.set(new_path, key_line, key_column, key=True)
        located.issues.extend(self.orig.issues)
        return located

    # -- templates

    def template(self, text: str, scope: _Scope, path: str) -> str:
        if _SHORT_RESULT.match(text.strip()):
            text = "{{ results." + text.strip()[len("$results."):] + " }}"
        unknown: list[str] = []

        def unresolved(name: str, called: bool) -> None:
            if not called and name not in unknown:
                unknown.append(name)

        try:
            rewritten = rewrite_template(text, scope.resolve, unresolved)
            for name in unknown:
                hint = ""
                if name in _NAME_HINTS:
                    hint = (f"; the Orchestrator does not define it either (it leaves such a "
                            f"template unrendered): for the run's start time write "
                            f"{_NAME_HINTS[name]}")
                self.error(f"unknown name {name!r}: not a parameter, step or loop variable "
                           f"here (known: {', '.join(scope.known()) or 'none'}){hint}", path)
            return rewritten
        except TemplateRewriteError as exc:
            self.error(str(exc), path)
            return text

    def value(self, value: Any, scope: _Scope, path: str, autos: list[dict[str, Any]],
              owner: str, deps: list[str]) -> Any:
        """Translate a parameter value (templates at any depth, ``<AUTO>`` tags)."""
        if isinstance(value, str):
            if _has_auto(value):
                return self.auto(value, scope, path, autos, owner, deps)
            return self.template(value, scope, path)
        if isinstance(value, list):
            return [self.value(v, scope, f"{path}[{i}]", autos, owner, deps)
                    for i, v in enumerate(value)]
        if isinstance(value, dict):
            return {k: self.value(v, scope, f"{path}.{k}", autos, owner, deps)
                    for k, v in value.items()}
        return value

    def auto(self, text: str, scope: _Scope, path: str, autos: list[Any],
             owner: str, deps: list[str], *, answer: str = "value",
             step_id: str | None = None) -> str:
        """Replace each ``<AUTO>prompt</AUTO>`` by the answer of a model call (a step).

        ``answer``: ``"value"`` (text), or ``"list"`` (a JSON array, through a response
        schema). ``step_id``: the id of the (single) step, else ``<owner>-auto-<n>``.
        """

        def one(question: str) -> str:
            this_id = step_id or f"{owner}-auto-{len(autos) + 1}"
            prompt = self.template(question.strip(), scope, path)
            arguments: dict[str, Any] = {"prompt": prompt + "\n\nAnswer with the value only."}
            if answer == "list":
                arguments = {"prompt": prompt + "\n\nAnswer with a JSON array.",
                             "response_schema": {"type": "array"}}
            step: dict[str, Any] = {
                "id": this_id, "uses": "llm.chat",
                "description": f"resolves an <AUTO> tag of {owner!r}", "with": arguments}
            if deps:
                step["depends_on"] = list(deps)
            autos.append((step, path))
            return "{{ " + _step_expression(this_id) + " }}"

        whole = _AUTO.fullmatch(text.strip())
        if whole:
            return one(whole.group(1))
        parts = _AUTO.split(text)       # text, prompt, text, prompt, ..., text
        if any(_has_auto(part) for part in parts[::2]):
            self.error("an <AUTO> tag without its closing </AUTO>", path)
            return text
        out = []
        for n, part in enumerate(parts):
            out.append(one(part) if n % 2 else self.template(part, scope, path))
        return "".join(out)

    def expression(self, source: Any, scope: _Scope, path: str, autos: list[Any],
                   owner: str, deps: list[str], what: str) -> str | None:
        """Translate a condition to a flowyard expression (without ``{{ }}``)."""
        if isinstance(source, str) and _has_auto(source):
            if autos is None:
                self.error(f"<AUTO> in {what} is not supported (it would need a model call "
                           f"per iteration); write the condition as an expression", path)
                return None
            whole = _AUTO.fullmatch(source.strip())
            if not whole:
                self.error(f"{what}: an <AUTO> tag must be the whole condition", path)
                return None
            answer = self.auto(source, scope, path, autos, owner, deps)
            inner = answer.strip()[2:-2].strip()
            return f"(({inner}) | string | trim | lower) in ['true', 'yes', '1']"
        text = as_expression(source)
        if text is None:
            self.error(f"{what} must be one expression (\"{{{{ x > 1 }}}}\" or x > 1), "
                       f"not text with templates in it", path)
            return None
        rewritten = self.template("{{ " + text + " }}", scope, path)
        return rewritten[2:-2].strip()

    # -- the pipeline

    def pipeline(self, data: Any) -> dict[str, Any]:
        if not isinstance(data, dict):
            self.error(f"a pipeline must be a mapping, got {type(data).__name__}", "")
            return {}
        for key in data:
            if key not in _TOP_KEYS:
                self.error(f"unknown or unsupported pipeline key {key!r} (supported: "
                           f"{', '.join(_TOP_KEYS)})", str(key), key=True)
        self.pipeline_id = str(data.get("id") or data.get("name") or "pipeline")
        out: dict[str, Any] = {"name": self.pipeline_id}
        self.record("name", "id" if "id" in data else "name")
        description = data.get("description") or (data.get("name") if "id" in data else None)
        if description:
            out["description"] = str(description)
        if data.get("version") is not None:
            out["version"] = str(data["version"])
        params = self.inputs(data, out)
        raw_steps = data.get("steps")
        if not isinstance(raw_steps, list) or not raw_steps:
            self.error("'steps' must be a non-empty list of steps", "steps")
            return out
        self.aliases(raw_steps, "steps")
        scope = _Scope(self, None, params=params)
        steps = self.steps(raw_steps, "steps", "steps", scope)
        outputs = data.get("outputs")
        if outputs is not None:
            output_autos: list[Any] = []
            out["outputs"] = self.outputs(outputs, scope, output_autos)
            for step, orig_path in output_autos:    # <AUTO> in outputs: steps of their own
                self.record(f"steps[{len(steps)}]", orig_path)
                self.record(f"steps[{len(steps)}].with.prompt", orig_path)
                steps.append(step)
        if self.output_path_used:
            out.setdefault("inputs", {})[OUTPUT_PATH] = {
                "type": "string",
                "description": "the output directory (the Orchestrator's run_pipeline.py -o)"}
        if self.choices:
            self.parameters_step(steps)
        if self.execution_used:
            steps.insert(0, {
                "id": EXECUTION_STEP, "uses": "echo",
                "description": "the Orchestrator's execution context",
                "with": {"value": {"timestamp": "{{ now() }}", "run_id": "{{ run.id }}",
                                   "pipeline_id": self.pipeline_id}}})
            self.records = [(_shift(new, "steps", 1), orig) for new, orig in self.records]
        out["steps"] = steps
        return out

    def inputs(self, data: dict[str, Any], out: dict[str, Any]) -> set[str]:
        declared: dict[str, Any] = {}
        for key in ("parameters", "inputs"):
            raw = data.get(key)
            if raw is None:
                continue
            if isinstance(raw, list):      # [{name: x, type: ...}, ...] or [{x: {type: ...}}]
                for i, spec in enumerate(raw):
                    if isinstance(spec, dict) and "name" in spec:
                        declared[str(spec["name"])] = (
                            {k: v for k, v in spec.items() if k != "name"}, f"{key}[{i}]")
                    elif isinstance(spec, dict) and len(spec) == 1:
                        (name, value), = spec.items()
                        declared[str(name)] = (value, f"{key}[{i}].{name}")
                    else:
                        self.error("a list of inputs needs mappings with a 'name' (or one "
                                   "'name: spec' each)", f"{key}[{i}]")
            elif isinstance(raw, dict):
                for name, spec in raw.items():
                    declared[str(name)] = (spec, f"{key}.{name}")
            else:
                self.error(f"'{key}' must be a mapping of name to spec or default", key)
        if not declared:
            return set()
        specs: dict[str, Any] = {}
        for name, (spec, path) in declared.items():
            self.record(f"inputs.{name}", path)
            if not _IDENT.match(name):
                self.error(f"parameter name {name!r} must be an identifier", path)
                continue
            if not isinstance(spec, dict) or not set(_PARAMETER_KEYS) & spec.keys():
                specs[name] = {"default": spec}      # the shorthand name: value
                continue
            for key in spec:
                if key not in _PARAMETER_KEYS:
                    self.error(f"unsupported key {key!r} of parameter {name!r} (supported: "
                               f"{', '.join(_PARAMETER_KEYS)})", f"{path}.{key}", key=True)
            if "choices" in spec:
                self.parameter_choices(name, spec, path)
            kind = _TYPES.get(str(spec.get("type", "any")))
            if kind is None:
                self.error(f"unknown type {spec.get('type')!r} of parameter {name!r} "
                           f"(known: {', '.join(sorted(_TYPES))})", f"{path}.type")
                kind = "any"
            entry: dict[str, Any] = {"type": kind}
            if "default" in spec:
                entry["default"] = spec["default"]
            elif not spec.get("required", True):
                entry["type"], entry["default"] = "any", None
            if spec.get("description"):
                entry["description"] = str(spec["description"])
            specs[name] = entry
        out["inputs"] = specs
        return set(specs)

    def parameter_choices(self, name: str, spec: dict[str, Any], path: str) -> None:
        """Check a parameter's ``choices`` (a list of strings, numbers or booleans that holds
        its default) and remember them for the check step of the run."""
        choices = spec["choices"]
        where = f"{path}.choices"
        if not isinstance(choices, list) or not choices or not all(
                isinstance(c, (str, int, float, bool)) for c in choices):
            self.error(f"'choices' of parameter {name!r} must be a non-empty list of strings, "
                       f"numbers or booleans", where)
            return
        if "default" in spec and spec["default"] not in choices:
            self.error(f"the default {spec['default']!r} of parameter {name!r} is not one of "
                       f"its choices ({', '.join(map(repr, choices))})", f"{path}.default")
            return
        self.choices[name] = (choices, where)

    def parameters_step(self, steps: list[dict[str, Any]]) -> None:
        """Insert the step that checks the parameters with ``choices`` (the template global
        ``orchestrator_choice`` fails it for a value outside them), and make every step
        without dependencies wait for it, so that nothing runs with such a value."""
        value = {}
        for name, (choices, _) in self.choices.items():
            literal = "[" + ", ".join(_literal(c) for c in choices) + "]"
            value[name] = ("{{ orchestrator_choice(inputs." + name + ", " + literal + ", "
                           + _literal(name) + ") }}")
        for step in steps:
            if not step.get("depends_on"):
                step["depends_on"] = [PARAMETERS_STEP]
        steps.insert(0, {"id": PARAMETERS_STEP, "uses": "echo",
                         "description": "checks the parameters that have choices",
                         "with": {"value": value}})
        self.records = [(_shift(new, "steps", 1), orig) for new, orig in self.records]
        first = next(iter(self.choices.values()))[1]
        self.record("steps[0]", first)
        for name, (_, where) in self.choices.items():
            self.record(f"steps[0].with.value.{name}", where)

    def aliases(self, raw_steps: list[Any], prefix: str) -> None:
        """Rewrite the Orchestrator's alternative spellings of step keys in place (at any
        depth), keeping where they were written: ``foreach`` is ``for_each``, and
        ``parallel: false`` is ``max_parallel: 1`` (``parallel: true`` is the default).
        ``add_completion_task`` (a loop's own completion task) is checked and dropped: a
        flowyard loop step completes after its last item, and its dependents wait for it."""
        for i, raw in enumerate(raw_steps):
            if not isinstance(raw, dict):
                continue
            path = f"{prefix}[{i}]"
            if "foreach" in raw:
                if "for_each" in raw:
                    self.error("write either 'foreach' or 'for_each', not both",
                               f"{path}.foreach", key=True)
                else:
                    raw["for_each"] = raw["foreach"]
                    self._alias_location(f"{path}.foreach", f"{path}.for_each")
                del raw["foreach"]
            if "parallel" in raw:
                parallel = raw.pop("parallel")
                if not isinstance(parallel, bool):
                    self.error("'parallel' must be true or false", f"{path}.parallel")
                elif "for_each" not in raw:
                    self.error("'parallel' needs 'foreach' (or 'for_each') on the same step",
                               f"{path}.parallel", key=True)
                elif not parallel and "max_parallel" not in raw:
                    raw["max_parallel"] = 1
                    self._alias_location(f"{path}.parallel", f"{path}.max_parallel")
            if "add_completion_task" in raw:     # the loop step already completes last
                flag = raw.pop("add_completion_task")
                if not isinstance(flag, bool):
                    self.error("'add_completion_task' must be true or false",
                               f"{path}.add_completion_task")
                elif "for_each" not in raw:
                    self.error("'add_completion_task' needs 'for_each' on the same step",
                               f"{path}.add_completion_task", key=True)
            if isinstance(raw.get("steps"), list):
                self.aliases(raw["steps"], f"{path}.steps")

    def _alias_location(self, old: str, new: str) -> None:
        for table in (self.orig.positions, self.orig.keys):
            for known in [p for p in table if p == old or p.startswith((old + ".", old + "["))]:
                table[new + known[len(old):]] = table[known]

    def outputs(self, raw: Any, scope: _Scope, autos: list[Any]) -> dict[str, Any]:
        entries: list[tuple[Any, Any, str]] = []
        if isinstance(raw, dict):
            entries = [(name, value, f"outputs.{name}") for name, value in raw.items()]
        elif isinstance(raw, list) and all(isinstance(e, dict) and len(e) == 1 for e in raw):
            entries = [(*next(iter(e.items())), f"outputs[{i}].{next(iter(e))}")
                       for i, e in enumerate(raw)]      # [{name: template}, ...]
        else:
            self.error("'outputs' must be a mapping of name to template", "outputs")
            return {}
        out: dict[str, Any] = {}
        for name, value, path in entries:
            if isinstance(value, dict) and "value" in value:
                value, path = value["value"], f"{path}.value"
            self.record(f"outputs.{name}", path)
            out[str(name)] = self.value(value, scope, path, autos, f"output-{name}", [])
        return out

    # -- steps

    def classify(self, raw: dict[str, Any], path: str, scope: _Scope
                 ) -> tuple[str | None, str | None, _Info | None]:
        """Return ``(flowyard action, llm kind or tool key, info)`` of a step."""
        step_id = str(raw.get("id"))
        if "steps" in raw:
            return None, None, None    # a loop: classified by the caller
        tool, action = raw.get("tool"), raw.get("action")
        if tool is None and action is None:
            self.error(f"step {step_id!r} has no 'action', 'tool' or nested 'steps'", path)
            return None, None, None
        if tool is None and isinstance(action, str) and action.startswith("!"):
            return "shell.run", "!", _Info(step_id, "action", TOOLS["terminal"]["execute"][2])
        if tool is None and action in LLM_ACTIONS:
            return "llm.chat", LLM_ACTIONS[action], _Info(step_id, "action")
        if tool is None and action in _ACTION_ALIASES:
            tool, action = _ACTION_ALIASES[action]
        elif tool is None and action in TOOLS:
            tool, action = action, _DEFAULT_ACTION[action]
        if tool is None:
            self.error(f"step {step_id!r}: action {action!r} has no flowyard counterpart "
                       f"(LLM actions: {', '.join(sorted(LLM_ACTIONS))}; tools: "
                       f"{', '.join(sorted(TOOLS))})", f"{path}.action")
            return None, None, None
        actions = TOOLS.get(str(tool))
        if actions is None:
            self.error(f"step {step_id!r}: tool {tool!r} has no flowyard counterpart "
                       f"(supported tools: {', '.join(sorted(TOOLS))})", f"{path}.tool")
            return None, None, None
        params = raw.get("parameters")
        if action in (None, "execute") and isinstance(params, dict) \
                and isinstance(params.get("action"), str) and params["action"] in actions:
            # the tool's own 'action' parameter: tool: filesystem, action: execute,
            # parameters: {action: write, ...} is the same call as action: write
            action = params["action"]
        elif action is None or (len(actions) == 1 and action not in actions):
            # a tool with one action: the action text only says what the step is for
            action = _DEFAULT_ACTION.get(str(tool))
        if action not in actions:
            self.error(f"step {step_id!r}: tool {tool!r} has no action {action!r} "
                       f"(its actions: {', '.join(actions)})",
                       f"{path}.action" if "action" in raw else f"{path}.tool")
            return None, None, None
        uses, _, fields = actions[action]
        return uses, f"{tool}:{action}", _Info(step_id, "action", fields)

    def steps(self, raw_steps: list[Any], orig_prefix: str, new_prefix: str, scope: _Scope
              ) -> list[dict[str, Any]]:
        """Translate one step list (the pipeline's or a loop body's) in ``scope``."""
        valid: list[tuple[int, dict[str, Any]]] = []
        for i, raw in enumerate(raw_steps):
            path = f"{orig_prefix}[{i}]"
            if not isinstance(raw, dict):
                self.error(f"a step must be a mapping, got {type(raw).__name__}", path)
                continue
            if not isinstance(raw.get("id"), str) or not raw.get("id"):
                self.error("a step needs an 'id' (a string)", path)
                continue
            valid.append((i, raw))
        classes: dict[str, tuple[str | None, str | None]] = {}
        for i, raw in valid:
            path = f"{orig_prefix}[{i}]"
            uses, how, info = self.classify(raw, path, scope)
            if info is None and "steps" in raw:
                info = self.loop_info(raw, path, scope)
            elif info is None:
                # no counterpart (reported): its id stays known, so that references to it
                # do not add an "unknown name" error for each use
                info = _Info(raw["id"], "action")
            if info is not None and "for_each" in raw and "steps" not in raw:
                info = _Info(info.id, "foreach", item=info)
            if info is not None:
                scope.steps[info.id] = info
            classes[raw["id"]] = (uses, how)
        order = [raw["id"] for _, raw in valid]
        extra_when: dict[str, list[str]] = {}
        translated: list[tuple[list[tuple[dict[str, Any], str]], str]] = []
        for i, raw in valid:
            path = f"{orig_prefix}[{i}]"
            uses, how = classes[raw["id"]]
            if "steps" not in raw and uses is None:
                continue
            pieces, condition = self.step(raw, path, scope, uses, how)
            translated.append((pieces, raw["id"]))
            self.routing(raw, path, scope, order, condition, extra_when)
        out: list[dict[str, Any]] = []
        for pieces, step_id in translated:
            for step, orig_path, records in pieces:
                if step["id"] == step_id and extra_when.get(step_id):
                    parts = extra_when[step_id] + ([step["when"][2:-2].strip()]
                                                   if "when" in step else [])
                    step["when"] = "{{ " + " and ".join(f"({p})" for p in parts) + " }}"
                index = len(out)
                out.append(step)
                self.record(f"{new_prefix}[{index}]", orig_path)
                for rel, orig in records:
                    self.record(f"{new_prefix}[{index}]{rel}", orig)
        return out

    def routing(self, raw: dict[str, Any], path: str, scope: _Scope, order: list[str],
                condition: str | None, extra_when: dict[str, list[str]]) -> None:
        """Forward jumps: ``on_false`` (condition false) and ``on_success`` skip the steps
        between this step and the target (a ``when`` on each)."""
        here = order.index(raw["id"])
        for key in ("on_false", "on_success"):
            target = raw.get(key)
            if target is None:
                continue
            if key == "on_false" and condition is None:
                self.error("'on_false' needs a 'condition' on the same step", f"{path}.{key}")
                continue
            if target not in order:
                self.error(f"{key}: unknown step {target!r} (the target must be a step of "
                           f"the same list)", f"{path}.{key}")
                continue
            there = order.index(target)
            if there <= here:
                self.error(f"{key}: target {target!r} comes before step {raw['id']!r}; only "
                           f"forward jumps are supported (flowyard workflows have no "
                           f"cycles)", f"{path}.{key}")
                continue
            guard = condition if key == "on_false" else \
                f"{_step_expression(raw['id']).rsplit('.', 1)[0]}.status != 'completed'"
            for between in order[here + 1:there]:
                extra_when.setdefault(between, []).append(guard)

    def loop_info(self, raw: dict[str, Any], path: str, scope: _Scope) -> _Info | None:
        step_id = raw["id"]
        body = raw.get("steps")
        if not isinstance(body, list) or not body:
            self.error(f"step {step_id!r}: 'steps' must be a non-empty list", f"{path}.steps")
            return None
        children: dict[str, _Info] = {}
        for j, child in enumerate(body):
            if isinstance(child, dict) and isinstance(child.get("id"), str):
                sub = _Scope(self, scope)
                if "steps" in child:
                    info = self.loop_info(child, f"{path}.steps[{j}]", sub)
                else:
                    _, _, info = _quiet(self, self.classify, child, f"{path}.steps[{j}]",
                                        sub)
                    info = info or _Info(child["id"], "action")     # reported with the step
                    if info is not None and "for_each" in child:
                        info = _Info(info.id, "foreach", item=info)
                if info is not None:
                    children[child["id"]] = info
        if "for_each" in raw:
            return _Info(step_id, "loop", children=children)
        if "while" in raw or "until" in raw:
            return _Info(step_id, "while", children=children)
        self.error(f"step {step_id!r}: nested 'steps' need 'for_each', 'while' or 'until'",
                   f"{path}.steps")
        return None

    def step(self, raw: dict[str, Any], path: str, scope: _Scope, uses: str | None,
             how: str | None) -> tuple[list[tuple[dict[str, Any], str, list]], str | None]:
        """Translate one step: ``([(step, orig path, [(rel path, orig path)])], condition)``."""
        step_id = raw["id"]
        for key in raw:
            if key not in _STEP_KEYS:
                self.error(f"step {step_id!r}: unknown or unsupported key {key!r} (supported: "
                           f"{', '.join(_STEP_KEYS)})", f"{path}.{key}", key=True)
        records: list[tuple[str, str]] = []
        out: dict[str, Any] = {"id": step_id}
        if raw.get("name"):
            out["name"] = str(raw["name"])
        if raw.get("description"):
            out["description"] = str(raw["description"])
        deps = self.dependencies(raw, path, scope, records)
        autos: list[Any] = []
        condition = None
        for key in ("condition", "if"):
            if key in raw:
                condition = self.expression(raw[key], scope, f"{path}.{key}", autos, step_id,
                                            deps, key)
                if condition is not None:
                    out["when"] = "{{ " + condition + " }}"
                    records.append((".when", f"{path}.{key}"))
        item_scope = scope
        if "steps" in raw:
            self.loop(raw, path, scope, out, records, autos, deps)
        else:
            if "for_each" in raw:
                item_scope = self.for_each(raw, path, scope, out, records, autos, deps)
                if "while" in raw or "until" in raw:
                    self.error(f"step {step_id!r}: use either for_each or while/until", path)
            elif "while" in raw or "until" in raw:
                item_scope = self.repeat(raw, path, scope, out, records, deps)
            out["uses"] = uses
            records.append((".uses", f"{path}.action" if "action" in raw else f"{path}.tool"))
            first = len(autos)
            out["with"] = self.arguments(raw, path, item_scope, uses, how, autos, deps,
                                         records)
            if "for_each" in out:
                self.per_item(out, autos[first:])
        if deps and "steps" not in raw:
            out["depends_on"] = deps
        self.failure(raw, path, out, records)
        pieces = [(step, orig, [(".with.prompt", orig)]) for step, orig in autos]
        pieces.append((out, path, records))
        return pieces, condition

    def dependencies(self, raw: dict[str, Any], path: str, scope: _Scope,
                     records: list[tuple[str, str]]) -> list[str]:
        deps: list[str] = []
        for key in ("dependencies", "depends_on"):
            value = raw.get(key)
            if value is None:
                continue
            if isinstance(value, str):
                value = [value]
            if not isinstance(value, list) or not all(isinstance(d, str) for d in value):
                self.error(f"'{key}' must be a list of step ids", f"{path}.{key}")
                continue
            for dep in value:
                if dep in deps:
                    continue
                if dep not in scope.steps and scope.parent is not None \
                        and scope.parent.is_step(dep):
                    scope.outer_deps.append(dep)     # the enclosing loop step waits for it
                    continue
                deps.append(dep)
            records.append((".depends_on", f"{path}.{key}"))
        return deps

    def for_each(self, raw: dict[str, Any], path: str, scope: _Scope, out: dict[str, Any],
                 records: list[tuple[str, str]], autos: list[Any], deps: list[str]
                 ) -> _Scope:
        """A single action per item: flowyard's ``for_each`` on the step itself."""
        items = self.items(raw, path, scope, autos, deps)
        out["for_each"] = items[0]
        records.append((".for_each", f"{path}.for_each"))
        if "max_parallel" in raw:
            out["max_parallel"] = raw["max_parallel"]
            records.append((".max_parallel", f"{path}.max_parallel"))
        length = items[1]
        names = {"item": Ref("item"), "index": Ref("index"),
                 "is_first": Ref("(index == 0)"),
                 "is_last": Ref(f"(index == {length} - 1)"), "length": Ref(length)}
        for key in ("loop_var", "as"):
            if isinstance(raw.get(key), str):
                names[raw[key]] = Ref("item")
        return _Scope(self, scope, names=names, passing=False)

    def items(self, raw: dict[str, Any], path: str, scope: _Scope, autos: list[Any],
              deps: list[str]) -> tuple[Any, str]:
        """Return (flowyard ``for_each`` value, expression of its length)."""
        value = raw["for_each"]
        where = f"{path}.for_each"
        if isinstance(value, list):
            translated = self.value(value, scope, where, autos, raw["id"], deps)
            return translated, str(len(value))
        if isinstance(value, str) and _has_auto(value):
            if not _AUTO.fullmatch(value.strip()):
                self.error("for_each: an <AUTO> tag must be the whole value", where)
                return [], "0"
            answer = self.auto(value, scope, where, autos, raw["id"], deps, answer="list")
            expression = answer.strip()[2:-2].strip()
            return answer, f"(({expression}) | length)"
        text = as_expression(value)
        if text is None:
            self.error("for_each must be a list or one expression (\"{{ items }}\")", where)
            return [], "0"
        expression = self.template("{{ " + text + " }}", scope, where)[2:-2].strip()
        return "{{ " + expression + " }}", f"(({expression}) | length)"

    def loop(self, raw: dict[str, Any], path: str, scope: _Scope, out: dict[str, Any],
             records: list[tuple[str, str]], autos: list[Any], deps: list[str]) -> None:
        """Nested steps: a sub-workflow per item (``for_each``) or per iteration
        (``while``/``until``)."""
        step_id = raw["id"]
        info = scope.steps.get(step_id)
        is_for = "for_each" in raw
        if is_for and ("while" in raw or "until" in raw):
            self.error(f"step {step_id!r}: use either for_each or while/until", path)
        for key in ("action", "tool", "parameters"):
            if key in raw:
                self.error(f"step {step_id!r}: a step with nested 'steps' has no {key!r} (its "
                           f"steps do the work)", f"{path}.{key}", key=True)
        names: dict[str, Ref] = {}
        child_inputs: dict[str, Any] = {}
        parent_inputs: dict[str, Any] = {}
        if is_for:
            items, length = self.items(raw, path, scope, autos, deps)
            out["for_each"] = items
            records.append((".for_each", f"{path}.for_each"))
            loop_names = {"item": "{{ item }}", "index": "{{ index }}",
                          "is_first": "{{ index == 0 }}",
                          "is_last": "{{ index == " + length + " - 1 }}",
                          "length": "{{ " + length + " }}"}
            for name, template in loop_names.items():
                names[name] = Ref(f"inputs.{name}")
                child_inputs[name] = {"type": "any"}
                parent_inputs[name] = template
            for key in ("loop_var", "as"):
                if isinstance(raw.get(key), str):
                    names[raw[key]] = Ref("inputs.item")
            if "max_parallel" in raw:
                out["max_parallel"] = raw["max_parallel"]
                records.append((".max_parallel", f"{path}.max_parallel"))
        else:
            names["iteration"] = Ref("inputs.iteration")
            child_inputs["iteration"] = {"type": "integer"}
            parent_inputs["iteration"] = "{{ iteration - 1 }}"
        children = dict(info.children) if info else {}
        sub = _Scope(self, scope, steps={}, names=names)
        body = self.steps(raw["steps"], f"{path}.steps", f"{_NEW}.with.workflow.steps", sub)
        keys = [k for k in ("while", "until") if k in raw]
        auto_condition = self.loop_auto(raw, keys[0], path, step_id, sub, body) \
            if not is_for and len(keys) == 1 and isinstance(raw[keys[0]], str) \
            and _has_auto(raw[keys[0]]) else None
        for name, template in sub.passed.items():
            child_inputs[name] = {"type": "any"}
            parent_inputs[name] = template
        for dep in sub.outer_deps:
            if dep in scope.steps or scope.parent is None or not scope.parent.is_step(dep):
                if dep not in deps:
                    deps.append(dep)
            else:
                scope.outer_deps.append(dep)
        if deps:
            out["depends_on"] = deps
        outputs = {child["id"]: "{{ " + _step_expression(child["id"]) + " }}"
                   for child in body if "-auto-" not in child["id"]}
        out["uses"] = "workflow"
        out["with"] = {"workflow": {"name": f"{self.pipeline_id}.{step_id}",
                                    "inputs": child_inputs, "steps": body,
                                    "outputs": outputs},
                       "inputs": parent_inputs}
        records.append((".uses", f"{path}.steps"))
        records.append((".with", f"{path}.steps"))
        if not is_for:
            after = _Scope(self, scope, names={
                "iteration": Ref("iteration"),
                **{cid: child.ref(f"output.{cid}") for cid, child in children.items()}},
                passing=False)
            before = _Scope(self, scope, names={"iteration": Ref("0")}, passing=False)
            self.loop_conditions(raw, path, step_id, after, before, deps, set(children), out,
                                 records, auto_condition)
        # the body's records were made with a placeholder prefix: make them relative
        self.records = [(_relative(new, step_id), orig) if new.startswith(_NEW) else (new, orig)
                        for new, orig in self.records]
        records.extend(self.take_relative(step_id))

    def per_item(self, out: dict[str, Any], autos: list[Any]) -> None:
        """``<AUTO>`` tags in the parameters of a ``for_each`` step are asked once per item:
        each tag's step loops over the same items, and the step takes the answer of its own
        item (``[index]``)."""
        for step, _ in autos:
            step["for_each"] = out["for_each"]
            if "max_parallel" in out:
                step["max_parallel"] = out["max_parallel"]
            whole = _step_expression(step["id"])
            out["with"] = _replace_text(out["with"], whole, f"{whole}[index]")

    def repeat(self, raw: dict[str, Any], path: str, scope: _Scope, out: dict[str, Any],
               records: list[tuple[str, str]], deps: list[str]) -> _Scope:
        """``while``/``until`` on a single action: flowyard's ``until`` on the step itself.

        In the condition the step's own id (and ``result``) is the iteration's result and
        ``$iteration`` the iterations done; in the action's parameters ``$iteration`` counts
        from 0. Returns the scope of the parameters.
        """
        step_id = raw["id"]
        for key in ("while", "until"):
            if isinstance(raw.get(key), str) and _has_auto(raw[key]):
                self.error(f"<AUTO> in {key} of a single action is not supported (the "
                           f"question needs the iteration's result); put the action in "
                           f"nested 'steps'", f"{path}.{key}")
        own = scope.steps.get(step_id)
        itself = own.ref("output") if own is not None else Ref("output")
        after = _Scope(self, scope, names={"iteration": Ref("iteration"), step_id: itself},
                       passing=False)
        before = _Scope(self, scope, names={"iteration": Ref("0")}, passing=False)
        self.loop_conditions(raw, path, step_id, after, before, deps, {step_id}, out, records,
                             None)
        return _Scope(self, scope, names={"iteration": Ref("(iteration - 1)")},
                      passing=False)

    def loop_conditions(self, raw: dict[str, Any], path: str, step_id: str, after: _Scope,
                        before: _Scope, deps: list[str], own: set[str], out: dict[str, Any],
                        records: list[tuple[str, str]], auto_condition: str | None) -> None:
        """Set ``until`` (and for ``while`` a first check, ``when``) from ``while``/``until``.

        The loop stops when a ``while`` condition is false or an ``until`` condition is true
        (both may be given). A ``while`` that names none of ``own`` (the loop's own results)
        is also checked before the first iteration, with ``$iteration`` 0.
        """
        keys = [k for k in ("while", "until") if k in raw]
        stops: list[str] = []
        for key in keys:
            where = f"{path}.{key}"
            if _has_auto(str(raw[key])):
                if len(keys) > 1:
                    self.error("<AUTO> in a loop that has both while and until is not "
                               "supported; keep one of them", where)
                elif auto_condition is not None:
                    stops.append(f"not ({auto_condition})" if key == "while"
                                 else auto_condition)
                continue
            condition = self.expression(raw[key], after, where, None, step_id, deps, key)
            if condition is None:
                continue
            stops.append(f"not ({condition})" if key == "while" else f"({condition})")
            if key == "while" and not _names(raw[key]) & own:
                first = self.expression(raw[key], before, where, None, step_id, deps, key)
                if first is not None:
                    earlier = f"({out['when'][2:-2].strip()}) and " if "when" in out else ""
                    out["when"] = "{{ " + earlier + f"({first}) }}}}"
                    records.append((".when", where))
        if stops:
            out["until"] = "{{ " + " or ".join(stops) + " }}"
            records.append((".until", f"{path}.{keys[0]}"))
        if "max_iterations" in raw:
            out["max_iterations"] = raw["max_iterations"]
            records.append((".max_iterations", f"{path}.max_iterations"))

    def loop_auto(self, raw: dict[str, Any], key: str, path: str, step_id: str, sub: _Scope,
                  body: list[dict[str, Any]]) -> str | None:
        """``while``/``until: <AUTO>...</AUTO>``: the question is asked by a last step of the
        loop's body, after the iteration's other steps, and its answer decides the loop.

        Returns:
            the ``until`` expression of the answer (true for ``true``, ``yes``, ``1``).
        """
        where = f"{path}.{key}"
        if not _AUTO.fullmatch(raw[key].strip()):
            self.error(f"{key}: an <AUTO> tag must be the whole condition", where)
            return None
        asking = f"{step_id}-{key}"
        # after an iteration, $iteration counts the iterations done
        after = _Scope(self, sub, names={"iteration": Ref("(inputs.iteration + 1)")},
                       passing=False)
        asked: list[Any] = []
        self.auto(raw[key], after, where, asked, step_id, [c["id"] for c in body],
                  step_id=asking)
        for step, orig in asked:
            self.record(f"{_NEW}.with.workflow.steps[{len(body)}]", orig)
            self.record(f"{_NEW}.with.workflow.steps[{len(body)}].with.prompt", orig)
            body.append(step)
        return f"(output[{json.dumps(asking)}] | string | trim | lower) in ['true', 'yes', '1']"

    def take_relative(self, step_id: str) -> list[tuple[str, str]]:
        marker = f"{_REL}{step_id}"
        mine = [(new[len(marker):], orig) for new, orig in self.records
                if new.startswith(marker)]
        self.records = [(new, orig) for new, orig in self.records
                        if not new.startswith(marker)]
        return mine

    def arguments(self, raw: dict[str, Any], path: str, scope: _Scope, uses: str | None,
                  how: str | None, autos: list[Any], deps: list[str],
                  records: list[tuple[str, str]]) -> dict[str, Any]:
        step_id = raw["id"]
        params = raw.get("parameters") or {}
        ppath = f"{path}.parameters"
        if not isinstance(params, dict):
            self.error("'parameters' must be a mapping", ppath)
            return {}

        def arg(name: str) -> Any:
            return self.value(params[name], scope, f"{ppath}.{name}", autos, step_id, deps)

        out: dict[str, Any] = {}
        if how == "!":
            command = self.template(str(raw["action"])[1:].strip(), scope, f"{path}.action")
            records.append((".with.command", f"{path}.action"))
            if params:
                self.error("a '!command' action takes no parameters", ppath)
            return {"command": command, "shell": True}
        if uses == "llm.chat":
            extra = _LLM_EXTRA[str(how)]
            allowed = list(_LLM_PARAMS) + list(extra)
            for name in params:
                if name not in allowed:
                    self.error(f"step {step_id!r}: parameter {name!r} of action "
                               f"{raw['action']!r} is not supported (supported: "
                               f"{', '.join(allowed)})", f"{ppath}.{name}", key=True)
                    continue
                if name in extra:
                    continue
                if name == "max_completion_tokens" and "max_tokens" in params:
                    self.error(f"step {step_id!r}: write either 'max_tokens' or "
                               f"'max_completion_tokens', not both", f"{ppath}.{name}",
                               key=True)
                    continue
                if name == "model" and isinstance(params[name], str) \
                        and (_AUTO.fullmatch(params[name].strip())
                             or _AUTO_OPEN.fullmatch(params[name].strip())):
                    out["model"] = "auto"     # the router picks the model
                elif name == "model" and isinstance(params[name], str) \
                        and "{" not in params[name]:
                    model = self.model_reference(params[name].strip(), f"{ppath}.model")
                    if model is not None:
                        out["model"] = model
                else:
                    out[_LLM_PARAMS[name]] = arg(name)
                records.append((f".with.{_LLM_PARAMS[name]}", f"{ppath}.{name}"))
            if how == "analyze":
                parts = [str(out.get("prompt") or "Analyze the following text.")]
                if "analysis_type" in params:
                    parts.append(f"Analysis type: {arg('analysis_type')}")
                if "text" in params:
                    parts.append(f"Text:\n{arg('text')}")
                    records.append((".with.prompt", f"{ppath}.text"))
                out["prompt"] = "\n\n".join(parts)
            if how == "structured":
                if "schema" not in params:
                    self.error(f"step {step_id!r}: {raw['action']!r} needs a 'schema'", ppath)
                else:
                    out["response_schema"] = params["schema"]
                    records.append((".with.response_schema", f"{ppath}.schema"))
            if "response_format" in params and "response_schema" not in out:
                kind = params["response_format"]
                if isinstance(kind, dict):
                    kind = kind.get("type")
                if kind == "json_object":     # any JSON object: the result is parsed
                    out["response_schema"] = {"type": "object"}
                    records.append((".with.response_schema", f"{ppath}.response_format"))
                elif kind != "text":
                    self.error(f"step {step_id!r}: response_format {kind!r} is not supported "
                               f"(json_object, text; or a 'schema')",
                               f"{ppath}.response_format")
            if "prompt" not in out:
                self.error(f"step {step_id!r}: action {raw['action']!r} needs a 'prompt'",
                           ppath)
            return out
        tool, _, action = str(how).partition(":")
        _, mapping, _ = TOOLS[tool][action]
        for name in params:
            if name == "action" and params[name] == action \
                    and raw.get("action") in (None, "execute", tool):
                continue        # the action itself, written as the tool's parameter
            if name not in mapping:
                self.error(f"step {step_id!r}: parameter {name!r} of tool {tool!r} action "
                           f"{action!r} is not supported (supported: {', '.join(mapping)})",
                           f"{ppath}.{name}", key=True)
                continue
            target = mapping[name]
            if target is None:
                continue
            out[target] = arg(name)
            records.append((f".with.{target}", f"{ppath}.{name}"))
        if uses == "shell.run" and isinstance(out.get("command"), str):
            out["shell"] = True
        if uses == "echo":        # report-generator: the report's markdown
            title, content = out.pop("title", None), out.pop("content", "")
            markdown = f"# {title}\n\n{content}" if title else content
            out = {"value": {"title": title, "markdown": markdown,
                             "format": out.pop("format", "markdown")}}
            records.append((".with.value", ppath))
        return out

    def model_reference(self, name: str, path: str) -> str | None:
        """Return the flowyard reference (``provider/model``) of a model the pipeline names.

        The Orchestrator also accepts a bare model name, which its model registry looks up;
        the names of Anthropic's (``claude-...``) and OpenAI's (``gpt-...``, ``o1``/``o3``/
        ``o4``...) models say their provider, any other bare name is a located error.
        """
        if "/" in name:
            return name
        for pattern, provider in _MODEL_PROVIDERS:
            if pattern.match(name):
                return f"{provider}/{name}"
        self.error(f"model {name!r} names no provider: write provider/model (for example "
                   f"ollama/{name}); the Orchestrator looks bare names up in its own model "
                   f"registry", path)
        return None

    def failure(self, raw: dict[str, Any], path: str, out: dict[str, Any],
                records: list[tuple[str, str]]) -> None:
        policy = raw.get("on_failure")
        if policy is not None and policy not in _FAILURE:
            self.error(f"on_failure must be one of {', '.join(_FAILURE)}, got {policy!r} "
                       f"(routing to a step on failure is not supported)",
                       f"{path}.on_failure")
            policy = None
        retries = raw.get("max_retries")
        if retries is not None and (isinstance(retries, bool) or not isinstance(retries, int)
                                    or retries < 0):
            self.error("max_retries must be a non-negative integer", f"{path}.max_retries")
            retries = None
        if policy == "retry" or (retries and policy != "fail"):
            attempts = (3 if retries is None else retries) + 1
            out["retry"] = {"attempts": attempts, "backoff": 0.5, "multiplier": 2,
                            "max_backoff": 30, "jitter": 0, "on": ["any"]}
            records.append((".retry", f"{path}.max_retries" if retries is not None
                            else f"{path}.on_failure"))
        if policy == "continue":
            out["on_error"] = "continue_and_fail"   # the rest runs, the run fails
            records.append((".on_error", f"{path}.on_failure"))
        elif policy == "skip":
            out["on_error"] = "continue"
            records.append((".on_error", f"{path}.on_failure"))
        if "timeout" in raw:
            out["timeout"] = raw["timeout"]
            records.append((".timeout", f"{path}.timeout"))


_NEW = "\x00new"
_REL = "\x00rel"


def _replace_text(value: Any, old: str, new: str) -> Any:
    """Replace ``old`` by ``new`` in every string of ``value`` (lists and mappings too)."""
    if isinstance(value, str):
        return value.replace(old, new)
    if isinstance(value, list):
        return [_replace_text(v, old, new) for v in value]
    if isinstance(value, dict):
        return {k: _replace_text(v, old, new) for k, v in value.items()}
    return value


def _literal(value: Any) -> str:
    """Return ``value`` (a string, number or boolean) as a template literal."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return json.dumps(value)


def _has_auto(text: str) -> bool:
    return _AUTO_OPEN.search(text) is not None


def _relative(new: str, step_id: str) -> str:
    return f"{_REL}{step_id}{new[len(_NEW):]}"


def _shift(path: str, prefix: str, by: int) -> str:
    match = re.match(rf"{re.escape(prefix)}\[(\d+)\]", path)
    if not match:
        return path
    return f"{prefix}[{int(match.group(1)) + by}]{path[match.end():]}"


def _names(source: Any) -> set[str]:
    text = as_expression(source) if not isinstance(source, bool) else None
    if text is None:
        return set()
    try:
        return template_names("{{ " + text + " }}")
    except TemplateRewriteError:
        return set()


def _quiet(translator: _Translator, call: Callable[..., Any], *args: Any) -> Any:
    """Run ``call(*args)`` without keeping the issues it reports (they are reported again
    when the step itself is translated)."""
    before = len(translator.issues)
    result = call(*args)
    del translator.issues[before:]
    return result


def translate(data: Any, locations: Locations, path: str | None
              ) -> tuple[dict[str, Any], Locations]:
    """Translate a parsed Orchestrator pipeline into a flowyard workflow definition.

    Args:
        data: the pipeline as parsed by :func:`flowyard.parse_yaml`.
        locations: where each of its values was written.
        path: the file, for issues.

    Returns:
        ``(definition, locations)``: the flowyard definition and, for each of its fields,
        the line and column of what it was translated from.

    Raises:
        WorkflowValidationError: every feature that has no flowyard counterpart, each
            located at the file, line and column where it was written.
    """
    translator = _Translator(locations, path)
    definition = translator.pipeline(data)
    if translator.issues:
        raise WorkflowValidationError([*locations.issues, *translator.issues])
    return definition, translator.locations()
