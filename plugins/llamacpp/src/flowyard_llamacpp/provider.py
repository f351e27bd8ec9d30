"""The ``local`` provider: GGUF models run in-process by llama.cpp.

Every blocking llama.cpp call runs in a worker thread, so the event loop keeps serving other
steps. Generation goes token by token and checks a cancel flag before each token: cancelling
the awaiting task (a step timeout, ``anyio.move_on_after``, a cancelled run) stops the
generation within one token, and the call returns only after the model's context has been
handed back, so the model is immediately usable again.
"""

from __future__ import annotations

import json
import math
import threading
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any, TypeVar

import anyio
import anyio.lowlevel
import attrs
from flowyard import (
    BadRequestError,
    ChatChunk,
    ChatRequest,
    ChatResponse,
    Diagnostic,
    MalformedResponseError,
    Message,
    ModelInfo,
    ModelPrice,
    ProviderError,
    ToolCall,
    ToolSpec,
    Usage,
    new_id,
)

from flowyard_llamacpp import engine
from flowyard_llamacpp.engine import GenerationParams, GenerationResult, LoadedModel
from flowyard_llamacpp.grammar import schema_grammar, tool_grammar
from flowyard_llamacpp.spec import DEFAULT_ALIAS, DEFAULT_N_CTX, ModelSpec

__all__ = ["LlamaCppProvider", "PRICE"]

T = TypeVar("T")

#: Local inference has no per-token charge.
PRICE = ModelPrice(0.0, 0.0, source="local inference with llama.cpp: no per-token charge",
                   as_of="2026-11-22")

_POLL_S = 0.005


class _Prepared:
    __slots__ = ("prompt", "params", "tool_mode", "tools", "alias")

    def __init__(self, prompt: str, params: GenerationParams, tool_mode: str | None,
                 tools: list[ToolSpec], alias: str) -> None:
        self.alias = alias
        self.prompt = prompt
        self.params = params
        self.tool_mode = tool_mode  # None (no tools), "auto" or "required"
        self.tools = tools


async def _run_in_thread(fn: Callable[[], T], cancel: threading.Event) -> T:
    """Run ``fn`` in a worker thread; on cancellation set ``cancel`` and wait (shielded) until
    the thread has finished with the model, then re-raise the cancellation.
    """
    started = threading.Event()
    done = threading.Event()

    def work() -> T:
        started.set()
        try:
            return fn()
        finally:
            done.set()

    try:
        return await anyio.to_thread.run_sync(work, abandon_on_cancel=True)
    except anyio.get_cancelled_exc_class():
        cancel.set()
        with anyio.CancelScope(shield=True):
            while started.is_set() and not done.is_set():
                await anyio.sleep(_POLL_S)
        raise


class LlamaCppProvider:
    """Chat, streaming, structured output, tool calls and embeddings on local GGUF models.

    Args:
        specs: ``{alias: ModelSpec}`` of the models served (see
            :func:`flowyard_llamacpp.spec.specs_from_config`); by default only ``smollm2``.
        name: the provider name (model references are ``<name>/<alias>``).
        default_alias: the model checked by :meth:`diagnose` (default ``smollm2``).

    Models load on first use (in a worker thread), once per process per file and load
    settings, and are shared by every provider instance and stack in the process.
    """

    def __init__(self, specs: Mapping[str, ModelSpec] | None = None, *, name: str = "local",
                 default_alias: str = DEFAULT_ALIAS) -> None:
        if specs is None:
            from flowyard_llamacpp.spec import specs_from_config

            specs, _ = specs_from_config({})
        self.name = name
        self.default_alias = default_alias
        self.specs: dict[str, ModelSpec] = dict(specs)
        self.closed = False

    @classmethod
    def from_config(cls, section: Mapping[str, Any], *, name: str = "local"
                    ) -> LlamaCppProvider:
        """Build the provider from the ``[llamacpp]`` table of the configuration.

        Raises:
            ConfigError: invalid table (see :func:`~flowyard_llamacpp.spec.specs_from_config`).
        """
        from flowyard_llamacpp.spec import specs_from_config

        specs, default_alias = specs_from_config(section)
        return cls(specs, name=name, default_alias=default_alias)

    # ------------------------------------------------------------------ models

    def spec(self, model: str) -> ModelSpec:
        """Return the spec of model alias ``model``.

        Raises:
            BadRequestError: no such alias (the message lists the aliases served).
        """
        spec = self.specs.get(model)
        if spec is None:
            raise BadRequestError(
                f"{self.name}/{model}: unknown local model; served: "
                f"{', '.join(sorted(self.specs))} (add GGUF files under [llamacpp.models] in "
                "flowyard.toml)", provider=self.name, model=model, status_code=404)
        return spec

    async def load(self, model: str, *, embedding: bool = False) -> LoadedModel:
        """Return the loaded model for alias ``model``, loading it in a worker thread on first
        use (about a second for SmolLM2). Loading is not interrupted by cancellation.

        Raises:
            BadRequestError: unknown alias, missing file or a file llama.cpp cannot load.
        """
        spec = self.spec(model)
        return await anyio.to_thread.run_sync(
            lambda: engine.get_model(spec, embedding=embedding))

    def _info(self, spec: ModelSpec) -> ModelInfo:
        from flowyard_llamacpp.gguf import GGUFError, read_metadata

        metadata: dict[str, Any] = {"path": str(spec.path) if spec.path else None,
                                    "engine": "llama.cpp", "source": spec.source}
        if spec.path is None or not spec.path.is_file():
            metadata["error"] = str(engine._missing_file_error(spec))
            return ModelInfo(provider=self.name, model=spec.alias, price=PRICE,
                             metadata=metadata)
        try:
            meta = read_metadata(spec.path)
        except (GGUFError, OSError) as exc:
            metadata["error"] = f"cannot read GGUF metadata of {spec.path}: {exc}"
            return ModelInfo(provider=self.name, model=spec.alias, price=PRICE,
                             metadata=metadata)
        arch = meta.get("general.architecture")
        trained = meta.get(f"{arch}.context_length")
        trained = trained if isinstance(trained, int) else None
        context = spec.n_ctx or (min(trained, DEFAULT_N_CTX) if trained else DEFAULT_N_CTX)
        for key, name in (("general.name", "name"), ("general.size_label", "size_label"),
                          ("general.file_type", "file_type"),
                          (f"{arch}.embedding_length", "embedding_length"),
                          (f"{arch}.block_count", "block_count")):
            if key in meta:
                metadata[name] = meta[key]
        metadata["architecture"] = arch
        metadata["trained_context_length"] = trained
        metadata["has_chat_template"] = bool(spec.chat_template
                                             or meta.get("tokenizer.chat_template"))
        capabilities = {"chat", "streaming", "json", "tools"}
        if spec.embeddings:
            capabilities.add("embeddings")
        return ModelInfo(provider=self.name, model=spec.alias, context_window=context,
                         max_output_tokens=spec.max_tokens or context,
                         capabilities=capabilities, price=PRICE, metadata=metadata)

    async def list_models(self) -> list[ModelInfo]:
        """Return one :class:`ModelInfo` per alias, read from the GGUF header (no weights are
        loaded): context window (the configured ``n_ctx``, else the trained context capped at
        4096 tokens), architecture and name in ``metadata``, price 0. A model whose file is
        missing or unreadable is listed without capabilities and with ``metadata["error"]``.
        """
        return await anyio.to_thread.run_sync(
            lambda: [self._info(self.specs[a]) for a in sorted(self.specs)])

    # ------------------------------------------------------------------ requests

    def _prepare(self, model: LoadedModel, request: ChatRequest) -> _Prepared:
        # settings come from this provider's spec: the loaded model may be shared with
        # another alias of the same file that has other defaults
        spec = self.spec(request.model)
        if request.max_tokens is not None and request.max_tokens < 1:
            raise BadRequestError(f"max_tokens must be at least 1, got {request.max_tokens}",
                                  provider=self.name, model=request.model)
        if request.temperature is not None and request.temperature < 0:
            raise BadRequestError(f"temperature must not be negative, got "
                                  f"{request.temperature}", provider=self.name,
                                  model=request.model)
        if request.top_p is not None and not 0 < request.top_p <= 1:
            raise BadRequestError(f"top_p must be in (0, 1], got {request.top_p}",
                                  provider=self.name, model=request.model)
        tools = list(request.tools)
        _check_schema(request.response_schema, "response_schema", request, self.name)
        for tool in tools:
            _check_schema(tool.parameters, f"the parameters of tool {tool.name!r}", request,
                          self.name)
        choice = request.tool_choice or "auto"
        tool_mode: str | None = None
        if choice == "required" and not tools:
            raise BadRequestError("tool_choice='required' needs at least one tool",
                                  provider=self.name, model=request.model)
        if tools and choice != "none":
            if choice == "auto":
                tool_mode = "auto"
            elif choice == "required":
                tool_mode = "required"
            else:
                named = [t for t in tools if t.name == choice]
                if not named:
                    raise BadRequestError(
                        f"tool_choice names {choice!r}, which is not among the tools: "
                        f"{', '.join(t.name for t in tools)}", provider=self.name,
                        model=request.model)
                tools, tool_mode = named, "required"
        divert: GenerationParams | None = None
        if tool_mode == "auto" and request.response_schema is None:
            # Unconstrained text unless the first character opens a call, in which case
            # generation restarts under the call grammar: the same choice as the grammar
            # `call | text` (text never starts with "{"), without paying for a grammar check
            # over the whole vocabulary at every token of a prose answer.
            grammar: str | None = None
            divert_grammar = tool_grammar(tools, tool_choice="required")
        elif tool_mode is not None:
            grammar = tool_grammar(
                tools, tool_choice=tool_mode, response_schema=request.response_schema)
        elif request.response_schema is not None:
            grammar = schema_grammar(request.response_schema)
        else:
            grammar = None
        messages = _render_messages(request.messages, request.model, self.name)
        hint = _instructions(tools if tool_mode else [], tool_mode, request.response_schema)
        if hint:
            if messages and messages[0]["role"] == "system":
                messages[0] = {"role": "system",
                               "content": f"{messages[0]['content']}\n\n{hint}".strip()}
            else:
                messages.insert(0, {"role": "system", "content": hint})
        prompt = model.format_chat(messages, template=spec.chat_template, alias=spec.alias)
        params = GenerationParams(
            max_tokens=request.max_tokens if request.max_tokens is not None else spec.max_tokens,
            temperature=spec.temperature if request.temperature is None else request.temperature,
            top_p=spec.top_p if request.top_p is None else request.top_p,
            top_k=spec.top_k, min_p=spec.min_p, repeat_penalty=spec.repeat_penalty,
            seed=request.seed, stop=tuple(request.stop), grammar=grammar)
        if tool_mode == "auto" and request.response_schema is None:
            divert = attrs.evolve(params, grammar=divert_grammar, stop=())
            params = attrs.evolve(params, divert_prefix="{", divert_params=divert)
        return _Prepared(prompt, params, tool_mode, tools, spec.alias)

    def _message(self, prepared: _Prepared, result: GenerationResult, request: ChatRequest
                 ) -> tuple[Message, str]:
        text = result.text
        finish = result.finish_reason
        if prepared.tool_mode is not None and text.startswith("{") and finish != "length":
            try:
                data = json.loads(text)
            except json.JSONDecodeError as exc:
                if prepared.tool_mode == "auto" and request.response_schema is not None:
                    return Message.assistant(text), finish
                raise MalformedResponseError(
                    f"{self.name}/{request.model}: the constrained tool call is not valid "
                    f"JSON ({exc}): {text[:200]!r}", provider=self.name,
                    model=request.model) from exc
            names = {t.name for t in prepared.tools}
            if (isinstance(data, dict) and set(data) == {"name", "arguments"}
                    and data["name"] in names and isinstance(data["arguments"], dict)):
                tool = next(t for t in prepared.tools if t.name == data["name"])
                self._validate(data["arguments"], tool.parameters, request,
                               f"the arguments of the call of {tool.name!r}")
                call = ToolCall(id=f"call_{new_id()[:24]}", name=data["name"],
                                arguments=data["arguments"])
                return Message.assistant("", tool_calls=[call]), "tool_calls"
            if prepared.tool_mode == "required":
                raise MalformedResponseError(
                    f"{self.name}/{request.model}: the constrained output is not a tool call: "
                    f"{text[:200]!r}", provider=self.name, model=request.model)
        if request.response_schema is not None and finish not in ("length", "cancelled"):
            try:
                value = json.loads(text)
            except json.JSONDecodeError as exc:
                raise MalformedResponseError(
                    f"{self.name}/{request.model}: the constrained answer is not valid JSON "
                    f"({exc}): {text[:200]!r}", provider=self.name, model=request.model
                ) from exc
            self._validate(value, request.response_schema, request, "the answer")
        return Message.assistant(text), finish

    def _validate(self, value: Any, schema: dict[str, Any], request: ChatRequest, what: str
                  ) -> None:
        """Check a constrained output against its schema: the grammar enforces structure,
        types, enums, lengths and integer ranges, but not every JSON Schema keyword (number
        ranges, multipleOf, uniqueItems, not, if/then...).

        Raises:
            MalformedResponseError: the output violates the schema (retriable: another
                sample usually fits).
        """
        import jsonschema

        try:
            jsonschema.validate(value, schema)
        except jsonschema.ValidationError as exc:
            where = "/".join(str(p) for p in exc.absolute_path) or "(top level)"
            raise MalformedResponseError(
                f"{self.name}/{request.model}: {what} violates its JSON Schema at {where}: "
                f"{exc.message} (a keyword the decoding grammar cannot enforce)",
                provider=self.name, model=request.model) from exc
        except jsonschema.SchemaError as exc:
            raise BadRequestError(f"invalid JSON Schema: {exc.message}", provider=self.name,
                                  model=request.model) from exc

    # ------------------------------------------------------------------ chat

    async def chat(self, request: ChatRequest) -> ChatResponse:
        """Generate one completion (see :class:`flowyard.interfaces.Provider`).

        ``finish_reason`` is ``"stop"`` (end of answer or a stop sequence), ``"length"``
        (``max_tokens`` or the context window; a cut tool call is returned as text) or
        ``"tool_calls"``. ``cost_usd`` is 0.0.
        With ``request.metadata["debug_prompt"]`` true, ``response.raw["prompt"]`` holds the
        rendered prompt (chat template, tool and schema instructions) for debugging.

        Raises:
            BadRequestError: unknown model, missing file, images in the messages, invalid
                parameters, a schema that cannot become a grammar, a prompt larger than the
                context window.
            MalformedResponseError: the constrained output could not be parsed (not expected).
        """
        model = await self.load(request.model)
        prepared = self._prepare(model, request)
        cancel = threading.Event()
        result = await _run_in_thread(
            lambda: _generate(model, prepared, cancel, None, self.name), cancel)
        message, finish = self._message(prepared, result, request)
        return ChatResponse(
            message=message, usage=Usage(result.prompt_tokens, result.completion_tokens),
            model=request.model, provider=self.name, finish_reason=finish, cost_usd=0.0,
            raw={"prompt": prepared.prompt} if request.metadata.get("debug_prompt") else {})

    async def stream(self, request: ChatRequest) -> AsyncIterator[ChatChunk]:
        """Yield the completion as it is generated; the last chunk has ``done=True``, the
        usage, the finish reason and any tool call.

        Tool-call JSON is not streamed as text: when the output is a tool call (always with
        ``tool_choice="required"`` or a tool name; with ``"auto"`` when the model starts a
        call) the text deltas are withheld and the call arrives on the final chunk.
        Closing the iterator early (``break`` inside ``aclosing``) or cancelling the consumer
        stops generation.

        Raises:
            as :meth:`chat`.
        """
        model = await self.load(request.model)
        prepared = self._prepare(model, request)
        cancel = threading.Event()
        done = threading.Event()
        send, receive = anyio.create_memory_object_stream[tuple[str, Any]](
            max_buffer_size=math.inf)
        soon = _call_soon_threadsafe()

        def deliver(item: tuple[str, Any]) -> None:  # runs on the event loop
            try:
                send.send_nowait(item)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                cancel.set()  # the consumer went away: stop generating

        def push(kind: str, payload: Any) -> None:  # runs in the worker thread, never blocks
            soon(deliver, (kind, payload))

        def work() -> None:
            try:
                result = _generate(model, prepared, cancel, lambda t: push("text", t), self.name)
                push("done", result)
            except RuntimeError:
                cancel.set()  # the event loop is gone; nobody is listening
            except Exception as exc:  # noqa: BLE001 - handed to the consumer, re-raised there
                try:
                    push("error", exc)
                except RuntimeError:
                    cancel.set()
            finally:
                done.set()

        thread = threading.Thread(target=work, name=f"flowyard-llamacpp-{request.model}",
                                  daemon=True)
        thread.start()
        final: GenerationResult | None = None
        withhold = prepared.tool_mode == "required"
        decided = prepared.tool_mode != "auto"
        pending = ""
        try:
            async with receive:
                async for kind, payload in receive:
                    if kind == "text":
                        if not decided:
                            pending += payload
                            decided = True
                            withhold = pending.startswith("{")
                            payload, pending = pending, ""
                        if not withhold:
                            yield ChatChunk(delta=payload)
                    elif kind == "done":
                        final = payload
                        break
                    else:
                        raise payload
        finally:
            cancel.set()
            send.close()
            with anyio.CancelScope(shield=True):
                while not done.is_set():
                    await anyio.sleep(_POLL_S)
        if final is None:
            raise MalformedResponseError(
                f"{self.name}/{request.model}: generation ended without a result",
                provider=self.name, model=request.model)
        if pending and not withhold:
            yield ChatChunk(delta=pending)
        message, finish = self._message(prepared, final, request)
        if withhold and not message.tool_calls and message.text:
            # an answer that looked like a call (JSON under tool_choice="auto" with a
            # response_schema, or a call cut by max_tokens): deliver its text now
            yield ChatChunk(delta=message.text)
        yield ChatChunk(done=True, usage=Usage(final.prompt_tokens, final.completion_tokens),
                        finish_reason=finish, tool_calls=list(message.tool_calls))

    # ------------------------------------------------------------------ embeddings

    async def embed(self, texts: Sequence[str], *, model: str) -> list[list[float]]:
        """Return one L2-normalised embedding per text: the mean of the model's last hidden
        states (llama.cpp mean pooling), ``embedding_length`` floats (576 for SmolLM2).

        The model is loaded a second time in embedding mode (shared like the chat one).

        Raises:
            BadRequestError: unknown model, ``embeddings = false`` for it, or a text longer
                than the context window.
        """
        spec = self.spec(model)
        if not spec.embeddings:
            raise BadRequestError(
                f"{self.name}/{model}: embeddings are disabled for this model "
                "(embeddings = false in its [llamacpp.models] table)", provider=self.name,
                model=model)
        items = list(texts)
        for i, text in enumerate(items):
            if not isinstance(text, str):
                raise BadRequestError(f"embed: texts[{i}] is {type(text).__name__}, not str",
                                      provider=self.name, model=model)
        if not items:
            return []
        loaded = await self.load(model, embedding=True)
        cancel = threading.Event()
        return await _run_in_thread(lambda: engine.embed(loaded, items, alias=model), cancel)

    async def diagnose(self, *, timeout_s: float) -> list[Diagnostic]:
        """Self-checks for ``flowyard doctor`` (:class:`flowyard.interfaces.SupportsDiagnostics`).

        Findings, in order:

        - ``build``: the llama-cpp-python version and the instruction sets its ggml CPU backend
          was compiled for (``llama_print_system_info()``), against this CPU's
          ``/proc/cpuinfo`` flags. Fails when the build uses an instruction set the CPU lacks
          (it would stop with SIGILL); warns when the build enables AMX on a CPU that has AMX
          (the kernels crash on virtualised Sapphire/Granite Rapids hosts, ggml-org/llama.cpp
          issue 20824; scripts/build-llama-wheel builds without them).
        - ``threads``: threads per context, cores, and the OpenMP wait policy.
        - ``generation``: the default model loaded in a child process generates 8 tokens
          greedily within ``timeout_s`` seconds; a crash is reported with its signal.

        Args:
            timeout_s: limit for the generation check, in seconds.

        Returns:
            A list of :class:`flowyard.interfaces.Diagnostic`; failures are findings.
        """
        from importlib.metadata import PackageNotFoundError, version

        from flowyard_llamacpp import diagnostics

        findings: list[Diagnostic] = []
        try:
            binding = version("llama-cpp-python")
        except PackageNotFoundError:
            binding = "unknown version"
        try:
            info = await anyio.to_thread.run_sync(diagnostics.system_info)
        except (ImportError, OSError) as exc:
            return [Diagnostic("build", "fail", f"llama_cpp does not import: {exc}")]
        features = diagnostics.build_features(info)
        flags = diagnostics.cpu_flags()
        enabled = [name for name, on in features.items() if on]
        shown = {"pni", "ssse3", "avx", "avx2", "fma", "f16c", "bmi2", "avx_vnni", "avx512f",
                 "avx512_vnni", "avx512_bf16", "avx512vbmi", "amx_tile", "amx_int8", "amx_bf16"}
        cpu_text = ("unknown (no /proc/cpuinfo flags)" if flags is None else " ".join(
            sorted("sse3" if f == "pni" else f for f in set(flags) & shown)))
        detail = (f"llama-cpp-python {binding}; build uses {' '.join(enabled) or 'nothing'}; "
                  f"CPU has {cpu_text}")
        missing = diagnostics.missing_cpu_features(features, flags)
        if missing:
            findings.append(Diagnostic("build", "fail", f"{detail}; this CPU lacks "
                                       f"{', '.join(missing)}: rebuild with "
                                       "scripts/build-llama-wheel"))
        elif features.get("AMX_INT8") and diagnostics.has_amx(flags):
            findings.append(Diagnostic("build", "warn", f"{detail}; the build's AMX kernels "
                                       "crash on virtualised Intel hosts (llama.cpp issue "
                                       "20824): rebuild with scripts/build-llama-wheel"))
        else:
            findings.append(Diagnostic("build", "ok", detail))
        spec = self.specs[self.default_alias] if self.default_alias in self.specs else None
        if spec is not None:
            cores = engine.available_cores()
            if spec.n_threads:
                threads = (f"{spec.pool_size} context(s) x {spec.n_threads} thread(s) "
                           "(n_threads)")
            else:  # each loan shares the cores among the contexts working (engine.acquire)
                threads = (f"up to {spec.pool_size} context(s); alone a context gets "
                           f"{engine.generation_threads(1)} generation / "
                           f"{engine.default_threads(1)} prompt thread(s)")
                if spec.pool_size > 1:
                    threads += (f", {spec.pool_size} at once "
                                f"{engine.generation_threads(spec.pool_size)} / "
                                f"{engine.default_threads(spec.pool_size)} each")
            findings.append(Diagnostic(
                "threads", "ok", f"local/{spec.alias}: {threads}, on {cores} core(s); "
                f"{engine.omp_wait_policy_note}"))
        if spec is None or spec.path is None or not spec.path.is_file():
            reason = str(engine._missing_file_error(spec)) if spec is not None else "no model"
            findings.append(Diagnostic("generation", "warn", f"not checked: {reason}"))
            return findings
        kwargs: dict[str, Any] = {}
        if spec.n_threads is not None:
            kwargs["n_threads"] = spec.n_threads
        check = await diagnostics.run_generation_check(spec.path, timeout_s=timeout_s,
                                                       load_kwargs=kwargs)
        findings.append(Diagnostic("generation", "ok" if check.ok else "fail",
                                   f"local/{spec.alias}: {check.detail}"))
        return findings

    async def aclose(self) -> None:
        """Mark this provider closed. Loaded models stay in the process-wide cache for other
        stacks; :func:`flowyard_llamacpp.unload_models` frees them. Safe to call twice.
        """
        self.closed = True

    def __repr__(self) -> str:
        return f"LlamaCppProvider(name={self.name!r}, models={sorted(self.specs)!r})"


def _call_soon_threadsafe() -> Callable[..., Any]:
    """Return a non-blocking ``schedule(fn, *args)`` that runs ``fn`` on the current event
    loop from any thread.

    ``anyio.from_thread.run_sync`` would make the generating thread wait for the event loop
    after every token; the backends' own fire-and-forget schedulers (asyncio's
    ``call_soon_threadsafe``, trio's ``TrioToken.run_sync_soon``) let it go straight on to the
    next token. Other backends fall back to the blocking anyio call.
    """
    import sniffio

    library = sniffio.current_async_library()
    if library == "asyncio":
        import asyncio

        return asyncio.get_running_loop().call_soon_threadsafe
    if library == "trio":
        import trio

        return trio.lowlevel.current_trio_token().run_sync_soon
    token = anyio.lowlevel.current_token()
    return lambda fn, *args: anyio.from_thread.run_sync(fn, *args, token=token)


def _generate(model: LoadedModel, prepared: _Prepared, cancel: threading.Event,
              on_text: Callable[[str], None] | None, provider: str) -> GenerationResult:
    try:
        return engine.generate(model, prepared.prompt, prepared.params, cancel, on_text,
                               alias=prepared.alias)
    except engine.Cancelled:
        return GenerationResult("", 0, 0, "cancelled")
    except (RuntimeError, OSError) as exc:
        raise ProviderError(f"{provider}/{prepared.alias}: llama.cpp failed: {exc}",
                            provider=provider, model=prepared.alias) from exc


def _check_schema(schema: Any, what: str, request: ChatRequest, provider: str) -> None:
    if schema is None:
        return
    import jsonschema

    if not isinstance(schema, dict):
        raise BadRequestError(f"{what} must be a JSON Schema object, got {schema!r}",
                              provider=provider, model=request.model)
    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise BadRequestError(f"{what} is not a valid JSON Schema: {exc.message}",
                              provider=provider, model=request.model) from exc


def _render_messages(messages: Sequence[Message], model: str, provider: str
                     ) -> list[dict[str, Any]]:
    if not messages:
        raise BadRequestError("a chat request needs at least one message", provider=provider,
                              model=model)
    out: list[dict[str, Any]] = []
    for i, message in enumerate(messages):
        if message.images:
            raise BadRequestError(
                f"messages[{i}] has images; local models served by llama.cpp here are "
                "text-only", provider=provider, model=model)
        content = message.text
        if message.role == "assistant" and message.tool_calls:
            calls = "\n".join(json.dumps({"name": c.name, "arguments": c.arguments})
                              for c in message.tool_calls)
            content = f"{content}\n{calls}" if content else calls
        out.append({"role": message.role, "content": content})
    return out


def _instructions(tools: list[ToolSpec], tool_mode: str | None,
                  schema: dict[str, Any] | None) -> str:
    lines: list[str] = []
    if tool_mode is not None:
        lines.append('You can call tools. To call one, reply with only a JSON object '
                     '{"name": <tool name>, "arguments": {<arguments>}}.')
        lines.append("Tools:")
        for tool in tools:
            lines.append(f"- {tool.name}: {tool.description.strip()} Arguments (JSON Schema): "
                         f"{json.dumps(tool.parameters)}")
        if tool_mode == "auto":
            lines.append("If no tool is needed, reply to the user directly instead"
                         + (" with JSON." if schema is not None else "."))
        else:
            lines.append("Call exactly one tool now.")
    if schema is not None:
        lines.append("Reply with only a JSON value matching this JSON Schema: "
                     f"{json.dumps(schema)}")
    return "\n".join(lines)

