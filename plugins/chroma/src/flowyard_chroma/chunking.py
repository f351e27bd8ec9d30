"""Token-based chunking with overlap, measured in all-MiniLM-L6-v2 word pieces.

A chunk is a slice of the original text (never re-joined tokens), so its text reads exactly
as the source did. Chunk boundaries move back to the start of a word when a window would
end inside one.
"""

from __future__ import annotations

import attrs

from flowyard_chroma.embeddings import minilm_tokenizer

__all__ = ["TextChunk", "chunk_text", "truncate_to_tokens"]


@attrs.frozen
class TextChunk:
    """One piece of a text.

    Args:
        text: the slice of the source text.
        start, end: character offsets of the slice in the source text.
        tokens: its size in word pieces.
        index: position of the chunk in its document (0-based).
    """

    text: str
    start: int
    end: int
    tokens: int
    index: int


def chunk_text(text: str, *, chunk_tokens: int = 200, overlap: int = 40) -> list[TextChunk]:
    """Split ``text`` into chunks of at most ``chunk_tokens`` word pieces; consecutive chunks
    share about ``overlap`` word pieces. Whitespace-only text gives no chunks.

    Raises:
        ValueError: ``chunk_tokens`` < 1, or ``overlap`` not in [0, chunk_tokens).
    """
    if chunk_tokens < 1:
        raise ValueError(f"chunk_tokens must be >= 1, got {chunk_tokens}")
    if not 0 <= overlap < chunk_tokens:
        raise ValueError(f"overlap must be in [0, chunk_tokens), got {overlap}")
    if not text.strip():
        return []
    encoding = minilm_tokenizer().encode(text, add_special_tokens=False)
    offsets = encoding.offsets
    words = encoding.word_ids
    n = len(offsets)
    if n == 0:
        return []
    chunks: list[TextChunk] = []
    start = 0
    while start < n:
        end = min(start + chunk_tokens, n)
        if end < n:
            # Do not cut a word in two: back off to the first piece of the word at ``end``.
            cut = end
            while cut > start + 1 and words[cut] is not None and words[cut] == words[cut - 1]:
                cut -= 1
            if cut > start + chunk_tokens // 2:
                end = cut
        char_start = offsets[start][0]
        char_end = offsets[end - 1][1]
        chunks.append(TextChunk(text=text[char_start:char_end], start=char_start,
                                end=char_end, tokens=end - start, index=len(chunks)))
        if end >= n:
            break
        next_start = max(end - overlap, start + 1)
        # Start the next chunk on a word boundary too.
        while next_start > start + 1 and words[next_start] is not None and \
                words[next_start] == words[next_start - 1]:
            next_start -= 1
        start = next_start
    return chunks


def truncate_to_tokens(text: str, max_tokens: int) -> str:
    """Return the longest prefix of ``text`` of at most ``max_tokens`` word pieces."""
    if max_tokens <= 0:
        return ""
    encoding = minilm_tokenizer().encode(text, add_special_tokens=False)
    if len(encoding.offsets) <= max_tokens:
        return text
    return text[:encoding.offsets[max_tokens - 1][1]]
