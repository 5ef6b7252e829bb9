"""How far a cheap local answer agrees with a paid one: the label of a shadow run.

Cheap and deterministic, no model call: parsed-JSON equality when both answers are JSON; normalised
exact match when both are short (a number, a name, a choice letter); else token F1 (SQuAD's answer
overlap) over normalised words. See docs/learning.md for why and what was rejected.
"""

from __future__ import annotations

import collections
import json
import re
import unicodedata

SHORT_WORDS = 5
_PUNCT = re.compile(r"[^\w\s]")
_ARTICLES = frozenset({"a", "an", "the"})
_NOTHING = object()


def normalise(text: str) -> list[str]:
    """NFKC, case-folded, punctuation and articles dropped: the words that carry the answer."""
    text = _PUNCT.sub(" ", unicodedata.normalize("NFKC", text).casefold())
    return [w for w in text.split() if w not in _ARTICLES]


def _json(text: str) -> object:
    s = text.strip()
    if not s or s[0] not in "[{":
        return _NOTHING
    try:
        return json.loads(s)
    except ValueError:
        return _NOTHING


def agreement(paid: str, local: str) -> float:
    """In [0, 1]: 1 when the local answer says what the paid one says."""
    a, b = _json(paid), _json(local)
    if a is not _NOTHING and b is not _NOTHING:
        return float(a == b)
    wa, wb = normalise(paid), normalise(local)
    if not wa or not wb:
        return float(wa == wb)
    if len(wa) <= SHORT_WORDS and len(wb) <= SHORT_WORDS:
        return float(wa == wb)
    common = sum((collections.Counter(wa) & collections.Counter(wb)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(wb), common / len(wa)
    return 2 * precision * recall / (precision + recall)
