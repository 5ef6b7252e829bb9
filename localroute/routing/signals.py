r"""Keyword signals for the routing policy: the defaults (models.toml can add to them or replace them)
and the matcher that counts their hits in a prompt.

The defaults are chosen for what makes a request hard for a small model in general (multi-step math,
formal reasoning, code, expert domains, open-ended analysis) or easy (transforming given text,
greetings), not for any one benchmark's subjects.

Patterns are searched in the lower-cased prompt, so they are written in lower case. Each one starts with
a literal character where it can, because `re` then jumps from one occurrence of that character to the
next instead of trying a match at every position; a fixed-width lookbehind checks what must come before
(`%(?<=\d%)`: a percent sign after a digit). Roman numerals count from the second line on.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence

from localroute.config.routing import Signal

DEFAULT_SIGNALS: tuple[Signal, ...] = (
    Signal(
        name="negation",  # "which is NOT", "all EXCEPT": questions built to trip a quick reader
        weight=0.4,
        max_hits=3,
        words=["not", "except", "least", "false", "incorrect", "never", "cannot", "neither",
               "nor", "unless", "isn't", "doesn't", "wouldn't"],
    ),
    Signal(
        name="compound",  # several statements or parts to judge at once
        weight=0.3,
        max_hits=2,
        words=["respectively", "both", "each of the following"],
        patterns=[r"(?:statement|scenario|step)\s*\(?\d", r"part\s*\(?\d", r"case\s*\(?\d",
                  r"\n\s*(?:i{1,3}|iv|v)[.)]\s", r"\n\s*\(?[ivx]{1,3}\)\s"],
    ),
    Signal(
        name="math",
        weight=0.25,
        max_hits=3,
        words=[
            "calculate", "compute", "solve", "equation*", "integral*", "derivative*", "probability",
            "percent*", "ratio", "average", "how many", "how much", "total", "sum", "product of",
            "remainder", "divisible", "prime", "factor*", "polynomial*", "matrix", "matrices",
            "vector*", "eigen*", "logarithm*", "exponent*", "modulo", "fraction*", "velocity",
            "acceleration", "expected value", "variance", "interest rate", "per hour", "each",
            # the steps of a word problem
            "twice", "half", "times as", "more than", "less than", "fewer", "remaining", "altogether",
        ],
        # an operator between numbers ("3 + 4", "2.5*x" does not count), a price, a percentage
        patterns=[r"[-+*/×÷^=<>](?:(?<=\d.)|(?<=\d\s.))\s*\(?\d", r"\$\d",  # noqa: RUF001
                  r"%(?<=\d%)|%(?<=\d\s%)"],
    ),
    Signal(
        name="reasoning",
        weight=0.4,
        max_hits=2,
        words=[
            "prove", "proof", "derive", "deduce", "theorem", "lemma", "if and only if", "implies",
            "contradiction", "valid", "fallacy", "logically", "step by step", "reason*", "justify",
            "why", "infer*", "hypothes*", "counterexample", "necessarily", "sufficient",
        ],
    ),
    Signal(
        name="code",
        weight=0.5,
        max_hits=2,
        words=[
            "code", "function", "implement*", "algorithm*", "debug*", "compile*", "python",
            "javascript", "typescript", "java", "rust", "golang", "sql", "regex", "api", "bug",
            "complexity", "refactor*", "recursion", "recursive", "class", "script", "program*",
        ],
        # a fence, a Python def, a line ending in { } or ;, a call followed by { or :
        patterns=[r"```", r"def (?<=\bdef )\w+\(", r"\n(?:(?<=[{};]\n)|(?<=[{};]\s\n))",
                  r"\((?<=\w\()[^)]*\)\s*[{:]"],
    ),
    Signal(
        name="analysis",
        weight=0.3,
        max_hits=2,
        words=[
            "analy*", "evaluat*", "compare", "contrast", "critique", "assess*", "trade-off*",
            "tradeoff*", "design", "architect*", "strateg*", "optimi*", "in detail", "essay",
            "argue", "implications", "consequences", "pros and cons", "plan",
        ],
    ),
    Signal(
        name="expert",
        weight=0.3,
        max_hits=2,
        words=[
            "statute", "plaintiff", "defendant", "court", "jurisdiction", "liability", "negligen*",
            "tort", "contract*", "constitutional", "diagnos*", "patient", "symptom*", "dosage",
            "clinical", "syndrome", "prognosis", "pharmac*", "molecul*", "quantum", "thermodynamic*",
            "econometric*", "regression", "gdp", "inflation", "fiscal",
        ],
    ),
    Signal(
        name="constraints",
        weight=0.2,
        max_hits=3,
        words=["must", "exactly", "at least", "at most", "without", "only if", "ensure", "format"],
    ),
    Signal(
        name="followup",  # a later turn that builds on an earlier answer: the context must be kept
        weight=0.3,
        max_hits=2,
        words=["previous", "earlier", "your answer", "your response", "you said", "you mentioned",
               "instead", "again"],
    ),
    Signal(
        name="simple_task",
        weight=-0.6,
        max_hits=1,
        words=[
            "translate", "translation", "summarize", "summarise", "summary", "tl;dr", "classify",
            "categorize", "sentiment", "rephrase", "paraphrase", "rewrite", "fix the grammar",
            "spell*", "extract", "list the", "make a list", "define", "definition of", "synonym*",
            "capital of", "convert", "format this",
        ],
    ),
    Signal(
        name="chitchat",
        weight=-0.8,
        max_hits=1,
        words=[
            "hi", "hello", "hey", "thanks", "thank you", "good morning", "how are you", "joke",
            "bye", "what's up",
        ],
    ),
)  # fmt: skip


# Punctuation and whitespace become one plain space (apostrophes, hyphens and semicolons stay inside
# words: "isn't", "trade-off", "tl;dr"). Every other ASCII character maps to itself, so that translate
# never takes its slow path of a failed lookup per character.
_SEPARATORS = str.maketrans(
    {
        **{chr(i): chr(i) for i in range(128)},
        **{c: " " for c in string.punctuation if c not in "'-;"},
        **{chr(i): " " for i in range(0x3001) if chr(i).isspace()},
    }
)
_Node = dict[str, "_Node"]
# Escapes that mean the same in lower-cased text (classes, anchors, whitespace, escaped punctuation).
_PLAIN_ESCAPE = re.compile(r"\\(?:[dDwWsSbBAZnrtfv]|[^A-Za-z0-9])")


class SignalMatcher:
    """Counts each signal's hits in a text, capped at its `max_hits`.

    A word counts every time it occurs, once for each signal that lists it whole or by a prefix; a
    phrase or a pattern counts once if it occurs at all. A phrase must start at a word.
    """

    def __init__(self, signals: Sequence[Signal]) -> None:
        self.signals = tuple(signals)
        exact: dict[str, set[int]] = {}
        stems: dict[str, set[int]] = {}
        self._gated: dict[str, list[tuple[int, str]]] = {}  # first word -> (signal, phrase)
        self._ungated: list[tuple[int, str]] = []
        self._lowered: list[tuple[int, re.Pattern[str]]] = []  # searched in the lower-cased text
        self._cased: list[tuple[int, re.Pattern[str]]] = []  # IGNORECASE, in the text as written
        for i, s in enumerate(signals):
            for w in dict.fromkeys(w.lower() for w in s.words):
                if not _is_phrase(w):
                    (stems if w.endswith("*") else exact).setdefault(w.rstrip("*"), set()).add(i)
                    continue
                phrase = w.rstrip("*")
                first = phrase.split()[0] if phrase.strip() else ""
                if first and not _is_phrase(first):
                    self._gated.setdefault(first, []).append((i, phrase))
                else:  # punctuation splits its first word: look for it everywhere
                    self._ungated.append((i, phrase))
            for p in s.patterns:
                if _caseless(p):
                    self._lowered.append((i, re.compile(p)))
                else:
                    self._cased.append((i, re.compile(p, re.IGNORECASE)))
        self._key_len = min([4, *map(len, stems)])
        self._stems: dict[str, tuple[tuple[str, frozenset[int]], ...]] = {}
        for p, ids in stems.items():
            key = p[: self._key_len]
            self._stems[key] = (*self._stems.get(key, ()), (p, frozenset(ids)))
        self._exact = {w: frozenset(ids) | self._stem_ids(w) for w, ids in exact.items()}
        for first in self._gated:
            self._exact.setdefault(first, self._stem_ids(first))
        # One regex finds every word that may count and the first words of phrases: `re` jumps from
        # space to space and rejects most words on their first letters, in C. That is several times
        # faster than splitting the text and looking up each word in Python.
        tree = _trie([*((w, False) for w in self._exact), *((p, True) for p in stems)])
        self._finder = re.compile(f" ({tree})") if tree else None

    def hits(self, text: str) -> tuple[tuple[str, int], ...]:
        """(signal name, capped hits) for every signal that fired in `text`, in signal order."""
        lowered = text.lower()
        counts = [0] * len(self.signals)
        found: Counter[str] = Counter()
        if self._finder is not None:
            found.update(self._finder.findall(f" {lowered.translate(_SEPARATORS)} "))
            found.pop("", None)
        exact = self._exact
        for word, n in found.items():
            ids = exact.get(word)
            for i in self._stem_ids(word) if ids is None else ids:
                counts[i] += n
        for first in found.keys() & self._gated.keys():
            for i, phrase in self._gated[first]:
                counts[i] += phrase in lowered
        for i, phrase in self._ungated:
            counts[i] += phrase in lowered
        for i, rx in self._lowered:
            counts[i] += rx.search(lowered) is not None
        for i, rx in self._cased:
            counts[i] += rx.search(text) is not None
        sigs = self.signals
        return tuple((sigs[i].name, min(n, sigs[i].max_hits)) for i, n in enumerate(counts) if n)

    def _stem_ids(self, word: str) -> frozenset[int]:
        ids: frozenset[int] = frozenset()
        for stem, more in self._stems.get(word[: self._key_len], ()):
            if word.startswith(stem):
                ids |= more
        return ids


def _trie(entries: list[tuple[str, bool]]) -> str:
    """A regex for whole words (False) and word prefixes (True), one branch per leading letter; a word
    must be followed by a space."""
    root: _Node = {}
    for word, prefix in entries:
        node = root
        for ch in word:
            node = node.setdefault(ch, {})
        node["*" if prefix else ""] = {}

    def emit(node: _Node) -> str:
        if "*" in node:
            return "[^ ]*"  # a prefix takes every word that starts with it
        alts = [re.escape(ch) + emit(child) for ch, child in sorted(node.items()) if ch]
        alts += ["(?= )"] if "" in node else []
        return alts[0] if len(alts) == 1 else "(?:" + "|".join(alts) + ")"

    return emit(root) if root else ""


def _is_phrase(word: str) -> bool:
    """Words with a space, or with punctuation that splits words, are looked for as substrings."""
    bare = word.rstrip("*")
    return " " in bare or bare.translate(_SEPARATORS) != bare


def _caseless(pattern: str) -> bool:
    """True if `pattern` has no upper-case letter outside escapes like \\D or \\S, and does not turn
    IGNORECASE off. Searched without IGNORECASE in lower-cased text, it then matches where it would with
    IGNORECASE in the original (but for a few non-ASCII letters such as the long s), and `re` can jump
    to its literal first character."""
    rest = _PLAIN_ESCAPE.sub("", pattern)
    return "\\" not in rest and "-i" not in rest and rest == rest.lower()
