"""Images in ``llm.chat`` (issue 20): paths, URLs, base64 and data: URLs reach the provider as
image parts; unknown message fields, bad images and non-vision models are clear errors, never
silently dropped."""

from __future__ import annotations

import base64
import json
import struct
import zlib
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from flowyard.builtin.fake import FakeProvider, image_count
from flowyard.cli import cli
from flowyard.errors import WorkflowValidationError
from flowyard.hookspecs import hookimpl
from flowyard.images import (
    ImageInputError,
    ImagePolicy,
    load_image,
    sniff_image_type,
)
from flowyard.models import ImagePart
from flowyard.stack import Stack


def png(width: int = 1, height: int = 1) -> bytes:
    """A valid RGB PNG of ``width`` x ``height`` red pixels."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    raw = b"".join(b"\x00" + b"\xff\x00\x00" * width for _ in range(height))
    return (b"\x89PNG\r\n\x1a\n"
            + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00\xff\xd9"
GIF = b"GIF89a\x01\x00\x01\x00\x00\x00\x00;"
WEBP = b"RIFF\x1a\x00\x00\x00WEBPVP8L\x0d\x00\x00\x00/\x00\x00\x00\x10\x07\x10\x11\x11\x88\x88"


def _stack(provider: FakeProvider, **config: Any) -> Stack:
    class Plugin:
        @hookimpl
        def register_providers(self, register, config):  # type: ignore[no-untyped-def]
            register(provider.name, provider)

    return Stack(plugins=[Plugin()], config={"storage": {"url": "memory://"}, **config})


def _write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(text)
    return path


# ----------------------------------------------------------------------------- unit


def test_sniffing_recognises_the_four_allowed_types_from_their_bytes() -> None:
    assert sniff_image_type(png()) == "image/png"
    assert sniff_image_type(JPEG) == "image/jpeg"
    assert sniff_image_type(GIF) == "image/gif"
    assert sniff_image_type(WEBP) == "image/webp"
    assert sniff_image_type(b"<svg xmlns='http://www.w3.org/2000/svg'/>") is None
    assert sniff_image_type(b"BM\x00\x00") is None  # BMP is not allowed


def test_load_image_forms(tmp_path: Path) -> None:
    policy = ImagePolicy(tmp_path, [tmp_path], 1000)
    (tmp_path / "a.gif").write_bytes(GIF)
    by_path = load_image("a.gif", policy)
    assert by_path == ImagePart(data_base64=base64.b64encode(GIF).decode(),
                                media_type="image/gif")
    b64 = base64.b64encode(JPEG).decode()
    assert load_image(b64, policy) == ImagePart(data_base64=b64, media_type="image/jpeg")
    wrapped = "\n".join(b64[i:i + 8] for i in range(0, len(b64), 8))
    assert load_image(wrapped, policy).media_type == "image/jpeg"
    unpadded = base64.b64encode(JPEG + b"x").decode()
    assert unpadded.endswith("=")
    assert load_image(unpadded.rstrip("="), policy).media_type == "image/jpeg"
    webp = base64.b64encode(WEBP).decode()
    assert load_image(f"data:image/webp;base64,{webp}", policy) == ImagePart(
        data_base64=webp, media_type="image/webp")
    assert load_image("https://example.org/cat.png", policy) == ImagePart(
        url="https://example.org/cat.png")
    # a file named like an image whose bytes are not one: sniffed, refused
    (tmp_path / "fake.png").write_text("not an image at all")
    with pytest.raises(ImageInputError, match="not a PNG, JPEG, GIF or WebP"):
        load_image("fake.png", policy)
    with pytest.raises(ImageInputError, match="says it is image/jpeg but its bytes are "
                                              "image/png"):
        load_image("data:image/jpeg;base64," + base64.b64encode(png()).decode(), policy)
    with pytest.raises(ImageInputError, match="type 'image/svg\\+xml' is not allowed"):
        load_image("data:image/svg+xml;base64,PHN2Zy8+", policy)
    with pytest.raises(ImageInputError, match="must be base64-encoded"):
        load_image("data:image/png,rawbytes", policy)
    with pytest.raises(ImageInputError, match=r"more than images\.max_bytes = 10"):
        load_image("a.gif", ImagePolicy(tmp_path, [tmp_path], 10))
    with pytest.raises(ImageInputError, match=r"more than images\.max_bytes = 10"):
        load_image(b64 * 4, ImagePolicy(tmp_path, [tmp_path], 10))
    with pytest.raises(ImageInputError, match="not found"):
        load_image("missing.png", policy)
    with pytest.raises(ImageInputError, match="non-empty string"):
        load_image(42, policy)


def test_paths_outside_the_roots_are_refused_even_through_symlinks(tmp_path: Path) -> None:
    inside, outside = tmp_path / "in", tmp_path / "out"
    inside.mkdir()
    outside.mkdir()
    (outside / "secret.png").write_bytes(png())
    (inside / "link.png").symlink_to(outside / "secret.png")
    policy = ImagePolicy(inside, [inside], 10_000)
    for value in ("../out/secret.png", str(outside / "secret.png"), "link.png"):
        with pytest.raises(ImageInputError, match="outside the allowed roots"):
            load_image(value, policy)
    assert load_image("link.png", ImagePolicy(inside, [inside, outside], 10_000)).media_type \
        == "image/png"


# ----------------------------------------------------------------------------- validation

UNKNOWN_FIELD = """\
name: typo
steps:
  - id: look
    uses: llm.chat
    with:
      model: fake/echo
      messages:
        - role: user
          content: what is this?
          imagez: [cat.png]
"""


@pytest.fixture
def runner(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    monkeypatch.setenv("FLOWYARD_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("FLOWYARD_STORAGE_URL", "memory://")
    monkeypatch.chdir(tmp_path)
    return CliRunner()


def test_validate_reports_an_unknown_message_field_at_the_field(runner: CliRunner,
                                                                tmp_path: Path) -> None:
    _write(tmp_path, "wf.yaml", UNKNOWN_FIELD)
    result = runner.invoke(cli, ["validate", "wf.yaml"])
    assert result.exit_code == 2, result.output
    assert "wf.yaml:10:" in result.output
    assert "unknown field 'imagez'" in result.output
    assert "steps[0].with.messages[0].imagez" in result.output
    run = runner.invoke(cli, ["run", "wf.yaml"])
    assert run.exit_code == 2 and "unknown field 'imagez'" in run.output


def test_validate_checks_literal_images(tmp_path: Path) -> None:
    (tmp_path / "notes.png").write_text("hello")
    wf = _write(tmp_path, "wf.yaml", """\
name: bad-images
inputs:
  x: {type: string}
steps:
  - id: a
    uses: llm.chat
    with: {images: [missing.png]}
  - id: b
    uses: llm.chat
    with:
      messages:
        - {role: system, content: hi, images: [notes.png]}
        - {role: user, content: look, images: ["../elsewhere.png", "{{ inputs.x }}"]}
  - id: c
    uses: llm.chat
    with: {prompt: look, images: [notes.png]}
""")
    stack = _stack(FakeProvider())
    with pytest.raises(WorkflowValidationError) as info:
        stack.load_workflow(wf)
    issues = {i.path: i.message for i in info.value.issues}
    assert "'prompt' is a dependency of 'images'" in issues["steps[0].with"]
    assert "not found" in issues["steps[0].with.images[0]"]
    assert "only user messages take images, not 'system'" in \
        issues["steps[1].with.messages[0].images"]
    assert "not a PNG, JPEG, GIF or WebP" in issues["steps[1].with.messages[0].images[0]"]
    assert "outside the allowed roots" in issues["steps[1].with.messages[1].images[0]"]
    assert "steps[1].with.messages[1].images[1]" not in issues  # a template: run time
    assert issues["steps[2].with.images[0]"].startswith("llm.chat step 'c': ")
    assert all(i.line is not None for i in info.value.issues)


# ----------------------------------------------------------------------------- end to end


@pytest.mark.anyio
async def test_images_reach_the_provider_end_to_end(tmp_path: Path) -> None:
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "cat.png").write_bytes(png(2, 2))
    gif64 = base64.b64encode(GIF).decode()
    wf = _write(tmp_path, "wf.yaml", f"""\
name: vision
inputs:
  picture: {{type: string}}
steps:
  - id: one
    uses: llm.chat
    with:
      model: fake/echo
      prompt: describe
      images: [img/cat.png, "data:image/jpeg;base64,{base64.b64encode(JPEG).decode()}"]
  - id: two
    uses: llm.chat
    with:
      model: fake/echo
      messages:
        - role: user
          content: compare
          images: ["{{{{ inputs.picture }}}}", "{gif64}", https://example.org/dog.webp]
        - role: assistant
          content: ok
        - role: user
          content: and now?
outputs:
  one: "${{one}}"
  two: "${{two}}"
""")
    provider = FakeProvider()
    async with _stack(provider) as stack:
        result = await stack.run(wf, {"picture": "img/cat.png"})
    assert result.status == "completed", result.error
    assert result.outputs == {"one": "echo: describe [2 images]",
                              "two": "echo: and now? [3 images]"}
    # the two steps run concurrently: tell their requests apart by their text
    by_text = {r.messages[-1].text: r for r in provider.requests}
    first, second = by_text["describe"], by_text["and now?"]
    assert [p.media_type for p in first.messages[-1].images] == ["image/png", "image/jpeg"]
    assert base64.b64decode(first.messages[-1].images[0].data_base64 or "") == png(2, 2)
    assert image_count(second) == 3
    images = second.messages[0].images
    assert images[0].media_type == "image/png"
    assert images[1] == ImagePart(data_base64=gif64, media_type="image/gif")
    assert images[2] == ImagePart(url="https://example.org/dog.webp")
    assert second.messages[1].images == [] and second.messages[2].images == []


@pytest.mark.anyio
async def test_runtime_image_errors_name_the_step_and_field(tmp_path: Path) -> None:
    (tmp_path / "big.png").write_bytes(png(40, 40))
    wf = _write(tmp_path, "wf.yaml", """\
name: runtime
inputs:
  picture: {type: string}
steps:
  - id: look
    uses: llm.chat
    with:
      model: fake/echo
      messages:
        - {role: user, content: hi}
        - {role: user, content: look, images: ["{{ inputs.picture }}"]}
""")
    provider = FakeProvider()
    async with _stack(provider, images={"max_bytes": 100}) as stack:
        result = await stack.run(wf, {"picture": "big.png"})
    assert result.status == "failed"
    error = result.steps["look"].error
    assert "llm.chat step 'look': with.messages[1].images[0]" in error
    assert "more than images.max_bytes = 100" in error
    assert provider.requests == []  # nothing sent


@pytest.mark.anyio
async def test_templated_messages_with_an_unknown_field_fail_at_run_time(tmp_path: Path
                                                                         ) -> None:
    wf = {"name": "late", "inputs": {"msgs": {"type": "array"}},
          "steps": [{"id": "look", "uses": "llm.chat",
                     "with": {"model": "fake/echo", "messages": "{{ inputs.msgs }}"}}]}
    provider = FakeProvider()
    async with _stack(provider) as stack:
        result = await stack.run(wf, {"msgs": [{"role": "user", "content": "hi",
                                                "imagez": ["x.png"]}]})
    assert result.status == "failed"
    assert "imagez" in result.steps["look"].error
    assert provider.requests == []


@pytest.mark.anyio
async def test_a_model_without_vision_is_refused_before_the_call(tmp_path: Path) -> None:
    (tmp_path / "cat.png").write_bytes(png())
    wf = _write(tmp_path, "wf.yaml", """\
name: novision
steps:
  - id: look
    uses: llm.chat
    with: {model: fake/echo, prompt: "what is it?", images: [cat.png]}
""")
    provider = FakeProvider()
    config = {"models": {"info": {"fake/echo": {"capabilities": ["chat", "streaming"]}}}}
    async with _stack(provider, **config) as stack:
        result = await stack.run(wf)
        events = [e for e in await stack.storage.list_events(result.run_id)
                  if e.type == "llm.error"]
    assert result.status == "failed"
    error = result.steps["look"].error
    assert "fake/echo cannot take images" in error and "lack 'vision'" in error
    assert provider.requests == []
    assert events and events[0].data["error_type"] == "BadRequestError"


def test_images_config_is_checked(tmp_path: Path) -> None:
    (tmp_path / "cat.png").write_bytes(png())
    wf = _write(tmp_path, "wf.yaml", """\
name: cfg
steps:
  - id: look
    uses: llm.chat
    with: {prompt: hi, images: [cat.png]}
""")
    stack = _stack(FakeProvider(), images={"max_bytes": "big"})
    with pytest.raises(WorkflowValidationError, match=r"images\.max_bytes must be a positive "
                                                      "integer"):
        stack.load_workflow(wf)
    stack = _stack(FakeProvider(), images={"max_byte": 10})
    with pytest.raises(WorkflowValidationError, match=r"\[images\]: unknown key\(s\) "
                                                      "max_byte; expected max_bytes, roots"):
        stack.load_workflow(wf)


def test_images_roots_allow_a_folder_outside_the_workflows(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "cat.png").write_bytes(png())
    flows = tmp_path / "flows"
    flows.mkdir()
    wf = _write(flows, "wf.yaml", json.dumps({
        "name": "roots", "steps": [{"id": "look", "uses": "llm.chat",
                                    "with": {"prompt": "hi", "images": ["../shared/cat.png"]}}]}))
    with pytest.raises(WorkflowValidationError, match="outside the allowed roots"):
        _stack(FakeProvider()).load_workflow(wf)
    assert _stack(FakeProvider(), images={"roots": [str(shared)]}).load_workflow(wf).name \
        == "roots"
