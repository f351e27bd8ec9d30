"""Retrieval quality on a real corpus: the Python Language Reference topics shipped with
CPython (``pydoc_data.topics``), indexed with the real all-MiniLM-L6-v2 and default chunking.

Each question names the topics that answer it (several when the Language Reference repeats a
section, e.g. ``compound`` contains the ``with`` statement). hit@5 is the share of questions
whose top 5 chunks include a chunk of an answer topic. The figures are printed (run with
``-s``) and held to floors below what was measured, so a regression fails the test.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from flowyard.config import Config
from flowyard_chroma.loaders import load_pydoc_topics
from flowyard_chroma.retriever import ChromaRetriever

QUESTIONS: list[tuple[str, set[str]]] = [
    ("How do I create a small anonymous function inline?", {"lambda"}),
    ("Which statement checks a condition while debugging and raises AssertionError?",
     {"assert"}),
    ("How do I exit a loop early, before the loop condition is false?", {"break"}),
    ("Skip the rest of the current loop iteration and go on with the next one",
     {"continue"}),
    ("How does the with statement call __enter__ and __exit__?",
     {"with", "compound", "context-managers"}),
    ("What does yield do inside a generator function?", {"yield"}),
    ("Declare that a name inside a function refers to a module-level variable",
     {"global", "naming"}),
    ("Assign to a variable of an enclosing function from a nested function",
     {"nonlocal", "naming"}),
    ("How are exceptions caught, and when does the finally clause run?",
     {"try", "compound", "exceptions"}),
    ("Raise an exception with an explicit cause using from", {"raise", "exceptions"}),
    ("Which special method returns the length of a container?",
     {"sequence-types", "specialnames"}),
    ("How are field width and precision written in a format specification?",
     {"formatstrings"}),
    ("Which string method splits a string on a separator?", {"string-methods"}),
    ("Which operators bind more tightly? The operator precedence table", {"operator-summary"}),
    ("How do relative imports with leading dots work in a package?", {"import"}),
    ("How do I set a breakpoint in the pdb debugger?", {"debugger"}),
    ("Dictionary methods such as get, setdefault and popitem", {"typesmapping"}),
    ("How do I await a coroutine inside an async def function?",
     {"async", "await", "compound"}),
    ("Rules for comparing objects of different types with == and <", {"comparisons"}),
    ("How does slicing with a step select items of a sequence?", {"slicings", "typesseq"}),
    ("How do I write integer literals in hexadecimal, octal or binary?", {"integers"}),
    ("Is an empty list or zero considered false in an if statement?", {"truth"}),
    ("Customize attribute lookup with __getattr__ and __getattribute__",
     {"attribute-access", "specialnames"}),
    ("When are default parameter values of a function evaluated?", {"function", "compound"}),
    ("What does the del statement do to a name binding?", {"del"}),
    ("A statement that does nothing, used where syntax requires a statement", {"pass"}),
    ("Define a class with base classes and a metaclass keyword",
     {"class", "compound", "specialnames"}),
    ("List methods append, extend, insert, pop and remove", {"typesseq-mutable"}),
    ("The power operator ** with negative exponents", {"power"}),
    ("Bitwise and, or and exclusive or of integers", {"bitwise"}),
    ("Membership tests with the in and not in operators", {"in"}),
    ("Escape sequences in string literals and raw strings", {"strings"}),
]

#: Minimum hit@5 per mode. Measured (2026-11, all-MiniLM-L6-v2, 200-token chunks, 40
#: overlap): dense 0.938, bm25 0.938, hybrid 0.969; floors leave a margin of about 0.07.
FLOORS = {"dense": 0.85, "bm25": 0.85, "hybrid": 0.9}

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def pydoc_index(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChromaRetriever]:
    path: Path = tmp_path_factory.mktemp("pydoc-chroma")
    config = Config({"chroma": {"path": str(path)}, "paths": {"data_dir": str(path)}})
    retriever = ChromaRetriever(config)
    counts = anyio.run(lambda: retriever.index(load_pydoc_topics(), collection="pyref"))
    assert counts["added"] == len(load_pydoc_topics()) and counts["chunks"] > 300
    yield retriever


def hit_at_5(retriever: ChromaRetriever, mode: str) -> tuple[float, list[str]]:
    async def run() -> tuple[float, list[str]]:
        misses = []
        for question, answers in QUESTIONS:
            chunks = await retriever.search(question, top_k=5, collection="pyref", mode=mode)
            topics = {c.document_id.removeprefix("pydoc:") for c in chunks}
            if not topics & answers:
                misses.append(question)
        return 1 - len(misses) / len(QUESTIONS), misses

    return anyio.run(run)


def test_hit_at_5_for_dense_bm25_and_hybrid(pydoc_index: ChromaRetriever) -> None:
    assert len(QUESTIONS) >= 20
    figures: dict[str, float] = {}
    for mode in ("dense", "bm25", "hybrid"):
        figures[mode], misses = hit_at_5(pydoc_index, mode)
        print(f"\npydoc_data.topics hit@5 {mode}: {figures[mode]:.3f} "
              f"({len(QUESTIONS) - len(misses)}/{len(QUESTIONS)}); misses: {misses}")
    for mode, floor in FLOORS.items():
        assert figures[mode] >= floor, f"{mode} hit@5 {figures[mode]:.3f} < {floor}"
    assert figures["hybrid"] >= min(figures["dense"], figures["bm25"])


@pytest.mark.anyio
async def test_reindexing_the_corpus_is_a_no_op_and_context_cites_sources(
        pydoc_index: ChromaRetriever) -> None:
    again = await pydoc_index.index(load_pydoc_topics(), collection="pyref")
    assert again["unchanged"] == len(load_pydoc_topics())
    assert again["added"] == again["updated"] == again["chunks"] == 0
    context: list[Any] = await pydoc_index.get_context(
        "How do I create a small anonymous function inline?", top_k=4, max_tokens=400,
        collection="pyref")
    assert context and sum(c.metadata["tokens"] for c in context) <= 400
    assert all(c.source.startswith("pydoc_data.topics:") for c in context)
    assert "pydoc:lambda" in {c.document_id for c in context}
