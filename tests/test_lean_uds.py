"""LeanTransport on a Unix socket (the gateway's hop to a llama.cpp worker): a real asyncio server on
a socket in a temporary folder; requests whatever their URL's host reach it, keep-alive holds, a
chunked stream arrives whole, and a socket that is not there is httpx's ConnectError."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from localroute.rungs.lean_http import LeanTransport

CHUNKED = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
    b'f\r\ndata: {"a":1}\n\n\r\n'
    b"e\r\ndata: [DONE]\n\n\r\n"
    b"0\r\n\r\n"
)


async def _serve(path: Path, connections: list[int], heads: list[bytes]) -> asyncio.Server:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError:
                break
            heads.append(head)
            length = next(
                (int(v) for n, _, v in (ln.partition(b":") for ln in head.split(b"\r\n"))
                 if n.strip().lower() == b"content-length"), 0,
            )  # fmt: skip
            await reader.readexactly(length)
            writer.write(CHUNKED)
            await writer.drain()
        writer.close()

    return await asyncio.start_unix_server(handle, path=str(path))


def test_requests_reach_the_socket_reuse_one_connection_and_stream_whole(tmp_path: Path) -> None:
    sock = tmp_path / "engine.sock"

    async def run() -> tuple[list[bytes], int, list[bytes]]:
        connections: list[int] = []
        heads: list[bytes] = []
        server = await _serve(sock, connections, heads)
        bodies = []
        async with httpx.AsyncClient(transport=LeanTransport(uds=str(sock)), base_url="http://engine") as c:
            for _ in range(2):
                async with c.stream("POST", "/v1/chat/completions", json={"x": 1}) as r:
                    assert r.status_code == 200
                    bodies.append(b"".join([part async for part in r.aiter_bytes()]))
        server.close()
        await server.wait_closed()
        return bodies, len(connections), heads

    bodies, connections, heads = asyncio.run(run())
    assert bodies == [b'data: {"a":1}\n\ndata: [DONE]\n\n'] * 2
    assert connections == 1  # kept alive between the two requests
    assert all(h.startswith(b"POST /v1/chat/completions HTTP/1.1") for h in heads)


def test_a_missing_socket_is_a_connect_error(tmp_path: Path) -> None:
    async def run() -> None:
        transport = LeanTransport(uds=str(tmp_path / "gone.sock"))
        async with httpx.AsyncClient(transport=transport, base_url="http://engine") as c:
            await c.get("/health")

    with pytest.raises(httpx.ConnectError):
        asyncio.run(run())
