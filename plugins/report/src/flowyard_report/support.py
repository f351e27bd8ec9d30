"""Checking an answer against the passages it was generated from (no bigger model needed).

The method, sentence by sentence (see ``docs/plugins/report.md``, "The support check"):

1. The answer and the passages are cut into sentences (:func:`split_sentences`: ``.``, ``!``
   or ``?`` followed by white space and an upper-case letter, a digit, a quote or a
   parenthesis, or a blank line; line breaks inside a sentence are kept). An answer that
   does not end with a full sentence (the token limit or a stop sequence cut it) is trimmed
   to its last full sentence first (:func:`trim_to_sentence`; an answer without one full
   sentence becomes empty and is not supported).
2. Every answer sentence and every sentence of the passages is embedded (any embedder that
   returns one vector per text; the cosine of L2-normalised vectors is computed here).
3. An answer sentence is **supported** when all three hold:

   * its best cosine similarity with a passage sentence is at least ``similarity``
     (a calibrated threshold, :data:`DEFAULT_SIMILARITY`);
   * at least ``coverage`` of its content words (lower-cased words without stop words, a
     trailing ``s`` removed) occur in the passages (:data:`DEFAULT_COVERAGE`): an answer that
     brings in terms the passages never use is not grounded in them;
   * it and its best-matching passage sentence agree on negation (both or neither contain
     ``not``, ``no``, ``never``, ``nothing``, ``cannot``, ``n't``... outside quotes, where
     ``"is not"`` names an operator): the most common way a
     small model contradicts a passage while staying close to it in embedding space is to
     negate it ("The global statement does not do anything").

4. The answer is **supported** when every sentence is, **partly** when some are, **not
   supported** when none is (or it is empty).

The thresholds were calibrated on ``examples/python-docs-qa/eval/questions.yaml``: claims
written from the reference (supported) against contradicting claims (not supported), chosen
on the odd-numbered questions and checked on the even-numbered ones (``docs/plugins/report.md``,
"Calibration"; ``examples/python-docs-qa/eval/evaluate.py --calibrate`` repeats it).
"""

from __future__ import annotations

import math
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["DEFAULT_SIMILARITY", "DEFAULT_COVERAGE", "VERDICTS", "split_sentences",
           "trim_to_sentence", "content_words", "has_negation", "check_support", "Embed"]

#: Least cosine similarity between an answer sentence and its best passage sentence for the
#: answer sentence to count as supported (calibrated, see the module docstring).
DEFAULT_SIMILARITY = 0.82
#: Least share (0..1) of an answer sentence's content words that must occur in the passages.
DEFAULT_COVERAGE = 0.9
#: The verdicts, best first.
VERDICTS = ("supported", "partly", "not supported")

#: ``await embed(texts)`` returns one vector (a sequence of floats) per text.
Embed = Callable[[list[str]], Awaitable[Sequence[Sequence[float]]]]

_BOUNDARY = re.compile(r"([.!?][\"')\]]*)\s+(?=[\"'(\[A-Z0-9`])|\n[ \t]*\n\s*")
_END = re.compile(r"[.!?][\"')\]`]*\s*\Z")
_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_NEGATION = re.compile(r"\b(?:not|no|never|none|nothing|neither|nor|cannot)\b|n't\b", re.I)
_QUOTED = re.compile(r'"[^"\n]{0,40}"|`[^`\n]{0,40}`|\u201c[^\u201d\n]{0,40}\u201d')
_ABBREVIATIONS = re.compile(r"\b(?:e\.g|i\.e|etc|vs|cf|Mr|Dr|St)\.\Z")
_STOP = frozenset("""
a an the and or but if then else when while of to in on at by for with from as into onto
is are was were be been being it its this that these those there here which who whom whose
what how why can could may might must shall should will would do does did doing done has
have had having i you he she we they them their our your his her my me us so than too very
also just only any all each every both either some such same other another more most much
many few one two three used use uses using within without about above below between through
during before after again further once same own up down out over under off not no nor
""".split())


@dataclass(frozen=True)
class _Sentence:
    text: str
    start: int  # offset in the passage or answer it comes from, in characters
    end: int


def split_sentences(text: str) -> list[tuple[int, int]]:
    """Return the sentences of ``text`` as ``(start, end)`` character offsets, so that
    ``text[start:end]`` quotes each verbatim (surrounding white space excluded).

    A boundary is ``.``, ``!`` or ``?`` (optionally followed by closing quotes or brackets),
    then white space, then an upper-case letter, digit, opening quote, bracket or backtick;
    or a blank line (a paragraph, heading or code example ends there). ``e.g.``, ``i.e.``
    and ``etc.`` do not end a sentence.
    """
    spans: list[tuple[int, int]] = []
    start = 0
    for match in _BOUNDARY.finditer(text):
        end = match.end(1) if match.group(1) else match.start()
        if match.group(1) and _ABBREVIATIONS.search(text[start:end].rstrip("\"')]")):
            continue
        spans.append((start, end))
        start = match.end()
    spans.append((start, len(text)))
    out = []
    for a, b in spans:
        while a < b and text[a].isspace():
            a += 1
        while b > a and text[b - 1].isspace():
            b -= 1
        if b > a:
            out.append((a, b))
    return out


def trim_to_sentence(text: str) -> tuple[str, bool]:
    """Return ``(text, trimmed)``: ``text`` without surrounding white space when it ends with
    a full sentence (``.``, ``!`` or ``?``, optionally followed by closing quotes or
    brackets), else cut after its last full sentence with ``trimmed`` true. Text without any
    full sentence gives ``("", True)`` when it is not empty: nothing of it is a complete
    statement.
    """
    text = text.strip()
    if not text or _END.search(text):
        return text, False
    spans = split_sentences(text)
    for a, b in reversed(spans):
        if _END.search(text[a:b]):
            return text[:b], True
    return "", True


def content_words(text: str) -> set[str]:
    """Return the lower-cased words of ``text`` minus stop words, a trailing ``s`` removed
    from words longer than three letters (``statements`` and ``statement`` match).
    """
    words = set()
    for word in _WORD.findall(text.lower()):
        if word in _STOP or len(word) < 2:
            continue
        if len(word) > 3 and word.endswith("s") and not word.endswith("ss"):
            word = word[:-1]
        words.add(word)
    return words


def has_negation(text: str) -> bool:
    """Whether ``text`` contains a negation cue (``not``, ``no``, ``never``, ``n't``...)
    outside double quotes and backticks (``"is not"`` and ```not in``` name operators; they
    do not negate the sentence).
    """
    return _NEGATION.search(_QUOTED.sub(" ", text)) is not None


def _unit(vector: Sequence[float]) -> list[float]:
    values = [float(x) for x in vector]
    norm = math.sqrt(sum(x * x for x in values))
    if norm == 0.0 or not math.isfinite(norm):
        raise ValueError("the embedder returned a zero or non-finite vector")
    return [x / norm for x in values]


def _dot(a: Sequence[float], b: Sequence[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


def _excerpt(text: str, sentences: list[tuple[int, int]], best: int, max_chars: int) -> str:
    """Return the best sentence of a passage with its neighbours while they fit in
    ``max_chars`` characters, verbatim, with ``…`` where the passage goes on.
    """
    lo = hi = best
    while True:
        grown = False
        for cand in (hi + 1, lo - 1):
            if 0 <= cand < len(sentences):
                a = sentences[min(lo, cand)][0]
                b = sentences[max(hi, cand)][1]
                if b - a <= max_chars:
                    lo, hi = min(lo, cand), max(hi, cand)
                    grown = True
        if not grown:
            break
    a, b = sentences[lo][0], sentences[hi][1]
    quote = text[a:b]
    if b - a > max_chars:  # one sentence longer than the limit: cut at a word, marked
        quote = quote[:max_chars].rsplit(None, 1)[0]
        return ("… " if lo > 0 else "") + quote + " …"
    return ("… " if lo > 0 else "") + quote + (" …" if hi < len(sentences) - 1 else "")


async def check_support(
    answer: str,
    passages: Sequence[Mapping[str, Any]],
    embed: Embed,
    *,
    question: str | None = None,
    similarity: float = DEFAULT_SIMILARITY,
    coverage: float = DEFAULT_COVERAGE,
    max_evidence: int = 3,
    max_quote_chars: int = 600,
) -> dict[str, Any]:
    """Judge whether ``passages`` support ``answer`` and pick the evidence to quote.

    Args:
        answer: the answer text (trimmed to its last full sentence first).
        passages: the retrieved passages, best first: mappings with ``text`` and optionally
            ``source`` (e.g. ``"pydoc_data.topics:global"``; the part after the last ``:``
            is the topic) and ``topic``.
        embed: ``await embed(texts)`` returns one vector per text.
        question: the question; when the answer is not supported, the evidence and the answer
            of record are the passage sentences closest to it (else closest to the answer).
        similarity: least cosine similarity for a supported sentence (0..1).
        coverage: least share of content words found in the passages (0..1).
        max_evidence: most passages quoted (1..3 is sensible).
        max_quote_chars: longest quote per passage, in characters.

    Returns:
        ``{"answer": trimmed answer, "trimmed": bool, "verdict": one of VERDICTS,
        "supported_sentences": n, "sentences": [{"text", "supported", "similarity",
        "coverage", "negation_mismatch", "passage": index of the best passage}],
        "evidence": [{"topic", "source", "quote", "similarity", "passage": index}],
        "answer_of_record": the first evidence quote when the verdict is "not supported",
        else None, "method": {"similarity", "coverage"}}``. Similarities are rounded to
        4 decimals.

    Raises:
        ValueError: a passage without text, no passages, a threshold outside 0..1, or the
            embedder returned the wrong number of vectors or a zero vector.
    """
    for name, value in (("similarity", similarity), ("coverage", coverage)):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} threshold must be within 0..1, got {value!r}")
    if not passages:
        raise ValueError("no passages to check the answer against")
    texts: list[str] = []
    for i, passage in enumerate(passages):
        text = passage.get("text") if isinstance(passage, Mapping) else None
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"passage {i} has no text")
        texts.append(text)
    trimmed_answer, trimmed = trim_to_sentence(answer)
    answer_spans = split_sentences(trimmed_answer)
    answer_sentences = [trimmed_answer[a:b] for a, b in answer_spans]
    passage_spans = [split_sentences(t) for t in texts]
    flat: list[tuple[int, int]] = [(p, s) for p, spans in enumerate(passage_spans)
                                   for s in range(len(spans))]
    flat_texts = [texts[p][passage_spans[p][s][0]:passage_spans[p][s][1]] for p, s in flat]
    queries = answer_sentences + ([question] if question else [])
    vectors = await embed(queries + flat_texts)
    if len(vectors) != len(queries) + len(flat_texts):
        raise ValueError(f"the embedder returned {len(vectors)} vectors for "
                         f"{len(queries) + len(flat_texts)} texts")
    units = [_unit(v) for v in vectors]
    query_units, passage_units = units[:len(queries)], units[len(queries):]
    vocabulary = set().union(*(content_words(t) for t in texts))

    sentences = []
    # passage index -> (similarity, sentence index) of its sentence closest to a supported
    # answer sentence
    support_best: dict[int, tuple[float, int]] = {}
    for i, text in enumerate(answer_sentences):
        sims = [_dot(query_units[i], pu) for pu in passage_units]
        k = max(range(len(sims)), key=sims.__getitem__)
        p, s = flat[k]
        words = content_words(text)
        cov = len(words & vocabulary) / len(words) if words else 1.0
        mismatch = has_negation(text) != has_negation(flat_texts[k])
        ok = sims[k] >= similarity and cov >= coverage and not mismatch
        sentences.append({"text": text, "supported": ok, "similarity": round(sims[k], 4),
                          "coverage": round(cov, 4), "negation_mismatch": mismatch,
                          "passage": p})
        if ok:
            for j, sim in enumerate(sims):
                pj, sj = flat[j]
                if sim >= similarity and sim > support_best.get(pj, (-2.0, 0))[0]:
                    support_best[pj] = (sim, sj)
    n_ok = sum(1 for s in sentences if s["supported"])
    verdict = (VERDICTS[2] if n_ok == 0 else VERDICTS[0] if n_ok == len(sentences)
               else VERDICTS[1])

    if verdict != VERDICTS[2] and support_best:
        ranked = sorted(support_best.items(), key=lambda kv: -kv[1][0])
    else:
        # evidence for the question (or, without one, for the whole answer)
        target = query_units[-1] if question else (
            _unit([sum(col) for col in zip(*query_units, strict=True)]) if query_units else None)
        best_by_passage: dict[int, tuple[float, int]] = {}
        for j, pu in enumerate(passage_units):
            sim = _dot(target, pu) if target is not None else 0.0
            pj, sj = flat[j]
            if sim > best_by_passage.get(pj, (-2.0, 0))[0]:
                best_by_passage[pj] = (sim, sj)
        ranked = sorted(best_by_passage.items(), key=lambda kv: (-kv[1][0], kv[0]))
    evidence = []
    for p, (sim, s) in ranked[:max(1, max_evidence)]:
        passage = passages[p]
        source = str(passage.get("source") or "")
        topic = str(passage.get("topic") or source.rsplit(":", 1)[-1] or f"passage {p + 1}")
        evidence.append({"topic": topic, "source": source, "passage": p,
                         "similarity": round(sim, 4),
                         "quote": _excerpt(texts[p], passage_spans[p], s, max_quote_chars)})
    return {"answer": trimmed_answer, "trimmed": trimmed, "verdict": verdict,
            "supported_sentences": n_ok, "sentences": sentences, "evidence": evidence,
            "answer_of_record": evidence[0]["quote"] if verdict == VERDICTS[2] else None,
            "method": {"similarity": similarity, "coverage": coverage}}
