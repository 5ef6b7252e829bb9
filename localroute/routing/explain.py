"""`localroute explain`: replay requests against a config's policy, offline.

Reads one chat-completions request (JSON) or one per line (`--jsonl`) and writes one decision per
line. Loads no model and makes no network call; every rung is assumed available. Each request is
classified as serving classifies it (detected data, `[privacy] default`, `--privacy` in place of the
X-LocalRoute-Privacy header; no API key offline), and decided over the rungs that class allows.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Iterator, Mapping
from typing import TextIO

from localroute.config.schema import Config
from localroute.errors import APIError
from localroute.privacy.detect import Detector
from localroute.privacy.guard import body_texts, resolve
from localroute.protocol.chat import parse_chat_request
from localroute.routing.deciding import decide, explanation
from localroute.routing.policy import NO_HINTS, Policy


def explain_lines(
    config: Config, inputs: Iterable[bytes], jsonl: bool, header: str | None = None
) -> Iterator[str]:
    """One JSON line per request; a bad request yields its OpenAI error object instead. `header` is
    what an X-LocalRoute-Privacy header would say."""
    policy = Policy(config)
    detector = Detector(config.privacy.detect, config.privacy.extra_patterns)
    docs = inputs if jsonl else [b"".join(inputs)]
    for raw in docs:
        if jsonl and not raw.strip():
            continue
        try:
            req = parse_chat_request(raw)
            if req.model != "auto" and config.model(req.model) is None:
                raise APIError(f"unknown model {req.model[:64]!r}", param="model")
            texts = body_texts(req.model_dump(exclude_none=True, by_alias=True))
            privacy = resolve(config.privacy, header, None, detector.kinds_in(texts))
            d = decide(config, policy, req, NO_HINTS, privacy.private, set(), {}, None)
        except APIError as exc:
            yield json.dumps(exc.body())
            continue
        out: Mapping[str, object] = explanation(config, d, privacy)  # read by key name
        keep = ("model", "tier", "score", "reasons", "estimated_tokens", "thresholds", "route", "escalation",
                "needs", "ruled_out", "sticky", "privacy", "rungs")  # fmt: skip
        yield json.dumps({k: out[k] for k in keep})


def run(
    config: Config, source: TextIO | None, jsonl: bool, out: TextIO = sys.stdout, privacy: str | None = None
) -> int:
    stream = source.buffer if source is not None else sys.stdin.buffer
    errors = 0
    for line in explain_lines(config, stream, jsonl, privacy):
        errors += line.startswith('{"error"')
        out.write(line + "\n")
    return 1 if errors else 0
