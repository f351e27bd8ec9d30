"""MCP tools, resources and prompts as flowyard tools.

Names (the server ``files`` of ``[mcp.servers.files]``):

- ``files.<tool>`` for each tool the server lists (``files.read_file``), its description and
  ``inputSchema`` as the flowyard tool's description and ``parameters``;
- ``files.resources.list`` and ``files.resources.read`` (``uri``): the server's resources;
- ``files.prompts.list`` and ``files.prompts.get`` (``name``, ``arguments``): its prompts.

Results: a tool's ``structuredContent`` when it has one (servers written with the SDK wrap a
non-object return value as ``{"result": value}``), else its text when every content block is
text (blocks joined by newlines), else the list of content blocks as JSON objects. A result
with ``isError`` raises :class:`~flowyard_mcp.errors.MCPCallError` with the result's text.
"""

from __future__ import annotations

from typing import Any

import flowyard

from flowyard_mcp.client import MCPClientManager, ServerConnection
from flowyard_mcp.errors import MCPCallError

__all__ = ["MCPTool", "ResourceListTool", "ResourceReadTool", "PromptListTool",
           "PromptGetTool", "result_value", "ACTIONS"]

#: The resource and prompt actions every server gets, by suffix.
ACTIONS = ("resources.list", "resources.read", "prompts.list", "prompts.get")


def _dump(block: Any) -> dict[str, Any]:
    return block.model_dump(mode="json", by_alias=True, exclude_none=True)  # type: ignore[no-any-return]


def _text(blocks: list[Any]) -> str | None:
    if blocks and all(getattr(b, "type", None) == "text" for b in blocks):
        return "\n".join(b.text for b in blocks)
    return None


def result_value(result: Any) -> Any:
    """Return the JSON-ready value of a successful ``tools/call`` result (see the module
    docstring: structured content, else text, else the content blocks)."""
    if result.structured_content is not None:
        return result.structured_content
    text = _text(result.content)
    if text is not None:
        return text
    return [_dump(b) for b in result.content]


class _ServerAction(flowyard.BaseTool):
    """A flowyard tool that sends one request to one MCP server."""

    side_effects: tuple[str, ...] = ("mcp",)

    def __init__(self, name: str, connection: ServerConnection, manager: MCPClientManager
                 ) -> None:
        self.name = name
        self.connection = connection
        self.manager = manager

    async def aclose(self) -> None:
        """Close the stack's MCP connections (the stack calls it on every built tool when it
        closes; every tool of the stack shares one manager). Safe to call twice."""
        await self.manager.aclose()


class MCPTool(_ServerAction):
    """One tool of an MCP server, as the flowyard tool ``<server>.<tool>``.

    Args:
        name: the flowyard name (``files.read_file``).
        remote: the ``mcp.types.Tool`` the server listed.
        connection: the server's connection.
        manager: the stack's manager.

    Raises (on call):
        ToolInputError: the arguments do not match the tool's ``inputSchema``.
        MCPCallError: the result has ``isError`` (the message is its text).
        MCPToolError: the server cannot be reached, crashed, timed out or refused the call.
    """

    def __init__(self, name: str, remote: Any, connection: ServerConnection,
                 manager: MCPClientManager) -> None:
        super().__init__(name, connection, manager)
        self.remote_name = remote.name
        prefix = connection.config.description
        own = remote.description or remote.title or ""
        self.description = f"{prefix} {own}".strip() if prefix else own
        schema = dict(remote.input_schema or {})
        schema.setdefault("type", "object")
        schema.setdefault("properties", {})
        self.parameters = schema
        annotations = remote.annotations
        self.idempotent = bool(annotations is not None and (annotations.idempotent_hint or
                                                            annotations.read_only_hint))

    async def run(self, arguments: dict[str, Any], context: flowyard.ToolContext) -> Any:
        """Call the tool on its server; return its result's value.

        Raises:
            MCPCallError: the result has ``isError``.
            MCPToolError: as :meth:`ServerConnection.request`.
        """
        result = await self.manager.run(
            self.connection.request, f"tools/call {self.remote_name}", self.name,
            lambda client: client.call_tool(self.remote_name, arguments))
        if result.is_error:
            text = _text(result.content) or "the tool reported an error without text"
            raise MCPCallError(f"MCP tool {self.name!r} failed: {text}", tool=self.name,
                               server=self.connection.config.name,
                               content=[_dump(b) for b in result.content])
        return result_value(result)


class ResourceListTool(_ServerAction):
    """``<server>.resources.list``: the server's resources (``resources/list``, every page).

    Returns (on call):
        ``[{"uri", "name", "description"?, "mimeType"?}, ...]``.
    """

    description = "List the resources of an MCP server (uri, name, description, mimeType)."
    parameters: dict[str, Any] = {"type": "object", "properties": {},
                                  "additionalProperties": False}
    idempotent = True

    async def run(self, arguments: dict[str, Any], context: flowyard.ToolContext) -> Any:
        """List every resource.

        Raises:
            MCPToolError: as :meth:`ServerConnection.request`.
        """
        async def send(client: Any) -> list[dict[str, Any]]:
            out: list[dict[str, Any]] = []
            cursor = None
            while True:
                page = await client.list_resources(cursor=cursor)
                out += [_dump(r) for r in page.resources]
                cursor = page.next_cursor
                if not cursor:
                    return out

        return await self.manager.run(self.connection.request, "resources/list", self.name,
                                      send)


class ResourceReadTool(_ServerAction):
    """``<server>.resources.read``: read one resource by URI (``resources/read``).

    Returns (on call):
        ``{"text": str | None, "contents": [...]}``: the text contents joined by newlines
        (None when a content is binary), and every content as a JSON object (``uri``,
        ``mimeType``, ``text`` or base64 ``blob``).
    """

    description = "Read a resource of an MCP server by its URI."
    parameters: dict[str, Any] = {
        "type": "object", "additionalProperties": False, "required": ["uri"],
        "properties": {"uri": {"type": "string", "description": "the resource's URI"}}}
    idempotent = True

    async def run(self, arguments: dict[str, Any], context: flowyard.ToolContext) -> Any:
        """Read the resource.

        Raises:
            MCPRequestError: the server does not know the URI.
            MCPToolError: as :meth:`ServerConnection.request`.
        """
        uri = arguments["uri"]
        result = await self.manager.run(self.connection.request, f"resources/read {uri}",
                                        self.name, lambda c: c.read_resource(uri))
        contents = [_dump(c) for c in result.contents]
        texts = [c["text"] for c in contents if "text" in c]
        return {"text": "\n".join(texts) if len(texts) == len(contents) else None,
                "contents": contents}


class PromptListTool(_ServerAction):
    """``<server>.prompts.list``: the server's prompts (``prompts/list``, every page).

    Returns (on call):
        ``[{"name", "description"?, "arguments"?: [{"name", "required"?}]}, ...]``.
    """

    description = "List the prompts of an MCP server (name, description, arguments)."
    parameters: dict[str, Any] = {"type": "object", "properties": {},
                                  "additionalProperties": False}
    idempotent = True

    async def run(self, arguments: dict[str, Any], context: flowyard.ToolContext) -> Any:
        """List every prompt.

        Raises:
            MCPToolError: as :meth:`ServerConnection.request`.
        """
        async def send(client: Any) -> list[dict[str, Any]]:
            out: list[dict[str, Any]] = []
            cursor = None
            while True:
                page = await client.list_prompts(cursor=cursor)
                out += [_dump(p) for p in page.prompts]
                cursor = page.next_cursor
                if not cursor:
                    return out

        return await self.manager.run(self.connection.request, "prompts/list", self.name,
                                      send)


class PromptGetTool(_ServerAction):
    """``<server>.prompts.get``: render one prompt (``prompts/get``).

    Returns (on call):
        ``{"description": str | None, "messages": [{"role", "content"}], "text": str}``:
        a message's ``content`` is its text when it is text, else the content block;
        ``text`` joins the text messages.
    """

    description = "Get a prompt of an MCP server, filled with its arguments."
    parameters: dict[str, Any] = {
        "type": "object", "additionalProperties": False, "required": ["name"],
        "properties": {
            "name": {"type": "string", "description": "the prompt's name"},
            "arguments": {"type": "object", "additionalProperties": {"type": "string"},
                          "description": "the prompt's arguments (strings)"}}}
    idempotent = True

    async def run(self, arguments: dict[str, Any], context: flowyard.ToolContext) -> Any:
        """Get the prompt.

        Raises:
            MCPRequestError: the server does not know the prompt or refuses its arguments.
            MCPToolError: as :meth:`ServerConnection.request`.
        """
        name, values = arguments["name"], dict(arguments.get("arguments") or {})
        result = await self.manager.run(self.connection.request, f"prompts/get {name}",
                                        self.name, lambda c: c.get_prompt(name, values))
        messages = []
        for message in result.messages:
            content = message.content
            value = content.text if getattr(content, "type", None) == "text" else _dump(content)
            messages.append({"role": message.role, "content": value})
        return {"description": result.description, "messages": messages,
                "text": "\n".join(m["content"] for m in messages
                                  if isinstance(m["content"], str))}


def server_actions(connection: ServerConnection, manager: MCPClientManager
                   ) -> dict[str, flowyard.BaseTool]:
    """Return the resource and prompt actions of one server, by flowyard name."""
    name = connection.config.name
    return {f"{name}.resources.list": ResourceListTool(f"{name}.resources.list", connection,
                                                       manager),
            f"{name}.resources.read": ResourceReadTool(f"{name}.resources.read", connection,
                                                       manager),
            f"{name}.prompts.list": PromptListTool(f"{name}.prompts.list", connection, manager),
            f"{name}.prompts.get": PromptGetTool(f"{name}.prompts.get", connection, manager)}
