"""Bounds on the JSON schemas a client sends (`response_format.json_schema.schema`, a tool's
`parameters`). A schema becomes a llama.cpp grammar and a validator, and a hostile one could make
either take the worker's time or memory: deep nesting, huge enums, recursive `$ref`, patterns that
backtrack catastrophically. What passes here converts and validates in milliseconds."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

MAX_DEPTH = 24
MAX_NODES = 4_000
MAX_ENUM = 512
MAX_PATTERN = 256
MAX_REFS = 64
# A group that repeats and holds a quantifier itself, `(a+)+`, `(\w*)*`, `(a|aa)+`: the shapes that
# make a backtracking engine take exponential time. Refused rather than analysed further.
_NESTED_QUANTIFIER = re.compile(
    r"\((?:[^()\\]|\\.)*[+*}](?:[^()\\]|\\.)*\)\s*[+*{]"  # (a+)+, (\w*){2,}
    r"|\((?:[^()]*\|[^()]*)\)[+*]"  # (a|aa)+
)


def schema_problem(schema: Mapping[str, Any]) -> str | None:
    """Why `schema` is refused, or None."""
    nodes = 0
    defs: dict[str, Any] = {}
    stack: list[tuple[object, int, str]] = [(schema, 0, "#")]
    while stack:
        node, depth, path = stack.pop()
        nodes += 1
        if nodes > MAX_NODES:
            return f"the schema has more than {MAX_NODES} nodes"
        if depth > MAX_DEPTH:
            return f"the schema nests deeper than {MAX_DEPTH} levels"
        if isinstance(node, Mapping):
            defs[path] = node
            for key, value in node.items():
                if key == "enum" and isinstance(value, list) and len(value) > MAX_ENUM:
                    return f"an enum has {len(value)} values (at most {MAX_ENUM})"
                if key == "pattern" and isinstance(value, str) and (why := _pattern_problem(value)):
                    return why
                if key == "patternProperties" and isinstance(value, Mapping):
                    for pat in value:
                        if why := _pattern_problem(str(pat)):
                            return why
                if key == "$ref" and isinstance(value, str) and not value.startswith("#"):
                    return "only local '$ref's ('#/...') are allowed"
                stack.append((value, depth + 1, f"{path}/{key}"))
        elif isinstance(node, list):
            stack.extend((v, depth + 1, f"{path}/{i}") for i, v in enumerate(node))
    return _ref_cycle(defs)


def _pattern_problem(pattern: str) -> str | None:
    if len(pattern) > MAX_PATTERN:
        return f"a pattern is longer than {MAX_PATTERN} characters"
    if _NESTED_QUANTIFIER.search(pattern):
        return f"the pattern {pattern[:40]!r} nests quantifiers, which can backtrack catastrophically"
    try:
        re.compile(pattern)
    except re.error:
        return f"the pattern {pattern[:40]!r} is not a valid regular expression"
    return None


def _ref_cycle(defs: Mapping[str, Any]) -> str | None:
    """A `$ref` that leads back into itself: grammars and validators would recurse without end."""

    def refs_under(path: str) -> list[str]:
        return [
            str(node["$ref"]).replace("~1", "/").replace("~0", "~")
            for p, node in defs.items()
            if (p == path or p.startswith(path + "/")) and isinstance(node.get("$ref"), str)
        ]

    starts = [p for p, node in defs.items() if isinstance(node.get("$ref"), str)]
    if len(starts) > MAX_REFS:
        return f"the schema has more than {MAX_REFS} '$ref's"
    for start in starts:
        seen: set[str] = set()
        todo = [str(defs[start]["$ref"])]
        while todo:
            target = todo.pop()
            if target in seen:
                continue
            seen.add(target)
            if start == target or start.startswith(target + "/"):
                return "the schema's '$ref's form a cycle (a recursive schema)"
            if len(seen) > MAX_NODES:
                break
            todo += refs_under(target)
    return None
