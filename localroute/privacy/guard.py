"""The privacy guarantee in one place: a request's class, the egress guard, and the one walk over a
request body's client-written texts that both scanning and redaction use.

Read this file to know what is promised. The remote rung is the only code that sends a request off the
machine, and it cannot be built without an `EgressGuard` (rungs/remote.py takes it as a required
argument); the guard refuses a request unless the router marked it public, and re-scans what leaves.
"""

from __future__ import annotations

import contextvars
import json
from collections.abc import Mapping, MutableMapping, MutableSequence, Sequence
from dataclasses import dataclass
from typing import Any

from localroute.config.privacy import PrivacyConfig
from localroute.errors import APIError
from localroute.privacy.detect import Detector
from localroute.protocol.wire import PrivacyClass, PrivacyLabel


@dataclass(frozen=True)
class Privacy:
    """A request's privacy class and why. `kinds` names detected data, never the data itself."""

    private: bool
    reason: str  # header | key | default | pii | public-header | public-default | override
    kinds: tuple[str, ...] = ()

    @property
    def label(self) -> PrivacyClass:
        return "private" if self.private else "public"

    def as_json(self) -> PrivacyLabel:
        return {"class": self.label, "reason": self.reason, "kinds": list(self.kinds)}


PRIVATE_BY_DEFAULT = Privacy(True, "unset")


def resolve(
    cfg: PrivacyConfig,
    header: str | None,
    key_policy: str | None,
    kinds: Sequence[str],
) -> Privacy:
    """Decide a request's class. Private wins over public, except that a client's `public` may
    override detected data only when the config allows it."""
    h = (header or "").strip().lower()
    if h == "private":
        return Privacy(True, "header", tuple(kinds))
    if key_policy == "private":
        return Privacy(True, "key", tuple(kinds))
    if kinds and not (h == "public" and cfg.allow_public_override):
        return Privacy(True, "pii", tuple(kinds))
    if h == "public":
        return Privacy(False, "override" if kinds else "public-header", tuple(kinds))
    if key_policy == "public":
        return Privacy(False, "public-key")
    if cfg.default == "private":
        return Privacy(True, "default")
    return Privacy(False, "public-default")


# The privacy of the request being served in this task. Unset means private: the egress guard lets a
# request leave only when the router has explicitly marked it public.
CURRENT: contextvars.ContextVar[Privacy] = contextvars.ContextVar("localroute_privacy")
# The request's texts as classified, when the scan found nothing in them. The guard scans again only
# what differs (a redacted or rewritten body); unset means nothing was vouched for, so it scans all.
SCANNED_CLEAN: contextvars.ContextVar[tuple[str, ...]] = contextvars.ContextVar("localroute_scanned_clean")


class PrivacyViolationError(APIError):
    """The egress guard refused to send a request off the machine. Never retried, never a fallback."""

    status = 503
    type = "server_error"
    default_code = "private_request_unservable"


class EgressGuard:
    """Called by the remote backend with every outgoing body, right before it is sent."""

    def __init__(self, detector: Detector, redacting: bool = False) -> None:
        self.detector = detector
        self.redacting = redacting
        self.refused = 0

    def __call__(self, body: dict[str, Any]) -> None:
        privacy = CURRENT.get(PRIVATE_BY_DEFAULT)
        if privacy.private:
            self.refused += 1
            raise PrivacyViolationError("This request is private and cannot be sent off this machine.")
        if privacy.reason == "override" and not self.redacting:
            return  # the operator allowed the client to send detected data as it is
        texts = tuple(body_texts(body))
        if texts == SCANNED_CLEAN.get(None):
            return  # the very strings this request was classified on, and they held nothing
        kinds = self.detector.kinds_in(texts)  # after redaction, nothing may be left
        if kinds:  # defence in depth: a public request must not carry what we would call private
            self.refused += 1
            raise PrivacyViolationError(
                "This request carries data that must stay on this machine (" + ", ".join(kinds) + ")."
            )


Slot = tuple[MutableMapping[str, Any] | MutableSequence[Any], Any, str]
# Values from a fixed vocabulary (or the model name the client picked from our list): never free text.
_STRUCTURAL = frozenset({"model", "role", "type", "detail", "service_tier", "reasoning_effort", "verbosity"})


def _slots(body: Mapping[str, Any], keys: list[str] | None = None) -> list[Slot]:
    """The one walk over every client-written string a chat body carries, as (container, key, text).

    Every string leaf of the body is visited, whatever field holds it (messages, tool calls and
    results, tool definitions and their parameter schemas, `response_format`, `stop`, `user`,
    `metadata`, echoed annotations, ...), except the fixed-vocabulary fields in `_STRUCTURAL` and
    inline `data:` image URLs. A message's text parts are joined into one text, so a value split
    across parts is still seen (when the content holds an image, the parts are visited one by one).
    Scanning reads the texts; redaction writes through the slots. `keys`, when given, collects the
    object keys below the body's own fields (metadata keys, schema property names)."""
    out: list[Slot] = []
    stack: list[tuple[Any, Any, Any]] = []
    for key, value in body.items():
        if key != "messages" or not isinstance(value, list):
            stack.append((body, key, value))
            continue
        for m in value:
            if not isinstance(m, dict):
                continue
            for mk, mv in m.items():
                if mk == "content" and isinstance(mv, list) and all(_is_text_part(p) for p in mv):
                    out.append((m, mk, "".join(str(p.get("text") or p.get("refusal") or "") for p in mv)))
                else:  # images stay where they are: the text around them is scanned and rewritten
                    stack.append((m, mk, mv))
    while stack:  # a loop, not recursion: free-form fields nest as deep as the JSON parser allows
        parent, key, value = stack.pop()
        if isinstance(value, str):
            if key not in _STRUCTURAL and not (key == "url" and value.startswith("data:")):
                out.append((parent, key, value))
        elif isinstance(value, dict):
            if keys is not None:
                keys += value
            stack += [(value, k, v) for k, v in value.items()]
        elif isinstance(value, list):
            stack += [(value, i, v) for i, v in enumerate(value)]
    return out


def _is_text_part(part: object) -> bool:
    return isinstance(part, dict) and part.get("type") in ("text", "refusal")


def body_texts(body: Mapping[str, Any]) -> list[str]:
    """What classification and the guard scan: every client-written string of a body (`_slots`), the
    keys a client chose (metadata keys, schema property names), and the strings inside tool-call
    arguments as the JSON decodes them (`\\u0040` is an `@` to whoever reads the call)."""
    keys: list[str] = []
    texts: list[str] = []
    for _, key, text in _slots(body, keys):
        texts.append(text)
        if key == "arguments" and "\\" in text:
            texts += _json_strings(text)
    return texts + [k for k in keys if k not in _FIELDS]


# Field names of the API itself: not something a client wrote, and the commonest keys by far.
_FIELDS = frozenset({"role", "content", "type", "text", "name", "tool_calls", "function", "arguments", "id",
                     "tool_call_id", "refusal", "image_url", "url", "detail", "description", "parameters",
                     "strict", "json_schema", "schema", "properties", "required"})  # fmt: skip


def _json_strings(text: str) -> list[str]:
    try:
        value = json.loads(text)
    except ValueError:
        return []
    out: list[str] = []
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, str):
            out.append(v)
        elif isinstance(v, dict):
            out += [k for k in v if isinstance(k, str)]
            stack += v.values()
        elif isinstance(v, list):
            stack += v
    return out


def redact_body(body: dict[str, Any], detector: Detector) -> None:
    """Replace detected data in every client-written string of `body` with typed placeholders, in
    place. Text parts are joined first, so a value split across parts is found; the guard re-scans
    what is left. One numbering for the whole request: a value keeps its placeholder."""
    seen: dict[str, str] = {}
    for container, key, text in list(_slots(body)):
        container[key] = redact(text, detector, seen)


def redact(text: str, detector: Detector, seen: dict[str, str] | None = None) -> str:
    """Replace detected spans with typed placeholders: `[EMAIL_1]`, `[CARD_1]`, ... Pass the same
    `seen` (value -> placeholder) for every text of one request, so that a value keeps its name."""
    findings = sorted(detector.scan(text), key=lambda f: (f.start, -f.end))
    seen = {} if seen is None else seen
    out, pos = [], 0
    for f in findings:
        if f.start < pos:
            continue
        value = text[f.start : f.end]
        if value not in seen:
            tag = f"[{f.kind.upper()}_"
            n = sum(p[: p.rindex("_") + 1] == tag for p in seen.values()) + 1
            seen[value] = f"{tag}{n}]"
        out += [text[pos : f.start], seen[value]]
        pos = f.end
    out.append(text[pos:])
    return "".join(out)
