"""A small deterministic OpenAI-compatible HTTP server, for offline tests and benchmarks.

Serves ``GET /v1/models``, ``POST /v1/chat/completions`` (JSON and SSE streams, tool calls,
``response_format`` structured output) and ``POST /v1/embeddings`` with the OpenAI wire
shapes, answering by rule instead of by model:

* with ``response_format``: a minimal JSON value satisfying the schema;
* with tools and ``tool_choice`` ``required`` or a named function: a call of that (or the
  first) tool with minimal arguments satisfying its schema;
* otherwise ``"echo: <last user text>"``, followed by ``[N images]`` when the messages carry
  ``image_url`` content parts, cut to ``max_tokens`` words.

Every chat request body is kept in :attr:`MockOpenAIServer.chat_bodies`, so tests can check
the wire shape end to end.

Tokens are whitespace-separated words. An unknown model gets OpenAI's 404 error shape; when
started with an API key, a request without ``Authorization: Bearer <key>`` gets a 401.

Run it from the command line (``python -m flowyard_openai.mock_server --port 8199 --latency
0.02``) or in a background thread from tests (:meth:`MockOpenAIServer.start_in_thread`).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import math
import threading
import time
from collections.abc import Sequence
from typing import Any

__all__ = ["MockOpenAIServer", "example_for_schema", "main"]


def example_for_schema(schema: dict[str, Any]) -> Any:
    """Return a minimal value satisfying a simple JSON Schema (objects, arrays, scalars,
    enums); strings are ``"example"``.

    Raises:
        ValueError: a schema construct it cannot satisfy.
    """
    if "enum" in schema:
        return schema["enum"][0]
    if "const" in schema:
        return schema["const"]
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object" or (kind is None and "properties" in schema):
        props = schema.get("properties", {})
        return {k: example_for_schema(v) for k, v in props.items()}
    if kind == "array":
        return []
    if kind == "string":
        return "example"
    if kind in ("integer", "number"):
        return schema.get("minimum", 1)
    if kind == "boolean":
        return True
    if kind == "null":
        return None
    raise ValueError(f"cannot build an example for schema {schema!r}")


def _words(text: str) -> int:
    return len(text.split())


def _message_text(message: dict[str, Any]) -> str:
    content = message.get("content") or ""
    if isinstance(content, list):
        return " ".join(p.get("text", "") for p in content if p.get("type") == "text")
    return str(content)


class MockOpenAIServer:
    """The mock server.

    Args:
        models: model ids served (the first also serves embeddings).
        latency: seconds to wait before answering each request (simulated model time).
        api_key: when set, requests must carry it as a bearer token.
        host, port: where to listen (port 0: a free port, see :attr:`port` after start).
    """

    def __init__(self, models: Sequence[str] = ("mock-model", "mock-embed"), *,
                 latency: float = 0.0, api_key: str | None = None, host: str = "127.0.0.1",
                 port: int = 0) -> None:
        self.models = list(models)
        self.latency = latency
        self.api_key = api_key
        self.host = host
        self.port = port
        self.requests = 0
        #: the JSON body of every ``POST /v1/chat/completions`` received, in order
        self.chat_bodies: list[dict[str, Any]] = []
        self._runner: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        """``http://host:port/v1``."""
        return f"http://{self.host}:{self.port}/v1"

    # ------------------------------------------------------------------ handlers

    def _error(self, status: int, message: str, kind: str, code: str | None = None) -> Any:
        from aiohttp import web

        return web.json_response({"error": {"message": message, "type": kind, "param": None,
                                            "code": code}}, status=status)

    def _check(self, request: Any) -> Any:
        self.requests += 1
        if self.api_key and request.headers.get("Authorization") != f"Bearer {self.api_key}":
            return self._error(401, "Incorrect API key provided.", "invalid_request_error",
                               "invalid_api_key")
        return None

    async def models_handler(self, request: Any) -> Any:
        """Answer ``GET /v1/models``: every configured model id, in OpenAI's list shape.

        Args:
            request: the incoming ``aiohttp.web.Request`` (only its ``Authorization`` header
                is read).

        Returns:
            An ``aiohttp.web.Response``: the JSON list, or a 401 error when an API key is
            set and the request does not carry it.
        """
        from aiohttp import web

        failed = self._check(request)
        if failed is not None:
            return failed
        return web.json_response({"object": "list", "data": [
            {"id": m, "object": "model", "created": 1700000000, "owned_by": "flowyard-mock"}
            for m in self.models]})

    async def chat_handler(self, request: Any) -> Any:
        """Answer ``POST /v1/chat/completions`` by the rules in the module docstring.

        A ``"stream": true`` body gets an SSE stream (text word by word, each tool call's
        arguments in two halves, a usage chunk when ``stream_options.include_usage`` is
        set, then ``[DONE]``); otherwise one ``chat.completion`` JSON object.

        Args:
            request: the incoming ``aiohttp.web.Request``; its JSON body is an OpenAI chat
                request (``model``, ``messages``, optional ``tools``, ``tool_choice``,
                ``response_format``, ``max_tokens``/``max_completion_tokens``, ``stream``).

        Returns:
            An ``aiohttp.web.Response`` (JSON) or the finished ``StreamResponse``; an OpenAI
            error shape with status 401 (missing key), 400 (body not JSON, no messages) or
            404 (unknown model).
        """
        from aiohttp import web

        failed = self._check(request)
        if failed is not None:
            return failed
        try:
            body = await request.json()
        except ValueError:
            return self._error(400, "body is not JSON", "invalid_request_error")
        if isinstance(body, dict):
            self.chat_bodies.append(body)
        model = body.get("model")
        if model not in self.models:
            return self._error(404, f"The model `{model}` does not exist or you do not have "
                               "access to it.", "invalid_request_error", "model_not_found")
        messages = body.get("messages") or []
        if not messages:
            return self._error(400, "messages must not be empty", "invalid_request_error")
        if self.latency:
            await asyncio.sleep(self.latency)
        prompt_tokens = sum(_words(_message_text(m)) for m in messages) + 1
        max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
        text, calls, finish = "", [], "stop"
        tools = body.get("tools") or []
        choice = body.get("tool_choice", "auto")
        fmt = body.get("response_format") or {}
        if tools and (choice == "required" or isinstance(choice, dict)):
            tool = tools[0]["function"]
            if isinstance(choice, dict):
                wanted = choice["function"]["name"]
                tool = next((t["function"] for t in tools if t["function"]["name"] == wanted),
                            tool)
            args = example_for_schema(tool.get("parameters") or {"type": "object"})
            calls = [{"id": f"call_{self.requests}", "type": "function",
                      "function": {"name": tool["name"], "arguments": json.dumps(args)}}]
            finish = "tool_calls"
        elif fmt.get("type") in ("json_schema", "json_object"):
            schema = (fmt.get("json_schema") or {}).get("schema") or fmt.get("schema") or {
                "type": "object"}
            text = json.dumps(example_for_schema(schema))
        else:
            last = next((_message_text(m) for m in reversed(messages)
                         if m.get("role") == "user"), "")
            images = sum(1 for m in messages if isinstance(m.get("content"), list)
                         for p in m["content"] if p.get("type") == "image_url")
            if images:
                last += f" [{images} image{'s' if images != 1 else ''}]"
            words = f"echo: {last}".split()
            if max_tokens is not None and len(words) > int(max_tokens):
                words, finish = words[: int(max_tokens)], "length"
            text = " ".join(words)
        completion_tokens = max(1, _words(text) + sum(
            _words(c["function"]["arguments"]) + 1 for c in calls))
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                 "total_tokens": prompt_tokens + completion_tokens}
        created = int(time.time())
        ident = f"chatcmpl-mock{self.requests}"
        if not body.get("stream"):
            message: dict[str, Any] = {"role": "assistant", "content": text or None}
            if calls:
                message["tool_calls"] = calls
            return web.json_response({
                "id": ident, "object": "chat.completion", "created": created, "model": model,
                "choices": [{"index": 0, "message": message, "finish_reason": finish}],
                "usage": usage})
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                               "Cache-Control": "no-cache"})
        await response.prepare(request)

        async def send(obj: Any) -> None:
            payload = obj if isinstance(obj, str) else json.dumps(obj)
            await response.write(f"data: {payload}\n\n".encode())

        def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
            return {"id": ident, "object": "chat.completion.chunk", "created": created,
                    "model": model, "choices": [{"index": 0, "delta": delta,
                                                 "finish_reason": finish_reason}]}

        await send(chunk({"role": "assistant", "content": ""}))
        pieces = text.split(" ") if text else []
        for i, piece in enumerate(pieces):
            await send(chunk({"content": piece if i == 0 else " " + piece}))
        for i, call in enumerate(calls):
            args = call["function"]["arguments"]
            half = len(args) // 2
            await send(chunk({"tool_calls": [{"index": i, "id": call["id"], "type": "function",
                                              "function": {"name": call["function"]["name"],
                                                           "arguments": args[:half]}}]}))
            await send(chunk({"tool_calls": [{"index": i, "function": {"arguments":
                                                                       args[half:]}}]}))
        await send(chunk({}, finish))
        if (body.get("stream_options") or {}).get("include_usage"):
            await send({"id": ident, "object": "chat.completion.chunk", "created": created,
                        "model": model, "choices": [], "usage": usage})
        await send("[DONE]")
        await response.write_eof()
        return response

    async def embeddings_handler(self, request: Any) -> Any:
        """Answer ``POST /v1/embeddings`` with one deterministic vector per input.

        Each vector has 16 dimensions: the input's lower-cased words hashed into buckets,
        counted, then scaled to unit length (the same text always gets the same vector, and
        texts sharing words are close).

        Args:
            request: the incoming ``aiohttp.web.Request``; its JSON body has ``model`` and
                ``input`` (one string or a list of strings).

        Returns:
            An ``aiohttp.web.Response`` with OpenAI's embedding list and a usage count in
            words; a 401 (missing key) or 404 (unknown model) error shape.
        """
        from aiohttp import web

        failed = self._check(request)
        if failed is not None:
            return failed
        body = await request.json()
        model = body.get("model")
        if model not in self.models:
            return self._error(404, f"The model `{model}` does not exist.",
                               "invalid_request_error", "model_not_found")
        inputs = body.get("input")
        if isinstance(inputs, str):
            inputs = [inputs]
        if self.latency:
            await asyncio.sleep(self.latency)
        data = []
        for index, text in enumerate(inputs or []):
            vec = [0.0] * 16
            for word in str(text).lower().split():
                digest = hashlib.blake2b(word.encode(), digest_size=4).digest()
                vec[int.from_bytes(digest, "big") % 16] += 1.0
            norm = math.sqrt(sum(v * v for v in vec)) or 1.0
            data.append({"object": "embedding", "index": index,
                         "embedding": [v / norm for v in vec]})
        tokens = sum(_words(str(t)) for t in inputs or [])
        return web.json_response({"object": "list", "data": data, "model": model,
                                  "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})

    # ------------------------------------------------------------------ lifecycle

    def app(self) -> Any:
        """Return the ``aiohttp.web.Application``."""
        from aiohttp import web

        app = web.Application()
        app.router.add_get("/v1/models", self.models_handler)
        app.router.add_post("/v1/chat/completions", self.chat_handler)
        app.router.add_post("/v1/embeddings", self.embeddings_handler)
        return app

    async def start(self) -> None:
        """Start listening in the running asyncio loop; sets :attr:`port`."""
        from aiohttp import web

        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        server = site._server
        if server is not None and server.sockets:
            self.port = server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Stop listening."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def start_in_thread(self) -> MockOpenAIServer:
        """Run the server in a daemon thread with its own event loop; return self once it
        listens. Stop it with :meth:`stop_thread`.
        """
        ready = threading.Event()
        failure: list[OSError] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                loop.run_until_complete(self.start())
            except OSError as exc:  # reported to the starting thread (port in use...)
                failure.append(exc)
                ready.set()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self.stop())
            loop.close()

        self._thread = threading.Thread(target=run, name="mock-openai-server", daemon=True)
        self._thread.start()
        ready.wait(30)
        if failure:
            raise failure[0]
        return self

    def stop_thread(self) -> None:
        """Stop a server started with :meth:`start_in_thread`."""
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(30)
            self._thread = None


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: ``python -m flowyard_openai.mock_server [--host H] [--port P]
    [--latency SECONDS] [--models a,b] [--api-key KEY]``. Prints ``listening <base_url>``.
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8199)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds per request")
    parser.add_argument("--models", default="mock-model,mock-embed")
    parser.add_argument("--api-key", default=None)
    args = parser.parse_args(argv)
    server = MockOpenAIServer(args.models.split(","), latency=args.latency,
                              api_key=args.api_key, host=args.host, port=args.port)

    async def serve() -> None:
        await server.start()
        print(f"listening {server.base_url}", flush=True)
        await asyncio.Event().wait()

    try:
        asyncio.run(serve())
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
