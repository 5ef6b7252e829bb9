"""Bounds on the JSON schemas a client sends (`response_format.json_schema.schema`, a tool's
`parameters`). A schema becomes a llama.cpp grammar and a validator, and a hostile one could make
either take the worker's time or memory: deep nesting, huge enums, recursive `$ref`, patterns that
backtrack catastrophically. What passes here converts and validates in milliseconds."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote

MAX_DEPTH = 24
MAX_NODES = 4_000
MAX_ENUM = 512
MAX_PATTERN = 256
MAX_REFS = 64
# Counted repeats (`maxLength`, `minItems`, `{n}` in a pattern) become that many grammar rules: a
# `minLength` of 2e9 would take the worker's memory before a token is made.
MAX_REPEAT = 1_000
_COUNTS = frozenset({"minLength", "maxLength", "minItems", "maxItems", "minProperties", "maxProperties",
                     "minContains", "maxContains"})  # fmt: skip
_REPEAT = re.compile(r"\{(\d+)(?:,(\d*))?\}")
# A group that repeats and holds a quantifier itself, `(a+)+`, `(\w*)*`, `(a|aa)+`: the shapes that
# make a backtracking engine take exponential time. Refused rather than analysed further.
_NESTED_QUANTIFIER = re.compile(
    r"\((?:[^()\\]|\\.)*(?:[+*}]|(?<!\()\?)(?:[^()\\]|\\.)*\)\s*[+*{?]"  # (a+)+, (\w*){2,}, (a?){9}
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
                if key in _COUNTS and isinstance(value, int) and value > MAX_REPEAT:
                    return f"'{key}' is {value} (at most {MAX_REPEAT})"
                stack.append((value, depth + 1, f"{path}/{key}"))
        elif isinstance(node, list):
            stack.extend((v, depth + 1, f"{path}/{i}") for i, v in enumerate(node))
    return _ref_cycle(defs)


def _pattern_problem(pattern: str) -> str | None:
    if len(pattern) > MAX_PATTERN:
        return f"a pattern is longer than {MAX_PATTERN} characters"
    if any(int(n) > MAX_REPEAT for m in _REPEAT.finditer(pattern) for n in m.groups() if n):
        return f"the pattern {pattern[:40]!r} repeats more than {MAX_REPEAT} times"
    if _NESTED_QUANTIFIER.search(pattern):
        return f"the pattern {pattern[:40]!r} nests quantifiers, which can backtrack catastrophically"
    try:
        re.compile(pattern)
    except re.error:
        return f"the pattern {pattern[:40]!r} is not a valid regular expression"
    return None


def _ref_cycle(defs: Mapping[str, Any]) -> str | None:
    """A `$ref` that points to nothing, or that leads back into itself (grammars and validators would
    recurse without end). A graph over the refs only (at most MAX_REFS of them): ref A leads to ref B
    when B sits at or under A's target."""
    refs = {p: _target(node["$ref"]) for p, node in defs.items() if isinstance(node.get("$ref"), str)}
    if len(refs) > MAX_REFS:
        return f"the schema has more than {MAX_REFS} '$ref's"
    for target in refs.values():
        if target not in defs:
            return f"the '$ref' {target[:60]!r} points to nothing in the schema"
    leads = {a: [b for b in refs if b == t or b.startswith(t.rstrip("/") + "/")] for a, t in refs.items()}
    done: set[str] = set()
    for start in refs:
        path, on_path = [(start, iter(leads[start]))], {start}
        while path:
            node, nexts = path[-1]
            step = next(nexts, None)
            if step is None:
                path.pop()
                on_path.discard(node)
                done.add(node)
            elif step in on_path:
                return "the schema's '$ref's form a cycle (a recursive schema)"
            elif step not in done:
                path.append((step, iter(leads[step])))
                on_path.add(step)
    return None


def _target(ref: str) -> str:
    """A local `$ref` as a path in `defs` (JSON-pointer and percent escapes undone)."""
    return "#" + unquote(ref[1:]).replace("~1", "/").replace("~0", "~").rstrip("/") if ref != "#" else "#"
