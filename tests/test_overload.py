"""Load past capacity against a real gateway and the real small model (bounded: a few hundred
requests, well under two minutes here). Every request is answered or refused with a documented
status within its deadline; afterwards nothing is left in flight and file descriptors and RSS are
where they were."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import psutil
import pytest

from tests.conftest import Server, config_text, repo_rung, start_gateway, wait_until

pytestmark = pytest.mark.load

MODEL = "smollm2-135m"
DEADLINE_S = 60
MAX_QUEUE = 3
CLIENTS = 32
ROUNDS = 2


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    text = config_text(
        server={"request_timeout_s": DEADLINE_S}, models=[repo_rung(MODEL, max_queue=MAX_QUEUE)]
    )
    server = start_gateway(tmp_path_factory.mktemp("load"), text)
    yield server
    server.stop()


BODY = {
    "model": MODEL,
    "messages": [{"role": "user", "content": "Say hi"}],
    "max_tokens": 8,
    "temperature": 0,
}


async def one(http: httpx.AsyncClient, url: str) -> tuple[int, str | None, str | None]:
    r = await http.post(url + "/v1/chat/completions", json=BODY)
    code = r.json()["error"]["code"] if r.status_code != 200 else None
    return r.status_code, code, r.headers.get("retry-after")


async def leaver(http: httpx.AsyncClient, url: str) -> int:
    """Opens a stream and leaves after its first event (or its refusal)."""
    async with http.stream(
        "POST", url + "/v1/chat/completions", json={**BODY, "stream": True, "max_tokens": 200}
    ) as r:
        if r.status_code == 200:
            async for line in r.aiter_lines():
                if line.startswith("data: "):
                    break
        return r.status_code


async def burst(url: str) -> tuple[list[tuple[int, str | None, str | None]], list[int]]:
    limits = httpx.Limits(max_connections=CLIENTS + 16)
    async with httpx.AsyncClient(timeout=DEADLINE_S + 15, limits=limits) as http:
        calls = [one(http, url) for _ in range(CLIENTS)]
        leavers = [leaver(http, url) for _ in range(8)]
        results = await asyncio.gather(*calls, *leavers)
    return list(results[:CLIENTS]), list(results[CLIENTS:])  # type: ignore[arg-type]


def footprint(pid: int) -> tuple[int, int]:
    p = psutil.Process(pid)
    return p.num_fds(), p.memory_info().rss


def test_load_past_capacity_is_answered_or_refused_and_leaves_nothing_behind(srv: Server) -> None:
    worker = srv.health()["engines"][MODEL]["pid"]  # type: ignore[index]
    asyncio.run(burst(srv.url))  # warm-up: allocator, connection pools and caches reach steady state
    assert wait_until(lambda: srv.health()["engines"][MODEL]["in_flight"] == 0, timeout=30)  # type: ignore[index]
    fds0, rss0 = footprint(srv.proc.pid)
    tasks0 = srv.health()["tasks"]
    seen: dict[tuple[int, str | None], int] = {}
    for _ in range(ROUNDS):
        results, left = asyncio.run(burst(srv.url))
        for status, code, retry_after in results:
            seen[(status, code)] = seen.get((status, code), 0) + 1
            if status == 429:
                assert retry_after is not None and int(retry_after) >= 1
        assert set(left) <= {200, 429}
    # Only documented outcomes: an answer, or the queue's 429. No 5xx, no client-side timeout.
    assert set(seen) <= {(200, None), (429, "queue_full")}, seen
    assert seen.get((200, None), 0) >= ROUNDS * (MAX_QUEUE + 1)
    assert seen.get((429, "queue_full"), 0) > 0  # it really was past capacity
    assert wait_until(lambda: srv.health()["engines"][MODEL]["in_flight"] == 0, timeout=30)  # type: ignore[index]
    fds1, rss1 = footprint(srv.proc.pid)
    assert srv.health()["tasks"] <= tasks0  # no task left behind by a request, a stream or a refusal
    assert fds1 <= fds0 + 4, (fds0, fds1)  # no leaked sockets or pipes
    assert rss1 - rss0 < 48 * 1024 * 1024, (rss0, rss1)  # flat, give or take allocator noise
    eng = srv.health()["engines"][MODEL]  # type: ignore[index]
    assert eng["pid"] == worker and eng["restarts"] == 0 and eng["state"] == "ready"
    assert "Traceback" not in srv.log.read_text()
