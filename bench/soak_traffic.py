"""The soak's clients: mixed traffic against the gateway, each request's fate written down as an `Outcome`.

Kinds: chat and streams, local and remote, private (the privacy header, or personal data in the text;
both carry the run's canary word, which only private requests contain), bad inputs (malformed JSON,
wrong types, oversize, wrong Content-Type, unknown model) and clients that leave mid-stream.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

# kind: weight. The weights favour cheap local requests; each kind still shows up every few seconds.
KINDS: dict[str, int] = {
    "chat_local": 4, "stream_local": 3, "chat_remote": 2, "stream_remote": 2, "private_header": 2,
    "private_pii": 2, "private_stream": 1, "private_frontier": 1, "private_hard": 1, "bad_json": 1,
    "bad_types": 1, "oversize": 1, "bad_content_type": 1, "unknown_model": 1, "leave_local": 1,
    "leave_remote": 1,
}  # fmt: skip
PRIVATE_KINDS = frozenset(k for k in KINDS if k.startswith("private"))
BAD_KINDS = frozenset({"bad_json", "bad_types", "oversize", "bad_content_type", "unknown_model"})
PROMPTS = ("Name a color.", "Say hello in French.", "Count to five.", "What is 2 + 2?", "Name a fruit.")
# A long, hard-looking prompt: the policy would send it up the ladder if it were public.
HARD = "Prove, step by step and rigorously, the convergence of this series and derive its bound. " * 12


@dataclass
class Outcome:
    """One request as the client lived it. `fate`: answered (a whole answer or error came back),
    left (the client closed a stream early, on purpose), cut (the gateway was killed under it or was
    down), transport_error (the connection failed with no kill to explain it: a finding)."""

    kind: str
    private: bool
    fate: str = "answered"
    status: int | None = None
    rid: str | None = None
    code: str | None = None  # the error's code, from the body or a stream's error event
    shaped: bool = True  # an error body had the OpenAI shape
    stream_error: bool = False
    done: bool = False  # a stream reached [DONE]
    gen: int = 0  # gateway kills before it started


@dataclass
class Traffic:
    """The clients' shared state: the gateway's URL, the canary, and whether the gateway is up."""

    url: str
    canary: str
    max_body_bytes: int
    seed: int = 7
    outcomes: list[Outcome] = field(default_factory=list)
    kills: int = 0  # gateway kills so far: a transport error across one is `cut`, not a finding
    down: bool = False
    go: asyncio.Event = field(default_factory=asyncio.Event)  # cleared: clients wait (idle measurements)
    in_flight: int = 0
    idle: asyncio.Event = field(default_factory=asyncio.Event)  # set while no request is in flight

    def __post_init__(self) -> None:
        self.idle.set()

    def body(self, kind: str, rng: random.Random) -> tuple[dict[str, Any], dict[str, str]]:
        """The JSON body and extra headers of a request of this kind (bad kinds excepted)."""
        prompt = rng.choice(PROMPTS)
        model, headers = "auto", {}
        if kind.endswith("remote"):
            model = "frontier"
        if kind in PRIVATE_KINDS:
            prompt = f"{prompt} Reference {self.canary}."
        if kind in ("private_header", "private_stream", "private_frontier"):
            headers["x-localroute-privacy"] = "private"
        if kind == "private_pii":
            prompt += " Reply to jane.doe@example.com or call 415-555-0132."
        if kind == "private_frontier":
            model = "frontier"
        if kind == "private_hard":
            prompt = HARD + prompt
            headers["x-localroute-privacy"] = "private"
        stream = kind.startswith(("stream", "leave")) or kind == "private_stream"
        body = {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": 16,
                "temperature": 0.7, "stream": stream}  # fmt: skip
        return body, headers

    async def client(self, http: httpx.AsyncClient, n: int, until: Callable[[], bool]) -> None:
        rng = random.Random(self.seed * 1000 + n)
        kinds, weights = list(KINDS), list(KINDS.values())
        while not until():
            await self.go.wait()
            kind = rng.choices(kinds, weights)[0]
            out = Outcome(kind, kind in PRIVATE_KINDS, gen=self.kills)
            kills, self.in_flight = self.kills, self.in_flight + 1
            self.idle.clear()
            try:
                await self.one(http, kind, out, rng)
            except httpx.TransportError:
                out.fate = "cut" if (self.down or self.kills != kills) else "transport_error"
                if self.down:
                    await asyncio.sleep(0.2)  # the gateway is restarting: do not spin on refusals
            finally:
                self.in_flight -= 1
                if not self.in_flight:
                    self.idle.set()
            self.outcomes.append(out)

    async def one(self, http: httpx.AsyncClient, kind: str, out: Outcome, rng: random.Random) -> None:
        url = self.url + "/v1/chat/completions"
        if kind in BAD_KINDS:
            r = await http.post(url, content=self.bad(kind), headers=self.bad_headers(kind))
            self.answered(out, r)
            return
        body, headers = self.body(kind, rng)
        if not body["stream"]:
            self.answered(out, await http.post(url, json=body, headers=headers))
            return
        async with http.stream("POST", url, json=body, headers=headers) as r:
            out.status, out.rid = r.status_code, r.headers.get("x-request-id")
            if r.status_code != 200:
                self.answered(out, r, await r.aread())
                return
            async for line in r.aiter_lines():
                if not line.startswith("data: "):
                    continue
                if line == "data: [DONE]":
                    out.done = True
                    continue
                event = json.loads(line[6:])
                if "error" in event:
                    out.stream_error, out.code = True, (event["error"] or {}).get("code")
                elif kind.startswith("leave"):
                    out.fate = "left"  # the first chunk is in: hang up mid-stream
                    return

    def answered(self, out: Outcome, r: httpx.Response, raw: bytes | None = None) -> None:
        out.status, out.rid = r.status_code, r.headers.get("x-request-id")
        if r.status_code >= 400:
            try:
                err = json.loads(raw if raw is not None else r.content)["error"]
                out.code = err.get("code")
                out.shaped = all(k in err for k in ("message", "type", "param", "code"))
            except (ValueError, KeyError, TypeError):
                out.shaped = False

    def bad(self, kind: str) -> bytes:
        if kind == "bad_json":
            return b'{"model": "auto", "messages": [{"role": "user", "content": "hi"'
        if kind == "bad_types":
            return json.dumps({"model": "auto", "messages": "hello", "max_tokens": "ten"}).encode()
        if kind == "oversize":
            text = "x" * (self.max_body_bytes + 1024)
            return json.dumps({"model": "auto", "messages": [{"role": "user", "content": text}]}).encode()
        if kind == "unknown_model":
            return json.dumps(
                {"model": "no-such-model", "messages": [{"role": "user", "content": "hi"}]}
            ).encode()
        return b"<messages><message>hi</message></messages>"

    @staticmethod
    def bad_headers(kind: str) -> dict[str, str]:
        kind_of = "application/xml" if kind == "bad_content_type" else "application/json"
        return {"content-type": kind_of}
