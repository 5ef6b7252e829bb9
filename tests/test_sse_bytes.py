"""`sse.decode_bytes` (the engine client's reader) gives what `sse.decode` over the same stream's lines
gives, however the bytes are cut into reads, and fails the same ways."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from localroute.protocol import sse

CHUNKS = [{"id": "c", "choices": [{"delta": {"content": t}}]} for t in ("Hé", " là", "\u2028x")]
STREAM = b": comment\r\n\r\n" + b"".join(sse.encode(c) for c in CHUNKS) + b"event: x\r\n" + sse.DONE


async def _blocks(data: bytes, size: int) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


async def _lines(data: bytes) -> AsyncIterator[str]:
    for line in data.decode().splitlines():
        yield line


def _read_bytes(data: bytes, size: int) -> list[dict[str, Any]]:
    async def run() -> list[dict[str, Any]]:
        return [c async for c in sse.decode_bytes(_blocks(data, size))]

    return asyncio.run(run())


def _read_lines(data: bytes) -> list[dict[str, Any]]:
    async def run() -> list[dict[str, Any]]:
        return [c async for c in sse.decode(_lines(data))]

    return asyncio.run(run())


@pytest.mark.parametrize("size", [1, 2, 3, 7, 64, 10_000])
def test_any_cut_of_the_bytes_gives_what_the_line_reader_gives(size: int) -> None:
    assert _read_bytes(STREAM, size) == _read_lines(STREAM) == CHUNKS


def test_done_without_its_newline_still_ends_the_stream() -> None:
    assert _read_bytes(STREAM.rstrip(b"\n"), 5) == CHUNKS


def test_a_stream_cut_before_done_is_incomplete() -> None:
    with pytest.raises(sse.IncompleteStreamError):
        _read_bytes(STREAM[: -len(sse.DONE)], 4)


def test_an_event_that_is_not_an_object_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        _read_bytes(b"data: " + json.dumps([1]).encode() + b"\n\n" + sse.DONE, 3)


def test_a_line_that_never_ends_is_refused_not_buffered_forever() -> None:
    async def endless() -> AsyncIterator[bytes]:
        yield b'data: {"x": "'
        while True:
            yield b"y" * 65536

    async def read() -> None:
        async for _ in sse.decode_bytes(endless()):
            pass

    with pytest.raises(ValueError, match="longer than"):
        asyncio.run(read())
