"""Images in a workflow's ``llm.chat`` reach Ollama as the message's ``images`` list of
base64 strings (issue 20), end to end through the fake Ollama server of ``conftest.py``.

Wire format: ``POST /api/chat`` messages carry ``images``, a list of base64-encoded images
(Ollama API reference, "Generate a chat completion",
github.com/ollama/ollama/blob/main/docs/api.md).
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
from flowyard_ollama.provider import OllamaProvider

BASE = "http://127.0.0.1:11434"
GIF = b"GIF89a\x01\x00\x01\x00\x00\x00\x00;"


def png() -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00\xff\x00\x00")) + chunk(b"IEND", b""))


def _stack(fake: Any) -> Stack:
    class Plugin:
        @hookimpl
        def register_providers(self, register, config):  # type: ignore[no-untyped-def]
            register("ollama", OllamaProvider(base_url=BASE,
                                              transport=httpx.MockTransport(fake)))

    return Stack(plugins=[Plugin()], config={"storage": {"url": "memory://"}})


def _workflow(tmp_path: Path, model: str) -> Path:
    (tmp_path / "cat.png").write_bytes(png())
    gif = base64.b64encode(GIF).decode()
    path = tmp_path / "wf.yaml"
    path.write_text(f"""\
name: ollama-vision
steps:
  - id: look
    uses: llm.chat
    with:
      model: ollama/{model}
      messages:
        - role: system
          content: You describe images.
        - role: user
          content: what are these?
          images: [cat.png, "data:image/gif;base64,{gif}"]
outputs:
  look: "${{look}}"
""")
    return path


def _chats(fake: Any) -> list[dict[str, Any]]:
    return [b for b in fake.requests if "messages" in b]


@pytest.mark.anyio
async def test_workflow_images_are_sent_as_base64_images(fake_ollama: Any,
                                                         tmp_path: Path) -> None:
    wf = _workflow(tmp_path, "llava")
    async with _stack(fake_ollama) as stack:
        result = await stack.run(wf)
    assert result.status == "completed", result.error
    assert result.outputs == {"look": "echo: what are these?"}
    [body] = _chats(fake_ollama)
    assert body["messages"] == [
        {"role": "system", "content": "You describe images."},
        {"role": "user", "content": "what are these?",
         "images": [base64.b64encode(png()).decode(), base64.b64encode(GIF).decode()]},
    ]


@pytest.mark.anyio
@pytest.mark.parametrize("model", ["llama3.2:latest", "llama3.2"])
async def test_a_model_without_vision_is_refused_before_the_call(fake_ollama: Any,
                                                                 tmp_path: Path,
                                                                 model: str) -> None:
    """llama3.2 lists ``completion`` and ``tools`` but not ``vision`` (``/api/show``): by its
    full name the gateway refuses from the model registry; without its tag (which the
    registry does not match) the provider refuses from ``/api/show``."""
    wf = _workflow(tmp_path, model)
    async with _stack(fake_ollama) as stack:
        result = await stack.run(wf)
    assert result.status == "failed"
    error = result.steps["look"].error
    assert f"ollama/{model} cannot take images" in error and "'vision'" in error
    assert _chats(fake_ollama) == []
