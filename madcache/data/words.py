"""Word splitting with character spans: whitespace/punctuation words (MAD.md, token selection)."""

from __future__ import annotations

import re

from madcache.data.records import Word

# A word is a run of letters/digits (with inner apostrophes or hyphens, "don't", "t-shirt"),
# or a single punctuation character.
_WORD = re.compile(r"[^\W_]+(?:['\u2019-][^\W_]+)*|[^\w\s]|_", re.UNICODE)


def split_words(text: str) -> tuple[Word, ...]:
    return tuple(Word(m.group(), m.start(), m.end()) for m in _WORD.finditer(text))
