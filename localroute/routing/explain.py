"""`localroute explain`: replay requests against a config's policy, offline.

Reads one chat-completions request (JSON) or one per line (`--jsonl`) and writes one decision per
line. Loads no model and makes no network call; every rung is assumed available.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Iterator, Mapping
from typing import TextIO

from localroute.config.schema import Config
from localroute.errors import APIError
from localroute.protocol.chat import parse_chat_request
from localroute.routing.policy import Policy


def explain_lines(config: Config, inputs: Iterable[bytes], jsonl: bool) -> Iterator[str]:
    """One JSON line per request; a bad request yields its OpenAI error object instead."""
    policy = Policy(config)
    docs = inputs if jsonl else [b"".join(inputs)]
    for raw in docs:
        if jsonl and not raw.strip():
            continue
        try:
            req = parse_chat_request(raw)
            if req.model != "auto" and config.model(req.model) is None:
                raise APIError(f"unknown model {req.model[:64]!r}", param="model")
            d = policy.decide(req)
        except APIError as exc:
            yield json.dumps(exc.body())
            continue
        out: Mapping[str, object] = d.as_json()  # read by key name
        keep = ("model", "tier", "score", "reasons", "estimated_tokens", "thresholds", "route", "escalation",
                "needs", "ruled_out")  # fmt: skip
        yield json.dumps({k: out[k] for k in keep})


def run(config: Config, source: TextIO | None, jsonl: bool, out: TextIO = sys.stdout) -> int:
    stream = source.buffer if source is not None else sys.stdin.buffer
    errors = 0
    for line in explain_lines(config, stream, jsonl):
        errors += line.startswith('{"error"')
        out.write(line + "\n")
    return 1 if errors else 0
