"""Turn a stream of LLM token deltas into speakable pieces, releasing the first one as early as possible."""

from __future__ import annotations

import re
from collections.abc import Iterator

# A sentence ends at . ! ? (or their Spanish/ellipsis forms) followed by white space.
_SENTENCE_END = re.compile(r"[.!?…]+[\"')\]]*\s")
# A clause can end at , ; : when enough words came before it (to start speaking sooner).
_CLAUSE_END = re.compile(r"[,;:]\s")
# A sentence that ends the text so far: the space after it comes with the model's next token, which is not
# waited for. A period counts only after a word of two letters or more ("3." may be "3.5", "U." may be "U.S.").
_ENDS_HERE = re.compile(r"(?:[!?…]+|(?<![.\w])[^\W\d_]{2,}\.)[\"')\]]*$")
_ABBREVIATIONS = {"mr.", "mrs.", "ms.", "dr.", "st.", "sr.", "sra.", "vs.", "etc.", "e.g.", "i.e.", "no."}


def clean_for_speech(text: str) -> str:
    """Drop markup a TTS would read aloud (markdown emphasis, bullets, emoji) and squeeze spaces."""
    text = re.sub(r"[*_`#>|~]+", " ", text)
    text = re.sub(r"[\U0001F000-\U0001FAFF\u2600-\u27BF]", " ", text)
    return re.sub(r"\s+", " ", text).strip()


class SentenceChunker:
    """Accumulates token deltas; `push` yields finished pieces, `flush` yields the rest."""

    def __init__(self, first_clause_min_words: int = 4, clause_min_words: int = 12) -> None:
        self._buffer = ""
        self._first_clause_min_words = first_clause_min_words
        self._clause_min_words = clause_min_words
        self._emitted = 0

    def push(self, delta: str) -> Iterator[str]:
        self._buffer += delta
        while True:
            cut = self._find_cut()
            if cut is None:
                return
            piece, self._buffer = self._buffer[:cut], self._buffer[cut:]
            piece = clean_for_speech(piece)
            if any(c.isalnum() for c in piece):  # not a lone ".." after an early cut
                self._emitted += 1
                yield piece

    def flush(self) -> Iterator[str]:
        piece = clean_for_speech(self._buffer)
        self._buffer = ""
        if piece:
            self._emitted += 1
            yield piece

    def _find_cut(self) -> int | None:
        for match in _SENTENCE_END.finditer(self._buffer):
            words = self._buffer[: match.start() + 1].split()
            if words and words[-1].lower() in _ABBREVIATIONS:
                continue
            if len(words) == 1 and re.fullmatch(r"\d+\.", words[0]):
                continue  # "1." opening a list item, not an end
            return match.end()
        min_words = self._first_clause_min_words if self._emitted == 0 else self._clause_min_words
        for match in _CLAUSE_END.finditer(self._buffer):
            if len(self._buffer[: match.start()].split()) >= min_words:
                return match.end()
        if _ENDS_HERE.search(self._buffer) and self._buffer.split()[-1].lower() not in _ABBREVIATIONS:
            return len(self._buffer)
        return None
