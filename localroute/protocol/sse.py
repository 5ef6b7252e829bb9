"""Server-sent events as OpenAI streams them: one `data: <compact JSON>` event per chunk, ended by
`data: [DONE]`. The one encoder (the gateway and the llama.cpp worker write with it) and the one decoder
(the engine client and the remote rung read with it)."""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, AsyncIterable, Mapping
from typing import Any

DONE = b"data: [DONE]\n\n"  # the event that ends an OpenAI stream


class IncompleteStreamError(Exception):
    """The lines ended before `data: [DONE]`: the sender stopped in the middle of its answer."""


def encode(obj: Mapping[str, Any]) -> bytes:
    """One `data:` event carrying `obj` as compact JSON (no spaces: every byte is sent per token)."""
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


async def decode(lines: AsyncIterable[str]) -> AsyncGenerator[dict[str, Any], None]:
    """The JSON object of each `data:` event in `lines`, until `data: [DONE]`. Other lines (comments,
    `event:` names, blank separators) are skipped. Raises ValueError for a payload that is not a JSON
    object and IncompleteStreamError when the lines end before `[DONE]`."""
    async for line in lines:
        if not line.startswith("data:"):
            continue
        payload = line[5:].strip()
        if payload == "[DONE]":
            return
        chunk = json.loads(payload)
        if not isinstance(chunk, dict):
            raise ValueError("an SSE event that is not a JSON object")
        yield chunk
    raise IncompleteStreamError("the stream ended before [DONE]")


async def decode_bytes(blocks: AsyncIterable[bytes]) -> AsyncGenerator[dict[str, Any], None]:
    """`decode` over the body's bytes as they arrive: lines are split here, with no text decoding and
    no line-splitting layers in between (each is an async generator step per line, per token). A line
    longer than MAX_LINE_BYTES is a ValueError, as a peer that never ends its line must not grow the
    buffer without bound; a long line arriving in many small pieces is gathered in linear time."""
    rest = bytearray()
    async for block in blocks:
        cut = block.rfind(b"\n")
        if cut < 0:
            rest += block
            if len(rest) > MAX_LINE_BYTES:
                raise ValueError(f"an SSE line longer than {MAX_LINE_BYTES} bytes")
            continue
        rest += block[:cut]
        lines = rest.split(b"\n")
        rest = bytearray(block[cut + 1 :])
        for line in lines:
            event = _event(bytes(line))
            if event is _END:
                return
            if event is not None:
                yield event
    event = _event(bytes(rest))  # a last line without its newline
    if event is _END:
        return
    if event is not None:
        yield event
    raise IncompleteStreamError("the stream ended before [DONE]")


MAX_LINE_BYTES = 16 << 20
_END: dict[str, Any] = {}  # `data: [DONE]`, told apart by identity


def _event(line: bytes) -> dict[str, Any] | None:
    if not line.startswith(b"data:"):
        return None
    payload = line[5:].strip()
    if payload == b"[DONE]":
        return _END
    chunk = json.loads(payload)
    if not isinstance(chunk, dict):
        raise ValueError("an SSE event that is not a JSON object")
    return chunk
