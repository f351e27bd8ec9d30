"""Images given to ``llm.chat`` in a workflow: read, checked and turned into
:class:`~flowyard.models.ImagePart` values.

An image is written as one string, one of:

- an ``http://`` or ``https://`` URL: passed to the provider as a URL (flowyard does not fetch
  it; providers that need the bytes, like Ollama, download it themselves);
- a ``data:`` URL (``data:image/png;base64,...``): decoded and checked;
- base64 text of the image bytes (whitespace ignored, ``=`` padding optional): recognised
  when it decodes to bytes that start like a PNG, JPEG, GIF or WebP file;
- otherwise a local file path: relative paths resolve against the folder of the workflow
  file (the current directory for a workflow given as text or a mapping), like a
  sub-workflow's path. The resolved file (symbolic links followed) must lie inside an allowed
  root: that folder, or one of the ``images.roots`` directories of the configuration.

Bytes flowyard reads (files, ``data:`` URLs, base64) are checked: at most ``images.max_bytes``
bytes (default :data:`DEFAULT_MAX_IMAGE_BYTES`), and of one of the allowed types, sniffed from
the bytes' signature whatever the file name says: PNG (``89 50 4E 47 0D 0A 1A 0A``), JPEG
(``FF D8 FF``), GIF (``GIF87a``/``GIF89a``) or WebP (``RIFF....WEBP``). These are the formats
the OpenAI, Anthropic and Ollama APIs accept for image input (OpenAI: "Images and vision"
guide, platform.openai.com/docs/guides/images-vision; Anthropic: "Vision" guide,
docs.anthropic.com/en/docs/build-with-claude/vision; Ollama: ``images`` of ``POST /api/chat``,
github.com/ollama/ollama/blob/main/docs/api.md).
"""

from __future__ import annotations

import base64
import binascii
import os
import stat
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from flowyard.errors import ConfigError
from flowyard.models import ImagePart

__all__ = ["ImageInputError", "ImagePolicy", "load_image", "sniff_image_type",
           "image_policy", "DEFAULT_MAX_IMAGE_BYTES", "IMAGE_TYPES"]

#: Default largest image, in bytes (20 MiB: OpenAI's documented limit per image).
DEFAULT_MAX_IMAGE_BYTES = 20 * 1024 * 1024
#: The allowed image types (MIME types).
IMAGE_TYPES = ("image/png", "image/jpeg", "image/gif", "image/webp")

_BASE64_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=")


class ImageInputError(ValueError):
    """An image argument cannot be used: unreadable, too large, not an allowed type, or a
    path outside the allowed roots. The message says which and how to fix it.
    """


class ImagePolicy:
    """Where image files may be read from and how large images may be.

    Args:
        base: the folder relative paths resolve against.
        roots: the directories image files must lie in (after resolving symbolic links).
        max_bytes: the largest image, in bytes.
    """

    def __init__(self, base: Path, roots: Sequence[Path], max_bytes: int) -> None:
        self.base = base
        self.roots = [Path(os.path.realpath(r)) for r in roots]
        self.max_bytes = max_bytes


def image_policy(config: Any, workflow_source: str | os.PathLike[str] | None) -> ImagePolicy:
    """Return the image policy of a workflow from the ``[images]`` configuration table.

    Args:
        config: the stack's :class:`~flowyard.config.Config` (``images.max_bytes``,
            ``images.roots``).
        workflow_source: the workflow's file, when it came from one: its folder is the base
            of relative paths and an allowed root; else the current directory is.

    Returns:
        The :class:`ImagePolicy`.

    Raises:
        ConfigError: an unknown key in ``[images]``, ``images.max_bytes`` is not a positive
            integer, or ``images.roots`` is not a list of paths.
    """
    section = config.section("images") if config is not None else {}
    unknown = set(section) - {"max_bytes", "roots"}
    if unknown:
        raise ConfigError(f"[images]: unknown key(s) {', '.join(sorted(unknown))}; expected "
                          "max_bytes, roots")
    max_bytes = section.get("max_bytes", DEFAULT_MAX_IMAGE_BYTES)
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes <= 0:
        raise ConfigError(f"images.max_bytes must be a positive integer (bytes), got "
                          f"{max_bytes!r}")
    roots = section.get("roots", [])
    if not isinstance(roots, list) or not all(isinstance(r, str) and r for r in roots):
        raise ConfigError(f"images.roots must be a list of directory paths, got {roots!r}")
    base = (Path(os.fspath(workflow_source)).resolve().parent if workflow_source
            else Path.cwd())
    return ImagePolicy(base, [base, *(Path(r).expanduser().resolve() for r in roots)],
                       max_bytes)


def sniff_image_type(data: bytes) -> str | None:
    """Return the MIME type of image bytes from their signature, or None when they are not
    a PNG, JPEG, GIF or WebP image.

    Signatures: PNG ``89 50 4E 47 0D 0A 1A 0A`` (PNG specification, W3C, section 5.2 "PNG
    signature"); JPEG ``FF D8 FF`` (the SOI marker followed by the next marker's ``FF``, ITU-T
    T.81 annex B); GIF ``GIF87a``/``GIF89a`` (GIF89a specification, "Header"); WebP
    ``RIFF <size> WEBP`` (Google's "WebP Container Specification",
    developers.google.com/speed/webp/docs/riff_container).

    Args:
        data: the first bytes of the image (12 are enough).

    Returns:
        ``"image/png"``, ``"image/jpeg"``, ``"image/gif"``, ``"image/webp"`` or None.
    """
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data.startswith((b"GIF87a", b"GIF89a")):
        return "image/gif"
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None


def _checked(data: bytes, what: str, policy: ImagePolicy, declared: str | None = None
             ) -> ImagePart:
    if len(data) > policy.max_bytes:
        raise ImageInputError(f"{what} is {len(data)} bytes, more than images.max_bytes = "
                              f"{policy.max_bytes}")
    media_type = sniff_image_type(data)
    if media_type is None:
        raise ImageInputError(f"{what} is not a PNG, JPEG, GIF or WebP image (its first bytes "
                              f"are {data[:8].hex(' ')})")
    if declared is not None and declared != media_type:
        raise ImageInputError(f"{what} says it is {declared} but its bytes are {media_type}")
    return ImagePart(data_base64=base64.b64encode(data).decode("ascii"), media_type=media_type)


def _compact(text: str) -> str:
    """``text`` without whitespace, padded with ``=`` to a multiple of 4 characters."""
    compact = "".join(text.split())
    return compact + "=" * (-len(compact) % 4)


def _decode_base64(text: str, what: str, policy: ImagePolicy) -> bytes:
    compact = _compact(text)
    if len(compact) * 3 // 4 > policy.max_bytes + 2:
        raise ImageInputError(f"{what} decodes to more than images.max_bytes = "
                              f"{policy.max_bytes} bytes")
    try:
        return base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ImageInputError(f"{what} is not valid base64 ({exc})") from None


def _looks_like_base64_image(text: str) -> bool:
    compact = _compact(text)
    if len(compact) < 16 or not set(compact) <= _BASE64_CHARS:
        return False
    try:
        head = base64.b64decode(compact[:16], validate=True)
    except (binascii.Error, ValueError):
        return False
    return sniff_image_type(head) is not None


def load_image(value: Any, policy: ImagePolicy) -> ImagePart:
    """Turn one image argument into an :class:`~flowyard.models.ImagePart` (reads files:
    call it from a worker thread in async code).

    Args:
        value: an http(s) URL, a ``data:`` URL, base64 text or a file path (see the module
            docstring for how each is recognised).
        policy: allowed roots and the size limit.

    Returns:
        An ImagePart: ``url`` set for http(s) URLs, else ``data_base64`` with the sniffed
        ``media_type``.

    Raises:
        ImageInputError: not a string, an unreadable or missing file, a path outside the
            allowed roots, too many bytes, or bytes that are not an allowed image type.
    """
    if not isinstance(value, str) or not value.strip():
        raise ImageInputError(f"an image must be a non-empty string (a path, an http(s) URL, "
                              f"a data: URL or base64), got {value!r}")
    text = value.strip()
    lowered = text[:8].lower()
    if lowered.startswith(("http://", "https://")):
        return ImagePart(url=text)
    if lowered.startswith("data:"):
        header, sep, payload = text.partition(",")
        if not sep or ";base64" not in header.lower():
            raise ImageInputError("a data: URL image must be base64-encoded "
                                  "(data:image/png;base64,...)")
        declared = header[5:].split(";")[0].strip().lower() or None
        if declared is not None and declared not in IMAGE_TYPES:
            raise ImageInputError(f"data: URL image type {declared!r} is not allowed "
                                  f"(allowed: {', '.join(IMAGE_TYPES)})")
        data = _decode_base64(payload, "the data: URL image", policy)
        return _checked(data, "the data: URL image", policy, declared)
    if _looks_like_base64_image(text):
        return _checked(_decode_base64(text, "the base64 image", policy),
                        "the base64 image", policy)
    return _checked(_read_file(text, policy), f"image file {text!r}", policy)


def _read_file(text: str, policy: ImagePolicy) -> bytes:
    path = Path(text)
    if not path.is_absolute():
        path = policy.base / path
    real = Path(os.path.realpath(path))
    if not any(real == root or root in real.parents for root in policy.roots):
        raise ImageInputError(
            f"image file {text!r} (resolved to {real}) is outside the allowed roots "
            f"({', '.join(str(r) for r in policy.roots)}); add its folder to images.roots "
            "in flowyard.toml to allow it")
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(real, flags)  # never blocks on a FIFO; no symlink swapped in since
    except FileNotFoundError:
        raise ImageInputError(f"image file {text!r} not found (looked at {path}); an image "
                              "is a path, an http(s) URL, a data: URL or base64") from None
    except OSError as exc:
        raise ImageInputError(f"image file {text!r} cannot be read: "
                              f"{exc.strerror or exc}") from None
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ImageInputError(f"image {text!r} is not a regular file")
        if info.st_size > policy.max_bytes:
            raise ImageInputError(f"image file {text!r} is {info.st_size} bytes, more than "
                                  f"images.max_bytes = {policy.max_bytes}")
        try:
            data = handle.read(policy.max_bytes + 1)
        except OSError as exc:
            raise ImageInputError(f"image file {text!r} cannot be read: "
                                  f"{exc.strerror or exc}") from None
    return data
