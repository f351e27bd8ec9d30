"""Agents: a model plus tools, instructions and memory, looping tool calls until done.

Two modes:

``native``  the model gets the tools' JSON schemas and answers with tool calls; the loop runs
            them and feeds back the results until the model answers with text.
``react``   for models without native tool calling: the tools are described in the system
            prompt and the model answers in the ReAct format (``Thought:`` / ``Action:`` /
            ``Action Input:`` ... ``Final Answer:``), parsed by the loop.

The loop stops on a final answer, a turn limit (:class:`AgentTurnLimitError`) or a budget
(:class:`~flowyard.errors.BudgetExceeded`). The transcript is recorded as events: an
``agent.started`` event (model, mode, tools, the system prompt and the prompt), then one
``agent.turn`` per model call (the model's text, its tool calls and the tool results); every
tool call is also a ``tool.call`` event.
Tool errors (:class:`~flowyard.errors.ToolError`, unknown tool names) are shown to the model
as the tool's result so it can correct itself.

In a workflow::

    - id: research
      uses: agent
      with:
        model: fake/echo
        instructions: You are a careful researcher.
        prompt: "Find out {{ inputs.topic }}"
        tools: [math.add]
        max_turns: 5
        budget_usd: 0.10
        mode: native
        memory: {namespace: research, top_k: 3, store_answer: true}

In Python: ``await Agent(model=..., tools=[...]).run(stack, "question")``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import attrs

from flowyard.context import ToolContext
from flowyard.engine.calls import invoke_tool
from flowyard.errors import BudgetExceeded, ToolError, WorkflowError
from flowyard.interfaces import RouteRequest
from flowyard.llm.budget import Budget, BudgetChain
from flowyard.llm.typed import (
    DEFAULT_VALIDATION_RETRIES,
    MAX_ERRORS_SHOWN,
    InvalidOutput,
    OutputType,
    OutputValidationError,
    output_type_of,
    retry_message,
)
from flowyard.models import MemoryEntry, Message, ToolSpec
from flowyard.serialization import json_default, structure, unstructure
from flowyard.workflow import WaitingForInput

if TYPE_CHECKING:
    from flowyard.interfaces import Services

__all__ = ["Agent", "AgentResult", "AgentTurnLimitError", "run_agent", "run_agent_step",
           "parse_react", "REACT_FORMAT"]

REACT_FORMAT = """Answer using this format:

Thought: what you think about next
Action: the name of one tool to use
Action Input: the tool's arguments as a JSON object

After each Action you will receive an Observation with the tool's result. Repeat
Thought/Action/Action Input as needed. When you know the answer, write:

Thought: I know the answer
Final Answer: the answer"""

_FINAL = re.compile(r"Final Answer\s*:\s*(?P<answer>.*)\Z", re.S | re.I)
_ACTION = re.compile(r"Action\s*:\s*(?P<tool>[^\n]+?)\s*\n+\s*Action Input\s*:\s*(?P<input>.*)",
                     re.S | re.I)


class AgentTurnLimitError(WorkflowError):
    """The agent used all its turns without a final answer."""


@attrs.define
class AgentResult:
    """The outcome of an agent loop.

    Args:
        answer: the final answer text.
        turns: model calls made.
        tool_calls: tool calls made.
        stop_reason: ``"final_answer"``.
        messages: the whole conversation.
        output: with an output type: the final answer as that type (else None).
        output_data: with an output type: the final answer's JSON value (else None).
    """

    answer: str
    turns: int
    tool_calls: int
    stop_reason: str = "final_answer"
    messages: list[Message] = attrs.field(factory=list)
    output: Any = None
    output_data: Any = None

    def to_output(self) -> dict[str, Any]:
        """Return the step output: ``{answer, turns, tool_calls, stop_reason}``, plus
        ``output`` (the answer's JSON value) when the agent has an output type.
        """
        out = {"answer": self.answer, "turns": self.turns, "tool_calls": self.tool_calls,
               "stop_reason": self.stop_reason}
        if self.output_data is not None:
            out["output"] = self.output_data
        return out


def parse_react(text: str) -> tuple[str, Any]:
    """Parse a ReAct reply.

    Returns:
        ``("final", answer)``, ``("action", (tool_name, arguments_dict))`` or
        ``("invalid", reason)``.
    """
    action = _ACTION.search(text)
    final = _FINAL.search(text)
    if final and (action is None or final.start() < action.start()):
        return "final", final.group("answer").strip()
    if action is None:
        return "invalid", ("no 'Final Answer:' and no 'Action:' followed by 'Action Input:' "
                           "found")
    tool = action.group("tool").strip().strip("`'\"")
    raw = action.group("input").strip()
    raw = re.split(r"\n\s*Observation\s*:", raw, maxsplit=1)[0].strip()
    raw = raw.strip("`").removeprefix("json").strip()
    if not raw:
        return "action", (tool, {})
    try:
        arguments = json.loads(raw)
    except ValueError:
        start, end = raw.find("{"), raw.rfind("}")
        try:
            arguments = json.loads(raw[start:end + 1]) if start >= 0 < end else None
        except ValueError:
            arguments = None
        if arguments is None:
            return "invalid", f"Action Input is not a JSON object: {raw[:200]!r}"
    if not isinstance(arguments, dict):
        return "invalid", f"Action Input must be a JSON object, got {type(arguments).__name__}"
    return "action", (tool, arguments)


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, default=json_default, ensure_ascii=False)


def _lookup(tools: Mapping[str, Any], name: str) -> Any | None:
    if name in tools:
        return tools[name]
    for real in tools:  # providers may have rewritten dots (OpenAI names allow [A-Za-z0-9_-])
        if name in (real.replace(".", "_"), real.replace(".", "__"), real.replace(".", "-")):
            return tools[real]
    return None


@attrs.define
class Agent:
    """An agent definition.

    Args:
        model: ``provider/model`` (None: the stack's default model).
        instructions: the system prompt.
        tools: tool names (looked up in ``stack.tools``) or tool objects.
        max_turns: most model calls before giving up.
        budget_usd: US dollars the agent may spend (None: no agent budget).
        mode: ``"native"`` or ``"react"``.
        memory: ``{namespace, top_k, store_answer, store}``: search the memory store before the
            first turn (hits go into the system prompt) and store the answer afterwards.
        temperature, max_tokens: sampling parameters for every call.
        requirements: routing requirements (``capabilities``, ``min_context``,
            ``max_input_price``, ``candidates``): the gateway's router picks the model.
        output_type: the final answer's type (a pydantic model, dataclass, attrs class or
            TypedDict; see :mod:`flowyard.llm.typed`): the answer must be JSON of that type and
            is returned as ``AgentResult.output``.
        output_schema: the same as a JSON schema (what YAML workflows give).
        max_validation_retries: with an output type, how many invalid final answers are sent
            back with their validation errors before :class:`OutputValidationError`.
        cache: the response cache for every model call of the agent (``True`` or ``{ttl_s,
            allow_nondeterministic}``; :mod:`flowyard.llm.cache`): a repeated turn with the
            same conversation and tools is answered from the cache. Needs ``temperature``
            0 (or ``allow_nondeterministic``). None: ``[cache.models]`` decides.
    """

    model: str | None = None
    instructions: str = ""
    tools: Sequence[Any] = ()
    max_turns: int = 10
    budget_usd: float | None = None
    mode: str = "native"
    memory: Mapping[str, Any] | None = None
    temperature: float | None = None
    max_tokens: int | None = None
    requirements: Mapping[str, Any] | None = None
    name: str = "agent"
    output_type: Any = None
    output_schema: Mapping[str, Any] | None = None
    max_validation_retries: int = DEFAULT_VALIDATION_RETRIES
    cache: Any = None

    async def run(self, stack: Services, prompt: str, *, context: ToolContext | None = None
                  ) -> AgentResult:
        """Run the loop on ``prompt``; see :func:`run_agent`."""
        ctx = context or ToolContext(stack=stack, step_id=self.name)
        return await run_agent(ctx, self, prompt)


async def run_agent_step(ctx: ToolContext, arguments: Mapping[str, Any]) -> dict[str, Any]:
    """The ``agent`` action of workflow steps: returns ``AgentResult.to_output()``."""
    params = dict(arguments)
    prompt = params.pop("prompt", None)
    if not isinstance(prompt, str):
        raise ToolError(f"agent step {ctx.step_id!r}: with.prompt must be a string",
                        tool="agent")
    agent = Agent(name=ctx.step_id or "agent", **params)
    result = await run_agent(ctx, agent, prompt)
    return result.to_output()


async def run_agent(ctx: ToolContext, agent: Agent, prompt: str) -> AgentResult:
    """Run ``agent`` on ``prompt`` within ``ctx`` (its run, step and budgets).

    Returns:
        the :class:`AgentResult`.

    Raises:
        AgentTurnLimitError: no final answer within ``max_turns``.
        BudgetExceeded: the agent's, step's or run's budget does not cover the next call.
        ProviderError: the model call failed.
        UnknownNameError: a tool name is not registered.
        OutputValidationError: with an output type, the final answer did not validate after
            ``max_validation_retries`` re-asks.
        ValueError: an unknown ``mode``, or both ``output_type`` and ``output_schema``.
        TypeError: an unsupported ``output_type`` or an invalid ``output_schema``.
    """
    stack = ctx.stack
    if agent.mode not in ("native", "react"):
        raise ValueError(f"agent mode must be 'native' or 'react', got {agent.mode!r}")
    output = _agent_output(agent)
    tools: dict[str, Any] = {}
    for item in agent.tools:
        tool = stack.tools.get(item) if isinstance(item, str) else item
        tools[tool.name] = tool
    agent_budget = (Budget(agent.budget_usd, scope="agent", name=agent.name)
                    if agent.budget_usd is not None else None)
    chain = ctx.budget if isinstance(ctx.budget, BudgetChain) else BudgetChain()
    chain = chain.extend(agent_budget)
    actx = ctx.child(agent=agent.name, budget=chain if chain else None)

    system = agent.instructions or "You are a helpful assistant."
    memory_store = None
    if agent.memory is not None:
        memory_store = stack.memory(agent.memory.get("store"))
        hits = await memory_store.search(prompt, namespace=agent.memory.get("namespace",
                                                                           "default"),
                                         top_k=int(agent.memory.get("top_k", 5)))
        actx.emit("agent.memory", agent=agent.name, query=prompt, hits=len(hits))
        if hits:
            system += "\n\nRelevant memories:\n" + "\n".join(f"- {h.entry.text}" for h in hits)
    specs = [ToolSpec(name=t.name, description=t.description, parameters=dict(t.parameters))
             for t in tools.values()]
    if agent.mode == "react":
        listing = "\n".join(f"- {s.name}: {s.description} Arguments (JSON schema): "
                            f"{json.dumps(s.parameters)}" for s in specs) or "(no tools)"
        system += f"\n\nYou can use these tools:\n{listing}\n\n{REACT_FORMAT}"
    if output is not None:
        system += ("\n\nYour final answer must be only a JSON value matching this JSON "
                   f"schema:\n{json.dumps(output.schema, ensure_ascii=False)}")
    messages = [Message.system(system), Message.user(prompt)]
    actx.emit("agent.started", agent=agent.name, model=agent.model, mode=agent.mode,
              tools=[s.name for s in specs], max_turns=agent.max_turns,
              budget_usd=agent.budget_usd, system=system, prompt=prompt)
    params: dict[str, Any] = {}
    if agent.temperature is not None:
        params["temperature"] = agent.temperature
    if agent.max_tokens is not None:
        params["max_tokens"] = agent.max_tokens
    model = agent.model
    if agent.requirements:
        req = agent.requirements
        caps = set(req.get("capabilities", ()))
        if agent.mode == "native" and specs:
            caps.add("tools")
        params["route"] = RouteRequest(capabilities=caps, min_context=req.get("min_context"),
                                       max_input_price=req.get("max_input_price"),
                                       candidates=req.get("candidates", ()))
        model = model or "auto"
    if agent.mode == "native" and specs:
        params["tools"] = specs
    if agent.mode == "react":
        params["stop"] = ["\nObservation:"]
    if agent.cache is not None:
        params["cache"] = agent.cache

    invalid = 0

    def typed(answer: str, turn: int, text: str) -> AgentResult | None:
        """Return the result of a final ``answer``, or None after asking again (invalid)."""
        nonlocal invalid
        if output is None:
            return AgentResult(answer, turn, calls, "final_answer", messages)
        try:
            data, value = output.load(answer)
        except InvalidOutput as exc:
            invalid += 1
            actx.emit("agent.turn", agent=agent.name, turn=turn, content=text, tool_calls=[],
                      tool_results=[], final=False,
                      output_errors=exc.errors[:MAX_ERRORS_SHOWN])
            if invalid > agent.max_validation_retries:
                raise OutputValidationError(
                    f"agent {agent.name!r}: the final answer does not match {output.name} "
                    f"after {invalid} attempt(s) (max_validation_retries="
                    f"{agent.max_validation_retries}): {'; '.join(exc.errors[:10])}",
                    type_name=output.name, errors=exc.errors, attempts=invalid,
                    answer=answer, tool="agent") from None
            retry = retry_message(output, exc.errors)
            if agent.mode == "react":
                retry = Message.user(f"{retry.text}\nWrite it after 'Final Answer:'.")
            messages.append(retry)
            return None
        actx.emit("agent.turn", agent=agent.name, turn=turn, content=text, tool_calls=[],
                  tool_results=[], final=True)
        return AgentResult(answer, turn, calls, "final_answer", messages, value, data)

    async def done(result: AgentResult) -> AgentResult:
        if memory_store is not None and agent.memory and agent.memory.get("store_answer"):
            await memory_store.add([_store_answer_entry(actx, agent, prompt, result.answer)])
        return result

    spent = 0.0
    calls = 0

    def suspend(wait: WaitingForInput, **where: Any) -> WaitingForInput:
        """Attach the conversation to a human tool's wait, so the agent continues from
        here once it is answered (see :func:`_saved_state`).
        """
        wait.state = json.loads(json.dumps(
            {"agent": agent.name, "mode": agent.mode, "spent": spent, "calls": calls,
             "invalid": invalid, "messages": unstructure(messages), **where},
            default=json_default))
        return wait

    async def native_calls(turn: int, message: Message, start: int,
                           results: list[dict[str, Any]]) -> None:
        """Run the tool calls of ``message`` from index ``start`` and record the turn."""
        nonlocal calls
        for index in range(start, len(message.tool_calls)):
            call = message.tool_calls[index]
            try:
                text, ok = await _run_tool(actx, tools, call.name, call.arguments,
                                           call_id=f"{turn}:{call.id}")
            except WaitingForInput as wait:
                raise suspend(wait, turn=turn, index=index, results=results,
                              message=unstructure(message)) from None
            calls += 1
            results.append({"id": call.id, "tool": call.name, "ok": ok, "result": text})
            messages.append(Message.tool(call.id, text, name=call.name))
        actx.emit("agent.turn", agent=agent.name, turn=turn, content=message.text,
                  tool_calls=[{"id": c.id, "tool": c.name, "arguments": c.arguments}
                              for c in message.tool_calls],
                  tool_results=results, final=False)

    async def react_call(turn: int, text: str, name: str, arguments: Any) -> None:
        """Run the ReAct action of ``turn`` and record the turn and its observation."""
        nonlocal calls
        try:
            result_text, ok = await _run_tool(actx, tools, name, arguments,
                                              call_id=f"react-{turn}")
        except WaitingForInput as wait:
            raise suspend(wait, turn=turn, text=text, name=name, arguments=arguments
                          ) from None
        calls += 1
        actx.emit("agent.turn", agent=agent.name, turn=turn, content=text,
                  tool_calls=[{"id": f"react-{turn}", "tool": name, "arguments": arguments}],
                  tool_results=[{"id": f"react-{turn}", "tool": name, "ok": ok,
                                 "result": result_text}], final=False)
        messages.append(Message.user(f"Observation: {result_text}"))

    first_turn = 1
    saved = await _saved_state(ctx, agent, tools)
    if saved is not None:  # a human tool's wait was answered: continue the conversation
        messages = structure(saved["messages"], list[Message])
        spent, calls, invalid = float(saved["spent"]), int(saved["calls"]), int(saved["invalid"])
        turn = int(saved["turn"])
        actx.emit("agent.resumed", agent=agent.name, turn=turn)
        if saved["mode"] == "native":
            await native_calls(turn, structure(saved["message"], Message), int(saved["index"]),
                               list(saved["results"]))
        else:
            await react_call(turn, saved["text"], saved["name"], saved["arguments"])
        first_turn = turn + 1
    for turn in range(first_turn, agent.max_turns + 1):
        if agent_budget is not None and spent >= agent.budget_usd:  # type: ignore[operator]
            raise BudgetExceeded(
                f"agent {agent.name!r} spent ${spent:.6f} of its ${agent.budget_usd:.6f} "
                f"budget after {turn - 1} turn(s)", scope="agent",
                limit_usd=float(agent.budget_usd or 0.0), requested_usd=0.0)
        response = await stack.llm.chat(messages, model=model, context=actx, **params)
        if response.cost_usd is not None:
            spent += response.cost_usd
        message = response.message
        if agent.mode == "native":
            messages.append(message)
            if not message.tool_calls:
                if output is not None:
                    result = typed(message.text, turn, message.text)
                    if result is None:
                        continue
                    return await done(result)
                actx.emit("agent.turn", agent=agent.name, turn=turn, content=message.text,
                          tool_calls=[], tool_results=[], final=True)
                return await done(AgentResult(message.text, turn, calls, "final_answer",
                                              messages))
            await native_calls(turn, message, 0, [])
            continue
        # ReAct
        text = message.text
        messages.append(Message.assistant(text))
        kind, payload = parse_react(text)
        if kind == "final" and output is not None:
            result = typed(payload, turn, text)
            if result is None:
                continue
            return await done(result)
        if kind == "final":
            actx.emit("agent.turn", agent=agent.name, turn=turn, content=text, tool_calls=[],
                      tool_results=[], final=True)
            return await done(AgentResult(payload, turn, calls, "final_answer", messages))
        if kind == "invalid":
            observation = f"Observation: your reply could not be parsed ({payload}). " \
                          "Follow the format exactly."
            actx.emit("agent.turn", agent=agent.name, turn=turn, content=text, tool_calls=[],
                      tool_results=[], final=False, parse_error=payload)
            messages.append(Message.user(observation))
            continue
        name, arguments = payload
        await react_call(turn, text, name, arguments)
    raise AgentTurnLimitError(
        f"agent {agent.name!r} gave no final answer within max_turns={agent.max_turns} "
        f"({calls} tool call(s) made)")


def _agent_output(agent: Agent) -> OutputType | None:
    """Return the agent's output type (None: a plain text answer).

    Raises:
        ValueError: both ``output_type`` and ``output_schema`` are set.
        TypeError: an unsupported ``output_type`` or an invalid ``output_schema``.
    """
    if agent.output_type is not None and agent.output_schema is not None:
        raise ValueError(f"agent {agent.name!r}: give output_type or output_schema, not both")
    spec = agent.output_type if agent.output_type is not None else agent.output_schema
    if spec is None:
        return None
    if agent.output_schema is not None and not isinstance(spec, Mapping):
        raise TypeError(f"agent {agent.name!r}: output_schema must be a JSON schema (a "
                        f"mapping), not {type(spec).__name__}")
    return output_type_of(spec)


async def _saved_state(ctx: ToolContext, agent: Agent, tools: Mapping[str, Any]
                       ) -> dict[str, Any] | None:
    """Return the conversation this agent step kept when a human tool (``human.*``) it
    called made the run wait (the newest such request of the step key), or None.

    Read from the run record (``metadata["human"]["waiting"]``, see
    :mod:`flowyard.engine.human`) only when the agent has a human tool and runs in a run.
    """
    if not ctx.run_id or not ctx.step_key or not any(
            str(name).startswith("human.") for name in tools):
        return None
    record = await ctx.stack.storage.get_run(ctx.run_id)
    waiting = (record.metadata.get("human") or {}).get("waiting") or {}
    mine = [entry for entry in waiting.values()
            if isinstance(entry, dict) and entry.get("step_key") == ctx.step_key
            and isinstance(entry.get("state"), dict) and entry["state"].get("agent") == agent.name]
    if not mine:
        return None
    return dict(max(mine, key=lambda entry: entry.get("since") or 0)["state"])


async def _run_tool(ctx: ToolContext, tools: Mapping[str, Any], name: str,
                    arguments: Mapping[str, Any], *, call_id: str | None = None
                    ) -> tuple[str, bool]:
    """Run one tool call of the model; tool errors become the result text. A human tool
    (``human.*``) gets ``call_id`` (unique within the agent's step key) in
    ``ctx.extras["tool_call_id"]``, so each of its calls is answered on its own.

    Raises:
        WaitingForInput: a human tool waits for its answer.
    """
    tool = _lookup(tools, name)
    if tool is None:
        known = ", ".join(sorted(tools)) or "none"
        return f"error: unknown tool {name!r}; available tools: {known}", False
    if call_id is not None and str(getattr(tool, "name", "")).startswith("human."):
        ctx = ctx.child(extras={**ctx.extras, "tool_call_id": call_id})
    try:
        result = await invoke_tool(ctx, tool, arguments)
    except ToolError as exc:
        return f"error: {exc}", False
    return _text(result), True


def _store_answer_entry(ctx: ToolContext, agent: Agent, prompt: str, answer: str
                        ) -> MemoryEntry:
    assert agent.memory is not None
    return MemoryEntry(text=f"Q: {prompt}\nA: {answer}",
                       namespace=agent.memory.get("namespace", "default"),
                       category="agent_answer", source_run=ctx.run_id or None,
                       source_step=ctx.step_id, metadata={"agent": agent.name})

