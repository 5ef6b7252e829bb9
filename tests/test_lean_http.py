"""LeanTransport against real loopback servers: a raw asyncio server for the edge cases (each test
scripts its answers byte by byte) and the stand-in provider for the real thing."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import ssl
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from localroute.rungs import lean_http
from localroute.rungs.lean_http import LeanTransport
from tests.standin_fixtures import STANDIN_KEY, standin_fixture  # noqa: F401
from tests.standin_provider import StandinProvider

Handler = Callable[["Peer"], Awaitable[None]]
OK = b'HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 11\r\n\r\n{"ok": 1}\r\n'


@dataclass
class Peer:
    """The server's side of one TCP connection."""

    n: int  # which connection this is, from 0
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter

    async def request(self) -> bytes:
        """One request's head and body (Content-Length bodies only, as the transport sends)."""
        head = await self.reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        return head + await self.reader.readexactly(length)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()


@dataclass
class Server:
    port: int
    connections: int = 0
    requests: list[bytes] = field(default_factory=list)
    open_now: int = 0
    most_open: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1/x"


@contextlib.asynccontextmanager
async def serve(handler: Handler, ssl: ssl.SSLContext | None = None) -> AsyncIterator[Server]:
    """A loopback server that runs `handler` for every connection, then closes it."""
    box = Server(0)
    tasks: set[asyncio.Task[None]] = set()

    async def run(peer: Peer) -> None:
        box.open_now += 1
        box.most_open = max(box.most_open, box.open_now)
        try:
            await handler(peer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            box.open_now -= 1
            peer.writer.close()

    def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = Peer(box.connections, reader, writer)
        box.connections += 1
        task = asyncio.ensure_future(run(peer))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    server = await asyncio.start_server(accept, "127.0.0.1", 0, ssl=ssl)
    box.port = server.sockets[0].getsockname()[1]
    try:
        yield box
    finally:
        server.close()
        for task in list(tasks):
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def keep_answering(box_requests: list[bytes], answer: bytes = OK) -> Handler:
    async def handler(peer: Peer) -> None:
        while True:
            box_requests.append(await peer.request())
            await peer.send(answer)

    return handler


def client(
    read: float = 5.0, connect: float = 5.0, write: float = 5.0, pool: float = 5.0, max_connections: int = 100
) -> httpx.AsyncClient:
    timeout = httpx.Timeout(read, connect=connect, write=write, pool=pool)
    return httpx.AsyncClient(transport=LeanTransport(max_connections=max_connections), timeout=timeout)


def run(coro: Awaitable[None]) -> None:
    async def go() -> None:
        await asyncio.wait_for(coro, 20)

    asyncio.run(go())


# -- keep-alive and bodies -----------------------------------------------------------------------------


def test_keep_alive_reuses_one_connection() -> None:
    async def go() -> None:
        seen: list[bytes] = []
        async with serve(keep_answering(seen)) as srv, client() as http:
            for i in range(3):
                resp = await http.post(srv.url, json={"i": i})
                assert resp.status_code == 200 and resp.json() == {"ok": 1}
                assert resp.http_version == "HTTP/1.1" and resp.reason_phrase == "OK"
            assert srv.connections == 1 and len(seen) == 3
            assert seen[2].startswith(b"POST /v1/x HTTP/1.1\r\n") and seen[2].endswith(b'{"i":2}')
            assert b"\r\nhost: 127.0.0.1:" in seen[0].lower()

    run(go())


def test_chunked_body_streams_as_it_arrives_then_the_connection_is_reused() -> None:
    first_seen = asyncio.Event()

    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n")
        await first_seen.wait()  # the client has the first piece before the rest exists
        await peer.send(b"6\r\n world\r\n0\r\n\r\n")
        await peer.request()
        await peer.send(OK)

    async def go() -> None:
        async with serve(handler) as srv, client() as http:
            pieces = []
            async with http.stream("POST", srv.url, content=b"x") as resp:
                async for piece in resp.aiter_raw():
                    pieces.append(piece)
                    first_seen.set()
            assert pieces == [b"hello", b" world"]
            assert (await http.get(srv.url)).json() == {"ok": 1}
            assert srv.connections == 1

    run(go())


def test_body_until_close_and_connection_close_are_not_reused() -> None:
    answers = [
        b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nhi",
        b"HTTP/1.1 200 OK\r\n\r\nuntil the end",  # no length, not chunked: the body ends at EOF
        OK,
    ]

    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(answers[peer.n])
        if peer.n == 2:
            await peer.request()
            await peer.send(OK)

    async def go() -> None:
        async with serve(handler) as srv, client() as http:
            assert (await http.get(srv.url)).content == b"hi"
            assert (await http.get(srv.url)).content == b"until the end"
            assert (await http.get(srv.url)).json() == {"ok": 1}
            assert (await http.get(srv.url)).json() == {"ok": 1}
            assert srv.connections == 3

    run(go())


def test_a_server_closing_an_idle_connection_is_noticed() -> None:
    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(OK)  # then the handler returns: the server closes the kept-alive connection

    async def go() -> None:
        async with serve(handler) as srv, client() as http:
            for _ in range(3):
                assert (await http.get(srv.url)).json() == {"ok": 1}
                await asyncio.sleep(0.05)  # the FIN arrives while the connection is idle
            assert srv.connections == 3

    run(go())


def test_a_reused_connection_closed_before_any_answer_is_retried_once_on_a_fresh_one() -> None:
    seen: list[bytes] = []

    async def handler(peer: Peer) -> None:
        seen.append(await peer.request())
        if peer.n == 0:
            await peer.send(OK)
            seen.append(await peer.request())  # the race: it closes as the next request arrives
            return
        await peer.send(OK)

    async def go() -> None:
        async with serve(handler) as srv, client() as http:
            assert (await http.get(srv.url)).json() == {"ok": 1}
            assert (await http.get(srv.url)).json() == {"ok": 1}
            assert srv.connections == 2 and len(seen) == 3

    run(go())


@pytest.mark.parametrize("answer", [b"", b"HTTP/1.1 200 OK\r\ncontent-le"])
def test_a_fresh_connection_closed_early_is_a_protocol_error_not_retried(answer: bytes) -> None:
    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(answer)

    async def go() -> None:
        async with serve(handler) as srv, client() as http:
            with pytest.raises(httpx.RemoteProtocolError):
                await http.get(srv.url)
            assert srv.connections == 1

    run(go())


def test_a_body_cut_short_is_a_protocol_error() -> None:
    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly this")

    async def go() -> None:
        async with serve(handler) as srv, client() as http:
            with pytest.raises(httpx.RemoteProtocolError):
                await http.get(srv.url)

    run(go())


ENDLESS_HEADERS = (
    b"HTTP/1.1 200 OK\r\n" + b"X-Pad: " + b"a" * 1000 + b"\r\n" + b"X-More: b\r\n" * 10_000 + b"\r\n"
)


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 abc OK\r\n\r\n",
        b"SMTP ready\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nbad header\r\n\r\n",
        ENDLESS_HEADERS,
    ],
)
def test_a_malformed_response_is_a_protocol_error(answer: bytes) -> None:
    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(answer)
        await asyncio.sleep(5)

    async def go() -> None:
        async with serve(handler) as srv, client() as http:
            with pytest.raises(httpx.RemoteProtocolError):
                await http.get(srv.url)

    run(go())


def test_a_second_response_to_one_request_is_not_mixed_in() -> None:
    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nhi" + OK if peer.n == 0 else OK)

    async def go() -> None:
        async with serve(handler) as srv, client() as http:
            resp = await http.get(srv.url)
            assert resp.content == b"hi" and resp.headers["content-length"] == "2"
            assert (await http.get(srv.url)).json() == {"ok": 1}
            assert srv.connections == 2  # the first one is not trusted again

    run(go())


def test_closing_a_stream_early_discards_its_connection() -> None:
    closed = asyncio.Event()

    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n")
        if await peer.reader.read() == b"":  # the client closed without reading on
            closed.set()

    async def go() -> None:
        async with serve(handler) as srv, client() as http:
            async with http.stream("GET", srv.url) as resp:
                async for piece in resp.aiter_raw():
                    assert piece == b"hello"
                    break
            await asyncio.wait_for(closed.wait(), 5)
            assert srv.connections == 1

    run(go())


def test_a_stream_closed_just_before_its_terminator_keeps_its_connection() -> None:
    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n")
        await asyncio.sleep(0.02)
        await peer.send(b"0\r\n\r\n")
        await peer.request()
        await peer.send(OK)

    async def go() -> None:
        async with serve(handler) as srv, client() as http:
            async with http.stream("GET", srv.url) as resp:
                async for _ in resp.aiter_raw():
                    break  # as remote.py stops reading at `data: [DONE]`
            await asyncio.sleep(0.1)
            assert (await http.get(srv.url)).json() == {"ok": 1}
            assert srv.connections == 1

    run(go())


def test_interim_responses_are_skipped() -> None:
    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(b"HTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\n" + OK)

    async def go() -> None:
        async with serve(handler) as srv, client() as http:
            resp = await http.get(srv.url)
            assert resp.status_code == 200 and "link" not in resp.headers

    run(go())


def test_header_injection_is_refused() -> None:
    async def go() -> None:
        async with serve(keep_answering([])) as srv, client() as http:
            request = http.build_request("GET", srv.url)
            request.headers["x-evil"] = "a\r\nx-smuggled: 1"
            with pytest.raises(httpx.LocalProtocolError):
                await http.send(request)

    run(go())


def test_streamed_request_bodies_are_sent_chunked() -> None:
    seen: list[bytes] = []

    async def handler(peer: Peer) -> None:
        seen.append(await peer.reader.readuntil(b"0\r\n\r\n"))
        await peer.send(OK)

    async def parts() -> AsyncIterator[bytes]:
        yield b"ab"
        yield b"cd"

    async def go() -> None:
        async with serve(handler) as srv, client() as http:
            assert (await http.post(srv.url, content=parts())).status_code == 200
            assert seen[0].endswith(b"\r\n\r\n4\r\nabcd\r\n0\r\n\r\n")

    run(go())


# -- timeouts and the pool bound -----------------------------------------------------------------------


def test_read_timeout_before_the_head_and_between_body_bytes() -> None:
    async def handler(peer: Peer) -> None:
        await peer.request()
        if peer.n == 1:
            await peer.send(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc")
        await asyncio.sleep(10)

    async def go() -> None:
        async with serve(handler) as srv, client(read=0.2) as http:
            with pytest.raises(httpx.ReadTimeout):
                await http.get(srv.url)
            async with http.stream("GET", srv.url) as resp:
                assert resp.status_code == 200
                with pytest.raises(httpx.ReadTimeout):
                    await resp.aread()
            assert srv.connections == 2  # a timed-out connection is never reused

    run(go())


def test_connect_timeout_covers_the_tls_handshake() -> None:
    async def handler(peer: Peer) -> None:
        await asyncio.sleep(10)  # accepts, never speaks TLS

    async def go() -> None:
        async with serve(handler) as srv, client(connect=0.2) as http:
            with pytest.raises(httpx.ConnectTimeout):
                await http.get(f"https://127.0.0.1:{srv.port}/")

    run(go())


@pytest.fixture(name="tls")
def tls_fixture(tmp_path: Path) -> tuple[ssl.SSLContext, Path]:
    """A server context with a fresh self-signed certificate for localhost, and the certificate."""
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost"],
        check=True, capture_output=True,
    )  # fmt: skip
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context, cert


def test_tls_is_verified_and_kept_alive(tls: tuple[ssl.SSLContext, Path]) -> None:
    server_context, cert = tls
    seen: list[bytes] = []

    async def go() -> None:
        async with serve(keep_answering(seen), ssl=server_context) as srv:
            url = f"https://localhost:{srv.port}/v1/x"
            async with client() as http:  # httpx's default verification: certifi does not know it
                with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
                    await http.get(url)
            trusting = ssl.create_default_context(cafile=cert)
            async with httpx.AsyncClient(transport=LeanTransport(ssl_context=trusting)) as http:
                for _ in range(2):
                    assert (await http.get(url)).json() == {"ok": 1}
                with pytest.raises(httpx.ConnectError):  # the certificate is for localhost only
                    await http.get(url.replace("localhost", "127.0.0.1"))
            assert srv.connections == 1 and len(seen) == 2  # failed handshakes never reach accept

    run(go())
    default = LeanTransport()._ssl_context()
    assert default.verify_mode == ssl.CERT_REQUIRED and default.check_hostname


def test_connect_refused_is_a_connect_error() -> None:
    async def go() -> None:
        async with serve(keep_answering([])) as srv:
            port = srv.port
        async with client() as http:
            with pytest.raises(httpx.ConnectError):
                await http.get(f"http://127.0.0.1:{port}/")

    run(go())


def test_write_timeout_when_the_server_does_not_read() -> None:
    async def handler(peer: Peer) -> None:
        await asyncio.sleep(10)

    async def go() -> None:
        async with serve(handler) as srv, client(write=0.2) as http:
            with pytest.raises(httpx.WriteTimeout):
                await http.post(srv.url, content=b"x" * (64 << 20))

    run(go())


def test_the_pool_bounds_connections_and_times_out_waiting() -> None:
    release = asyncio.Event()

    async def handler(peer: Peer) -> None:
        while True:
            await peer.request()
            await release.wait()
            await peer.send(OK)

    async def go() -> None:
        async with serve(handler) as srv, client(max_connections=2, pool=0.2) as http:
            calls = [asyncio.ensure_future(http.get(srv.url)) for _ in range(5)]
            await asyncio.sleep(0.05)
            release.set()
            assert [(await c).json() for c in calls] == [{"ok": 1}] * 5
            assert srv.connections == 2 and srv.most_open == 2
            release.clear()
            held = [asyncio.ensure_future(http.get(srv.url)) for _ in range(2)]
            await asyncio.sleep(0.05)
            with pytest.raises(httpx.PoolTimeout):
                await http.get(srv.url)
            release.set()
            await asyncio.gather(*held)
            assert (await http.get(srv.url)).json() == {"ok": 1}  # the slots came back

    run(go())


def test_a_cancelled_request_gives_its_slot_back() -> None:
    async def handler(peer: Peer) -> None:
        await peer.request()
        await asyncio.sleep(10)

    async def go() -> None:
        async with serve(handler) as srv, client(max_connections=1, pool=0.5) as http:
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.1):
                    await http.get(srv.url)
            with pytest.raises(httpx.ReadTimeout):  # the slot is free again: it connects, then waits
                await http.get(srv.url, timeout=httpx.Timeout(0.2))
            assert srv.connections == 2

    run(go())


# -- the stand-in provider, and the default ------------------------------------------------------------


def test_standin_over_keep_alive(standin: StandinProvider) -> None:
    auth = {"Authorization": f"Bearer {STANDIN_KEY}"}
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True}

    async def go() -> None:
        async with client() as http:
            for _ in range(3):
                async with http.stream("POST", standin.base_url + "/chat/completions", json=body,
                                       headers=auth) as resp:  # fmt: skip
                    lines = [line async for line in resp.aiter_lines() if line]
                assert lines[-1] == "data: [DONE]"
            models = await http.get(standin.base_url + "/models", headers=auth)
            assert models.json()["data"][0]["id"] == standin.model

    run(go())
    assert len(standin.requests) == 4


def test_default_transport_steps_aside_for_proxies(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    assert isinstance(lean_http.default_transport(), LeanTransport)
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    assert lean_http.default_transport() is None
