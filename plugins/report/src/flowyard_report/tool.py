"""The ``report.write`` tool."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

import anyio.to_thread
from flowyard import BaseTool, ToolContext, ToolError, ToolInputError
from flowyard_safepath import PathNotFoundError, SafeRoot

from flowyard_report.render import FORMATS, ReportRenderer, infer_format

__all__ = ["ReportWriteTool", "literal_template"]

MAX_TEMPLATE_BYTES = 1024 * 1024
_WHOLE_RAW = re.compile(r"\A\{%-?\s*raw\s*-?%\}(?P<body>.*)\{%-?\s*endraw\s*-?%\}\Z", re.S)


def literal_template(template: str) -> str:
    """Return the inline template a step wrote: ``template`` itself, or the body of a template
    that is one ``{% raw %}...{% endraw %}`` block as a whole (the form workflows needed while
    the engine rendered ``with.template`` first; it means the same template).
    """
    match = _WHOLE_RAW.match(template)
    if match is None or re.search(r"\{%-?\s*(end)?raw\s*-?%\}", match.group("body")):
        return template
    return match.group("body")


class ReportWriteTool(BaseTool):
    """``report.write``: render a report and write it atomically inside the report root.

    Args:
        root: where templates are read from and reports are written to (paths are confined
            to it, see :mod:`flowyard_safepath`).
        max_output_chars: largest rendered report, in characters.
        max_range_items: most items ``range()`` may produce in one render.
    """

    name = "report.write"
    #: The engine passes ``with.template`` to the tool as the step wrote it (never rendered
    #: with the run's values), so step outputs and inputs reach the report only as ``data``
    #: and ``title`` values and are never evaluated as template code.
    raw_arguments = ("template",)
    description = (
        "Render a Markdown or HTML report from a Jinja2 template and data (typically earlier "
        "steps' outputs) and write it to a file in the workspace. Without a template a "
        "built-in one renders each top-level key of `data` as a section. In HTML every value "
        "is escaped; the `markdown` filter turns Markdown text into safe HTML.")
    parameters = {
        "type": "object",
        "properties": {
            "path": {"type": "string", "minLength": 1,
                     "description": "where to write the report, relative to the workspace"},
            "template": {"type": "string",
                         "description": "inline Jinja2 template source"},
            "template_path": {"type": "string", "minLength": 1,
                              "description": "a template file relative to the workspace "
                                             "(instead of `template`)"},
            "data": {"description": "values for the template: available as `data` and, for "
                                    "an object, each key as a variable"},
            "title": {"type": "string", "description": "available as `title`"},
            "format": {"enum": list(FORMATS),
                       "description": "markdown or html (default: from the path's suffix, "
                                      ".html/.htm for html, else markdown)"},
            "overwrite": {"type": "boolean", "default": True,
                          "description": "replace an existing file"},
        },
        "required": ["path"],
        "additionalProperties": False,
    }
    idempotent = True
    side_effects: Sequence[str] = ("filesystem",)

    def __init__(self, root: SafeRoot, *, max_output_chars: int = 20_000_000,
                 max_range_items: int = 1_000_000) -> None:
        self.root = root
        self.renderer = ReportRenderer(self._load_template, max_output_chars=max_output_chars,
                                       max_range_items=max_range_items)

    def _load_template(self, name: str) -> str:
        try:
            data = self.root.read_bytes(name, max_bytes=MAX_TEMPLATE_BYTES)
        except PathNotFoundError:
            raise ToolError(f"report template {name!r} not found in the workspace "
                            f"{str(self.root.root)!r}") from None
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ToolInputError(f"report template {name!r} is not UTF-8 text (byte "
                                 f"{exc.start})") from None

    def write(self, arguments: dict[str, Any], timeout: float | None = None
              ) -> dict[str, Any]:
        """Render (within ``timeout`` seconds, see :meth:`ReportRenderer.render`) and write
        synchronously; see :meth:`run`.
        """
        path = arguments["path"]
        self.root.parts(path)  # refuse a bad path before rendering anything
        fmt = arguments.get("format") or infer_format(path)
        template = arguments.get("template")
        text = self.renderer.render(fmt=fmt, data=arguments.get("data"),
                                    template=(literal_template(template)
                                              if isinstance(template, str) else template),
                                    template_path=arguments.get("template_path"),
                                    title=arguments.get("title"), timeout=timeout)
        written = self.root.write_bytes(path, text.encode("utf-8"),
                                        overwrite=arguments.get("overwrite", True))
        return {"path": path, "bytes_written": written, "format": fmt,
                "location": str(self.root.location(path))}

    async def run(self, arguments: dict[str, Any], context: ToolContext) -> dict[str, Any]:
        """Render the report and write it (in a worker thread).

        Returns:
            ``{"path": the path as given, "bytes_written": size in bytes, "format",
            "location": the absolute host path of the file}``.

        Raises:
            ToolInputError: a refused path, both templates given, a template syntax error.
            ToolError: sandbox violation, undefined variable, output, iteration, integer or
                quota limits, the time left before the step's deadline passed while rendering,
                a missing template file; nothing is written then.
        """
        left = anyio.current_effective_deadline() - anyio.current_time()
        timeout = None if math.isinf(left) else left  # the step's and the run's timeout
        try:
            return await anyio.to_thread.run_sync(self.write, arguments, timeout)
        except ToolError as exc:
            if exc.tool is None:
                exc.tool = self.name
            raise
