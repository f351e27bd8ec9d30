"""Images in a workflow's ``llm.chat`` reach an OpenAI-compatible server as ``image_url``
content parts (issue 20), end to end through the mock server on 127.0.0.1.

Wire format: Chat Completions user message ``content`` parts ``{"type": "image_url",
"image_url": {"url": ...}}`` with an http(s) URL or a ``data:<type>;base64,...`` URL
(OpenAI API reference, "Create chat completion", platform.openai.com/docs/api-reference/chat).
"""

from __future__ import annotations

import base64
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flowyard import Stack, hookimpl
from flowyard_openai.mock_server import MockOpenAIServer
from flowyard_openai.provider import OpenAIProvider

KEY = "sk-mock-key-0123456789"


def png() -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00\xff\x00\x00")) + chunk(b"IEND", b""))


GIF = b"GIF89a\x01\x00\x01\x00\x00\x00\x00;"

WORKFLOW = """\
name: openai-vision
steps:
  - id: look
    uses: llm.chat
    with:
      model: mock/mock-model
      prompt: what is this?
      images: [cat.png, "data:image/gif;base64,{gif}", https://example.org/dog.jpg]
  - id: chat
    uses: llm.chat
    depends_on: [look]
    with:
      model: mock/mock-model
      stream: true
      messages:
        - role: user
          content: and this?
          images: [cat.png]
outputs:
  look: "${{look}}"
  chat: "${{chat}}"
"""


@pytest.fixture
def server() -> Iterator[MockOpenAIServer]:
    mock = MockOpenAIServer(["mock-model"], api_key=KEY)
    mock.start_in_thread()
    yield mock
    mock.stop_thread()


def _stack(server: MockOpenAIServer, **config: Any) -> Stack:
    class Plugin:
        @hookimpl
        def register_providers(self, register, config):  # type: ignore[no-untyped-def]
            register("mock", OpenAIProvider("mock", api_key=KEY, base_url=server.base_url))

    return Stack(plugins=[Plugin()], config={"storage": {"url": "memory://"}, **config})


def _workflow(tmp_path: Path) -> Path:
    (tmp_path / "cat.png").write_bytes(png())
    path = tmp_path / "wf.yaml"
    path.write_text(WORKFLOW.format(gif=base64.b64encode(GIF).decode()))
    return path


@pytest.mark.anyio
async def test_workflow_images_are_sent_as_image_url_parts(server: MockOpenAIServer,
                                                           tmp_path: Path) -> None:
    wf = _workflow(tmp_path)
    vision = {"models": {"info": {"mock/mock-model": {
        "capabilities": ["chat", "streaming", "vision"]}}}}
    async with _stack(server, **vision) as stack:
        result = await stack.run(wf)
    assert result.status == "completed", result.error
    assert result.outputs == {"look": "echo: what is this? [3 images]",
                              "chat": "echo: and this? [1 image]"}
    first, second = server.chat_bodies
    cat = "data:image/png;base64," + base64.b64encode(png()).decode()
    assert first["messages"] == [{"role": "user", "content": [
        {"type": "text", "text": "what is this?"},
        {"type": "image_url", "image_url": {"url": cat}},
        {"type": "image_url",
         "image_url": {"url": "data:image/gif;base64," + base64.b64encode(GIF).decode()}},
        {"type": "image_url", "image_url": {"url": "https://example.org/dog.jpg"}},
    ]}]
    assert second["stream"] is True
    assert second["messages"][0]["content"][1] == {"type": "image_url",
                                                   "image_url": {"url": cat}}


@pytest.mark.anyio
async def test_a_model_not_known_to_take_images_is_refused_before_the_call(
        server: MockOpenAIServer, tmp_path: Path) -> None:
    """mock-model is not in the price table: its guessed capabilities lack vision."""
    wf = _workflow(tmp_path)
    async with _stack(server) as stack:
        result = await stack.run(wf)
    assert result.status == "failed"
    error = result.steps["look"].error
    assert "mock/mock-model cannot take images" in error
    assert '[models.info."mock/mock-model"]' in error
    assert server.chat_bodies == []
