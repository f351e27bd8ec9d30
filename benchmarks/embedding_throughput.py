"""Embedding throughput through flowyard-chroma against sentence-transformers directly.

Both sides encode the same texts (chunks of the Python Language Reference topics from
``pydoc_data.topics``) with the same model (the bundled all-MiniLM-L6-v2), batch size and
normalisation. The direct side calls ``SentenceTransformer.encode`` in the main thread; the
flowyard side awaits ``SentenceTransformerEmbedder.embed`` (an anyio worker thread, the shared
per-process model). Runs alternate between the two to spread CPU noise; the medians are
compared. Target: flowyard / direct >= 0.9.

A third figure, the whole indexing path (chunking, embedding, chroma writes) in chunks per
second, is reported against the same direct baseline for information.

Usage: .venv/bin/python benchmarks/embedding_throughput.py [--texts 256] [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import anyio
from flowyard.config import Config
from flowyard.models import Document
from flowyard_chroma.chunking import chunk_text
from flowyard_chroma.embeddings import SentenceTransformerEmbedder
from flowyard_chroma.loaders import load_pydoc_topics
from flowyard_chroma.retriever import ChromaRetriever


def corpus(n: int, chunk_tokens: int) -> list[str]:
    texts: list[str] = []
    for doc in load_pydoc_topics():
        texts.extend(c.text for c in chunk_text(doc.text, chunk_tokens=chunk_tokens,
                                                overlap=0))
        if len(texts) >= n:
            break
    return texts[:n]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=256, help="texts per round")
    parser.add_argument("--tokens", type=int, default=128, help="word pieces per text")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()

    texts = corpus(args.texts, args.tokens)
    embedder = SentenceTransformerEmbedder(batch_size=args.batch_size)
    model = embedder.model()

    def direct() -> float:
        started = time.perf_counter()
        model.encode(texts, batch_size=args.batch_size, normalize_embeddings=True,
                     convert_to_numpy=True, show_progress_bar=False)
        return time.perf_counter() - started

    def through_flowyard() -> float:
        async def run() -> float:
            started = time.perf_counter()
            await embedder.embed(texts)
            return time.perf_counter() - started

        return anyio.run(run)

    direct()  # warm-up (allocations, first-batch costs)
    through_flowyard()
    d_times, f_times = [], []
    for _ in range(args.rounds):
        d_times.append(direct())
        f_times.append(through_flowyard())

    with tempfile.TemporaryDirectory() as path:
        retriever = ChromaRetriever(Config({"chroma": {"path": path}}),
                                    chunk_tokens=args.tokens, chunk_overlap=0,
                                    batch_size=args.batch_size)
        docs = [Document(id=f"t{i}", text=t) for i, t in enumerate(texts)]

        async def index() -> tuple[float, int]:
            started = time.perf_counter()
            counts = await retriever.index(docs)
            return time.perf_counter() - started, counts["chunks"]

        index_s, chunks = anyio.run(index)

    d_rate = len(texts) / statistics.median(d_times)
    f_rate = len(texts) / statistics.median(f_times)
    i_rate = chunks / index_s
    print(f"texts per round: {len(texts)} x ~{args.tokens} word pieces, batch "
          f"{args.batch_size}, rounds {args.rounds}, model {embedder.name}")
    print(f"{'path':<44}{'texts/s':>10}{'ratio':>8}")
    print(f"{'sentence-transformers encode (baseline)':<44}{d_rate:>10.1f}{1.0:>8.3f}")
    print(f"{'flowyard SentenceTransformerEmbedder.embed':<44}{f_rate:>10.1f}"
          f"{f_rate / d_rate:>8.3f}")
    print(f"{'flowyard ChromaRetriever.index (1 round)':<44}{i_rate:>10.1f}"
          f"{i_rate / d_rate:>8.3f}")
    print(f"target flowyard/direct >= 0.9: {'met' if f_rate / d_rate >= 0.9 else 'NOT met'}")


if __name__ == "__main__":
    main()
