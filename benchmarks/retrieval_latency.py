"""Query latency of the chroma retriever at 10,000 chunks: p50 and p95 per retrieval mode,
against hand-written baselines measured in the same run.

Corpus: real text only, the Python Language Reference topics (``pydoc_data.topics``) plus
the docstrings of standard-library modules and their members, chunked to ``--chunk-tokens``
word pieces until ``--chunks`` chunks exist, indexed with the bundled all-MiniLM-L6-v2.

Baselines (what a user would write by hand, no flowyard in the loop):

- dense: ``SentenceTransformer.encode(query)`` + ``collection.query`` on the same chroma
  collection;
- bm25: ``bm25s`` ``get_scores`` + top-k on an index of the same chunks.

Flowyard figures are ``ChromaRetriever.search`` in ``dense``, ``bm25`` and ``hybrid`` mode
(hybrid = dense + BM25 candidates fused by reciprocal rank), top 5. The index is built once
(``--path`` keeps it between runs; re-indexing unchanged documents does nothing).

Usage: .venv/bin/python benchmarks/retrieval_latency.py [--chunks 10000] [--queries 100]
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import anyio
import numpy as np
from flowyard.config import Config
from flowyard.models import Document
from flowyard_chroma.chunking import chunk_text
from flowyard_chroma.loaders import load_pydoc_topics
from flowyard_chroma.retriever import ChromaRetriever, _stemmer, _tokenize

MODULES = [
    "os", "os.path", "pathlib", "re", "json", "collections", "itertools", "functools",
    "typing", "asyncio", "threading", "subprocess", "socket", "ssl", "http.client",
    "urllib.parse", "urllib.request", "email.message", "logging", "argparse", "datetime",
    "time", "random", "statistics", "decimal", "fractions", "math", "shutil", "tempfile",
    "zipfile", "tarfile", "csv", "sqlite3", "xml.etree.ElementTree", "html.parser", "string",
    "textwrap", "difflib", "unittest", "doctest", "inspect", "dataclasses", "enum", "abc",
    "contextlib", "io", "struct", "codecs", "hashlib", "hmac", "secrets", "base64", "pickle",
    "copy", "pprint", "heapq", "bisect", "array", "weakref", "types", "operator", "glob",
    "fnmatch", "queue", "sched", "selectors", "signal", "mmap", "gzip", "bz2", "lzma",
    "configparser", "platform", "locale", "gettext", "calendar", "uuid", "ipaddress",
    "mimetypes", "smtplib", "imaplib", "ftplib", "poplib", "wsgiref.simple_server",
    "xmlrpc.client", "concurrent.futures", "multiprocessing", "ast", "dis", "tokenize",
    "traceback", "warnings", "importlib", "pkgutil", "zipimport", "trace", "timeit",
    "cProfile", "pstats", "tkinter", "turtle", "cmd", "shlex", "curses", "getpass",
    "unittest.mock", "asyncio.streams", "asyncio.subprocess", "http.server", "http.cookies",
    "logging.handlers", "email.utils", "xml.dom.minidom", "collections.abc", "numbers",
    "statistics", "pydoc", "optparse", "pdb", "bdb", "code", "codeop", "symtable", "runpy",
    "filecmp", "netrc", "plistlib", "quopri", "binascii", "zlib", "reprlib", "graphlib",
    "contextvars", "asyncio.locks", "asyncio.queues", "asyncio.events", "asyncio.futures",
]

QUERIES = [
    "How do I create a small anonymous function inline?", "exit a loop early",
    "format a number with a field width and precision", "split a string on a separator",
    "read a CSV file row by row", "parse command line arguments", "join path components",
    "compute a SHA-256 hash of bytes", "run a subprocess and capture its output",
    "sort a list with a key function", "how are default parameter values evaluated",
    "create a temporary directory", "parse an ISO 8601 date", "escape sequences in strings",
    "open a TLS connection to a server", "send an HTTP request", "decode base64 data",
    "merge dictionaries", "generate a random integer in a range", "wait for threads to finish",
]


def stdlib_docs() -> list[Document]:
    docs = []
    for name in MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        parts = [inspect.getdoc(module) or ""]
        for attr, value in sorted(vars(module).items()):
            if attr.startswith("_"):
                continue
            if inspect.isfunction(value) or inspect.isclass(value) or inspect.isbuiltin(value):
                doc = inspect.getdoc(value)
                if doc:
                    parts.append(f"{name}.{attr}: {doc}")
        text = "\n\n".join(p for p in parts if p)
        if text:
            docs.append(Document(id=f"stdlib:{name}", text=text, source=f"pydoc {name}"))
    return docs


def build_corpus(target: int, chunk_tokens: int) -> list[Document]:
    """Return documents whose chunks number ``target`` (the last document is cut)."""
    out: list[Document] = []
    total = 0
    for doc in [*load_pydoc_topics(), *stdlib_docs()]:
        chunks = chunk_text(doc.text, chunk_tokens=chunk_tokens, overlap=0)
        if total + len(chunks) > target:
            keep = chunks[:target - total]
            if not keep:
                break
            doc = Document(id=doc.id, text=doc.text[:keep[-1].end], source=doc.source)
            chunks = keep
        out.append(doc)
        total += len(chunks)
        if total >= target:
            break
    if total < target:
        raise SystemExit(f"the corpus gives only {total} chunks of {chunk_tokens} word pieces; "
                         "lower --chunk-tokens or --chunks")
    return out


def percentiles(times: list[float]) -> tuple[float, float]:
    ordered = sorted(times)
    p50 = statistics.median(ordered)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return p50 * 1000, p95 * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, default=10_000)
    parser.add_argument("--chunk-tokens", type=int, default=32)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--top-k", type=int, default=5)
    parser.add_argument("--path", type=Path, default=None,
                        help="chroma directory to build/keep the index in (default: temporary)")
    args = parser.parse_args()

    tmp = None
    if args.path is None:
        tmp = tempfile.TemporaryDirectory()
        args.path = Path(tmp.name)
    retriever = ChromaRetriever(Config({"chroma": {"path": str(args.path)}}),
                                chunk_tokens=args.chunk_tokens, chunk_overlap=0)
    docs = build_corpus(args.chunks, args.chunk_tokens)
    started = time.perf_counter()
    counts = anyio.run(lambda: retriever.index(docs, collection="bench"))
    build_s = time.perf_counter() - started
    n_chunks = anyio.run(lambda: retriever.count(collection="bench"))
    print(f"index: {n_chunks} chunks of <= {args.chunk_tokens} word pieces from {len(docs)} "
          f"documents ({counts}); built in {build_s:.1f} s")

    queries = [QUERIES[i % len(QUERIES)] + ("" if i < len(QUERIES) else f" ({i})")
               for i in range(args.queries)]
    model = retriever.embedder.model()  # type: ignore[attr-defined]
    collection = retriever._collection("bench")

    # Baseline BM25 index on the same chunk texts (built outside the timing).
    got = collection.get(include=["documents"])
    import bm25s

    raw_bm25 = bm25s.BM25()
    stemmer = _stemmer()
    raw_bm25.index(_tokenize([t or "" for t in got["documents"]], stemmer), show_progress=False)

    def base_dense(q: str) -> None:
        vector = model.encode([q], normalize_embeddings=True, show_progress_bar=False)
        collection.query(query_embeddings=vector, n_results=args.top_k)

    def base_bm25(q: str) -> None:
        tokens = bm25s.tokenize([q], stopwords="en", stemmer=stemmer, return_ids=False,
                                show_progress=False)[0]
        scores = raw_bm25.get_scores(tokens)
        top = np.argpartition(-scores, args.top_k)[:args.top_k]
        top[np.argsort(-scores[top])]

    def flowyard_search(mode: str) -> object:
        async def search(q: str) -> None:
            await retriever.search(q, top_k=args.top_k, collection="bench", mode=mode)

        return search

    paths: dict[str, object] = {
        "baseline dense (encode + chroma query)": base_dense,
        "baseline bm25 (bm25s get_scores + top-k)": base_bm25,
        "flowyard dense": flowyard_search("dense"),
        "flowyard bm25": flowyard_search("bm25"),
        "flowyard hybrid (dense + bm25, RRF)": flowyard_search("hybrid"),
    }

    async def measure() -> dict[str, list[float]]:
        # Round-robin per query, so CPU noise from other processes hits every path alike.
        times: dict[str, list[float]] = {name: [] for name in paths}
        for q in ["warm up", *queries]:
            for name, func in paths.items():
                t0 = time.perf_counter()
                result = func(q)  # type: ignore[operator]
                if inspect.isawaitable(result):
                    await result
                if q != "warm up":
                    times[name].append(time.perf_counter() - t0)
        return times

    results = anyio.run(measure)
    base = {"dense": percentiles(results["baseline dense (encode + chroma query)"]),
            "bm25": percentiles(results["baseline bm25 (bm25s get_scores + top-k)"])}
    base["hybrid"] = (base["dense"][0] + base["bm25"][0], base["dense"][1] + base["bm25"][1])
    print(f"{args.queries} queries, top {args.top_k}, {n_chunks} chunks")
    print(f"{'path':<44}{'p50 ms':>9}{'p95 ms':>9}{'p50 x base':>12}")
    for name, times in results.items():
        p50, p95 = percentiles(times)
        kind = "dense" if "dense" in name and "hybrid" not in name else (
            "bm25" if "bm25" in name and "hybrid" not in name else "hybrid")
        ratio = p50 / base[kind][0]
        print(f"{name:<44}{p50:>9.2f}{p95:>9.2f}{ratio:>12.2f}")
    print("(hybrid is compared with the sum of the two baselines)")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
