"""EventStream's contract, driven by the test's own ASGI events: parts go out as they come, a client
that leaves stops the body where it waits (its `finally` runs) and the response returns normally, and
a cancellation from elsewhere (shutdown) still propagates."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest

from localroute.protocol.event_stream import EventStream


class Peer:
    """The server side: records what was sent; `leave()` delivers the client's disconnect."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []
        self.gone = asyncio.Event()

    async def receive(self) -> dict[str, Any]:
        await self.gone.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: dict[str, Any]) -> None:
        self.sent.append(message)

    def leave(self) -> None:
        self.gone.set()


def test_parts_go_out_in_order_with_the_headers_first() -> None:
    async def body() -> AsyncIterator[bytes]:
        yield b"data: 1\n\n"
        yield b"data: 2\n\n"

    async def main() -> list[dict[str, Any]]:
        peer = Peer()
        await EventStream(body(), headers={"x-request-id": "r1"})({"type": "http"}, peer.receive, peer.send)
        return peer.sent

    sent = asyncio.run(main())
    start = sent[0]
    assert start["type"] == "http.response.start" and start["status"] == 200
    headers = dict(start["headers"])
    assert headers[b"content-type"] == b"text/event-stream; charset=utf-8"
    assert headers[b"x-request-id"] == b"r1"
    assert [m["body"] for m in sent[1:]] == [b"data: 1\n\n", b"data: 2\n\n", b""]
    assert [m["more_body"] for m in sent[1:]] == [True, True, False]


async def stalled(seen: list[str], waiting: asyncio.Event) -> AsyncIterator[bytes]:
    """One part, then a wait for the engine's next token, which never comes."""
    try:
        yield b"data: first\n\n"
        waiting.set()
        await asyncio.Event().wait()
        yield b"data: never\n\n"
    except asyncio.CancelledError:
        seen.append("cancelled")
        raise
    finally:
        seen.append("finally")


def test_a_client_that_leaves_stops_the_body_where_it_waits_and_its_finally_runs() -> None:
    seen: list[str] = []

    async def main() -> None:
        peer, waiting = Peer(), asyncio.Event()
        stream = EventStream(stalled(seen, waiting))
        response = asyncio.ensure_future(stream({"type": "http"}, peer.receive, peer.send))
        await waiting.wait()
        peer.leave()
        await response  # returns normally: the client is gone, nothing to answer
        assert not response.cancelled()
        assert [m.get("body") for m in peer.sent[1:]] == [b"data: first\n\n"]

    asyncio.run(main())
    assert seen == ["cancelled", "finally"]


def test_a_cancellation_from_elsewhere_propagates_and_still_closes_the_body() -> None:
    seen: list[str] = []

    async def main() -> None:
        peer, waiting = Peer(), asyncio.Event()
        stream = EventStream(stalled(seen, waiting))
        response = asyncio.ensure_future(stream({"type": "http"}, peer.receive, peer.send))
        await waiting.wait()
        response.cancel()  # the server shutting down, not the client leaving
        with pytest.raises(asyncio.CancelledError):
            await response

    asyncio.run(main())
    assert seen == ["cancelled", "finally"]


def test_a_client_that_leaves_while_a_part_is_being_written_closes_the_body_at_once() -> None:
    """The cancellation lands in `send` (a slow client's write), not in the body: the body is closed
    by the response before it returns, not later by the garbage collector."""
    seen: list[str] = []

    async def main() -> None:
        peer = Peer()
        writing = asyncio.Event()

        async def send(message: dict[str, Any]) -> None:
            peer.sent.append(message)
            if message.get("body") == b"data: 2\n\n":
                writing.set()
                await asyncio.Event().wait()  # the socket's buffer is full and the client is gone

        async def body() -> AsyncIterator[bytes]:
            try:
                yield b"data: 1\n\n"
                yield b"data: 2\n\n"
                yield b"data: 3\n\n"
            finally:
                seen.append("finally")

        response = asyncio.ensure_future(EventStream(body())({"type": "http"}, peer.receive, send))
        await writing.wait()
        peer.leave()
        await response
        assert seen == ["finally"]  # now, not at some later collection

    asyncio.run(main())


def test_a_client_that_leaves_during_the_bodys_shielded_clean_up_does_not_cut_it_short() -> None:
    """The gateway's stream records the request and frees the engine in a shielded scope as it ends;
    a disconnect landing then must not skip the record (it would under a plain task.cancel())."""
    seen: list[str] = []

    async def main() -> None:
        peer = Peer()
        closing, may_finish = asyncio.Event(), asyncio.Event()

        async def body() -> AsyncIterator[bytes]:
            try:
                yield b"data: last\n\n"
            finally:
                with anyio.CancelScope(shield=True):
                    closing.set()
                    await may_finish.wait()  # closing the engine stream
                seen.append("recorded")

        response = asyncio.ensure_future(EventStream(body())({"type": "http"}, peer.receive, peer.send))
        await closing.wait()
        peer.leave()
        for _ in range(5):  # let the disconnect be delivered while the clean-up waits
            await asyncio.sleep(0)
        may_finish.set()
        await response

    asyncio.run(main())
    assert seen == ["recorded"]


def test_the_head_goes_out_with_the_first_part_not_before_it() -> None:
    async def main() -> None:
        peer = Peer()
        ready = asyncio.Event()

        async def body() -> AsyncIterator[bytes]:
            await ready.wait()  # the first token is not there yet
            yield b"data: first\n\n"

        response = asyncio.ensure_future(EventStream(body())({"type": "http"}, peer.receive, peer.send))
        for _ in range(5):
            await asyncio.sleep(0)
        assert peer.sent == []  # nothing yet: the client wakes once, for the head and the first part
        ready.set()
        await response
        assert [m["type"] for m in peer.sent] == ["http.response.start", *["http.response.body"] * 2]

    asyncio.run(main())
