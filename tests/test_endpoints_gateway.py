"""Three engine servers behind a real gateway (`localroute serve` in its own process), under a bounded
load from concurrent HTTP clients: one endpoint killed, one hung (SIGSTOP), both brought back. No client
may see a 5xx while a healthy endpoint exists. Phases change on what /health says (a circuit open, a
circuit closed), never on elapsed time."""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import Server, config_text, start_gateway
from tests.endpoint_servers import MODEL, FakeEngine

ROUNDS_LIMIT = 200  # load rounds before a phase gives up: a bound against hanging


def test_no_5xx_while_one_endpoint_is_killed_one_hung_and_both_return(tmp_path: Path) -> None:
    engines = [FakeEngine().start() for _ in range(3)]
    a, b, c = engines
    balance = {"health_every_s": 0.1, "health_timeout_s": 0.5, "failures_to_open": 2, "open_s": 0.5}
    rung = {"name": "lan", "engine": "vllm", "model": MODEL, "endpoints": [e.url for e in engines],
            "request_timeout_s": 30.0, "balance": balance}  # fmt: skip
    srv = start_gateway(tmp_path, config_text(models=[rung], privacy={"audit_enabled": False}))
    statuses: collections.Counter[int] = collections.Counter()

    def endpoint(h: dict[str, Any], e: FakeEngine) -> dict[str, Any]:
        eps: list[dict[str, Any]] = h["engines"]["lan"]["endpoints"]
        return next(x for x in eps if x["url"] == e.url)

    async def scenario(gw: Server) -> None:
        async with httpx.AsyncClient(base_url=gw.url, timeout=120) as client:

            async def one() -> None:
                body = {"model": "auto", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 8}
                r = await client.post("/v1/chat/completions", json=body)
                statuses[r.status_code] += 1

            async def health() -> dict[str, Any]:
                return (await client.get("/health")).json()  # type: ignore[no-any-return]

            async def until(done: Callable[[dict[str, Any]], bool]) -> None:
                for _ in range(ROUNDS_LIMIT):
                    if done(await health()):
                        return
                    await asyncio.gather(*(one() for _ in range(6)))
                raise AssertionError(f"never reached; statuses {dict(statuses)}")

            await until(lambda h: sum(statuses.values()) >= 30)
            a.kill()
            await until(lambda h: endpoint(h, a)["circuit"] == "open")
            b.hang()
            await until(lambda h: endpoint(h, b)["circuit"] == "open")
            served_c = endpoint(await health(), c)["served"]
            await until(lambda h: endpoint(h, c)["served"] >= served_c + 30)  # c alone carries the load
            a.start()
            b.resume()
            await until(lambda h: endpoint(h, a)["circuit"] == endpoint(h, b)["circuit"] == "closed")
            before = {e.url: endpoint(await health(), e)["served"] for e in engines}
            for _ in range(10):
                await asyncio.gather(*(one() for _ in range(6)))
            after = await health()
            assert all(endpoint(after, e)["served"] > before[e.url] for e in engines)  # all three serve again
            assert endpoint(after, a)["opens"] >= 1 and endpoint(after, b)["opens"] >= 1

    try:
        asyncio.run(scenario(srv))
        assert set(statuses) == {200}, dict(statuses)  # c was healthy throughout: no 5xx, no error at all
    finally:
        srv.stop()
        b.resume()
        for e in engines:
            e.kill()
