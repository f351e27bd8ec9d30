"""report.support: sentence splitting with verbatim offsets, trimming to the last full
sentence, negation cues, verdicts, evidence quotes and the tool's contract. Embeddings come
from the stack's built-in ``fake`` provider (bag of hashed words, deterministic); the real
MiniLM check runs in tests/e2e/test_main_job.py and tests/e2e/test_docs_qa_eval.py."""

from __future__ import annotations

from typing import Any

import pytest
from flowyard.errors import ToolError, ToolInputError
from flowyard.testing import ToolContract
from flowyard_report.support import (
    check_support,
    content_words,
    has_negation,
    split_sentences,
    trim_to_sentence,
)
from flowyard_report.support_tool import ReportSupportTool

pytestmark = pytest.mark.anyio

GLOBAL = ('The "global" statement is a declaration which holds for the entire\n'
          'current code block.  It means that the listed identifiers are to be\n'
          'interpreted as globals.\n\n'
          'Names listed in a "global" statement must not be used in the same code\n'
          'block textually preceding that "global" statement.')
PASS = ('"pass" is a null operation - when it is executed, nothing happens. It\n'
        'is useful as a placeholder when a statement is required syntactically.')
PASSAGES = [{"text": GLOBAL, "source": "pydoc_data.topics:global"},
            {"text": PASS, "source": "pydoc_data.topics:pass"}]


async def bag_of_words(texts: list[str]) -> list[list[float]]:
    """Deterministic vectors: one dimension per distinct lower-cased word."""
    vocabulary: dict[str, int] = {}
    rows = []
    for text in texts:
        row: dict[int, float] = {}
        for word in text.lower().replace('"', " ").replace(".", " ").split():
            index = vocabulary.setdefault(word, len(vocabulary))
            row[index] = row.get(index, 0.0) + 1.0
        rows.append(row)
    return [[row.get(i, 0.0) for i in range(len(vocabulary))] for row in rows]


def test_sentences_are_verbatim_spans_split_at_ends_and_blank_lines() -> None:
    spans = split_sentences(GLOBAL)
    quotes = [GLOBAL[a:b] for a, b in spans]
    assert quotes == [
        'The "global" statement is a declaration which holds for the entire\ncurrent code '
        'block.',
        'It means that the listed identifiers are to be\ninterpreted as globals.',
        'Names listed in a "global" statement must not be used in the same code\nblock '
        'textually preceding that "global" statement.']
    text = "Use e.g. a list.  Then stop!\n\n   >>> f()\n   42\n\nDone"
    assert [text[a:b] for a, b in split_sentences(text)] == [
        "Use e.g. a list.", "Then stop!", ">>> f()\n   42", "Done"]


def test_an_answer_cut_mid_sentence_is_trimmed_to_its_last_full_sentence() -> None:
    assert trim_to_sentence(" It is a declaration. ") == ("It is a declaration.", False)
    assert trim_to_sentence('It is a "global" name. It is a built-in function that is used to'
                            ) == ('It is a "global" name.', True)
    assert trim_to_sentence('He said "stop." Then the') == ('He said "stop."', True)
    assert trim_to_sentence("The with statement is used to wrap (see section") == ("", True)
    assert trim_to_sentence("   ") == ("", False)


def test_negation_cues_outside_quotes_and_content_words() -> None:
    assert has_negation("The global statement does not do anything.")
    assert has_negation("It isn't a function.")
    assert not has_negation('The operators "is" and "is not" test identity.')
    assert not has_negation("A notable knot.")
    assert content_words("The statements are declarations of the names") == {
        "statement", "declaration", "name"}


async def test_a_verbatim_answer_is_supported_with_its_passage_quoted() -> None:
    answer = ('The "global" statement is a declaration which holds for the entire current '
              'code block.')
    result = await check_support(answer, PASSAGES, bag_of_words, question="What is global?")
    assert result["verdict"] == "supported"
    assert result["answer"] == answer and result["trimmed"] is False
    assert result["answer_of_record"] is None
    assert [s["supported"] for s in result["sentences"]] == [True]
    first = result["evidence"][0]
    assert first["topic"] == "global" and first["source"] == "pydoc_data.topics:global"
    assert first["quote"].strip("… ") in GLOBAL  # quoted verbatim
    assert "declaration which holds for the entire\ncurrent code block." in first["quote"]


async def test_a_negated_answer_is_not_supported_and_the_passage_is_the_answer_of_record(
) -> None:
    answer = 'The "global" statement is not a declaration which holds for the entire code block.'
    result = await check_support(answer, PASSAGES, bag_of_words,
                                 question='What does the "global" statement do?')
    assert result["verdict"] == "not supported"
    assert result["sentences"][0]["negation_mismatch"] is True
    assert result["evidence"][0]["topic"] == "global"
    assert result["answer_of_record"] == result["evidence"][0]["quote"]
    assert result["answer_of_record"].strip("… ") in GLOBAL


async def test_one_grounded_and_one_invented_sentence_is_partly_supported() -> None:
    answer = ('"pass" is a null operation - when it is executed, nothing happens. '
              'Python compiles pass statements into machine code for speed.')
    result = await check_support(answer, PASSAGES, bag_of_words)
    assert result["verdict"] == "partly"
    assert [s["supported"] for s in result["sentences"]] == [True, False]
    assert result["sentences"][1]["coverage"] < 0.9  # "compiles", "machine", "code", "speed"
    assert result["evidence"][0]["topic"] == "pass"


async def test_a_truncated_answer_without_a_full_sentence_is_not_supported() -> None:
    result = await check_support('The "global" statement is a declaration which', PASSAGES,
                                 bag_of_words, question="What is global?")
    assert result == {**result, "answer": "", "trimmed": True, "verdict": "not supported",
                      "sentences": []}
    assert result["answer_of_record"]


async def test_bad_input_is_refused_with_what_is_wrong() -> None:
    with pytest.raises(ValueError, match="no passages"):
        await check_support("x.", [], bag_of_words)
    with pytest.raises(ValueError, match="passage 1 has no text"):
        await check_support("x.", [PASSAGES[0], {"text": "  "}], bag_of_words)
    with pytest.raises(ValueError, match="similarity threshold"):
        await check_support("x.", PASSAGES, bag_of_words, similarity=1.5)

    async def short(texts: list[str]) -> list[list[float]]:
        return [[1.0]]

    with pytest.raises(ValueError, match="returned 1 vectors"):
        await check_support("One. Two.", PASSAGES, short)


class TestSupportContract(ToolContract):
    @pytest.fixture
    def tool(self) -> Any:
        return ReportSupportTool()

    @pytest.fixture
    def valid_arguments(self) -> dict[str, Any]:
        return {"answer": "It is a null operation.", "passages": PASSAGES,
                "question": "What does pass do?", "embedding": "fake/embedding"}

    @pytest.fixture
    def invalid_arguments(self) -> dict[str, Any]:
        return {"answer": "x", "passages": []}


async def test_the_tool_embeds_through_the_gateway_and_refuses_a_bad_model(tool_context: Any
                                                                           ) -> None:
    tool = ReportSupportTool()
    result = await tool.run({"answer": '"pass" is a null operation - when it is executed, '
                                       "nothing happens.",
                             "passages": PASSAGES, "embedding": "fake/embedding"},
                            tool_context)
    assert result["verdict"] == "supported"
    assert result["evidence"][0]["topic"] == "pass"
    with pytest.raises(ToolInputError, match="must be 'provider/model'"):
        await tool.run({"answer": "x.", "passages": PASSAGES, "embedding": "nomodel"},
                       tool_context)
    with pytest.raises(ToolInputError, match="passage 0 has no text"):
        await tool.run({"answer": "x.", "passages": [{"text": ""}],
                        "embedding": "fake/embedding"}, tool_context)


class _Retriever:
    """A retriever as far as ``report.support`` needs one (it never searches here)."""

    def __init__(self, embedder: Any) -> None:
        if embedder is not None:
            self.embedder = embedder

    async def index(self, documents: Any, *, collection: str = "default") -> dict[str, int]:
        return {}

    async def search(self, query: str, *, top_k: int = 5, collection: str = "default") -> list:
        return []

    async def get_context(self, query: str, *, top_k: int = 5, max_tokens: int = 1500,
                          collection: str = "default") -> list:
        return []


class _Embedder:
    def __init__(self) -> None:
        self.calls = 0

    async def embed(self, texts: list[str]) -> list[list[float]]:
        self.calls += 1
        return await bag_of_words(texts)


def _stack_with(retriever: Any) -> Any:
    from flowyard import Stack, hookimpl

    class Plugin:
        @hookimpl
        def register_retrievers(self, register: Any, config: Any, services: Any) -> None:
            register("test", retriever)

    return Stack([Plugin()], config={"storage": {"url": "memory://"}})


async def test_without_an_embedding_model_the_retrievers_embedder_is_used() -> None:
    from flowyard import ToolContext

    embedder = _Embedder()
    async with _stack_with(_Retriever(embedder)) as stack:
        result = await ReportSupportTool().run(
            {"answer": '"pass" is a null operation - when it is executed, nothing happens.',
             "passages": PASSAGES, "embedding": ""}, ToolContext(stack=stack))
    assert result["verdict"] == "supported" and embedder.calls == 1
    async with _stack_with(_Retriever(None)) as stack:
        with pytest.raises(ToolError, match="declares no `embedder`"):
            await ReportSupportTool().run({"answer": "x.", "passages": PASSAGES},
                                          ToolContext(stack=stack))
