"""What the Responses surface adds on top of chat completions, per request and per streamed token.

    python -m bench.responses_translation [--seconds 10] [--no-append]

Per request: parsing a Responses body and translating it into the chat form ("responses parse"),
against parsing the equivalent chat body (the work `/v1/chat/completions` does at its edge). Per
token: the Responses translator's `feed` for one content chunk (JSON encoding of one
`response.output_text.delta` event), against the chat surface's (the chunk encoded as it is). Each
round times every cell once, in a shuffled order, so background load hits all alike; single calls,
the GC on as in the server. The reference is measured in the same run: read the differences, not the
absolute numbers;
on a loaded machine the minimum is the steadier figure for CPU-bound work like this.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from collections.abc import Callable

from bench.common import append_result, median, pct
from localroute.protocol.chat import parse_chat_request
from localroute.protocol.responses import parse_responses_request
from localroute.protocol.responses_out import ResponsesSurface
from localroute.protocol.surface import CHAT
from localroute.protocol.wire import ChatCompletionChunk

TOOL = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
REST = {"request": " parse", "token": " feed"}  # cell names: "<kind>: <side><rest>"
TURNS = 8  # a conversation of this many user/assistant pairs, with one tool round trip


def bodies() -> tuple[bytes, bytes]:
    """The same conversation as a Responses body and as a chat body."""
    items: list[dict[str, object]] = []
    messages: list[dict[str, object]] = [{"role": "system", "content": "Be brief."}]
    for i in range(TURNS):
        text = f"Question {i}: what is the weather like in city number {i}, and why? " * 4
        items.append({"role": "user", "content": text})
        messages.append({"role": "user", "content": text})
        items.append(
            {
                "type": "message",
                "role": "assistant",
                "id": f"msg_{i}",
                "status": "completed",
                "content": [{"type": "output_text", "text": "It is sunny. " * 8, "annotations": []}],
            }
        )
        messages.append({"role": "assistant", "content": "It is sunny. " * 8})
    items += [
        {"type": "function_call", "call_id": "c1", "name": "get_weather", "arguments": '{"city":"Paris"}'},
        {"type": "function_call_output", "call_id": "c1", "output": '{"temp":21}'},
    ]
    messages += [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "c1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": '{"temp":21}'},
    ]
    responses = {
        "model": "auto",
        "instructions": "Be brief.",
        "input": items,
        "max_output_tokens": 64,
        "tools": [{"type": "function", "name": "get_weather", "parameters": TOOL}],
    }
    chat = {
        "model": "auto",
        "messages": messages,
        "max_completion_tokens": 64,
        "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": TOOL}}],
    }
    return json.dumps(responses).encode(), json.dumps(chat).encode()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--no-append", action="store_true")
    args = ap.parse_args()
    r_body, c_body = bodies()
    surface = ResponsesSurface(parse_responses_request(r_body))
    r_stream, c_stream = surface.translator(), CHAT.translator()
    chunk: ChatCompletionChunk = {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "smollm2-135m",
        "choices": [{"index": 0, "delta": {"content": " word"}, "finish_reason": None}],
    }
    r_stream.feed(chunk)  # past the opening events: the steady state, one delta per chunk
    cells: dict[str, Callable[[], object]] = {
        "request: chat parse": lambda: parse_chat_request(c_body),
        "request: responses parse": lambda: parse_responses_request(r_body).to_chat(),
        "token: chat feed": lambda: c_stream.feed(chunk),
        "token: responses feed": lambda: r_stream.feed(chunk),
    }
    times: dict[str, list[float]] = {k: [] for k in cells}
    end = time.monotonic() + args.seconds
    rounds = 0
    while time.monotonic() < end:
        order = list(cells)
        random.shuffle(order)
        for name in order:
            t = time.perf_counter()
            cells[name]()
            times[name].append((time.perf_counter() - t) * 1e6)
        rounds += 1
    rows = ["| cell | min µs | p50 µs | p99 µs |", "|---|---|---|---|"]
    rows += [f"| {k} | {min(v):.1f} | {median(v):.1f} | {pct(v, 0.99):.1f} |" for k, v in times.items()]

    def added(kind: str, stat: Callable[[list[float]], float]) -> str:
        ours, ref = (times[f"{kind}: {side}"] for side in ("responses" + REST[kind], "chat" + REST[kind]))
        return f"{stat(ours) - stat(ref):+.1f}"

    added_req = f"{added('request', min)} µs (min), {added('request', median)} µs (p50)"
    added_tok = f"{added('token', min)} µs (min), {added('token', median)} µs (p50)"
    notes = (
        f"{rounds:,} interleaved rounds in {args.seconds:g} s; the request is {TURNS} user/assistant "
        f"turns and one tool round trip ({len(r_body):,} bytes as Responses). Added by the Responses "
        f"surface: **{added_req} per request** (parse + translation into the chat form) and "
        f"**{added_tok} per streamed token** (one `response.output_text.delta` event)."
    )
    table = "\n".join(rows)
    if args.no_append:
        print(table + "\n\n" + notes)
    else:
        append_result(
            "bench.responses_translation", "Responses surface overhead", table, notes, ("pydantic",)
        )


if __name__ == "__main__":
    main()
