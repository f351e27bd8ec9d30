"""The data models shared by the core and every plugin.

All models are attrs classes. They round-trip through JSON with the one converter in
:mod:`flowyard.serialization` (``to_json`` / ``from_json``). Times are UNIX timestamps in
seconds (float); token counts are integers; money is in US dollars (float).
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal, Union

from attrs import define, field, frozen

__all__ = [
    "TextPart",
    "ImagePart",
    "ContentPart",
    "Message",
    "ToolSpec",
    "ToolCall",
    "Usage",
    "ChatRequest",
    "ChatResponse",
    "ChatChunk",
    "ModelPrice",
    "ModelInfo",
    "Event",
    "RunRecord",
    "StepAttempt",
    "LogRecord",
    "CostLine",
    "MemoryEntry",
    "MemoryHit",
    "Document",
    "Chunk",
    "RunStatus",
    "TaskStatus",
    "TaskRecord",
    "AuditRecord",
    "StepStatus",
    "new_id",
    "now",
]

Role = Literal["system", "user", "assistant", "tool"]
RunStatus = Literal["pending", "running", "completed", "failed", "cancelled", "partial",
                    "waiting"]
StepStatus = Literal[
    "pending", "running", "completed", "failed", "skipped", "cancelled", "budget_exceeded",
    "waiting"
]


def new_id() -> str:
    """Return a new random id: 32 lowercase hex characters (a UUID4)."""
    return uuid.uuid4().hex


def now() -> float:
    """Return the current wall-clock time as a UNIX timestamp in seconds."""
    return time.time()


# ----------------------------------------------------------------------------- messages


@frozen
class TextPart:
    """A text part of a message."""

    text: str
    type: Literal["text"] = "text"


@frozen
class ImagePart:
    """An image part of a message.

    Exactly one of ``url`` (http(s) or ``data:`` URL) and ``data_base64`` is set.
    ``media_type`` is the MIME type (``"image/png"``).
    """

    url: str | None = None
    data_base64: str | None = None
    media_type: str = "image/png"
    type: Literal["image"] = "image"

    def __attrs_post_init__(self) -> None:
        if (self.url is None) == (self.data_base64 is None):
            raise ValueError("ImagePart needs exactly one of url and data_base64")


ContentPart = Union[TextPart, ImagePart]


@frozen
class ToolCall:
    """A model's request to call a tool.

    Args:
        id: the call id given by the model (or generated), echoed back in the tool message.
        name: the tool name.
        arguments: the parsed JSON arguments.
    """

    id: str
    name: str
    arguments: dict[str, Any] = field(factory=dict)


@frozen
class Message:
    """One chat message.

    ``content`` is a plain string or a list of parts (text and images). Assistant messages may
    carry ``tool_calls``; tool messages carry the ``tool_call_id`` they answer.
    """

    role: Role
    content: str | list[ContentPart] = ""
    name: str | None = None
    tool_calls: list[ToolCall] = field(factory=list)
    tool_call_id: str | None = None

    @property
    def text(self) -> str:
        """The concatenated text of the message (image parts are left out)."""
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content if isinstance(p, TextPart))

    @property
    def images(self) -> list[ImagePart]:
        """The image parts of the message."""
        if isinstance(self.content, str):
            return []
        return [p for p in self.content if isinstance(p, ImagePart)]

    @classmethod
    def system(cls, text: str) -> Message:
        """Return a system message."""
        return cls(role="system", content=text)

    @classmethod
    def user(cls, text: str, *, images: list[ImagePart] | None = None) -> Message:
        """Return a user message, with images when given."""
        if images:
            return cls(role="user", content=[TextPart(text), *images])
        return cls(role="user", content=text)

    @classmethod
    def assistant(cls, text: str = "", *, tool_calls: list[ToolCall] | None = None) -> Message:
        """Return an assistant message."""
        return cls(role="assistant", content=text, tool_calls=list(tool_calls or []))

    @classmethod
    def tool(cls, tool_call_id: str, text: str, *, name: str | None = None) -> Message:
        """Return a tool-result message answering ``tool_call_id``."""
        return cls(role="tool", content=text, tool_call_id=tool_call_id, name=name)


@frozen
class ToolSpec:
    """A tool as a model sees it: name, description and JSON schema of its arguments.

    ``parameters`` is a JSON Schema object (``{"type": "object", "properties": ...}``).
    """

    name: str
    description: str = ""
    parameters: dict[str, Any] = field(factory=lambda: {"type": "object", "properties": {}})


@frozen
class Usage:
    """Token usage of one LLM call (counts of tokens)."""

    input_tokens: int = 0
    output_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        """input_tokens + output_tokens."""
        return self.input_tokens + self.output_tokens

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.input_tokens + other.input_tokens, self.output_tokens + other.output_tokens
        )


@frozen
class ChatRequest:
    """A chat completion request.

    Args:
        model: the model id *within* its provider (``"smollm2"``, ``"gpt-4o-mini"``).
        messages: the conversation.
        tools: tools the model may call.
        tool_choice: ``"auto"``, ``"none"``, ``"required"`` or a tool name.
        response_schema: a JSON Schema the answer must satisfy (structured output).
        temperature, top_p: sampling parameters.
        max_tokens: cap on output tokens.
        stop: stop sequences.
        seed: sampling seed, where supported.
        idempotency_key: a key identifying this logical call across retries and resumes;
            providers send it as a header where the API supports one.
        metadata: free-form data for plugins (never sent to the provider).
    """

    model: str
    messages: list[Message]
    tools: list[ToolSpec] = field(factory=list)
    tool_choice: str = "auto"
    response_schema: dict[str, Any] | None = None
    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    stop: list[str] = field(factory=list)
    seed: int | None = None
    idempotency_key: str | None = None
    metadata: dict[str, Any] = field(factory=dict)


@frozen
class ChatResponse:
    """A chat completion.

    Args:
        message: the assistant message (text and/or tool calls).
        usage: tokens used.
        model: the model id that answered.
        provider: the provider name that answered.
        finish_reason: ``"stop"``, ``"length"``, ``"tool_calls"`` or a provider's own value.
        cost_usd: cost of the call in US dollars; None when the price is unknown.
        raw: provider-specific extra data (not persisted by default).
    """

    message: Message
    usage: Usage = field(factory=Usage)
    model: str = ""
    provider: str = ""
    finish_reason: str = "stop"
    cost_usd: float | None = None
    raw: dict[str, Any] = field(factory=dict, eq=False)

    @property
    def text(self) -> str:
        """The text of the answer."""
        return self.message.text


@frozen
class ChatChunk:
    """One streamed piece of a chat completion.

    ``delta`` is new text. The final chunk has ``done=True`` and carries ``usage``,
    ``finish_reason`` and any complete ``tool_calls``.
    """

    delta: str = ""
    tool_calls: list[ToolCall] = field(factory=list)
    done: bool = False
    usage: Usage | None = None
    finish_reason: str | None = None


@frozen
class ModelPrice:
    """Prices of a model in US dollars per million tokens.

    ``source`` names where the figures were read (a URL or document) and ``as_of`` the date
    (ISO 8601) they were read.
    """

    input_per_mtok: float
    output_per_mtok: float
    source: str = ""
    as_of: str = ""

    def cost(self, usage: Usage) -> float:
        """Return the cost in US dollars of ``usage`` at these prices."""
        return (
            usage.input_tokens * self.input_per_mtok + usage.output_tokens * self.output_per_mtok
        ) / 1_000_000


@frozen
class ModelInfo:
    """What is known about one model.

    Args:
        provider: provider name (``"openai"``).
        model: model id within the provider (``"gpt-4o-mini"``).
        context_window: maximum tokens of prompt plus output; None when unknown.
        max_output_tokens: cap on output tokens; None when unknown.
        capabilities: a subset of ``{"chat", "tools", "vision", "json", "embeddings",
            "streaming"}``.
        price: prices per million tokens; None when unknown (cost is then unknown, never 0).
        metadata: anything else (architecture, quantization, ...).
    """

    provider: str
    model: str
    context_window: int | None = None
    max_output_tokens: int | None = None
    capabilities: frozenset[str] = field(factory=frozenset, converter=frozenset)
    price: ModelPrice | None = None
    metadata: dict[str, Any] = field(factory=dict)

    @property
    def ref(self) -> str:
        """The full reference ``provider/model``."""
        return f"{self.provider}/{self.model}"


# ----------------------------------------------------------------------------- runs


@frozen
class Event:
    """Something that happened in a run.

    Args:
        type: dotted event type (``"run.started"``, ``"step.completed"``, ``"llm.call"``,
            ``"tool.call"``, ``"agent.turn"``, ``"router.choice"``, ...).
        run_id: the run it belongs to ("" for events outside a run).
        step_id: the step, when any.
        data: JSON-ready payload.
        time: UNIX timestamp, seconds.
        seq: sequence number within the run, assigned by the engine.
    """

    type: str
    run_id: str = ""
    step_id: str | None = None
    data: dict[str, Any] = field(factory=dict)
    time: float = field(factory=now)
    seq: int = 0


@frozen
class AuditRecord:
    """One record of the tamper-evident audit log (see :mod:`flowyard.audit` and
    :class:`~flowyard.interfaces.SupportsAuditLog`): who did what, on which resource, with
    which outcome, when.

    A record to append leaves ``seq``, ``prev_hash`` and ``hash`` empty; the storage backend
    fills them in when it appends (:func:`flowyard.audit.chain_audit`): ``seq`` counts from 1
    without gaps, ``prev_hash`` is the previous record's ``hash`` (the genesis hash for the
    first) and ``hash`` the SHA-256 of this record's canonical JSON (every field but ``hash``).

    Args:
        action: what happened: ``"tool.call"``, ``"file.write"``, ``"command.run"``,
            ``"url.fetch"``, ``"key.used"``, ``"policy.denied"``, ``"api_key.created"``,
            ``"api_key.used"``, ...
        actor: who: ``"user:<OS user>"`` or ``"api_key:<key id>"``.
        tenant: the actor's tenant (None outside flowyard-server).
        resource: on what: a tool, file path, command, URL (without credentials or query
            values), key name or API key id; never content, never a secret.
        outcome: ``"ok"``, ``"error"`` or ``"denied"``.
        time: UNIX seconds.
        run_id, step_id: the run and step it happened in (None outside a run).
        details: more JSON-ready facts (the tool, its side effects, the error message...).
        seq: position in the chain (0 until appended).
        prev_hash: the previous record's hash (hex; "" until appended).
        hash: this record's hash (hex; "" until appended).
    """

    action: str
    actor: str
    tenant: str | None = None
    resource: str = ""
    outcome: str = "ok"
    time: float = field(factory=now)
    run_id: str | None = None
    step_id: str | None = None
    details: dict[str, Any] = field(factory=dict)
    seq: int = 0
    prev_hash: str = ""
    hash: str = ""


@define
class RunRecord:
    """A stored run.

    ``status`` is one of pending, running, completed, failed, cancelled, partial, waiting
    (a human step waits for its answer: no process holds the run; ``metadata["human"]``
    holds the waiting steps' prompts and the answers, see :mod:`flowyard.engine.human`).
    ``workflow_hash`` is the SHA-256 of the workflow's canonical JSON, checked on resume.
    ``workflow`` holds the workflow definition as a JSON-ready dict, so a run can be resumed
    without its source file. Token counts and cost sum every LLM call of the run; ``cost_usd``
    is None when any call's price was unknown and ``cost_known`` says so.
    """

    id: str
    workflow_name: str
    status: RunStatus = "pending"
    inputs: dict[str, Any] = field(factory=dict)
    outputs: dict[str, Any] = field(factory=dict)
    error: str | None = None
    workflow_hash: str = ""
    workflow: dict[str, Any] = field(factory=dict)
    created_at: float = field(factory=now)
    started_at: float | None = None
    finished_at: float | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float | None = 0.0
    resume_count: int = 0
    metadata: dict[str, Any] = field(factory=dict)


@define
class StepAttempt:
    """One try of one step (one item of a fan-out counts as its own step key).

    ``step_key`` is the step id, with ``[i]`` appended for fan-out item i and ``#n`` for loop
    iteration n. ``idempotency_key`` is stable across retries and resumes of the same key.
    """

    run_id: str
    step_id: str
    step_key: str
    attempt: int
    status: StepStatus = "running"
    idempotency_key: str = ""
    output: Any = None
    error: str | None = None
    error_type: str | None = None
    started_at: float = field(factory=now)
    finished_at: float | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float | None = 0.0


TaskStatus = Literal["queued", "running", "completed", "failed", "cancelled"]


@define
class TaskRecord:
    """A unit of work submitted to a task queue (see
    :class:`~flowyard.interfaces.SupportsTaskQueue`): run a workflow or an agent with inputs.

    Args:
        id: the task id (32 hex characters).
        tenant: who submitted it; every read is scoped to one tenant.
        kind: ``"workflow"`` or ``"agent"``.
        target: the registered workflow's name, or the agent's id.
        inputs: the workflow inputs / the agent's input, JSON-ready.
        name: for humans.
        priority: higher is claimed first (then oldest first).
        status: ``queued``, ``running``, ``completed``, ``failed`` or ``cancelled``.
        idempotency_key: at most one task per tenant and key (None: no key).
        request_hash: SHA-256 hex of what the key stands for (kind, target, inputs).
        run_id: the run executing it, chosen at submission so a worker that takes over an
            abandoned task resumes the same run (completed steps are not run again).
        worker: the worker holding the task's lease (None when not claimed).
        lease_expires_at: UNIX seconds when the lease ends unless renewed.
        attempts: how many times a worker claimed it.
        cancel_requested: a cancel arrived while running; the worker stops the run.
        created_at, started_at, finished_at: UNIX seconds.
        outputs: the run's outputs once finished; error: why it failed.
        metadata: free-form JSON-ready data.
    """

    id: str
    tenant: str
    kind: str
    target: str
    inputs: dict[str, Any] = field(factory=dict)
    name: str = ""
    priority: int = 0
    status: TaskStatus = "queued"
    idempotency_key: str | None = None
    request_hash: str = ""
    run_id: str = field(factory=new_id)
    worker: str | None = None
    lease_expires_at: float | None = None
    attempts: int = 0
    cancel_requested: bool = False
    created_at: float = field(factory=now)
    started_at: float | None = None
    finished_at: float | None = None
    outputs: dict[str, Any] = field(factory=dict)
    error: str | None = None
    metadata: dict[str, Any] = field(factory=dict)


@frozen
class LogRecord:
    """A log line of a run: ``level`` is debug, info, warning or error."""

    run_id: str
    message: str
    level: str = "info"
    step_id: str | None = None
    time: float = field(factory=now)


@frozen
class CostLine:
    """The cost of one LLM call.

    ``cost_usd`` is None when the model's price is unknown. ``agent`` names the agent step
    that made the call, when any. ``estimated`` is True when the tokens were counted by
    flowyard rather than reported by the server (a stream without usage, or one cut before
    its usage arrived; see :func:`flowyard.llm.budget.estimate_output_tokens`).
    ``overshoot_usd`` is how far the cost went past the budget reservation of the call, in US
    dollars (0.0 when it stayed within it or no budget applied), e.g. when a server ignored
    ``max_tokens``.
    """

    run_id: str
    provider: str
    model: str
    input_tokens: int
    output_tokens: int
    cost_usd: float | None
    step_id: str | None = None
    agent: str | None = None
    workflow_name: str = ""
    time: float = field(factory=now)
    estimated: bool = False
    overshoot_usd: float = 0.0


# ----------------------------------------------------------------------------- memory / RAG


@frozen
class MemoryEntry:
    """One memory.

    Args:
        text: what is remembered.
        namespace: per agent or workflow (``"default"``).
        category: free-form category (``"fact"``, ``"preference"``...).
        score: importance in [0, 1].
        metadata: flat JSON-ready metadata usable in filters.
        source_run: run that created it; source_step: step that created it.
        id: stable id; created_at: UNIX seconds.
    """

    text: str
    namespace: str = "default"
    category: str = "general"
    score: float = 0.5
    metadata: dict[str, Any] = field(factory=dict)
    source_run: str | None = None
    source_step: str | None = None
    id: str = field(factory=new_id)
    created_at: float = field(factory=now)


@frozen
class MemoryHit:
    """A search result: the entry and its similarity score (higher is closer, in [-1, 1])."""

    entry: MemoryEntry
    score: float


@frozen
class Document:
    """A document to index for retrieval. ``id`` is stable (e.g. derived from the source path)."""

    id: str
    text: str
    source: str = ""
    metadata: dict[str, Any] = field(factory=dict)


@frozen
class Chunk:
    """A retrieved piece of a document, with its retrieval ``score``."""

    id: str
    document_id: str
    text: str
    source: str = ""
    score: float = 0.0
    metadata: dict[str, Any] = field(factory=dict)

