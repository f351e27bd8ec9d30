"""Turn files, directories, texts and the CPython Language Reference topics into documents.

Formats: Markdown (``.md``, ``.markdown``), plain text (``.txt``, ``.rst``, ``.text``), HTML
(``.html``, ``.htm``; main text extracted by trafilatura) and PDF (``.pdf``; text extracted
page by page by pypdf). Document ids are stable: ``file:<absolute path>`` for files,
``pydoc:<topic>`` for Language Reference topics and ``text:<sha256 of the text, 16 hex>`` for
bare texts.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from flowyard import Document

__all__ = [
    "FORMATS",
    "load_file",
    "load_directory",
    "load_texts",
    "load_pydoc_topics",
    "documents_from_dicts",
    "text_id",
]

#: File suffix -> format name.
FORMATS: dict[str, str] = {
    ".md": "markdown", ".markdown": "markdown",
    ".txt": "text", ".text": "text", ".rst": "text",
    ".html": "html", ".htm": "html",
    ".pdf": "pdf",
}


def text_id(text: str) -> str:
    """Return the stable id of a bare text: ``text:`` + 16 hex of its SHA-256."""
    return "text:" + hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not UTF-8 text (byte {exc.start}): {exc.reason}") from None


def _extract_html(path: Path) -> tuple[str, str]:
    import trafilatura

    html = _read_text(path)
    text = trafilatura.extract(html, include_comments=False, include_tables=True,
                               favor_recall=True)
    if text:
        return text, "trafilatura.extract"
    # trafilatura finds no main content in short or unusual pages; its baseline extractor
    # then returns all visible text (recorded in the document's metadata).
    return trafilatura.html2txt(html) or "", "trafilatura.html2txt"


def _extract_pdf(path: Path) -> tuple[str, int]:
    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    try:
        reader = PdfReader(str(path))
        pages = [page.extract_text() or "" for page in reader.pages]
    except PdfReadError as exc:
        raise ValueError(f"{path}: cannot read PDF: {exc}") from None
    return "\n\n".join(p.strip() for p in pages if p.strip()), len(pages)


def load_file(path: str | Path, *, metadata: Mapping[str, Any] | None = None) -> Document:
    """Read one file into a :class:`Document` (id ``file:<absolute path>``).

    Raises:
        FileNotFoundError: no such file.
        ValueError: unsupported suffix (the message lists the supported ones), undecodable
            text or an unreadable PDF.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise ValueError(f"{path}: unsupported file type {path.suffix!r}; supported: "
                         f"{', '.join(sorted(FORMATS))}")
    meta: dict[str, Any] = {"path": str(path.resolve()), "format": fmt}
    if fmt == "html":
        text, extractor = _extract_html(path)
        meta["extractor"] = extractor
    elif fmt == "pdf":
        text, pages = _extract_pdf(path)
        meta["pages"] = pages
    else:
        text = _read_text(path)
    meta.update(metadata or {})
    return Document(id=f"file:{path.resolve().as_posix()}", text=text, source=str(path),
                    metadata=meta)


def load_directory(directory: str | Path, *, glob: str = "**/*",
                   metadata: Mapping[str, Any] | None = None) -> list[Document]:
    """Read every supported file under ``directory`` matching ``glob`` (sorted by path).

    Files of unsupported types are left out; hidden files and directories (a name starting
    with ``.``) too.

    Raises:
        NotADirectoryError: ``directory`` is not a directory.
        ValueError: a matching file cannot be decoded (see :func:`load_file`).
    """
    root = Path(directory).expanduser()
    if not root.is_dir():
        raise NotADirectoryError(f"{root}: not a directory")
    docs = []
    for path in sorted(root.glob(glob)):
        rel = path.relative_to(root)
        if any(part.startswith(".") for part in rel.parts):
            continue
        if path.is_file() and path.suffix.lower() in FORMATS:
            docs.append(load_file(path, metadata={"directory": str(root.resolve()),
                                                  **(metadata or {})}))
    return docs


def load_texts(texts: Iterable[str], *, source: str = "text") -> list[Document]:
    """Wrap bare texts as documents with content-derived ids.

    Raises:
        ValueError: an item is not a string.
    """
    docs = []
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise ValueError(f"texts[{i}] must be a string, got {type(text).__name__}")
        docs.append(Document(id=text_id(text), text=text, source=source))
    return docs


def load_pydoc_topics(topics: Sequence[str] | None = None) -> list[Document]:
    """Return the Python Language Reference topics shipped with CPython
    (``pydoc_data.topics.topics``, a dict topic -> text) as documents ``pydoc:<topic>``.

    Args:
        topics: the topic names to load (all when None).

    Raises:
        KeyError: an unknown topic (the message lists a few known ones).
    """
    from pydoc_data.topics import topics as all_topics

    names = sorted(all_topics) if topics is None else list(topics)
    docs = []
    for name in names:
        if name not in all_topics:
            raise KeyError(f"unknown pydoc topic {name!r}; known topics include "
                           f"{', '.join(sorted(all_topics)[:8])}, ...")
        docs.append(Document(id=f"pydoc:{name}", text=all_topics[name],
                             source=f"pydoc_data.topics:{name}",
                             metadata={"topic": name, "format": "text"}))
    return docs


def documents_from_dicts(items: Sequence[Mapping[str, Any]], *, where: str = "documents"
                         ) -> list[Document]:
    """Build documents from ``[{id?, text, source?, metadata?}]`` (as passed by a workflow).

    A missing id becomes the text's content id.

    Raises:
        ValueError: an item is not a mapping, has no string ``text``, has unknown keys or
            ill-typed fields (the message names the item index).
    """
    docs = []
    allowed = {"id", "text", "source", "metadata"}
    for i, item in enumerate(items):
        if not isinstance(item, Mapping):
            raise ValueError(f"{where}[{i}] must be an object, got {type(item).__name__}")
        extra = sorted(set(item) - allowed)
        if extra:
            raise ValueError(f"{where}[{i}]: unknown key(s) {', '.join(extra)}; allowed: "
                             "id, text, source, metadata")
        text = item.get("text")
        if not isinstance(text, str):
            raise ValueError(f"{where}[{i}].text must be a string")
        doc_id = item.get("id") or text_id(text)
        source = item.get("source", "")
        meta = item.get("metadata") or {}
        if not isinstance(doc_id, str):
            raise ValueError(f"{where}[{i}].id must be a string")
        if not isinstance(source, str):
            raise ValueError(f"{where}[{i}].source must be a string")
        if not isinstance(meta, Mapping):
            raise ValueError(f"{where}[{i}].metadata must be an object")
        docs.append(Document(id=doc_id, text=text, source=source, metadata=dict(meta)))
    return docs
