"""A fake Ollama server as an httpx transport handler for the flowyard-ollama tests (the
contract suite runs against it). It follows the documented wire shapes of
https://github.com/ollama/ollama/blob/main/docs/api.md."""

from __future__ import annotations

import json
import os
from typing import Any

import httpx
import pytest

# Real models are loaded from installed packages only; never reach a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """Run each ``@pytest.mark.anyio`` test once on asyncio and once on trio."""
    return str(request.param)


MODELS = {
    "llama3.2:latest": {"capabilities": ["completion", "tools"], "context": 131072,
                        "family": "llama"},
    "llava:latest": {"capabilities": ["completion", "vision"], "context": 4096,
                     "family": "llama"},
    "nomic-embed-text:latest": {"capabilities": ["embedding"], "context": 2048,
                                "family": "nomic-bert"},
}


def example(schema: dict[str, Any]) -> Any:
    """A minimal value satisfying a simple JSON Schema."""
    if "enum" in schema:
        return schema["enum"][0]
    kind = schema.get("type")
    if kind == "object":
        return {k: example(v) for k, v in schema.get("properties", {}).items()}
    return {"string": "Paris", "integer": 2100000, "number": 1.0, "boolean": True,
            "array": []}.get(kind)


def _known(model: str) -> str | None:
    if model in MODELS:
        return model
    if f"{model}:latest" in MODELS:
        return f"{model}:latest"
    return None


class FakeOllama:
    """The fake server; ``requests`` keeps every JSON body received."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if request.method == "GET" and path == "/api/tags":
            return httpx.Response(200, json={"models": [
                {"name": m, "model": m, "modified_at": "2025-05-01T10:00:00Z",
                 "size": 2019393189, "digest": "a80c4f17acd5" + str(i),
                 "details": {"format": "gguf", "family": info["family"],
                             "parameter_size": "3.2B", "quantization_level": "Q4_K_M"}}
                for i, (m, info) in enumerate(MODELS.items())]})
        body = json.loads(request.content or b"{}")
        self.requests.append(body)
        model = _known(str(body.get("model")))
        if model is None:
            return httpx.Response(404, json={"error": f"model \"{body.get('model')}\" not "
                                             "found, try pulling it first"})
        info = MODELS[model]
        if path == "/api/show":
            return httpx.Response(200, json={
                "details": {"family": info["family"]}, "capabilities": info["capabilities"],
                "model_info": {"general.architecture": info["family"],
                               f"{info['family']}.context_length": info["context"]}})
        if path == "/api/embed":
            if "embedding" not in info["capabilities"]:
                return httpx.Response(400, json={"error": f"\"{model}\" does not support "
                                                 "embeddings"})
            texts = body["input"] if isinstance(body["input"], list) else [body["input"]]
            return httpx.Response(200, json={"model": model, "embeddings": [
                [float(len(t)), float(len(t.split())), 1.0] for t in texts]})
        if path not in ("/api/chat", "/api/generate"):
            return httpx.Response(404, json={"error": "404 page not found"})
        if "completion" not in info["capabilities"]:
            return httpx.Response(400, json={"error": f"\"{model}\" does not support chat"})
        options = body.get("options") or {}
        limit = options.get("num_predict")
        calls: list[dict[str, Any]] = []
        if path == "/api/chat":
            messages = body["messages"]
            prompt_words = sum(len(m["content"].split()) for m in messages)
            last = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
            wants_tool = any("calling" in m["content"] for m in messages
                             if m["role"] == "system")
        else:
            prompt_words = len(body["prompt"].split())
            last, wants_tool = body["prompt"], False
        text = ""
        reason = "stop"
        if body.get("tools") and wants_tool:
            tool = body["tools"][0]["function"]
            calls = [{"function": {"name": tool["name"],
                                   "arguments": example(tool["parameters"])}}]
        elif isinstance(body.get("format"), dict):
            text = json.dumps(example(body["format"]))
        else:
            words = f"echo: {last}".split()
            if limit is not None and len(words) > limit:
                words, reason = words[:limit], "length"
            text = " ".join(words)
        eval_count = max(1, len(text.split()) + 4 * len(calls))
        final = {"model": model, "created_at": "2025-05-01T10:00:01Z", "done": True,
                 "done_reason": reason, "total_duration": 5043500667,
                 "load_duration": 5025959, "prompt_eval_count": prompt_words + 10,
                 "prompt_eval_duration": 325953000, "eval_count": eval_count,
                 "eval_duration": 4709213000}
        key = "message" if path == "/api/chat" else "response"

        def piece(content: str, tool_calls: list[Any] | None = None) -> Any:
            if key == "response":
                return content
            message: dict[str, Any] = {"role": "assistant", "content": content}
            if tool_calls:
                message["tool_calls"] = tool_calls
            return message

        if not body.get("stream", True):
            return httpx.Response(200, json={**final, key: piece(text, calls)})
        lines = []
        for i, word in enumerate(text.split(" ") if text else []):
            lines.append({"model": model, "created_at": "2025-05-01T10:00:00Z",
                          key: piece(word if i == 0 else " " + word), "done": False})
        if calls:
            lines.append({"model": model, key: piece("", calls), "done": False})
        lines.append({**final, key: piece("")})
        payload = "".join(json.dumps(line) + "\n" for line in lines)
        return httpx.Response(200, headers={"content-type": "application/x-ndjson"},
                              content=payload.encode())


@pytest.fixture
def fake_ollama() -> FakeOllama:
    return FakeOllama()
