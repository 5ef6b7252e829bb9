"""`POST /v1/completions`, OpenAI's legacy text completions, served through `Gateway.serve` like chat.

Each prompt is one routed request in the internal chat form (protocol/completions.py): scored,
classified for privacy, judged by the cascade, costed and audited on its own. A list of prompts is
served one prompt after another and merged into one answer whose choices are numbered
`prompt index * n + j`, as OpenAI numbers them; a stream serves a single prompt (docs/completions.md).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from localroute.gateway.handlers import Gateway
from localroute.protocol.completions import CompletionRequest, parse_completion_request
from localroute.protocol.text_completion import CompletionsSurface

_MERGED_HEADERS = ("x-request-id", "x-localroute-model", "x-localroute-tier", "x-localroute-route",
                   "x-localroute-escalations")  # fmt: skip


def _surface(body: CompletionRequest, prompt: str, i: int) -> CompletionsSurface:
    return CompletionsSurface(
        prompt, echo=body.echo, logprobs=body.logprobs is not None, base=i * (body.n or 1)
    )


async def handler(gw: Gateway, request: Request) -> Response:
    t0 = time.monotonic()
    deadline = gw.deadline()
    body = parse_completion_request(await gw.receive(request, deadline))
    prompts = body.prompts()
    reqs = [body.internal(p) for p in prompts]  # every prompt checked before any is served
    if len(reqs) == 1:
        return await gw.serve(request, reqs[0], _surface(body, prompts[0], 0), t0, deadline)
    answers: list[Mapping[str, Any]] = []
    headers: list[Mapping[str, str]] = []
    for i, (prompt, req) in enumerate(zip(prompts, reqs, strict=True)):
        surface = _surface(body, prompt, i)
        resp = await gw.serve(request, req, surface, t0 if i == 0 else time.monotonic(), deadline)
        assert surface.body is not None  # a non-streamed answer went through `surface.answer`
        answers.append(surface.body)
        headers.append(resp.headers)
    return JSONResponse(merge(answers), headers=_merged_headers(headers))


def merge(answers: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """One `text_completion` from the answers to each prompt: their choices in order, usage summed."""
    first = answers[0]
    models = list(dict.fromkeys(str(a.get("model")) for a in answers))
    out: dict[str, Any] = {
        "id": first.get("id"), "object": "text_completion", "created": first.get("created"),
        "model": ",".join(models), "choices": [ch for a in answers for ch in a.get("choices") or ()],
    }  # fmt: skip
    usages = [a["usage"] for a in answers if isinstance(a.get("usage"), Mapping)]
    if usages:
        keys = ("prompt_tokens", "completion_tokens", "total_tokens")
        out["usage"] = {k: sum(int(u.get(k) or 0) for u in usages) for k in keys}
    return out


def _merged_headers(each: Sequence[Mapping[str, str]]) -> dict[str, str]:
    """Each routing header as the list of its values per prompt, in prompt order (RFC 9110 list syntax)."""
    return {
        name: ", ".join(h.get(name, "") for h in each)
        for name in _MERGED_HEADERS
        if any(name in h for h in each)
    }
