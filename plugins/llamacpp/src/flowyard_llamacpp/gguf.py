"""A minimal reader of GGUF metadata (the key/value header), without loading any weights.

GGUF layout (https://github.com/ggml-org/ggml/blob/master/docs/gguf.md, read 2026-11-22):
magic ``b"GGUF"``, ``uint32`` version (2 or 3), ``uint64`` tensor count, ``uint64`` key/value
count, then the key/value pairs: a string key (``uint64`` length + UTF-8 bytes), a ``uint32``
value type and the value. All little-endian. Only the header is read, so listing a
multi-gigabyte model takes milliseconds and never touches llama.cpp.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import IO, Any

__all__ = ["GGUFError", "read_metadata"]

_MAGIC = b"GGUF"

# value type -> struct format of a scalar
_SCALARS = {
    0: "<B",  # uint8
    1: "<b",  # int8
    2: "<H",  # uint16
    3: "<h",  # int16
    4: "<I",  # uint32
    5: "<i",  # int32
    6: "<f",  # float32
    7: "<?",  # bool
    10: "<Q",  # uint64
    11: "<q",  # int64
    12: "<d",  # float64
}
_STRING = 8
_ARRAY = 9

#: Arrays longer than this are not kept (the vocabulary has tens of thousands of entries);
#: their length is kept instead, as ``{"array_length": n}``.
MAX_ARRAY = 64


class GGUFError(ValueError):
    """The file is not a readable GGUF file; the message names the file and the problem."""


class _Reader:
    def __init__(self, fh: IO[bytes], path: Path) -> None:
        self.fh = fh
        self.path = path

    def read(self, n: int) -> bytes:
        data = self.fh.read(n)
        if len(data) != n:
            raise GGUFError(f"{self.path}: truncated GGUF header")
        return data

    def unpack(self, fmt: str) -> Any:
        return struct.unpack(fmt, self.read(struct.calcsize(fmt)))[0]

    def string(self) -> str:
        length = self.unpack("<Q")
        if length > 1 << 26:
            raise GGUFError(f"{self.path}: implausible string length {length} in GGUF header")
        return self.read(length).decode("utf-8", errors="replace")

    def skip_string(self) -> None:
        length = self.unpack("<Q")
        self.fh.seek(length, 1)

    def value(self, kind: int) -> Any:
        if kind in _SCALARS:
            return self.unpack(_SCALARS[kind])
        if kind == _STRING:
            return self.string()
        if kind == _ARRAY:
            item_kind = self.unpack("<I")
            count = self.unpack("<Q")
            if count <= MAX_ARRAY:
                return [self.value(item_kind) for _ in range(count)]
            if item_kind in _SCALARS:
                self.fh.seek(struct.calcsize(_SCALARS[item_kind]) * count, 1)
            elif item_kind == _STRING:
                for _ in range(count):
                    self.skip_string()
            else:
                for _ in range(count):
                    self.value(item_kind)
            return {"array_length": count}
        raise GGUFError(f"{self.path}: unknown GGUF value type {kind}")


def read_metadata(path: str | Path) -> dict[str, Any]:
    """Return the key/value metadata of a GGUF file.

    Args:
        path: the ``.gguf`` file.

    Returns:
        ``{key: value}``, e.g. ``{"general.architecture": "llama",
        "llama.context_length": 8192, ...}``. Arrays longer than 64 items are replaced by
        ``{"array_length": n}``. The pseudo-keys ``"gguf.version"`` and
        ``"gguf.tensor_count"`` are added.

    Raises:
        GGUFError: the file is not GGUF or its header is truncated or corrupt.
        OSError: the file cannot be opened.
    """
    path = Path(path)
    with open(path, "rb") as fh:
        reader = _Reader(fh, path)
        magic = fh.read(4)
        if magic != _MAGIC:
            raise GGUFError(f"{path}: not a GGUF file (magic {magic!r}, expected {_MAGIC!r})")
        version = reader.unpack("<I")
        if version not in (2, 3):
            raise GGUFError(f"{path}: unsupported GGUF version {version} (2 and 3 are read)")
        tensor_count = reader.unpack("<Q")
        kv_count = reader.unpack("<Q")
        if kv_count > 1 << 20:
            raise GGUFError(f"{path}: implausible key/value count {kv_count} in GGUF header")
        out: dict[str, Any] = {"gguf.version": version, "gguf.tensor_count": tensor_count}
        for _ in range(kv_count):
            key = reader.string()
            kind = reader.unpack("<I")
            out[key] = reader.value(kind)
        return out
