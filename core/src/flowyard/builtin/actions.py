"""Built-in workflow actions, registered as tools by the ``builtin`` plugin.

``echo``      return ``value`` unchanged (wiring, constants, tests)
``log``       record a log line for the run (``message``, ``level``); returns the message
``sleep``     wait ``seconds``; returns the seconds waited
``llm.chat``  one LLM call through the stack's gateway; returns the answer text, or the parsed
              JSON value when ``response_schema`` is given; streams the answer as
              ``step.delta`` events while a live display listens
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import aclosing
from typing import TYPE_CHECKING, Any

import anyio

from flowyard.context import ToolContext
from flowyard.errors import ConfigError, ToolInputError
from flowyard.images import ImageInputError, ImagePolicy, image_policy, load_image
from flowyard.interfaces import RouteRequest
from flowyard.llm.budget import IMAGE_TOKENS
from flowyard.llm.cache import (
    CachedResponse,
    CachePolicy,
    default_ttl,
    is_deterministic,
    open_response_cache,
    request_key,
)
from flowyard.llm.typed import (
    DEFAULT_VALIDATION_RETRIES,
    InvalidOutput,
    MAX_ERRORS_SHOWN,
    OutputValidationError,
    ask_until_valid,
    output_type_of,
)
from flowyard.models import ChatResponse, ImagePart, Message, TextPart
from flowyard.templating import has_template
from flowyard.tools import BaseTool

if TYPE_CHECKING:
    from flowyard.interfaces import Services
    from flowyard.workflow import Step, Workflow

__all__ = ["EchoAction", "LogAction", "SleepAction", "ChatAction", "builtin_actions"]

_NONDETERMINISTIC = (
    "{where}: only deterministic requests are cached (temperature: 0 or a seed), so that "
    "one sampled answer is not replayed forever; set temperature: 0 or seed, or "
    "cache: {{allow_nondeterministic: true}}")


class EchoAction(BaseTool):
    """Return ``value`` unchanged."""

    name = "echo"
    description = "Return the given value unchanged."
    parameters = {"type": "object", "properties": {"value": {"description": "any value"}},
                  "additionalProperties": False}
    idempotent = True
    side_effects = ()

    async def invoke(self, arguments: Mapping[str, Any], context: ToolContext) -> Any:
        """Return ``arguments["value"]`` (None when absent)."""
        if len(arguments) > 1 or (arguments and "value" not in arguments):
            return await super().invoke(arguments, context)
        return arguments.get("value")

    async def run(self, arguments: dict[str, Any], context: ToolContext) -> Any:
        """Return ``arguments["value"]``."""
        return arguments.get("value")


class LogAction(BaseTool):
    """Record a log line for the run (a ``log`` event)."""

    name = "log"
    description = "Record a log line for the run."
    parameters = {
        "type": "object",
        "properties": {
            "message": {"type": "string", "description": "the text to log"},
            "level": {"enum": ["debug", "info", "warning", "error"], "default": "info"},
        },
        "required": ["message"],
        "additionalProperties": False,
    }
    idempotent = True
    side_effects = ()

    async def run(self, arguments: dict[str, Any], context: ToolContext) -> Any:
        """Emit the log event; return the message."""
        context.log(arguments["message"], arguments.get("level", "info"))
        return arguments["message"]


class SleepAction(BaseTool):
    """Wait a number of seconds."""

    name = "sleep"
    description = "Wait a number of seconds."
    parameters = {
        "type": "object",
        "properties": {"seconds": {"type": "number", "minimum": 0, "maximum": 86400}},
        "required": ["seconds"],
        "additionalProperties": False,
    }
    idempotent = True
    side_effects = ()

    async def run(self, arguments: dict[str, Any], context: ToolContext) -> Any:
        """Sleep; return the seconds slept."""
        await anyio.sleep(arguments["seconds"])
        return arguments["seconds"]


_IMAGES_SCHEMA = {
    "type": "array",
    "items": {"type": "string", "minLength": 1},
    "description": "images: local paths (relative to the workflow file), http(s) URLs, "
                   "data: URLs or base64; PNG, JPEG, GIF or WebP",
}

_MESSAGE_SCHEMA = {
    "type": "object",
    "properties": {
        "role": {"enum": ["system", "user", "assistant"]},
        "content": {"type": "string"},
        "images": _IMAGES_SCHEMA,
    },
    "required": ["role", "content"],
    "additionalProperties": False,
}


class ChatAction(BaseTool):
    """One LLM call through ``stack.llm`` (so budgets, routing, rate limits and cost apply).

    Arguments: ``prompt`` (a user message) and/or ``messages`` (``[{role, content,
    images}]``), ``images`` (with ``prompt``: images attached to it), ``system``, ``model``
    (``provider/model``; default: the stack's default model),
    ``temperature``, ``top_p``, ``max_tokens``, ``stop``, ``seed``, ``response_schema`` (JSON
    Schema: the answer is parsed and checked; an invalid answer is sent back with its
    validation errors up to ``max_validation_retries`` times, default 2, see
    :mod:`flowyard.llm.typed`), ``requirements`` (``capabilities``,
    ``min_context``, ``max_input_price``, ``candidates``: a router picks the model; the model
    defaults to ``auto``), ``stream``, ``cache`` (``true`` or ``{ttl_s,
    allow_nondeterministic}``: reuse a stored answer to the same request; see
    :mod:`flowyard.llm.cache`).

    Streaming: with ``stream: true`` the answer is generated through ``stack.llm.stream`` and
    each piece is reported with :meth:`~flowyard.context.ToolContext.stream_text` (throttled
    ``step.delta`` events, never stored); ``false`` makes one ``stack.llm.chat`` call. The
    default streams exactly when a live display listens (``flowyard run`` in a terminal;
    ``stack.events.wants_transient()``) and no ``response_schema`` is given, so runs without
    a display (``--json``, pipes, library calls) make the same call as always. The output is
    the complete answer either way.

    Images: ``images`` (with ``prompt``) and ``messages[].images`` (user messages only) are
    lists of local paths, http(s) URLs, ``data:`` URLs or base64, read and checked by
    :func:`flowyard.images.load_image` (allowed roots, ``images.max_bytes``, PNG/JPEG/GIF/WebP
    sniffed from the bytes); the gateway refuses a model whose capabilities lack ``vision``
    before calling it. A field the schema does not know (``messages[].imagez``) is a
    validation error at that field: :meth:`validate_step` checks the arguments against
    ``parameters`` and every image written literally in the workflow.

    Returns the answer text, or the parsed JSON value with ``response_schema``.
    """

    name = "llm.chat"
    description = "Ask a language model; returns the answer text (or parsed JSON)."
    parameters = {
        "type": "object",
        "properties": {
            "prompt": {"type": "string"},
            "images": _IMAGES_SCHEMA,
            "messages": {"type": "array", "items": _MESSAGE_SCHEMA},
            "system": {"type": "string"},
            "model": {"type": "string"},
            "temperature": {"type": "number", "minimum": 0, "maximum": 2},
            "top_p": {"type": "number", "minimum": 0, "maximum": 1},
            "max_tokens": {"type": "integer", "minimum": 1},
            "stop": {"type": "array", "items": {"type": "string"}},
            "seed": {"type": "integer"},
            "response_schema": {"type": "object"},
            "max_validation_retries": {
                "type": "integer", "minimum": 0, "maximum": 10,
                "description": "with response_schema: how many times an invalid answer is "
                               "sent back with its validation errors (default 2)"},
            "stream": {"type": "boolean",
                       "description": "stream the answer as step.delta events (default: "
                                      "while a live display listens)"},
            "cache": {
                "description": "reuse a stored answer to the same request (deterministic "
                               "requests only: temperature 0 or a seed)",
                "oneOf": [
                    {"type": "boolean"},
                    {"type": "object",
                     "properties": {"ttl_s": {"type": "number", "minimum": 0},
                                    "allow_nondeterministic": {"type": "boolean"}},
                     "additionalProperties": False},
                ],
            },
            "requirements": {
                "type": "object",
                "properties": {
                    "capabilities": {"type": "array", "items": {"type": "string"}},
                    "min_context": {"type": "integer", "minimum": 1},
                    "max_input_price": {"type": "number", "minimum": 0},
                    "candidates": {"type": "array", "items": {"type": "string"}},
                },
                "additionalProperties": False,
            },
        },
        "anyOf": [{"required": ["prompt"]}, {"required": ["messages"]}],
        "dependentRequired": {"images": ["prompt"]},
        "additionalProperties": False,
    }
    idempotent = False
    side_effects = ("network",)

    async def run(self, arguments: dict[str, Any], context: ToolContext) -> Any:
        """Call the model; return text or parsed JSON.

        Raises:
            OutputValidationError: the answer is not valid JSON / does not match
                ``response_schema``, even after ``max_validation_retries`` re-asks (a
                retriable :class:`ToolError`: another sample may succeed).
            ToolInputError: an image cannot be used (missing, outside the allowed roots, too
                large, not PNG/JPEG/GIF/WebP) or sits in a non-user message; names the step
                and the field.
            ConfigError: a malformed ``[images]`` table.
            ProviderError, BudgetExceeded: from the gateway (``BadRequestError`` for images
                sent to a model without ``vision``).
        """
        messages: list[Message] = []
        policy: ImagePolicy | None = None
        if arguments.get("images") or any(m.get("images") for m in
                                          arguments.get("messages", [])):
            policy = image_policy(context.stack.config, context.workflow_source)
        if arguments.get("system"):
            messages.append(Message.system(arguments["system"]))
        for i, m in enumerate(arguments.get("messages", [])):
            field = f"with.messages[{i}]"
            if m.get("images") and m["role"] != "user":
                raise ToolInputError(f"llm.chat step {context.step_id!r}: {field}.images: "
                                     f"only user messages take images, not {m['role']!r}",
                                     tool=self.name)
            images = await self._images(context, policy, m.get("images"), f"{field}.images")
            content: Any = [TextPart(m["content"]), *images] if images else m["content"]
            messages.append(Message(role=m["role"], content=content))
        if arguments.get("prompt") is not None:
            messages.append(Message.user(arguments["prompt"], images=await self._images(
                context, policy, arguments.get("images"), "with.images")))
        params: dict[str, Any] = {k: arguments[k] for k in
                                  ("temperature", "top_p", "max_tokens", "stop", "seed",
                                   "response_schema") if k in arguments}
        model = arguments.get("model")
        if arguments.get("requirements"):
            req = arguments["requirements"]
            params["route"] = RouteRequest(
                capabilities=req.get("capabilities", ()),
                min_context=req.get("min_context"),
                max_input_price=req.get("max_input_price"),
                candidates=req.get("candidates", ()),
                estimated_input_tokens=sum(len(m.text) for m in messages) // 4
                + IMAGE_TOKENS * sum(len(m.images) for m in messages),
            )
            model = model or "auto"
        schema = arguments.get("response_schema")
        stream = arguments.get("stream")
        if stream is None:
            stream = schema is None and context.stack.events.wants_transient()
        policy = self._cache_policy(arguments, context)
        if schema is None:
            if policy is None:
                return (await self._call(context, messages, model, params, stream))[0]
            return await self._cached_call(context, messages, model, params, stream,
                                           arguments, policy)
        retries = arguments.get("max_validation_retries", DEFAULT_VALIDATION_RETRIES)
        if policy is not None:
            return await self._cached_typed(context, messages, model, params, stream,
                                            arguments, policy, retries)

        async def call(conversation: list[Message]) -> str:
            return (await self._call(context, conversation, model, params, stream))[0]

        return await self._ask_typed(context, call, messages, schema, retries)

    async def _cached_typed(self, context: ToolContext, messages: list[Message],
                            model: str | None, params: dict[str, Any], stream: bool,
                            arguments: Mapping[str, Any], policy: CachePolicy,
                            retries: int) -> Any:
        """``response_schema`` with ``cache``: the answer that validated (after any re-asks)
        is stored under the *original* request's key, with the summed tokens and cost of
        every call it took; an invalid answer is never stored. A stored entry that no
        longer validates (the schema's own key changed nothing, but the entry was damaged)
        is reported as a miss with ``reason`` and replaced.
        """
        cache = await open_response_cache(context.stack)
        ref = model or context.stack.llm.default_model()
        key = request_key(ref, messages, arguments)
        entry = await cache.get(key)
        reason = None
        if entry is not None:
            try:
                value = output_type_of(arguments["response_schema"]).parse(entry.text)
            except InvalidOutput as exc:
                reason = f"the stored answer does not validate: {'; '.join(exc.errors[:3])}"
            else:
                self._emit_hit(context, key, entry)
                return value
        context.emit("llm.cache.miss", key=key, model=ref,
                     **({"reason": reason} if reason else {}))
        texts: list[str] = []
        responses: list[ChatResponse] = []

        async def call(conversation: list[Message]) -> str:
            text, response = await self._call(context, conversation, model, params, stream,
                                              own_cache=True)
            texts.append(text)
            if response is not None:
                responses.append(response)
            return text

        value = await self._ask_typed(context, call, messages, arguments["response_schema"],
                                      retries)
        costs = [r.cost_usd for r in responses]
        last = responses[-1] if responses else None
        await cache.put(key, CachedResponse(
            texts[-1], provider=last.provider if last else "",
            model=last.model if last else ref,
            input_tokens=sum(r.usage.input_tokens for r in responses),
            output_tokens=sum(r.usage.output_tokens for r in responses),
            cost_usd=None if not costs or None in costs else sum(c for c in costs if c)),
            ttl_s=policy.ttl_s)
        return value

    @staticmethod
    def _emit_hit(context: ToolContext, key: str, entry: CachedResponse) -> None:
        context.emit("llm.cache.hit", key=key, model=f"{entry.provider}/{entry.model}",
                     cost_usd=0.0, saved_usd=entry.cost_usd,
                     input_tokens=entry.input_tokens, output_tokens=entry.output_tokens)

    async def _ask_typed(self, context: ToolContext,
                         call: Callable[[list[Message]], Awaitable[str]],
                         messages: list[Message], schema: Mapping[str, Any],
                         retries: int) -> Any:
        """Ask until the answer is JSON matching ``schema``, re-asking with the validation
        errors at most ``retries`` times (an ``llm.output.invalid`` event per invalid answer).

        Raises:
            ToolInputError: ``schema`` is not a valid JSON schema.
            OutputValidationError: still invalid after ``retries`` re-asks (a retriable
                :class:`ToolError`: another sample may succeed).
        """
        try:
            output = output_type_of(schema)
        except TypeError as exc:
            raise ToolInputError(f"llm.chat step {context.step_id!r}: with.{exc}",
                                 tool=self.name) from None

        def on_invalid(attempt: int, text: str, errors: list[str]) -> None:
            context.emit("llm.output.invalid", output_type=output.name, attempt=attempt,
                         errors=errors[:MAX_ERRORS_SHOWN], answer=text[:500])

        try:
            value, _ = await ask_until_valid(call, messages, output,
                                             max_validation_retries=retries,
                                             on_invalid=on_invalid, tool=self.name)
        except OutputValidationError as exc:
            exc.retriable = True
            raise
        return value

    async def _call(self, context: ToolContext, messages: list[Message], model: str | None,
                    params: dict[str, Any], stream: bool, *, own_cache: bool = False
                    ) -> tuple[str, ChatResponse | None]:
        """Make the call; return the answer text and the response (None when streamed).

        ``own_cache``: the step caches the answer itself, so the gateway's per-model cache
        (``[cache.models]``) is not asked too.
        """
        if stream:
            return await self._stream(context, messages, model, params), None
        response = await context.stack.llm.chat(messages, model=model, context=context,
                                                **({"cache": False} if own_cache else {}),
                                                **params)
        return response.text, response

    def _cache_policy(self, arguments: Mapping[str, Any], context: ToolContext
                      ) -> CachePolicy | None:
        """Return the step's cache policy (None: no cache).

        Raises:
            ToolInputError: a malformed ``cache``, or ``cache`` on a request that is neither
                ``temperature: 0`` nor seeded without ``allow_nondeterministic``.
        """
        where = f"llm.chat step {context.step_id!r}, with.cache"
        try:
            policy = CachePolicy.from_argument(
                arguments.get("cache"),
                default_ttl_s=default_ttl(context.stack.config.section("cache")), where=where)
        except ConfigError as exc:
            raise ToolInputError(str(exc), tool=self.name) from None
        if policy is not None and not policy.allow_nondeterministic \
                and not is_deterministic(arguments):
            raise ToolInputError(_NONDETERMINISTIC.format(where=where), tool=self.name)
        return policy

    async def _cached_call(self, context: ToolContext, messages: list[Message],
                           model: str | None, params: dict[str, Any], stream: bool,
                           arguments: Mapping[str, Any], policy: CachePolicy) -> str:
        """Answer from the response cache, or call and store the answer.

        Emits ``llm.cache.hit`` (``cost_usd`` 0.0, ``saved_usd``) or ``llm.cache.miss``.
        """
        cache = await open_response_cache(context.stack)
        ref = model or context.stack.llm.default_model()
        key = request_key(ref, messages, arguments)
        entry = await cache.get(key)
        if entry is not None:
            self._emit_hit(context, key, entry)
            if stream:
                context.stream_text(entry.text)
                context.stream_text("", final=True)
            return entry.text
        context.emit("llm.cache.miss", key=key, model=ref)
        text, response = await self._call(context, messages, model, params, stream,
                                          own_cache=True)
        if response is not None:
            entry = CachedResponse(text, provider=response.provider, model=response.model,
                                   input_tokens=response.usage.input_tokens,
                                   output_tokens=response.usage.output_tokens,
                                   cost_usd=response.cost_usd)
        else:  # streamed: the gateway's cost line has the figures; the entry keeps the text
            entry = CachedResponse(text, model=ref)
        await cache.put(key, entry, ttl_s=policy.ttl_s)
        return text

    async def _images(self, context: ToolContext, policy: ImagePolicy | None,
                      values: list[str] | None, field: str) -> list[ImagePart]:
        """Load the images of one field (in a worker thread: files are read).

        Raises:
            ToolInputError: an image cannot be used; names the step and the field
                (``with.messages[0].images[1]``).
        """
        if not values:
            return []
        assert policy is not None
        parts = []
        for j, value in enumerate(values):
            try:
                parts.append(await anyio.to_thread.run_sync(load_image, value, policy))
            except ImageInputError as exc:
                raise ToolInputError(f"llm.chat step {context.step_id!r}: {field}[{j}]: {exc}",
                                     tool=self.name) from None
        return parts

    def validate_step(self, step: Step, *, workflow: Workflow, services: Services,
                      issue: Callable[[str, str], None], base: str) -> None:
        """Check the step's ``with`` against :attr:`parameters` (an unknown field is reported
        at that field), then every image written literally (no template): it must load as
        at run time (file found inside the allowed roots, size, type), and only user
        messages take images.

        Args:
            step: the ``llm.chat`` step.
            workflow: its workflow (``source`` resolves relative image paths).
            services: the stack's services (``config``: the ``[images]`` table).
            issue: records a problem at a path.
            base: the step's path (``steps[2]``).
        """
        where = f"{base}.with"
        with_ = dict(step.with_)
        schema_issues(self.parameters, with_, where, self.name, issue)
        cache = with_.get("cache")
        if cache is True or (isinstance(cache, Mapping)
                             and cache.get("allow_nondeterministic") is not True):
            temperature, seed = with_.get("temperature"), with_.get("seed")
            literal = not any(isinstance(v, str) and has_template(v) for v in (temperature, seed))
            if literal and not is_deterministic({"temperature": temperature, "seed": seed}):
                issue(_NONDETERMINISTIC.format(where=f"llm.chat step {step.id!r}"),
                      f"{where}.cache")
        fields: list[tuple[str, Any]] = [("", with_.get("images"))]
        messages = with_.get("messages")
        if isinstance(messages, list):
            for i, m in enumerate(messages):
                if not isinstance(m, Mapping) or not m.get("images"):
                    continue
                role = m.get("role")
                if isinstance(role, str) and not has_template(role) and role != "user":
                    issue(f"only user messages take images, not {role!r}",
                          f"{where}.messages[{i}].images")
                fields.append((f".messages[{i}]", m.get("images")))
        literal = [(f"{where}{prefix}.images[{j}]", value)
                   for prefix, values in fields if isinstance(values, list)
                   for j, value in enumerate(values)
                   if isinstance(value, str) and value and not has_template(value)]
        if not literal:
            return
        try:
            policy = image_policy(services.config, workflow.source)
        except ConfigError as exc:
            issue(str(exc), where)
            return
        for path, value in literal:
            try:
                load_image(value, policy)
            except ImageInputError as exc:
                issue(f"llm.chat step {step.id!r}: {exc}", path)

    @staticmethod
    async def _stream(context: ToolContext, messages: list[Any], model: str | None,
                      params: dict[str, Any]) -> str:
        """Stream the answer through ``stack.llm.stream``, reporting each piece with
        ``context.stream_text``; return the whole text (the concatenated deltas).

        Raises:
            ProviderError, BudgetExceeded: from the gateway (the text reported so far is
                flushed first).
        """
        if context.idempotency_key and "idempotency_key" not in params:
            params = {**params, "idempotency_key": context.idempotency_key}
        parts: list[str] = []
        try:
            async with aclosing(context.stack.llm.stream(messages, model=model,
                                                         context=context, **params)) as chunks:
                async for chunk in chunks:
                    if chunk.delta:
                        parts.append(chunk.delta)
                        context.stream_text(chunk.delta)
        finally:
            context.stream_text("", final=True)
        return "".join(parts)


def _templated_paths(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """The paths (keys and list indexes) of the template strings inside ``value``."""
    if isinstance(value, str):
        return [path] if has_template(value) else []
    if isinstance(value, Mapping):
        return [p for k, v in value.items() for p in _templated_paths(v, (*path, k))]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in _templated_paths(v, (*path, i))]
    return []


def _json_path(parts: Sequence[Any]) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in parts)


def schema_issues(schema: Mapping[str, Any], arguments: Mapping[str, Any], where: str,
                  tool: str, issue: Callable[[str, str], None]) -> None:
    """Report every violation of ``schema`` by a step's ``with`` that templates cannot change,
    each at its path; an unknown field (``additionalProperties: false``) is reported at the
    field itself (``steps[0].with.messages[0].imagez``), not at its parent object.

    Args:
        schema: the action's JSON Schema (draft 2020-12).
        arguments: the step's ``with`` as written.
        where: the path of ``with`` (``steps[0].with``).
        tool: the action's name, for messages.
        issue: records a problem at a path.
    """
    import jsonschema

    templated = _templated_paths(arguments)
    for err in jsonschema.Draft202012Validator(schema).iter_errors(dict(arguments)):
        epath = tuple(err.absolute_path)
        if any(epath[:len(t)] == t for t in templated):
            continue  # the value is only known at run time; it is checked then
        if err.validator in ("anyOf", "oneOf") and templated and not epath:
            continue
        if err.validator == "additionalProperties" and isinstance(err.instance, Mapping):
            known = sorted(err.schema.get("properties", {}))
            for extra in sorted(set(err.instance) - set(known), key=str):
                issue(f"unknown field {extra!r} for {tool!r} (known: {', '.join(known)})",
                      f"{where}{_json_path((*epath, extra))}")
            continue
        issue(f"invalid arguments for {tool!r}: {err.message}", f"{where}{_json_path(epath)}")


def builtin_actions() -> list[BaseTool]:
    """Return fresh instances of every built-in action."""
    return [EchoAction(), LogAction(), SleepAction(), ChatAction()]
