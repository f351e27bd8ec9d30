"""The workflow loader of Orchestrator pipelines (format name ``orchestrator``)."""

from __future__ import annotations

import re
from typing import Any

from flowyard import ParseLimits, Workflow, WorkflowValidationError, parse_workflow, parse_yaml

from flowyard_orchestrator_format.translate import translate

__all__ = ["OrchestratorLoader", "looks_like_orchestrator"]

#: Keys of a step that only the Orchestrator's format uses.
_ORCHESTRATOR_STEP_KEYS = frozenset({"action", "tool", "parameters"})
#: A cheap first look: a line that starts a step key of the Orchestrator's format.
_HINT = re.compile(r"^\s*-?\s*(action|tool|parameters)\s*:", re.MULTILINE)


def looks_like_orchestrator(data: Any) -> bool:
    """Return True when parsed YAML is an Orchestrator pipeline: a mapping whose ``steps``
    (or a loop's nested ``steps``) use ``action``/``tool``/``parameters`` and never
    flowyard's ``uses``.

    Args:
        data: the parsed document.
    """
    if not isinstance(data, dict) or not isinstance(data.get("steps"), list):
        return False
    found = False
    pending = list(data["steps"])
    while pending:
        step = pending.pop()
        if not isinstance(step, dict):
            continue
        if "uses" in step or "with" in step:
            return False
        if _ORCHESTRATOR_STEP_KEYS & step.keys():
            found = True
        if isinstance(step.get("steps"), list):
            pending.extend(step["steps"])
    return found


class OrchestratorLoader:
    """Loads Orchestrator pipelines (``.yaml``/``.yml``) as flowyard workflows.

    The loader claims a YAML file (``sniff``) when its steps are written in the
    Orchestrator's format; ``flowyard run --format orchestrator FILE`` forces it.

    Args:
        limits: the parser's limits (``ParseLimits.from_config(config)``; default: the
            defaults of :class:`flowyard.ParseLimits`).
    """

    suffixes = (".yaml", ".yml")

    def __init__(self, limits: ParseLimits | None = None) -> None:
        self.limits = limits

    def sniff(self, source: str, path: str | None) -> bool:
        """Return True when ``source`` is an Orchestrator pipeline.

        Args:
            source: the file's text.
            path: the file's path (unused: the content decides).

        Returns:
            True for a mapping with ``steps`` whose steps use ``action``, ``tool`` or
            ``parameters`` (and none uses ``uses``/``with``); False for anything else,
            text that is not valid YAML included (the native loader reports it).
        """
        if not _HINT.search(source):
            return False
        try:
            data, _ = parse_yaml(source, path=path, limits=self.limits, keep_going=True)
        except WorkflowValidationError:
            return False
        return looks_like_orchestrator(data)

    def load(self, source: str, *, path: str | None = None) -> Workflow:
        """Parse and translate a pipeline.

        Args:
            source: the file's text.
            path: the file's path (named by every issue).

        Returns:
            The flowyard workflow; the engine validates it against the stack (tools,
            arguments, templates) like any other, with the pipeline's lines and columns.

        Raises:
            WorkflowValidationError: invalid YAML, and every feature of the pipeline that
                has no flowyard counterpart, each with file, line and column.
        """
        data, locations = parse_yaml(source, path=path, limits=self.limits, keep_going=True)
        definition, translated = translate(data, locations, path)
        return parse_workflow(definition, locations=translated, source=path)
