"""Images in a workflow's ``llm.chat`` reach Anthropic's Messages API as ``image`` content
blocks (issue 20), end to end through the fake Anthropic server of ``conftest.py``.

Wire format: user ``content`` blocks ``{"type": "image", "source": {"type": "base64",
"media_type": ..., "data": ...}}`` or ``{"type": "url", "url": ...}`` sources, for JPEG,
PNG, GIF and WebP (Anthropic "Vision" guide,
docs.anthropic.com/en/docs/build-with-claude/vision).
"""

from __future__ import annotations

import base64
import struct
import zlib
from pathlib import Path
from typing import Any

import httpx
import pytest
from flowyard import Stack, hookimpl
from flowyard_anthropic.provider import AnthropicProvider

API_KEY = "sk-ant-api03-FAKEkey0123456789"  # what the fake server of conftest.py accepts
JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00\xff\xd9"


def png() -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00\xff\x00\x00")) + chunk(b"IEND", b""))


def _stack(fake: Any, **config: Any) -> Stack:
    class Plugin:
        @hookimpl
        def register_providers(self, register, config):  # type: ignore[no-untyped-def]
            register("anthropic", AnthropicProvider(api_key=API_KEY,
                                                    transport=httpx.MockTransport(fake)))

    return Stack(plugins=[Plugin()], config={"storage": {"url": "memory://"}, **config})


def _workflow(tmp_path: Path) -> Path:
    (tmp_path / "pics").mkdir()
    (tmp_path / "pics" / "cat.png").write_bytes(png())
    path = tmp_path / "wf.yaml"
    jpeg = base64.b64encode(JPEG).decode()
    path.write_text(f"""\
name: anthropic-vision
steps:
  - id: look
    uses: llm.chat
    with:
      model: anthropic/claude-sonnet-4-20250514
      max_tokens: 50
      system: You describe images.
      prompt: what are these?
      images: [pics/cat.png, "{jpeg}", https://example.org/dog.webp]
outputs:
  look: "${{look}}"
""")
    return path


@pytest.mark.anyio
async def test_workflow_images_are_sent_as_image_blocks(fake_anthropic: Any,
                                                        tmp_path: Path) -> None:
    wf = _workflow(tmp_path)
    async with _stack(fake_anthropic) as stack:
        result = await stack.run(wf)
    assert result.status == "completed", result.error
    assert result.outputs == {"look": "echo: what are these?"}
    [body] = fake_anthropic.requests
    assert body["system"] == "You describe images."
    assert body["messages"] == [{"role": "user", "content": [
        {"type": "text", "text": "what are these?"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                     "data": base64.b64encode(png()).decode()}},
        {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg",
                                     "data": base64.b64encode(JPEG).decode()}},
        {"type": "image", "source": {"type": "url", "url": "https://example.org/dog.webp"}},
    ]}]


@pytest.mark.anyio
async def test_a_model_configured_without_vision_is_refused_before_the_call(
        fake_anthropic: Any, tmp_path: Path) -> None:
    wf = _workflow(tmp_path)
    config = {"models": {"info": {"anthropic/claude-sonnet-4-20250514": {
        "capabilities": ["chat", "streaming"]}}}}
    async with _stack(fake_anthropic, **config) as stack:
        result = await stack.run(wf)
    assert result.status == "failed"
    assert "anthropic/claude-sonnet-4-20250514 cannot take images" in \
        result.steps["look"].error
    assert fake_anthropic.requests == []
