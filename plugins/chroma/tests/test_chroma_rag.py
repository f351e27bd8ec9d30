"""RAG behaviour: token chunking, loaders (Markdown, text, HTML, PDF), stable ids,
replace-on-change, retrieval modes and context budgets."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest
from flowyard.models import Chunk, Document
from flowyard_chroma.chunking import chunk_text, truncate_to_tokens
from flowyard_chroma.embeddings import count_tokens
from flowyard_chroma.loaders import (
    documents_from_dicts,
    load_directory,
    load_file,
    load_pydoc_topics,
    load_texts,
    text_id,
)
from flowyard_chroma.retriever import ChromaRetriever, format_context


def make_pdf(path: Path, lines: list[str]) -> None:
    """Write a one-page PDF showing ``lines`` in Helvetica (a minimal, valid PDF 1.4)."""
    text_ops = "BT /F1 12 Tf 72 720 Td 14 TL " + " ".join(
        "(" + line.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)") + ") Tj T*"
        for line in lines) + " ET"
    stream = text_ops.encode("latin-1")
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length " + str(len(stream)).encode() + b" >>\nstream\n" + stream +
        b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += f"{number} 0 obj\n".encode() + body + b"\nendobj\n"
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    for offset in offsets:
        out += f"{offset:010d} 00000 n \n".encode()
    out += (f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n"
            "%%EOF\n").encode()
    path.write_bytes(bytes(out))


# ----------------------------------------------------------------------------- chunking


def test_chunks_respect_the_token_size_and_overlap() -> None:
    text = load_pydoc_topics(["with"])[0].text
    chunks = chunk_text(text, chunk_tokens=50, overlap=10)
    assert len(chunks) > 5
    for c in chunks:
        assert c.text == text[c.start:c.end]
        assert c.tokens <= 50
        assert count_tokens(c.text) == c.tokens
    assert all(c.tokens > 25 for c in chunks[:-1])
    for a, b in itertools.pairwise(chunks):
        assert b.start < a.end, "consecutive chunks overlap"
        assert b.start > a.start and b.end > a.end
    assert [c.index for c in chunks] == list(range(len(chunks)))
    assert chunks[-1].end == len(text.rstrip())


def test_chunk_boundaries_do_not_split_words() -> None:
    words = ["internationalization", "uncharacteristically", "antidisestablishment"] * 30
    text = " ".join(words)
    for c in chunk_text(text, chunk_tokens=16, overlap=4):
        assert c.text.split()[0] in words and c.text.split()[-1] in words


def test_short_and_blank_texts() -> None:
    assert chunk_text("   \n ") == []
    [only] = chunk_text("Just one sentence.")
    assert only.text == "Just one sentence." and only.tokens == count_tokens(only.text)
    with pytest.raises(ValueError, match="overlap"):
        chunk_text("x", chunk_tokens=10, overlap=10)
    assert truncate_to_tokens("alpha beta gamma delta", 2) == "alpha beta"
    assert truncate_to_tokens("alpha", 5) == "alpha"


# ----------------------------------------------------------------------------- loaders


def test_loaders_read_markdown_text_html_and_pdf(tmp_path: Path) -> None:
    (tmp_path / "guide.md").write_text("# Guide\n\nRotate the API keys every 90 days.\n")
    (tmp_path / "notes.txt").write_text("Plain notes about the release train.")
    (tmp_path / "page.html").write_text(
        "<html><head><title>Ops</title><script>var tracking = 1;</script></head><body>"
        "<nav>Home | About</nav><article><h1>Incident runbook</h1><p>When the queue backs "
        "up, scale the workers to eight replicas and page the on-call engineer. Then check "
        "the dead letter queue for poison messages before restarting anything.</p>"
        "</article></body></html>")
    make_pdf(tmp_path / "manual.pdf", ["The warranty covers the pump for five years.",
                                       "Keep the receipt."])
    (tmp_path / "image.png").write_bytes(b"\x89PNG")
    (tmp_path / ".hidden").mkdir()
    (tmp_path / ".hidden" / "secret.md").write_text("do not index")

    docs = {Path(d.source).name: d for d in load_directory(tmp_path)}
    assert sorted(docs) == ["guide.md", "manual.pdf", "notes.txt", "page.html"]
    assert "Rotate the API keys" in docs["guide.md"].text
    assert docs["guide.md"].metadata["format"] == "markdown"
    assert docs["page.html"].metadata["format"] == "html"
    assert "scale the workers to eight replicas" in docs["page.html"].text
    assert "tracking" not in docs["page.html"].text
    assert "warranty covers the pump for five years" in docs["manual.pdf"].text
    assert docs["manual.pdf"].metadata["pages"] == 1
    pdf = load_file(tmp_path / "manual.pdf")
    assert pdf.id == f"file:{(tmp_path / 'manual.pdf').resolve().as_posix()}"
    assert pdf == docs["manual.pdf"] or pdf.id == docs["manual.pdf"].id

    only_md = load_directory(tmp_path, glob="*.md")
    assert [Path(d.source).name for d in only_md] == ["guide.md"]
    with pytest.raises(ValueError, match=r"unsupported file type '\.png'"):
        load_file(tmp_path / "image.png")
    with pytest.raises(FileNotFoundError, match=r"missing.md"):
        load_file(tmp_path / "missing.md")
    with pytest.raises(NotADirectoryError):
        load_directory(tmp_path / "guide.md")
    (tmp_path / "latin.txt").write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin.txt: not UTF-8"):
        load_file(tmp_path / "latin.txt")


def test_text_ids_dicts_and_pydoc_topics() -> None:
    a, b = load_texts(["same text", "other"])
    assert a.id == text_id("same text") == load_texts(["same text"])[0].id != b.id
    docs = documents_from_dicts([{"id": "d1", "text": "t", "source": "s", "metadata": {"k": 1}},
                                 {"text": "no id"}])
    assert docs[0] == Document(id="d1", text="t", source="s", metadata={"k": 1})
    assert docs[1].id == text_id("no id")
    with pytest.raises(ValueError, match=r"documents\[0\]: unknown key\(s\) body"):
        documents_from_dicts([{"body": "x"}])
    with pytest.raises(ValueError, match=r"documents\[1\].text must be a string"):
        documents_from_dicts([{"text": "ok"}, {"text": 3}])
    topics = load_pydoc_topics()
    assert len(topics) > 50 and all(d.id.startswith("pydoc:") and d.text for d in topics)
    [lam] = load_pydoc_topics(["lambda"])
    assert lam.source == "pydoc_data.topics:lambda" and "lambda" in lam.text
    with pytest.raises(KeyError, match="no-such-topic"):
        load_pydoc_topics(["no-such-topic"])


# ----------------------------------------------------------------------------- retriever

DOCS = [
    Document(id="kafka", source="kafka.md", metadata={"team": "data"}, text=(
        "Kafka consumers in the analytics group commit offsets every five seconds. A consumer "
        "that crashes restarts from the last committed offset, so handlers must be idempotent.")),
    Document(id="cert", source="tls.md", text=(
        "TLS certificates for the public gateway are renewed by cert-manager thirty days before "
        "they expire. The ACME account key is stored in the vault under pki/acme.")),
    Document(id="oncall", source="oncall.md", text=(
        "The on-call rotation changes every Monday at 10:00. Escalate to the secondary after "
        "fifteen minutes without an acknowledgement.")),
]


@pytest.mark.anyio
async def test_modes_rank_the_right_document_and_report_fusion_ranks(rag: ChromaRetriever
                                                                      ) -> None:
    counts = await rag.index(DOCS)
    assert counts == {"added": 3, "updated": 0, "unchanged": 0, "chunks": 3, "empty": 0}
    for mode in ("dense", "bm25", "hybrid"):
        hits = await rag.search("when are TLS certificates renewed", top_k=3, mode=mode)
        assert hits[0].document_id == "cert", mode
        assert hits[0].source == "tls.md"
        assert all(hits[i].score >= hits[i + 1].score for i in range(len(hits) - 1))
    [top] = await rag.search("consumer offsets commit", top_k=1, mode="hybrid")
    assert top.document_id == "kafka"
    assert top.metadata["dense_rank"] == 1 and top.metadata["bm25_rank"] == 1
    assert top.score == pytest.approx(2 / (60 + 1))
    assert top.metadata["team"] == "data"
    assert top.metadata["chunk_index"] == 0 and top.metadata["chunk_count"] == 1
    # BM25 returns only chunks sharing a word with the query.
    assert await rag.search("zzzz qqqq", mode="bm25") == []
    with pytest.raises(ValueError, match="mode must be one of"):
        await rag.search("x", mode="fuzzy")
    with pytest.raises(ValueError, match="top_k"):
        await rag.search("x", top_k=0)
    assert await rag.search("anything", collection="never-created") == []


@pytest.mark.anyio
async def test_changed_documents_replace_their_chunks_everywhere(chroma_config: Any) -> None:
    rag = ChromaRetriever(chroma_config, chunk_tokens=16, chunk_overlap=4)
    await rag.index(DOCS)
    before = await rag.count()
    assert before > 3
    changed = Document(id="kafka", source="kafka.md", text="Kafka was replaced by NATS "
                       "JetStream for the analytics pipeline in March.")
    assert (await rag.index([changed, DOCS[1]])) == {
        "added": 0, "updated": 1, "unchanged": 1, "chunks": 2, "empty": 0}
    assert (await rag.documents())["kafka"]["chunks"] == 2
    # The BM25 index was rebuilt: the old words are gone, the new ones are found.
    assert all(c.document_id != "kafka" for c in
               await rag.search("committed offset idempotent handlers", mode="bm25"))
    [hit] = await rag.search("JetStream", top_k=1, mode="bm25")
    assert hit.document_id == "kafka"
    # A second retriever on the same directory sees the same state.
    other = ChromaRetriever(chroma_config, chunk_tokens=16, chunk_overlap=4)
    assert (await other.index([changed]))["unchanged"] == 1
    # Metadata changes count as changes; emptied documents lose their chunks.
    assert (await rag.index([Document(id="cert", text=DOCS[1].text, source="tls.md",
                                      metadata={"owner": "sre"})]))["updated"] == 1
    assert (await rag.index([Document(id="oncall", text="  ", source="oncall.md")]))[
        "empty"] == 1
    assert "oncall" not in await rag.documents()
    assert await rag.delete_documents(["cert"]) > 0
    assert sorted(await rag.documents()) == ["kafka"]
    assert await rag.collections() == ["default"]
    with pytest.raises(ValueError, match="appears twice"):
        await rag.index([DOCS[0], DOCS[0]])


@pytest.mark.anyio
async def test_get_context_fits_the_budget_and_cuts_only_the_first_chunk(rag: ChromaRetriever
                                                                          ) -> None:
    await rag.index(DOCS)
    sizes = {d.id: count_tokens(d.text) for d in DOCS}
    wide = await rag.get_context("on-call escalation and certificates", top_k=3,
                                 max_tokens=1000)
    assert len(wide) == 3
    assert sum(c.metadata["tokens"] for c in wide) == sum(sizes.values())
    budget = sizes[wide[0].document_id] + 1
    narrow = await rag.get_context("on-call escalation and certificates", top_k=3,
                                   max_tokens=budget)
    assert [c.id for c in narrow] == [wide[0].id]
    tiny = await rag.get_context("on-call escalation", top_k=3, max_tokens=5)
    assert len(tiny) == 1 and tiny[0].metadata["truncated"] is True
    assert (count_tokens(tiny[0].text) <= 5 and wide[0].text.startswith(tiny[0].text)) or \
        tiny[0].document_id != wide[0].document_id
    with pytest.raises(ValueError, match="max_tokens"):
        await rag.get_context("x", max_tokens=0)
    rendered = format_context(wide)
    assert rendered.startswith("[1] ") and "[3] " in rendered
    assert all(c.source in rendered for c in wide)


def test_format_context_uses_the_document_id_without_a_source() -> None:
    chunk = Chunk(id="a#0", document_id="a", text=" body \n")
    assert format_context([chunk]) == "[1] a\nbody"


@pytest.mark.anyio
async def test_index_a_directory_then_search_pdf_and_html(tmp_path: Path, rag: ChromaRetriever
                                                           ) -> None:
    docs_dir = tmp_path / "docs"
    docs_dir.mkdir()
    make_pdf(docs_dir / "pump.pdf", ["The warranty covers the pump for five years."])
    (docs_dir / "faq.html").write_text(
        "<html><body><article><p>Refunds are paid to the original card within ten working "
        "days after the returned item arrives at the warehouse.</p></article></body></html>")
    (docs_dir / "readme.md").write_text("# Readme\n\nThe office plants are watered on Fridays.")
    counts = await rag.index(load_directory(docs_dir), collection="support")
    assert counts["added"] == 3
    [hit] = await rag.search("how long is the pump warranty", top_k=1, collection="support")
    assert hit.source.endswith("pump.pdf") and "five years" in hit.text
    [hit] = await rag.search("refund to my card", top_k=1, collection="support")
    assert hit.source.endswith("faq.html")
    assert (await rag.index(load_directory(docs_dir), collection="support"))["unchanged"] == 3
