"""The ``report.support`` tool: check an answer against its retrieved passages, pick verbatim
evidence quotes and give a support verdict (method in :mod:`flowyard_report.support`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from flowyard import BaseTool, ToolContext, ToolError, ToolInputError

from flowyard_report.support import (
    DEFAULT_COVERAGE,
    DEFAULT_SIMILARITY,
    Embed,
    check_support,
)

__all__ = ["ReportSupportTool", "embedder_for"]


def embedder_for(context: ToolContext, embedding: str | None) -> Embed:
    """Return the embedding function the check uses.

    Args:
        context: the calling step's context (its stack gives the models and the retriever).
        embedding: ``"provider/model"`` to embed through the stack's LLM gateway
            (``stack.llm.embed``), or None (or ``""``) for the embedder of the stack's retriever: a
            retriever that embeds declares it with an ``embedder`` attribute whose async
            ``embed(texts)`` returns one vector per text (flowyard-chroma's does; the check
            then uses the same model as the retrieval, all-MiniLM-L6-v2 by default).

    Raises:
        ToolInputError: ``embedding`` is not ``provider/model``.
        ToolError: no ``embedding`` was given and the stack's retriever declares no embedder.
    """
    if embedding:
        provider, sep, model = embedding.partition("/")
        if not (sep and provider and model):
            raise ToolInputError(f"report.support: embedding {embedding!r} must be "
                                 "'provider/model'", tool="report.support")

        async def via_gateway(texts: list[str]) -> Sequence[Sequence[float]]:
            return await context.stack.llm.embed(texts, model=embedding)

        return via_gateway
    retriever = context.stack.retriever()
    bind = getattr(retriever, "bind", None)
    if callable(bind):
        bind(context.stack)
    embedder = getattr(retriever, "embedder", None)
    if embedder is None or not callable(getattr(embedder, "embed", None)):
        raise ToolError(f"report.support: the stack's retriever {type(retriever).__name__} "
                        "declares no `embedder`; pass `embedding: provider/model`",
                        tool="report.support")

    async def via_retriever(texts: list[str]) -> Sequence[Sequence[float]]:
        vectors = await embedder.embed(texts)
        return vectors.tolist() if hasattr(vectors, "tolist") else vectors

    return via_retriever


class ReportSupportTool(BaseTool):
    """``report.support``: is an answer supported by the passages it was generated from?

    Trims the answer to its last full sentence, judges each sentence against the passages'
    sentences (embedding similarity, content-word coverage, negation agreement) and returns a
    verdict (``supported``, ``partly``, ``not supported``) with one to three verbatim quotes
    of the passages as evidence; see :func:`flowyard_report.support.check_support` for the
    output and ``docs/plugins/report.md`` for the method and its calibration.
    """

    name = "report.support"
    description = (
        "Check an answer against the retrieved passages it was generated from: trim it to its "
        "last full sentence, give a verdict (supported, partly, not supported) computed from "
        "sentence embeddings, word coverage and negation, and quote one to three passages "
        "verbatim as evidence (for an unsupported answer, the passage closest to the question "
        "is the answer of record).")
    parameters = {
        "type": "object",
        "properties": {
            "answer": {"type": "string", "description": "the answer to check"},
            "passages": {
                "type": "array", "minItems": 1,
                "items": {"type": "object", "required": ["text"],
                          "properties": {"text": {"type": "string", "minLength": 1},
                                         "source": {"type": "string"},
                                         "topic": {"type": "string"}}},
                "description": "the retrieved passages, best first (e.g. rag.context's "
                               "`chunks`): text, and source or topic"},
            "question": {"type": "string",
                         "description": "the question; the evidence for an unsupported "
                                        "answer is chosen by it"},
            "similarity": {"type": "number", "minimum": 0, "maximum": 1,
                           "default": DEFAULT_SIMILARITY,
                           "description": "least cosine similarity of a supported sentence"},
            "coverage": {"type": "number", "minimum": 0, "maximum": 1,
                         "default": DEFAULT_COVERAGE,
                         "description": "least share of a sentence's content words found "
                                        "in the passages"},
            "max_evidence": {"type": "integer", "minimum": 1, "maximum": 10, "default": 3,
                             "description": "most passages quoted"},
            "max_quote_chars": {"type": "integer", "minimum": 80, "default": 600,
                                "description": "longest quote per passage, in characters"},
            "embedding": {"type": "string",
                          "description": "provider/model to embed with (default, or "
                                         "empty: the embedder of the stack's retriever)"},
        },
        "required": ["answer", "passages"],
        "additionalProperties": False,
    }
    idempotent = True
    side_effects: Sequence[str] = ()

    async def run(self, arguments: dict[str, Any], context: ToolContext) -> dict[str, Any]:
        """Check the answer.

        Returns:
            the result of :func:`~flowyard_report.support.check_support`: ``answer``
            (trimmed), ``trimmed``, ``verdict`` (one of ``supported``, ``partly``, ``not
            supported``), ``sentences``, ``evidence`` (``topic``, ``source``, ``quote``,
            ``similarity``), ``answer_of_record`` and ``method``.

        Raises:
            ToolInputError: a passage without text, a threshold outside 0..1, a bad
                ``embedding``.
            ToolError: no embedder (see :func:`embedder_for`), or the embedder returned
                unusable vectors.
        """
        embed = embedder_for(context, arguments.get("embedding"))
        try:
            return await check_support(
                arguments["answer"], arguments["passages"], embed,
                question=arguments.get("question"),
                similarity=arguments.get("similarity", DEFAULT_SIMILARITY),
                coverage=arguments.get("coverage", DEFAULT_COVERAGE),
                max_evidence=arguments.get("max_evidence", 3),
                max_quote_chars=arguments.get("max_quote_chars", 600))
        except ValueError as exc:
            if "embedder" in str(exc):
                raise ToolError(f"report.support: {exc}", tool=self.name) from exc
            raise ToolInputError(f"report.support: {exc}", tool=self.name) from exc

