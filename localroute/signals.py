r"""Default keyword signals for the routing policy. models.toml can add to them or replace them.

Chosen for what makes a request hard for a small model in general (multi-step math, formal reasoning,
code, expert domains, open-ended analysis) or easy (transforming given text, greetings), not for any
one benchmark's subjects.

Patterns are searched in the lower-cased prompt, so they are written in lower case. Each one starts with
a literal character where it can, because `re` then jumps from one occurrence of that character to the
next instead of trying a match at every position; a fixed-width lookbehind checks what must come before
(`%(?<=\d%)`: a percent sign after a digit). Roman numerals count from the second line on.
"""

from __future__ import annotations

from localroute.routing_config import Signal

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
        patterns=[r"(?:statement|scenario|case|part|step)\s*\(?\d", r"\n\s*(?:i{1,3}|iv|v)[.)]\s",
                  r"\n\s*\(?[ivx]{1,3}\)\s"],
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
        ],
        patterns=[r"[0-9](?:\.[0-9]+)?\s*[-+*/×÷^=<>]\s*\(?[0-9]", r"\$\d", r"%(?<=\d%)|%(?<=\d\s%)"],
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
        patterns=[r"```", r"def (?<=\bdef )\w+\(", r"[{};]\s*\n", r"\((?<=\w\()[^)]*\)\s*[{:]"],
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
        name="simple_task",
        weight=-0.6,
        max_hits=1,
        words=[
            "translate", "translation", "summarize", "summarise", "summary", "tl;dr", "classify",
            "categorize", "sentiment", "rephrase", "paraphrase", "rewrite", "fix the grammar",
            "spell*", "extract", "list", "define", "definition of", "synonym*", "capital of",
            "convert", "format this",
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
